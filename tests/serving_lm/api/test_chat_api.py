"""``POST /v1/chat/completions`` and ``POST /v1/completions`` through the app, against a real database:
answers equal the plain transformers model with the adapter merged, shapes are OpenAI's, errors name
their field, tenants stay apart."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.serving_lm.api.conftest import BASE, LMStore, hf_greedy

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


def chat_ids(lm: LMStore, messages: list[dict[str, str]]) -> list[int]:
    tok: Any = lm.tokenizer
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tok(text, add_special_tokens=False)["input_ids"])


def expected_text(lm: LMStore, name: str | None, prompt: list[int], max_tokens: int) -> str:
    model = lm.merged[name] if name is not None else lm_base(lm)
    tok: Any = lm.tokenizer
    return str(tok.decode(hf_greedy(model, prompt, max_tokens), skip_special_tokens=True))


def lm_base(lm: LMStore) -> Any:
    from grft_core.models.registry import ModelRegistry

    return ModelRegistry(lm.store).load_causal_lm(BASE)[0]


def sse(response: Any) -> list[Any]:
    """The data of each server-sent event ([DONE] kept as a string)."""
    events = []
    for block in response.text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: ")
            data = block.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.fixture
def adapters(add, lm_store: LMStore) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {name: add(folder).id for name, folder in lm_store.adapters.items()}


class TestChatCompletions:
    def test_answer_is_the_merged_models_greedy_output(
        self, client: TestClient, auth: dict[str, str], adapters: dict[str, str], lm_store: LMStore
    ) -> None:
        body = {"model": adapters["A"], "messages": MESSAGES, "max_tokens": 12, "temperature": 0}

        r = client.post("/v1/chat/completions", json=body, headers=auth)

        assert r.status_code == 200, r.text
        doc = r.json()
        prompt = chat_ids(lm_store, MESSAGES)
        assert doc["object"] == "chat.completion"
        assert doc["id"].startswith("chatcmpl-")
        assert doc["model"] == adapters["A"]
        choice = doc["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": expected_text(lm_store, "A", prompt, 12),
                                     "refusal": None}  # fmt: skip
        assert choice["finish_reason"] == "length"
        assert doc["usage"] == {
            "prompt_tokens": len(prompt),
            "completion_tokens": 12,
            "total_tokens": len(prompt) + 12,
        }

    def test_each_model_answers_as_its_merged_model(
        self, client: TestClient, auth: dict[str, str], adapters: dict[str, str], lm_store: LMStore
    ) -> None:
        # Concurrent requests sharing decoding steps: tests/serving_lm/api/test_openai_chat.py (a real
        # server; this client shares one database session between requests).
        models = {"A": adapters["A"], "B": adapters["B"], None: BASE}
        answers = {}
        for name, model in models.items():
            body = {"model": model, "messages": MESSAGES, "max_tokens": 16, "temperature": 0}
            r = client.post("/v1/chat/completions", json=body, headers=auth)
            assert r.status_code == 200, r.text
            answers[name] = r.json()["choices"][0]["message"]["content"]

        prompt = chat_ids(lm_store, MESSAGES)
        assert answers == {name: expected_text(lm_store, name, prompt, 16) for name in models}
        assert len(set(answers.values())) == 3

    def test_stream_is_openai_chunks_ending_with_done(
        self, client: TestClient, auth: dict[str, str], adapters: dict[str, str]
    ) -> None:
        body = {"model": adapters["B"], "messages": MESSAGES, "max_tokens": 10, "temperature": 0}
        whole = client.post("/v1/chat/completions", json=body, headers=auth).json()

        r = client.post(
            "/v1/chat/completions",
            json={**body, "stream": True, "stream_options": {"include_usage": True}},
            headers=auth,
        )

        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse(r)
        assert events[-1] == "[DONE]"
        chunks, usage = events[:-2], events[-2]
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
        assert len({c["id"] for c in events[:-1]}) == 1
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert content == whole["choices"][0]["message"]["content"]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert (usage["choices"], usage["usage"]) == ([], whole["usage"])

    def test_stop_strings_cut_the_answer(
        self, client: TestClient, auth: dict[str, str], adapters: dict[str, str]
    ) -> None:
        body = {"model": adapters["A"], "messages": MESSAGES, "max_tokens": 30, "temperature": 0}
        text = client.post("/v1/chat/completions", json=body, headers=auth).json()["choices"][0]["message"][
            "content"
        ]
        stop = text[len(text) // 2 : len(text) // 2 + 2]

        for given in (stop, ["nope", stop]):
            r = client.post("/v1/chat/completions", json={**body, "stop": given}, headers=auth)
            choice = r.json()["choices"][0]
            assert (choice["message"]["content"], choice["finish_reason"]) == (
                text[: text.index(stop)],
                "stop",
            )

    def test_a_seed_reproduces_the_answer(self, client: TestClient, auth: dict[str, str]) -> None:
        body = {"model": BASE, "messages": MESSAGES, "max_tokens": 12, "temperature": 1.0, "seed": 42}
        first, again = (client.post("/v1/chat/completions", json=body, headers=auth).json() for _ in range(2))
        other = client.post("/v1/chat/completions", json={**body, "seed": 43}, headers=auth).json()
        assert first["choices"] == again["choices"]
        assert other["choices"] != first["choices"]


class TestCompletions:
    def test_prompt_continuation_and_stream(
        self, client: TestClient, auth: dict[str, str], adapters: dict[str, str], lm_store: LMStore
    ) -> None:
        body = {"model": adapters["A"], "prompt": "once upon a time", "max_tokens": 8, "temperature": 0}

        r = client.post("/v1/completions", json=body, headers=auth)
        streamed = sse(client.post("/v1/completions", json={**body, "stream": True}, headers=auth))

        assert r.status_code == 200, r.text
        doc = r.json()
        tok: Any = lm_store.tokenizer
        prompt = list(tok("once upon a time")["input_ids"])
        assert (doc["object"], doc["choices"][0]["finish_reason"]) == ("text_completion", "length")
        assert doc["choices"][0]["text"] == expected_text(lm_store, "A", prompt, 8)
        assert doc["usage"]["prompt_tokens"] == len(prompt)
        assert streamed[-1] == "[DONE]"
        assert {c["object"] for c in streamed[:-1]} == {"text_completion"}
        assert "".join(c["choices"][0]["text"] for c in streamed[:-1]) == doc["choices"][0]["text"]

    def test_default_max_tokens_is_sixteen(self, client: TestClient, auth: dict[str, str]) -> None:
        r = client.post(
            "/v1/completions", json={"model": BASE, "prompt": "hello", "temperature": 0}, headers=auth
        )
        assert r.json()["usage"]["completion_tokens"] <= 16


class TestErrors:
    @pytest.mark.parametrize(
        ("change", "param"),
        [
            ({"n": 2}, "n"),
            ({"logprobs": True}, "logprobs"),
            ({"temperature": 3}, "temperature"),
            ({"top_p": 0}, "top_p"),
            ({"max_tokens": 0}, "max_tokens"),
            ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
            ({"messages": []}, "messages"),
            ({"frequency_penalty": 1.0}, "frequency_penalty"),
        ],
    )
    def test_bad_fields_are_named(
        self, client: TestClient, auth: dict[str, str], change: dict[str, Any], param: str
    ) -> None:
        body = {"model": BASE, "messages": MESSAGES, **change}
        r = client.post("/v1/chat/completions", json=body, headers=auth)
        assert r.status_code in (400, 422), r.text
        assert r.json()["error"]["param"].split(".")[0] == param

    def test_n_other_than_one_is_a_400(self, client: TestClient, auth: dict[str, str]) -> None:
        r = client.post("/v1/completions", json={"model": BASE, "prompt": "hi", "n": 3}, headers=auth)
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "n"
        assert "n=1" in r.json()["error"]["message"]

    def test_a_classifier_model_is_a_400_naming_model(self, client: TestClient, auth: dict[str, str]) -> None:
        r = client.post(
            "/v1/chat/completions", json={"model": "tiny-bert", "messages": MESSAGES}, headers=auth
        )
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "model"
        assert "classifier" in r.json()["error"]["message"]

    def test_unknown_model_is_a_404(self, client: TestClient, auth: dict[str, str]) -> None:
        r = client.post("/v1/completions", json={"model": "adapter-nope", "prompt": "hi"}, headers=auth)
        assert r.status_code == 404
        assert r.json()["error"]["param"] == "model"

    def test_another_tenants_adapter_is_a_404(
        self, client: TestClient, other_auth: dict[str, str], adapters: dict[str, str]
    ) -> None:
        r = client.post(
            "/v1/chat/completions", json={"model": adapters["A"], "messages": MESSAGES}, headers=other_auth
        )
        assert r.status_code == 404

    def test_anonymous_is_a_401(self, client: TestClient) -> None:
        assert (
            client.post("/v1/chat/completions", json={"model": BASE, "messages": MESSAGES}).status_code == 401
        )

    def test_a_prompt_over_the_context_names_messages(self, client: TestClient, auth: dict[str, str]) -> None:
        long = [{"role": "user", "content": "the quick brown fox " * 200}]
        r = client.post("/v1/chat/completions", json={"model": BASE, "messages": long}, headers=auth)
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "messages"
