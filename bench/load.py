"""Bounded load against a locally started ``grft serve``: error rate and latency percentiles.

The script makes a throw-away ``GRFT_HOME`` (embedded mode: SQLite, filesystem broker), trains one tiny
text adapter (``tiny-bert``, seconds on a CPU), stores it for two tenants ("victim" and "aggressor") with
an API key each, starts ``grft serve`` on a free loopback port, sends a fixed number of requests from a
fixed number of client threads, stops the server and prints a JSON report. Nothing leaves 127.0.0.1 and
every phase stops by itself (a request count and a deadline).

Modes:

* ``mixed``: ``--requests`` of each kind, ``--concurrency`` clients: ``GET /v1/fine_tuning/jobs``,
  ``POST /v1/adapters/{id}/predict`` (one short text) and ``POST /v1/predictions`` (8 items).
* ``victim``: the victim tenant's one-text predicts, one at a time, first alone, then while
  ``--aggressors`` clients of the other tenant send ``--aggressor-items`` long texts
  (``--aggressor-chars`` characters each) per request on the same base model, as fast as they are
  answered. Reports the victim's p50/p99 in both phases and what happened to the aggressor (429s are its
  in-flight allowance at work, not errors of the service).

    uv run --frozen python -m bench.load --mode mixed --requests 40 --concurrency 4
    uv run --frozen python -m bench.load --mode victim --requests 30
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

HOST = "127.0.0.1"
WORDS = "goal team coach match season shares bank profit market gallery film music "
TIMEOUT_S = 120.0


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]


def summary(latencies: list[float], statuses: list[int]) -> dict[str, Any]:
    """Count, error rate (any status but 2xx) and p50/p99 in milliseconds of the answered requests."""
    errors = sum(not 200 <= s < 300 for s in statuses)
    return {
        "requests": len(statuses),
        "errors": errors,
        "error_rate": errors / len(statuses) if statuses else 0.0,
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else 0.0,
    }


# -- the server -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _train_adapter(work: Path) -> Path:
    from grft_core import GRFTConfig, ModelRegistry
    from grft_core.pipeline import train_to_folder

    words, labels = WORDS.split(), ("sport", "business", "arts")
    rows = ["text,label"] + [
        f"{' '.join(words[(i + j) % 4 + 4 * (i % 3)] for j in range(5))},{labels[i % 3]}" for i in range(30)
    ]
    (work / "train.csv").write_text("\n".join(rows) + "\n")
    config = GRFTConfig(k=1, epochs=1, selection_samples=16, batch_size=16, max_length=32)
    out = work / "adapter"
    train_to_folder(
        "tiny-bert", str(work / "train.csv"), out, config, registry=ModelRegistry(work / "models")
    )
    return out


def _store(settings: Any, folder: Path, tenant: str) -> tuple[str, str]:
    """An API key for ``tenant`` and its copy of the adapter; returns ``(key, adapter_id)``."""
    from domain.adapters.models import Adapter
    from domain.artifacts import ArtifactStore
    from domain.auth.keys import create_key
    from domain.auth.repository import tenant_by_name
    from domain.db import session_scope
    from domain.ids import new_id

    config = json.loads((folder / "adapter_config.json").read_text())
    with session_scope(settings.database_url) as session:
        key = create_key(session, tenant)
        owner = tenant_by_name(session, tenant)
        assert owner is not None
        adapter_id = new_id("adapter")
        uri = ArtifactStore(settings.artifact_url).put_folder(f"adapters/{adapter_id}", folder)
        session.add(
            Adapter(
                id=adapter_id,
                tenant_id=owner.id,
                job_id=None,
                base_model=config["base_model"],
                method=config["method"],
                uri=uri,
                bytes=sum(p.stat().st_size for p in folder.iterdir()),
                config=config,
                created_at=datetime.now(UTC),
            )
        )
    return key, adapter_id


@contextmanager
def local_server(
    work: Path, env_extra: dict[str, str] | None = None
) -> Iterator[tuple[str, dict[str, tuple[str, str]]]]:
    """``grft serve`` on a free loopback port over a fresh home; yields its URL and per-tenant
    ``(key, adapter_id)``, and stops it (and its worker) on exit."""
    from api.cli import upgrade_database
    from domain.settings import Settings

    port = _free_port()
    env = {
        **os.environ,
        "GRFT_HOME": str(work / "home"),
        "GRFT_MODEL_DIR": str(work / "models"),
        "GRFT_ENV": "dev",
        "GRFT_HOST": HOST,
        "GRFT_PORT": str(port),
        "GRFT_TORCH_THREADS": "1",
        "GRFT_PREDICT_RATE_PER_MINUTE": "0",  # measure the serving path, not the rate limit
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **(env_extra or {}),
    }
    settings = Settings(home=work / "home", model_dir=work / "models")
    upgrade_database(settings)
    folder = _train_adapter(work)
    tenants = {name: _store(settings, folder, name) for name in ("victim", "aggressor")}
    grft = Path(sys.executable).with_name("grft")
    command = [str(grft)] if grft.exists() else [sys.executable, "-c", "from api.cli import app; app()"]
    log = (work / "server.log").open("wb")
    server = subprocess.Popen(
        [*command, "serve", "--host", HOST, "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"grft serve exited ({server.returncode}); see {work / 'server.log'}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("grft serve did not answer /healthz in time")
            time.sleep(0.2)
        yield url, tenants
    finally:
        server.terminate()  # serve stops its worker on SIGTERM
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


# -- the load ---------------------------------------------------------------------------------------


class Client:
    """One tenant's calls, each timed."""

    def __init__(self, url: str, key: str, adapter_id: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT_S)
        self.adapter_id = adapter_id

    def timed(self, call: Callable[[], httpx.Response]) -> tuple[float, int]:
        started = time.perf_counter()
        try:
            status = call().status_code
        except httpx.HTTPError:
            status = 599  # no answer
        return time.perf_counter() - started, status

    def jobs(self) -> tuple[float, int]:
        return self.timed(lambda: self.http.get("/v1/fine_tuning/jobs"))

    def predict(self, texts: list[str]) -> tuple[float, int]:
        body = {"inputs": [{"text": t} for t in texts]}
        return self.timed(lambda: self.http.post(f"/v1/adapters/{self.adapter_id}/predict", json=body))

    def predictions(self, texts: list[str]) -> tuple[float, int]:
        body = {"items": [{"adapter": self.adapter_id, "input": {"text": t}} for t in texts]}
        return self.timed(lambda: self.http.post("/v1/predictions", json=body))

    def close(self) -> None:
        self.http.close()


def run_calls(call: Callable[[int], tuple[float, int]], count: int, concurrency: int) -> dict[str, Any]:
    """``count`` calls from ``concurrency`` threads; their summary."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(call, range(count)))
    latencies = [t for t, s in results if s != 599]
    return summary(latencies, [s for _, s in results])


def short_text(i: int) -> str:
    words = WORDS.split()
    return " ".join(words[(i + j) % len(words)] for j in range(6))


def mixed(url: str, tenants: dict[str, tuple[str, str]], requests: int, concurrency: int) -> dict[str, Any]:
    client = Client(url, *tenants["victim"])
    try:
        client.predict([short_text(0)])  # loads the base model and the adapter
        return {
            "get_jobs": run_calls(lambda i: client.jobs(), requests, concurrency),
            "predict": run_calls(lambda i: client.predict([short_text(i)]), requests, concurrency),
            "predictions_x8": run_calls(
                lambda i: client.predictions([short_text(i + j) for j in range(8)]), requests, concurrency
            ),
        }
    finally:
        client.close()


def victim(
    url: str,
    tenants: dict[str, tuple[str, str]],
    requests: int,
    aggressors: int,
    items: int,
    chars: int,
    deadline_s: float,
) -> dict[str, Any]:
    victim_client = Client(url, *tenants["victim"])
    aggressor_client = Client(url, *tenants["aggressor"])
    long_text = (WORDS * (chars // len(WORDS) + 1))[:chars]
    try:
        victim_client.predict([short_text(0)])
        aggressor_client.predict([short_text(0)])
        alone = run_calls(lambda i: victim_client.predict([short_text(i)]), requests, 1)
        stop = threading.Event()
        hits: list[tuple[float, int]] = []

        def aggress() -> None:
            while not stop.is_set():
                hits.append(aggressor_client.predict([long_text] * items))

        threads = [threading.Thread(target=aggress, daemon=True) for _ in range(aggressors)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # the aggressors' first requests are queued
        end = time.monotonic() + deadline_s
        results = []
        for i in range(requests):
            if time.monotonic() > end:
                break
            results.append(victim_client.predict([short_text(i)]))
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT_S)
        loaded = summary([t for t, s in results if s != 599], [s for _, s in results])
        aggressor = summary([t for t, s in hits if s != 599], [s for _, s in hits])
        return {
            "victim_alone": alone,
            "victim_with_aggressor": loaded,
            "aggressor": aggressor,
            "aggressor_request": {"clients": aggressors, "items": items, "chars_per_item": chars},
        }
    finally:
        victim_client.close()
        aggressor_client.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("mixed", "victim"), default="mixed")
    parser.add_argument("--requests", type=int, default=40, help="requests per kind (victim: per phase)")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads (mixed mode)")
    parser.add_argument("--aggressors", type=int, default=3, help="aggressor client threads (victim mode)")
    parser.add_argument("--aggressor-items", type=int, default=16)
    parser.add_argument("--aggressor-chars", type=int, default=60_000)
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds the loaded phase may take")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 10_000 or not 1 <= args.concurrency <= 64 or not 0 <= args.aggressors <= 16:
        parser.error("--requests 1-10000, --concurrency 1-64, --aggressors 0-16")
    env_extra = dict(item.split("=", 1) for item in args.env)
    with (
        tempfile.TemporaryDirectory(prefix="grft-load-") as tmp,
        local_server(Path(tmp), env_extra) as (
            url,
            tenants,
        ),
    ):
        started = time.perf_counter()
        if args.mode == "mixed":
            report = mixed(url, tenants, args.requests, args.concurrency)
        else:
            report = victim(
                url,
                tenants,
                args.requests,
                args.aggressors,
                args.aggressor_items,
                args.aggressor_chars,
                args.deadline,
            )
    report = {"mode": args.mode, "seconds": round(time.perf_counter() - started, 1), **report}
    text = json.dumps(report, indent=2)
    print(text)  # noqa: T201
    if args.json:
        args.json.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
