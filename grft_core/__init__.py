"""grft_core: GRFT fine-tuning as a library.

Train only the top-k rows (or columns) of each weight matrix, chosen by squared gradients, with an L2
pull toward the pre-trained weights (arXiv 2507.00016), without ever forming dense weight gradients.

Entry points: ``pipeline.train_to_folder`` (names and URIs in, adapter folder out), ``trainer.fit``
(models and items in memory), ``registry.ModelRegistry`` (base models), ``data.load_dataset``,
``adapter`` (save, load, apply, merge) and ``peft_export.export_peft_lora``. The package imports no
web, database or queue code.
"""

__version__ = "0.1.0"
