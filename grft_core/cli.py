"""The local command line: ``grft train | eval | export-peft | local models``.

The base-model registry of this machine is ``grft local models list|add``: ``grft models`` is the
remote service's catalogue once the service's client commands are registered (``api.cli``), which
keeps ``grft models add`` working as a deprecated spelling of ``grft local models add``.

``train`` has one option per ``GRFTConfig`` field, derived from its declaration (name, default,
description, bounds, allowed values); the config validates what is given. Errors the user can fix
(bad flags, unknown model, unreadable data) end with exit status 2 and a single ``error: ...`` line on
stderr; nothing is left half-written in ``--out``.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic.fields import FieldInfo
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from grft_core.errors import GrftError
from grft_core.method.config import GRFTConfig
from grft_core.method.options import bounds, literal_choices

# typer >= 0.20 vendors its own click; its usage errors are not the click package's classes.
UsageError: type[Exception] = typer.BadParameter.__mro__[1]
NoArgsIsHelpError: type[Exception] = getattr(
    sys.modules[UsageError.__module__], "NoArgsIsHelpError", UsageError
)

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="GRFT fine-tuning: train, evaluate, export."
)
local_app = typer.Typer(
    no_args_is_help=True, help="This machine's own state: the local model store that 'train' uses."
)
app.add_typer(local_app, name="local")
models_app = typer.Typer(no_args_is_help=True, help="The local base-model registry (GRFT_MODEL_DIR).")
local_app.add_typer(models_app, name="models")
out_console = Console()
err_console = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _fail_from(exc: GrftError) -> typer.Exit:
    """One line for a library error, prefixed by the field or file at fault unless it already names it."""
    if exc.param and exc.param not in exc.message:
        return _fail(f"{exc.param}: {exc.message}")
    return _fail(exc.message)


def _parse_k(raw: str) -> int | dict[str, int]:
    """``"4"`` → 4; ``"qkv=4,fc1=2,*=1"`` → a per-module map (names match as dotted suffixes)."""
    try:
        if "=" not in raw:
            return int(raw)
        pairs = (item.split("=", 1) for item in raw.split(",") if item.strip())
        return {name.strip(): int(value) for name, value in pairs}
    except ValueError as exc:
        raise _fail(f"--k must be an integer or a map like 'qkv=4,*=1' (got {raw!r})") from exc


class _Progress:
    """A rich bar with ETA on a terminal, one plain line per ~5% otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.progress: Progress | None = None
        self.task: Any = None
        self.last_pct = -1

    def on_selection(self, selection: Any) -> None:
        err_console.print(
            f"selection: {selection.num_selected} {selection.axis} in {len(selection.indices)} matrices"
        )

    def on_step(self, info: Any) -> None:
        if self.tty:
            if self.progress is None:
                self.progress = Progress(
                    TextColumn("[bold]train"),
                    BarColumn(),
                    TextColumn("{task.completed}/{task.total}"),
                    TextColumn("loss {task.fields[loss]:.4f}"),
                    TextColumn("{task.fields[rate]:.0f} samples/s"),
                    TimeElapsedColumn(),
                    TimeRemainingColumn(),
                    console=err_console,
                )
                self.progress.start()
                self.task = self.progress.add_task("train", total=info.total_steps, loss=info.loss, rate=0.0)
            self.progress.update(self.task, completed=info.step, loss=info.loss, rate=info.samples_per_s)
            return
        pct = int(100 * info.step / max(info.total_steps, 1))
        if pct // 5 != self.last_pct // 5 or info.step == info.total_steps:
            self.last_pct = pct
            print(
                f"step {info.step}/{info.total_steps} loss {info.loss:.4f} lr {info.lr:.2e} "
                f"{info.samples_per_s:.0f} samples/s eta {info.eta_s:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def on_progress(self, p: Any) -> None:
        """One line as the selection pass or the hyperparameter search ends (evaluations are quick)."""
        if p.phase in ("selecting", "tuning") and p.total and p.done == p.total:
            print(f"{p.phase}: {p.done}/{p.total} done", file=sys.stderr, flush=True)

    def on_autotune(self, record: Any) -> None:
        for name, value in record["chosen"].items():
            err_console.print(f"auto {name}={value:g}: {record['reasons'].get(name, '')}", markup=False)

    def on_divergence(self, d: Any) -> None:
        err_console.print(
            f"diverged at step {d.step} ({d.reason}); back to step {d.restored_step}, lr x{d.lr_scale:g}",
            markup=False,
        )

    def on_epoch(self, m: Any) -> None:
        line = (
            f"epoch {m.epoch}: train loss {m.train_loss:.4f}, val loss {m.val_loss:.4f}, "
            f"val acc {m.val_accuracy:.4f}"
        )
        if self.progress is not None:
            self.progress.console.print(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _train_run_options(
    model: Annotated[str, typer.Option(help="Registry name of the base model.")],
    data: Annotated[str, typer.Option(help="Training data URI (path, file://, https://, s3://).")],
    out: Annotated[Path, typer.Option(help="Folder to write the adapter and metrics.json into.")],
    val_data: Annotated[
        str | None, typer.Option(help="Validation data URI (default: a stratified split).")
    ] = None,
    max_items: Annotated[int | None, typer.Option(help="Read at most this many items per dataset.")] = None,
    fp16: Annotated[bool, typer.Option(help="Store the deltas in float16.")] = False,
    checkpoint_dir: Annotated[Path | None, typer.Option(help="Checkpoint here and resume from it.")] = None,
) -> None:
    """The options of ``train`` that are not hyperparameters (its signature is all that is used)."""


# Extra spellings kept for scripts written against earlier versions.
EXTRA_FLAGS = {"l2_lambda": ("--l2",)}


def _range(info: FieldInfo) -> str:
    lo_hi = bounds(info.metadata)
    return f" [{lo_hi[0]} to {lo_hi[1]}]" if lo_hi is not None else ""


def _config_option(name: str, info: FieldInfo) -> inspect.Parameter:
    """A ``train`` option for one config field: its help, default and bounds come from the declaration.

    The values are validated by ``GRFTConfig`` (named errors for bounds and choices), not by the parser.
    """
    flag = "--" + name.replace("_", "-")
    flags = (flag, *EXTRA_FLAGS.get(name, ()))
    if info.annotation is bool:
        flags = (f"{flag}/--no-{flag[2:]}",)
    help_text = (info.description or "") + _range(info)
    kind: Any
    choices = literal_choices(info.annotation)
    if name == "k":
        kind, default = str, str(info.default)  # an integer or a map 'qkv=4,*=1', parsed by _parse_k
        help_text += " Write a map as 'qkv=4,fc1=2,*=1'."
    elif name in AUTO_FLAGS:
        kind, default = str, str(info.default)  # a number, or 'auto': parsed by _parse_auto
        help_text += " Or 'auto': chosen before training (a short search for lr)."
    elif choices:
        kind, default = str, info.default
        help_text += " One of: " + ", ".join(str(c) for c in choices) + "."
    else:
        kind, default = info.annotation, info.default
    annotation = Annotated[kind, typer.Option(*flags, help=help_text)]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _config_fields() -> dict[str, FieldInfo]:
    fields = GRFTConfig.model_fields
    # ``auto`` is spelt as the value of the flags it concerns (``--lr auto``), not as a flag of its own.
    return {"method": fields["method"], **{n: f for n, f in fields.items() if n not in ("method", "auto")}}


# Flags that take 'auto' besides a number, and how their numbers are read.
AUTO_FLAGS: dict[str, type[int] | type[float]] = {"lr": float, "epochs": int, "batch_size": int}


def _parse_auto(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """``--lr auto`` → ``auto: ["lr"]``; ``--lr 3e-3`` → ``lr: 0.003`` (the config checks the bounds)."""
    values, auto = dict(hyperparameters), []
    for name, kind in AUTO_FLAGS.items():
        raw = values.get(name)
        if raw is None or not isinstance(raw, str):
            continue
        if raw.strip().lower() == "auto":
            auto.append(name)
            del values[name]
            continue
        try:
            values[name] = kind(raw)
        except ValueError as exc:
            flag = "--" + name.replace("_", "-")
            raise _fail(f"{flag} must be a number or 'auto' (got {raw!r})") from exc
    return {**values, "auto": auto} if auto else values


def train(
    *,
    model: str,
    data: str,
    out: Path,
    val_data: str | None = None,
    max_items: int | None = None,
    fp16: bool = False,
    checkpoint_dir: Path | None = None,
    **hyperparameters: Any,
) -> None:
    """Fine-tune MODEL on DATA and write the adapter into OUT."""
    from grft_core.pipeline import train_to_folder

    if out.exists() and any(out.iterdir()) and not (out / "adapter_config.json").exists():
        raise _fail(f"--out {out} exists and is not an adapter folder; refusing to overwrite it")
    progress = _Progress()
    try:
        # GRFTConfig checks every value against its declaration: bounds, types and allowed choices.
        values = _parse_auto({**hyperparameters, "k": _parse_k(hyperparameters["k"])})
        config = GRFTConfig.from_dict(values)
        metrics = train_to_folder(
            model,
            data,
            out,
            config,
            val_uri=val_data,
            callbacks=[progress],
            checkpoint_dir=checkpoint_dir,
            fp16=fp16,
            max_items=max_items,
        )
    except GrftError as exc:
        progress.close()
        raise _fail_from(exc) from exc
    progress.close()
    out_console.print(
        f"val accuracy {metrics['initial_val_accuracy']:.4f} -> {metrics['best_val_accuracy']:.4f} "
        f"(best epoch {metrics['best_epoch']}); trainable {metrics['trainable_params']:,} "
        f"({100 * metrics['trainable_share']:.3f}%); adapter {metrics['adapter_bytes']:,} bytes; "
        f"{metrics['wall_time_s']:.1f}s; wrote {out}"
    )


# Typer reads a command's options from its signature: the run options, then one per config field.
_SIGNATURE = inspect.signature(_train_run_options, eval_str=True).replace(return_annotation=None)
train.__signature__ = _SIGNATURE.replace(  # type: ignore[attr-defined]
    parameters=[
        *_SIGNATURE.parameters.values(),
        *(_config_option(name, info) for name, info in _config_fields().items()),
    ]
)
train.__annotations__ = {p.name: p.annotation for p in train.__signature__.parameters.values()}  # type: ignore[attr-defined]
app.command()(train)


@app.command("eval")
def eval_cmd(
    adapter: Annotated[Path, typer.Option(help="Adapter folder.")],
    data: Annotated[str, typer.Option(help="Labelled data URI.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    max_items: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Accuracy and loss of base model + ADAPTER on DATA."""
    from grft_core.pipeline import evaluate_adapter

    try:
        result = evaluate_adapter(adapter, data, max_items=max_items)
    except GrftError as exc:
        raise _fail_from(exc) from exc
    if as_json:
        print(json.dumps(result))
    else:
        out_console.print(
            f"accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  ({result['items']} items)"
        )


@app.command("export-peft")
def export_peft_cmd(
    adapter: Annotated[Path, typer.Option(help="GRFT adapter folder.")],
    out: Annotated[Path, typer.Option(help="Folder for the PEFT LoRA adapter.")],
) -> None:
    """Export a GRFT adapter as an exact PEFT LoRA adapter."""
    from grft_core.pipeline import export_peft

    try:
        export_peft(adapter, out)
    except GrftError as exc:
        raise _fail_from(exc) from exc
    out_console.print(f"wrote PEFT LoRA adapter to {out}")


@models_app.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the registered base models."""
    from grft_core.models.registry import ModelRegistry

    specs = ModelRegistry().list()
    if as_json:
        print(json.dumps([s.to_dict() for s in specs], indent=2))
        return
    table = Table("name", "kind", "family", "modality", "params", "fingerprint")
    for s in specs:
        # A built-in causal LM not converted yet has no fingerprint or count until its first use.
        params = f"{s.num_params:,}" if s.fingerprint else "(on first use)"
        table.add_row(s.name, s.kind, s.family, s.modality, params, s.fingerprint[:19])
    out_console.print(table)


@models_app.command("add")
def models_add(
    name: Annotated[str, typer.Argument(help="Name to register.")],
    path: Annotated[
        Path | None,
        typer.Argument(help="A causal language model: a .gguf file or a Hugging Face folder."),
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="Backbone weights (.safetensors).")] = None,
    timm: Annotated[str | None, typer.Option("--timm", help="timm architecture name.")] = None,
    transformers: Annotated[
        Path | None, typer.Option("--transformers", help="transformers model folder.")
    ] = None,
) -> None:
    """Register a causal LM (PATH), a timm architecture or a transformers folder with safetensors weights."""
    from grft_core.models.registry import ModelRegistry

    if path is not None:
        if timm is not None or transformers is not None or weights is not None:
            raise _fail("give a causal LM PATH alone, or one of --timm ARCH / --transformers PATH")
        try:
            spec = ModelRegistry().add_causal_lm(name, path)
        except GrftError as exc:
            raise _fail_from(exc) from exc
        out_console.print(
            f"registered {spec.name} (causal_lm, {spec.arch}, {spec.num_params:,} parameters, "
            f"{spec.fingerprint[:19]})"
        )
        return
    if (timm is None) == (transformers is None):
        raise _fail("give a causal LM PATH, or exactly one of --timm ARCH or --transformers PATH")
    if weights is not None and weights.suffix != ".safetensors":
        raise _fail(f"--weights must be a .safetensors file (got {weights.name})")
    try:
        registry = ModelRegistry()
        if timm is not None:
            if weights is None:
                raise _fail("--timm needs --weights FILE.safetensors")
            spec = registry.add_timm(name, timm, weights)
        else:
            assert transformers is not None
            spec = registry.add_transformers(name, transformers, weights)
    except GrftError as exc:
        raise _fail_from(exc) from exc
    out_console.print(
        f"registered {spec.name} ({spec.family}, {spec.num_params:,} parameters, {spec.fingerprint[:19]})"
    )


def main(argv: list[str] | None = None) -> None:
    """Console entry point: usage errors become one ``error:`` line and exit status 2."""
    try:
        status = app(args=argv, prog_name="grft", standalone_mode=False)
        # Without standalone mode the parser returns typer.Exit's code instead of exiting with it.
        if isinstance(status, int) and status:
            sys.exit(status)
    except NoArgsIsHelpError:
        sys.exit(0)
    except UsageError as exc:
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "grft"
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err_console.print(
            f"error: {message} (see '{command} --help')", markup=False, highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)


if __name__ == "__main__":
    main()
