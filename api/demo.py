"""``make demo``: the main job through the service, as a client would run it.

Starts ``grft serve`` in its embedded default (SQLite, local artifacts, a broker-less worker) under
``demo-out/``, then over HTTP with the SDK (``grft_client``), as a remote user would: uploads
scikit-learn's digits as a zip, creates a GRFT job on the packaged ImageNet MobileNetV2, follows its
progress, prints the validation accuracy before and after, the trainable share and the adapter's size
next to the base model's, downloads the adapter, calls predict, and stops the server.
"""

from __future__ import annotations

import io
import sys
import tarfile
import time
import zipfile
from pathlib import Path

from api.demo_server import embedded_server
from grft_client import TERMINAL_STATUSES, Client, GrftClientError
from grft_core.data import digits_image_folder


def run(out_dir: Path) -> None:
    """Run the demo with all state under ``out_dir``."""
    started = time.perf_counter()
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with embedded_server(out_dir) as url:
        # --no-auth on loopback: no key (an explicit "" keeps GRFT_API_KEY and the config file out of it).
        with Client(url, api_key="", timeout=120) as client:
            print(f"1. grft serve (embedded: SQLite, local artifacts, broker-less worker) at {url}")
            try:
                _demo(client, out_dir)
            except GrftClientError as exc:
                raise SystemExit(f"the service answered: {exc}") from exc
    print(f"done in {time.perf_counter() - started:.0f}s; server stopped; files in {out_dir}/")


def _demo(client: Client, out_dir: Path) -> None:
    folder = digits_image_folder(out_dir / "data", size=32)
    archive = out_dir / "digits.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*.png")):
            zf.write(path, path.relative_to(folder).as_posix())
    uploaded = client.files.upload(archive)
    print(f"2. uploaded {uploaded.filename} ({uploaded.bytes:,} bytes) as {uploaded.id}")
    hyperparameters = {
        "k": 4, "l2_lambda": 1e-4, "n_epochs": 3, "batch_size": 32, "learning_rate": 3e-3,
        "image_size": 32, "selection_samples": 256,
    }  # fmt: skip
    job = client.jobs.create(
        "mobilenetv2_100",
        uploaded.id,
        method="grft",
        hyperparameters=hyperparameters,
        seed=0,
        idempotency_key="demo-digits",
    )
    print(f"3. created {job.id} (GRFT, k=4 rows per matrix, lambda=1e-4) on mobilenetv2_100")
    last = ""
    while job.status not in TERMINAL_STATUSES:
        time.sleep(1.0)
        job = client.jobs.get(job.id)
        p = job.progress
        line = f"   {job.status}: step {p.steps_completed}/{p.total_steps or '?'}"
        if p.seconds_remaining is not None:
            line += f", about {p.seconds_remaining:.0f}s left"
        if line != last:
            print(line, flush=True)
            last = line
    if job.status != "succeeded" or job.adapter_id is None:
        error = job.error.model_dump() if job.error is not None else None
        raise SystemExit(f"job ended {job.status}: {error}")
    adapter = client.adapters.get(job.adapter_id)
    metrics = adapter.metrics
    models = {m.id: m for m in client.models.list()}
    base_bytes = (models["mobilenetv2_100"].num_params or 0) * 4
    print(
        f"4. validation accuracy {metrics['initial_val_accuracy']:.3f} (new head) -> "
        f"{metrics['best_val_accuracy']:.3f} (after GRFT)\n"
        f"   trainable {adapter.trainable_params or 0:,} parameters "
        f"({100 * metrics['trainable_share']:.2f}% of the model)\n"
        f"   adapter {adapter.bytes:,} bytes vs base model ~{base_bytes:,} bytes of fp32 weights"
    )
    buffer = io.BytesIO()
    client.adapters.download(adapter.id, buffer)
    tar_bytes = buffer.getvalue()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())
        tar.extractall(out_dir / "adapter", filter="data")
    print(f"5. downloaded the adapter ({len(tar_bytes):,} bytes tar): {', '.join(names)}")
    samples = [sorted((folder / str(d)).glob("*.png"))[0] for d in (0, 3, 7)]
    answers = client.adapters.predict(adapter.id, images=samples)
    guesses = ", ".join(
        f"{p.parent.name}->{d.label} ({d.score:.2f})" for p, d in zip(samples, answers, strict=True)
    )
    print(f"6. predict (true->predicted): {guesses}")


if __name__ == "__main__":
    run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("demo-out"))
