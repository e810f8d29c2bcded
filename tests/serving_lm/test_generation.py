"""The generation engine: adapters of one base share decoding steps and still answer as if alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grft_core.errors import AdapterError, ConfigError
from grft_core.serving.generation import GenerationEngine
from grft_core.serving.generation_sampling import SamplingParams
from grft_core.serving.generation_stream import GenerationCancelled
from tests.serving_lm.conftest import TinyLM

GREEDY = SamplingParams(max_tokens=24, temperature=0.0)


def hf_greedy(model: nn.Module, prompt: list[int], max_tokens: int) -> list[int]:
    """The plain transformers model's greedy tokens (no end-of-sequence stop), run alone."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return [int(t) for t in out[0, len(prompt) :]]


def chat(engine: GenerationEngine, text: str) -> list[int]:
    return engine.chat_prompt(
        [{"role": "system", "content": "answer briefly"}, {"role": "user", "content": text}]
    )


class TestMixedBatch:
    def test_each_item_matches_its_merged_model_run_alone(
        self, engine: GenerationEngine, tiny_lm: TinyLM
    ) -> None:
        engine.eos_ids = frozenset()  # compare whole runs of max_tokens tokens
        prompts = {
            "A": chat(engine, "hello there"),
            "B": chat(engine, "the quick brown fox"),
            None: chat(engine, "cats"),
        }

        handles = {a: engine.submit(p, a, GREEDY) for a, p in prompts.items()}
        got = {a: list(h.result(timeout=60).token_ids) for a, h in handles.items()}

        expected = {
            "A": hf_greedy(tiny_lm.merged["A"], prompts["A"], 24),
            "B": hf_greedy(tiny_lm.merged["B"], prompts["B"], 24),
            None: hf_greedy(tiny_lm.base, prompts[None], 24),
        }
        assert got == expected
        assert len({tuple(t) for t in got.values()}) == 3  # the adapters change the output
        assert engine.steps < 3 * 24  # the three shared decoding steps

    def test_same_prompt_differs_by_adapter(self, engine: GenerationEngine, tiny_lm: TinyLM) -> None:
        prompt = chat(engine, "hello")
        a = engine.submit(prompt, "A", GREEDY)
        base = engine.submit(prompt, None, GREEDY)
        assert a.result(60).token_ids != base.result(60).token_ids

    def test_a_request_joining_mid_flight_changes_no_tokens(
        self, engine: GenerationEngine, tiny_lm: TinyLM
    ) -> None:
        engine.eos_ids = frozenset()
        long = SamplingParams(max_tokens=60, temperature=0.0)
        prompt_a, prompt_b = chat(engine, "once upon a time"), chat(engine, "numbers 1 2 3 4 5 6 7 8 9")
        alone_a = engine.generate(prompt_a, "A", long).token_ids
        alone_b = engine.generate(prompt_b, "B", long).token_ids

        start = engine.steps
        first = engine.submit(prompt_a, "A", long)
        stream = iter(first)
        next(stream)  # A is running: it has produced text
        with engine.lock:  # hold the loop between two steps while the others arrive
            steps_before = engine.steps
            joined = [engine.submit(prompt_b, "B", long), engine.submit(chat(engine, "hi"), None, long)]
        results = [first.result(60), *(h.result(60) for h in joined)]

        assert results[0].token_ids == alone_a
        assert results[1].token_ids == alone_b
        assert steps_before - start < 59  # the others really joined while A was still decoding
        assert engine.steps - start < 2 * 59  # and then shared its steps (alone: 3 x 59)

    def test_a_request_leaving_changes_no_tokens(self, engine: GenerationEngine) -> None:
        engine.eos_ids = frozenset()
        prompt = chat(engine, "hello there")
        alone = engine.generate(prompt, "B", SamplingParams(max_tokens=40, temperature=0.0)).token_ids
        short = engine.submit(
            chat(engine, "a much longer prompt that pads the others in the batch"), "A", GREEDY
        )
        kept = engine.submit(prompt, "B", SamplingParams(max_tokens=40, temperature=0.0))
        short.result(60)
        assert kept.result(60).token_ids == alone


class TestSampling:
    def test_a_seed_reproduces_its_tokens_in_any_batch(self, engine: GenerationEngine) -> None:
        engine.eos_ids = frozenset()
        params = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, seed=7)
        prompt = chat(engine, "hello")
        alone = engine.generate(prompt, "A", params).token_ids
        crowd = [
            engine.submit(chat(engine, f"noise {i}"), "B", SamplingParams(max_tokens=20, seed=i))
            for i in range(3)
        ]
        again = engine.submit(prompt, "A", params)
        other = engine.submit(prompt, "A", SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, seed=8))

        assert again.result(60).token_ids == alone
        assert other.result(60).token_ids != alone
        for h in crowd:
            h.result(60)

    def test_top_p_near_zero_is_greedy(self, engine: GenerationEngine) -> None:
        engine.eos_ids = frozenset()
        prompt = chat(engine, "cats and dogs")
        greedy = engine.generate(prompt, None, GREEDY).token_ids
        nucleus = engine.generate(
            prompt, None, SamplingParams(max_tokens=24, temperature=1.0, top_p=1e-6, seed=3)
        )
        assert nucleus.token_ids == greedy

    @pytest.mark.parametrize(
        ("field", "kwargs"),
        [
            ("max_tokens", {"max_tokens": 0}),
            ("temperature", {"temperature": 2.5}),
            ("top_p", {"top_p": 0.0}),
            ("stop", {"stop": ("",)}),
            ("stop", {"stop": ("a", "b", "c", "d", "e")}),
        ],
    )
    def test_bad_parameters_name_their_field(self, field: str, kwargs: dict[str, object]) -> None:
        with pytest.raises(ConfigError) as err:
            SamplingParams(**kwargs)  # type: ignore[arg-type]
        assert err.value.param == field


class TestFinishing:
    def test_stop_string_cuts_the_text_and_the_stream(self, engine: GenerationEngine) -> None:
        engine.eos_ids = frozenset()
        prompt = chat(engine, "hello there")
        full = engine.generate(prompt, "A", SamplingParams(max_tokens=40, temperature=0.0))
        text = full.text
        # A stop string from the middle of the text (wherever it first occurs, the text ends there).
        stop = text[len(text) // 2 : len(text) // 2 + 3]
        assert len(stop) == 3
        cut = text.index(stop)

        handle = engine.submit(
            prompt, "A", SamplingParams(max_tokens=40, temperature=0.0, stop=("zzzz", stop))
        )
        streamed = "".join(handle)
        result = handle.result()

        assert (result.text, result.finish_reason) == (text[:cut], "stop")
        assert streamed == text[:cut]
        assert result.completion_tokens < full.completion_tokens

    def test_max_tokens_ends_with_length(self, engine: GenerationEngine) -> None:
        engine.eos_ids = frozenset()
        prompt = chat(engine, "hello")
        result = engine.generate(prompt, None, SamplingParams(max_tokens=5, temperature=0.0))
        assert (result.finish_reason, result.completion_tokens, result.prompt_tokens) == (
            "length",
            5,
            len(prompt),
        )

    def test_end_of_sequence_ends_with_stop(self, engine: GenerationEngine) -> None:
        prompt = chat(engine, "hello")
        engine.eos_ids = frozenset()
        tokens = engine.generate(prompt, None, GREEDY).token_ids
        engine.eos_ids = frozenset({tokens[3]})
        result = engine.generate(prompt, None, GREEDY)
        assert result.finish_reason == "stop"
        assert result.token_ids == tokens[: tokens.index(tokens[3]) + 1]

    def test_streamed_text_is_the_completion_text(self, engine: GenerationEngine) -> None:
        handle = engine.submit(chat(engine, "hello"), "B", SamplingParams(max_tokens=30, seed=1))
        assert "".join(handle) == handle.result().text

    def test_context_limits_the_length(self, engine: GenerationEngine) -> None:
        engine.eos_ids = frozenset()
        prompt = [5] * (engine.context_length - 3)
        result = engine.generate(prompt, None, SamplingParams(max_tokens=50, temperature=0.0))
        assert (result.finish_reason, result.completion_tokens) == ("length", 3)
        with pytest.raises(ConfigError) as err:
            engine.submit([5] * engine.context_length, None, GREEDY)
        assert err.value.param == "prompt"

    def test_cancel_drops_only_that_request(self, engine: GenerationEngine) -> None:
        engine.eos_ids = frozenset()
        long = SamplingParams(max_tokens=150, temperature=0.0)
        prompt = chat(engine, "hello")
        alone = engine.generate(prompt, "B", long).token_ids
        doomed = engine.submit(chat(engine, "bye"), "A", long)
        kept = engine.submit(prompt, "B", long)
        stream = iter(doomed)
        next(stream)
        doomed.cancel()
        with pytest.raises(GenerationCancelled):
            doomed.result(60)
        assert kept.result(60).token_ids == alone


class TestAdapters:
    def test_unknown_adapter_is_refused_at_submit(self, engine: GenerationEngine) -> None:
        with pytest.raises(KeyError):
            engine.submit([1, 2, 3], "nope", GREEDY)

    def test_classifier_adapter_is_refused(self, engine: GenerationEngine, tiny_lm: TinyLM) -> None:
        adapter = tiny_lm.adapters["A"]
        classifier = type(adapter)(config={**adapter.config, "labels": ["x"]}, tensors=adapter.tensors)
        with pytest.raises(AdapterError) as err:
            engine.add("C", classifier)
        assert err.value.param == "model"

    def test_removed_adapter_slot_is_reused_cleanly(self, engine: GenerationEngine, tiny_lm: TinyLM) -> None:
        engine.eos_ids = frozenset()
        prompt = chat(engine, "hello")
        base = engine.generate(prompt, None, GREEDY).token_ids
        engine.remove("A")
        engine.add("A2", tiny_lm.adapters["B"])  # takes A's slot
        assert engine.generate(prompt, None, GREEDY).token_ids == base
        assert (
            engine.generate(prompt, "A2", GREEDY).token_ids == engine.generate(prompt, "B", GREEDY).token_ids
        )
