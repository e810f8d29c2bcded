"""``grft adapters``: trained adapters on the server: list, get, download, export (PEFT), predict."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from api.cli.client.common import (
    EXIT_USAGE,
    JsonOpt,
    connection,
    errors,
    fail,
    fields,
    out,
    print_json,
    table,
    when,
)
from api.cli.client.common import group as make_group
from grft_client import Adapter, Client

adapters_app = make_group("adapters", "Adapters on the server: list, get, download, export, predict.")

AdapterId = Annotated[str, typer.Argument(help="The adapter's id (adapter-...).")]
Output = Annotated[Path | None, typer.Option("-o", "--output", help="The tar to write.")]
Extract = Annotated[
    Path | None, typer.Option("--extract", help="Unpack into this folder instead of writing a tar.")
]


def show_adapter(adapter: Adapter) -> None:
    metrics = adapter.metrics
    rows = [
        ("id", adapter.id),
        ("base model", adapter.base_model),
        ("method", adapter.method),
        ("job", adapter.job_id),
        ("bytes", f"{adapter.bytes:,}"),
        (
            "trainable params",
            f"{adapter.trainable_params:,}" if adapter.trainable_params is not None else None,
        ),
        ("labels", ", ".join(adapter.labels) or None),
        ("created", when(adapter.created_at)),
    ]
    for key in ("initial_val_accuracy", "best_val_accuracy"):
        if isinstance(metrics.get(key), int | float):
            rows.append((key.replace("_", " "), f"{metrics[key]:.4f}"))
    fields(rows)


def _fetch(
    client: Client, adapter_id: str, fmt: str, output: Path | None, extract: Path | None, suffix: str
) -> tuple[Path, int]:
    if output is not None and extract is not None:
        raise fail("give --output or --extract, not both", EXIT_USAGE)
    if extract is None:
        target = output or Path(f"{adapter_id}{suffix}.tar")
        return target, client.adapters.download(adapter_id, target, format=fmt)
    with tempfile.TemporaryDirectory(prefix="grft-adapter-") as tmp:
        tar_path = Path(tmp) / "adapter.tar"
        size = client.adapters.download(adapter_id, tar_path, format=fmt)
        extract.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar_path) as tar:
            tar.extractall(extract, filter="data")  # no absolute paths, links out, or devices
    return extract, size


@adapters_app.command("list")
def list_adapters(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=100, help="At most this many (per page with --all).")] = 20,
    after: Annotated[str | None, typer.Option(help="Start after this adapter id.")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Every adapter, page by page.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List adapters, newest first."""
    with errors(as_json):
        client = connection(ctx).client()
        if all_pages:
            items, more = list(client.adapters.iter(limit=limit)), False
        else:
            page = client.adapters.list(limit=limit, after=after)
            items, more = page.data, page.has_more
    if as_json:
        print_json(items)
        return
    table(
        ("id", "base model", "method", "bytes", "job", "created"),
        [(a.id, a.base_model, a.method, f"{a.bytes:,}", a.job_id, when(a.created_at)) for a in items],
    )
    if more:
        out.print(f"(more: --after {items[-1].id}, or --all)", highlight=False)


@adapters_app.command("get")
def get(ctx: typer.Context, adapter_id: AdapterId, as_json: JsonOpt = False) -> None:
    """Show one adapter: its base model, size, labels and metrics."""
    with errors(as_json):
        adapter = connection(ctx).client().adapters.get(adapter_id)
    if as_json:
        print_json(adapter)
    else:
        show_adapter(adapter)


@adapters_app.command("download")
def download(
    ctx: typer.Context,
    adapter_id: AdapterId,
    output: Output = None,
    extract: Extract = None,
    as_json: JsonOpt = False,
) -> None:
    """Download the adapter as trained (adapter_config.json + adapter_model.safetensors), as a tar."""
    with errors(as_json):
        where, size = _fetch(connection(ctx).client(), adapter_id, "grft", output, extract, "")
    if as_json:
        print_json({"id": adapter_id, "format": "grft", "path": str(where), "bytes": size})
    else:
        out.print(f"wrote {where} ({size:,} bytes of tar)", highlight=False)


@adapters_app.command("export")
def export(
    ctx: typer.Context,
    adapter_id: AdapterId,
    output: Output = None,
    extract: Extract = None,
    as_json: JsonOpt = False,
) -> None:
    """Download the adapter's exact PEFT LoRA export (loads with peft, vLLM, LoRAX), as a tar."""
    with errors(as_json):
        where, size = _fetch(connection(ctx).client(), adapter_id, "peft_lora", output, extract, "-peft-lora")
    if as_json:
        print_json({"id": adapter_id, "format": "peft_lora", "path": str(where), "bytes": size})
    else:
        out.print(f"wrote {where} ({size:,} bytes of tar, PEFT LoRA)", highlight=False)


@adapters_app.command("predict")
def predict(
    ctx: typer.Context,
    adapter_id: AdapterId,
    image: Annotated[
        list[Path] | None,
        typer.Option("--image", exists=True, dir_okay=False, help="An image file, repeatable."),
    ] = None,
    text: Annotated[list[str] | None, typer.Option("--text", help="A text, repeatable.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Predict with the adapter: one answer per input (images first, then texts), with its top labels."""
    images, texts = image or [], text or []
    if not images and not texts:
        raise fail("give at least one --image FILE or --text TEXT", EXIT_USAGE)
    with errors(as_json):
        answers = connection(ctx).client().adapters.predict(adapter_id, images=images, texts=texts)
    if as_json:
        print_json(answers)
        return
    names = [str(p) for p in images] + texts
    table(
        ("input", "label", "score", "top"),
        [
            (name if len(name) <= 40 else name[:39] + "…", a.label, f"{a.score:.3f}",
             ", ".join(f"{t.label} {t.score:.2f}" for t in a.top_k[1:3]))
            for name, a in zip(names, answers, strict=True)
        ],
    )  # fmt: skip
