"""The client commands of ``grft``, over HTTP with ``grft_client``: ``files``, ``jobs``, ``adapters``,
``models`` (the server's), ``login`` and ``config``. Importing this package registers them on the
library's ``app``; exit codes are listed in ``api.cli.client.common``."""

from __future__ import annotations

from api.cli.client import login
from api.cli.client.adapters import adapters_app
from api.cli.client.common import (
    EXIT_AUTH,
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_SERVER,
    EXIT_USAGE,
    exit_code,
)
from api.cli.client.files import files_app
from api.cli.client.follow import FollowState, columns, status_line
from api.cli.client.jobs import jobs_app
from api.cli.client.models import models_app
from grft_core.cli import app

app.add_typer(files_app, name="files")
app.add_typer(jobs_app, name="jobs")
app.add_typer(adapters_app, name="adapters")
app.add_typer(models_app, name="models")

__all__ = [
    "EXIT_AUTH",
    "EXIT_INTERRUPTED",
    "EXIT_JOB_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_SERVER",
    "EXIT_USAGE",
    "FollowState",
    "columns",
    "exit_code",
    "login",
    "status_line",
]
