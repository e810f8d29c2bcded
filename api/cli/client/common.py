"""What the client commands share: the connection options, exit codes, and output (``--json`` or text).

Exit codes (also in the README):

    0  success
    1  the followed job ended failed or cancelled
    2  usage error, or a request the server refused as invalid (400, 409, 413, 422, 429)
    3  not found (404)
    4  authentication or permission error (401, 403)
    5  server or network error (5xx, connection refused, timeout)
    130 interrupted (Ctrl-C while following: the job keeps running)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from grft_client import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    Client,
    ConfigurationError,
    GrftClientError,
    NotFoundError,
    PermissionDeniedError,
)

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_AUTH, EXIT_SERVER = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (for scripts).")]


@dataclass
class Connection:
    """The group's connection options; the client is made on first use (so ``--help`` needs no server)."""

    api_url: str | None = None
    api_key: str | None = None
    profile: str | None = None
    hint: str = ""
    ctx: typer.Context | None = None

    def client(self) -> Client:
        """A client closed when the command ends."""
        try:
            client = Client(self.api_url, self.api_key, profile=self.profile)
        except ConfigurationError as exc:
            raise fail(exc.message + self.hint, EXIT_USAGE) from exc
        if self.ctx is not None:
            self.ctx.call_on_close(client.close)
        return client


def group(name: str, help_text: str, hint: str = "") -> typer.Typer:
    """A command group (``grft files`` ...) whose callback takes the connection options."""
    sub = typer.Typer(no_args_is_help=True, help=help_text)

    @sub.callback()
    def connect(
        ctx: typer.Context,
        api_url: Annotated[
            str | None, typer.Option(help="The server (default: GRFT_API_URL, then the config file).")
        ] = None,
        api_key: Annotated[
            str | None, typer.Option(help="API key (default: GRFT_API_KEY, then the config file).")
        ] = None,
        profile: Annotated[
            str | None, typer.Option(help="Config-file profile (default: GRFT_PROFILE, then 'default').")
        ] = None,
    ) -> None:
        ctx.obj = Connection(api_url, api_key, profile, hint, ctx)

    connect.__name__ = f"{name}_connect"
    return sub


def connection(ctx: typer.Context) -> Connection:
    obj = ctx.find_object(Connection)
    return obj if obj is not None else Connection()


def fail(message: str, code: int) -> typer.Exit:
    err.print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(code=code)


def exit_code(error: GrftClientError) -> int:
    """The exit code that says what went wrong (see the module docstring)."""
    if isinstance(error, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, AuthenticationError | PermissionDeniedError):
        return EXIT_AUTH
    if isinstance(error, APIStatusError):
        return EXIT_SERVER if error.status >= 500 else EXIT_USAGE
    if isinstance(error, APIConnectionError):
        return EXIT_SERVER
    return EXIT_USAGE  # ConfigurationError and the like: the user can fix the invocation


@contextlib.contextmanager
def errors(as_json: bool = False) -> Iterator[None]:
    """Turn a client error into one ``error:`` line on stderr (and ``{"error": ...}`` on stdout with
    ``--json``) and its exit code."""
    try:
        yield
    except GrftClientError as exc:
        if as_json:
            body: dict[str, Any] = {"message": exc.message, "type": type(exc).__name__}
            if isinstance(exc, APIStatusError):
                body.update(status=exc.status, code=exc.code, param=exc.param)
            print_json({"error": body})
        raise fail(str(exc), exit_code(exc)) from exc


def plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def print_json(value: Any) -> None:
    # Not rich: JSON goes out byte for byte, with no wrapping or colour.
    typer.echo(json.dumps(plain(value), indent=2))


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    grid = Table(*columns, box=None, pad_edge=False, header_style="bold")
    for row in rows:
        grid.add_row(*("-" if v is None else str(v) for v in row))
    out.print(grid)


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        out.print(f"{key.ljust(width)}  {'-' if value is None else value}", markup=False, highlight=False)


def when(unix: int | None) -> str | None:
    if unix is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S")
