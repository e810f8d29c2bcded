"""What the service's commands share: the one-line ``error:`` exit."""

from __future__ import annotations

import typer

from grft_core.cli import err_console


def fail(message: str) -> typer.Exit:
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code=2)
