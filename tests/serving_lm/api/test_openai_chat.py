"""The official ``openai`` client's ``chat.completions.create`` and ``completions.create``, unchanged,
against a real server: streamed and not, two adapters and the base in one decoding batch.

The server runs with uvicorn in a thread against the session's test database (requests commit for
real, so the module deletes its tenant, and with it its adapters, at the end).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import uvicorn
from fastapi import FastAPI
from openai import OpenAI
from sqlalchemy import delete

from api.main import create_app
from domain.auth.keys import create_key
from domain.auth.models import Tenant
from domain.auth.repository import tenant_by_name
from domain.db import session_scope
from domain.settings import Settings
from tests.api.fixtures import store_adapter
from tests.serving_lm.api.conftest import BASE, REDIS_URL, LMStore, hf_greedy

MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]


@dataclass
class Live:
    client: OpenAI
    app: FastAPI
    adapters: dict[str, str]


@pytest.fixture(scope="module")
def live(database_url: str, lm_store: LMStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("openai-chat")
    settings = Settings(
        env="test",
        secret_key="test-secret",
        home=root / "home",
        database_url=database_url,
        broker_url=REDIS_URL,
        artifact_url=(root / "artifacts").as_uri(),
        model_dir=lm_store.store,
    )
    tenant_name = f"openai-chat-{uuid.uuid4().hex[:8]}"
    with session_scope(database_url) as session:
        key = create_key(session, tenant_name)
    with session_scope(database_url) as session:
        tenant = tenant_by_name(session, tenant_name)
        assert tenant is not None
        tenant_id = tenant.id
        adapters = {
            name: store_adapter(session, settings, Path(folder), tenant=tenant_name).id
            for name, folder in lm_store.adapters.items()
        }

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=60)
    try:
        yield Live(client, app, adapters)
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        with session_scope(database_url) as session:
            session.execute(delete(Tenant).where(Tenant.id == tenant_id))


def expected(lm: LMStore, name: str | None, max_tokens: int) -> str:
    tok: Any = lm.tokenizer
    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    prompt = list(tok(text, add_special_tokens=False)["input_ids"])
    if name is None:
        from grft_core.models.registry import ModelRegistry

        model = ModelRegistry(lm.store).load_causal_lm(BASE)[0]
    else:
        model = lm.merged[name]
    return str(tok.decode(hf_greedy(model, prompt, max_tokens), skip_special_tokens=True))


class TestChat:
    def test_create_returns_the_merged_models_answer(self, live: Live, lm_store: LMStore) -> None:
        reply = live.client.chat.completions.create(
            model=live.adapters["A"], messages=MESSAGES, max_tokens=12, temperature=0
        )

        assert reply.object == "chat.completion"
        assert reply.model == live.adapters["A"]
        assert reply.choices[0].message.role == "assistant"
        assert reply.choices[0].message.content == expected(lm_store, "A", 12)
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage is not None
        assert reply.usage.completion_tokens == 12
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12

    def test_stream_gives_the_same_text(self, live: Live) -> None:
        kwargs: dict[str, Any] = {"model": live.adapters["B"], "messages": MESSAGES, "temperature": 0}
        kwargs["max_completion_tokens"] = 10
        whole = live.client.chat.completions.create(**kwargs)

        chunks = list(
            live.client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
        )

        assert {c.object for c in chunks} == {"chat.completion.chunk"}
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert chunks[-1].usage == whole.usage

    def test_two_adapters_and_the_base_share_decoding_steps(self, live: Live, lm_store: LMStore) -> None:
        models = {"A": live.adapters["A"], "B": live.adapters["B"], None: BASE}
        for model in models.values():  # load the base and the adapters (loading needs the engine's lock)
            live.client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=1)
        engine = live.app.state.services.inference.chat.engine(BASE)

        def ask(model: str) -> str | None:
            reply = live.client.chat.completions.create(
                model=model, messages=MESSAGES, max_tokens=30, temperature=0
            )
            return reply.choices[0].message.content

        with ThreadPoolExecutor(3) as pool:
            with engine.lock:  # the engine waits between steps until all three have arrived
                steps = engine.steps
                futures = {name: pool.submit(ask, model) for name, model in models.items()}
                deadline = time.monotonic() + 30
                while engine.waiting < 3 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert engine.waiting == 3
            answers = {name: f.result() for name, f in futures.items()}

        assert answers == {name: expected(lm_store, name, 30) for name in models}
        assert engine.steps - steps == 29  # one batch: the first token comes from each prefill

    def test_errors_reach_the_client_with_their_param(self, live: Live) -> None:
        with pytest.raises(openai.BadRequestError) as n:
            live.client.chat.completions.create(model=BASE, messages=MESSAGES, n=2)
        with pytest.raises(openai.NotFoundError) as missing:
            live.client.chat.completions.create(model="no-such-model", messages=MESSAGES)
        assert (n.value.param, missing.value.param) == ("n", "model")


class TestCompletions:
    def test_create_streamed_and_not(self, live: Live) -> None:
        whole = live.client.completions.create(
            model=live.adapters["A"], prompt="once upon", max_tokens=6, temperature=0
        )
        chunks = list(
            live.client.completions.create(
                model=live.adapters["A"], prompt="once upon", max_tokens=6, temperature=0, stream=True
            )
        )
        assert whole.object == "text_completion"
        assert whole.choices[0].finish_reason == "length"
        assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
