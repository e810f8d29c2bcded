"""``/v1/models``: the base models and the organization's fine-tuned models, in OpenAI's shapes."""
