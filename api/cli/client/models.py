"""``grft models``: the server's base models. This machine's own model store is ``grft local models``;
``grft models add`` still works as its old spelling (hidden, with a note)."""

from __future__ import annotations

import functools
from typing import Annotated, Any

import typer

from api.cli.client.common import JsonOpt, connection, err, errors, fields, print_json, table
from api.cli.client.common import group as make_group
from grft_core.cli import models_add

models_app = make_group(
    "models",
    "Base models on the server (this machine's store: 'grft local models').",
    hint="; this machine's model store is 'grft local models list'",
)


@models_app.command("list")
def list_models(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the server's base models."""
    with errors(as_json):
        models = connection(ctx).client().models.list()
    if as_json:
        print_json(models)
        return
    table(
        ("id", "family", "modality", "params", "fingerprint"),
        [(m.id, m.family, m.modality, f"{m.num_params:,}" if m.num_params is not None else None,
          (m.fingerprint or "")[:19]) for m in models],
    )  # fmt: skip


@models_app.command("get")
def get(
    ctx: typer.Context,
    model_id: Annotated[str, typer.Argument(help="The model's id.")],
    as_json: JsonOpt = False,
) -> None:
    """Show one of the server's base models."""
    with errors(as_json):
        model = connection(ctx).client().models.get(model_id)
    if as_json:
        print_json(model)
        return
    fields([("id", model.id), ("family", model.family), ("modality", model.modality),
            ("params", f"{model.num_params:,}" if model.num_params is not None else None),
            ("fingerprint", model.fingerprint)])  # fmt: skip


@functools.wraps(models_add)
def _add_locally(*args: Any, **kwargs: Any) -> None:
    err.print("note: 'grft models add' is now 'grft local models add'", highlight=False)
    models_add(*args, **kwargs)


# Scripts written before the client commands keep working: adding a model only ever meant this machine.
models_app.command("add", hidden=True)(_add_locally)
