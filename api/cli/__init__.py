"""The ``grft`` command: the library's commands plus the service's ``serve``, ``worker``, ``db``, ``keys``.

``grft serve`` with no configuration is the embedded mode: SQLite and artifacts under ``GRFT_HOME``,
and a worker subprocess fed through the filesystem broker. The worker is started by module name
(``celery -A worker.celery_app``): the API never imports the worker.

Importing this package registers the service's commands on the library's ``app``: ``serve`` and
``worker`` (``api.cli.serve``), ``db`` (``api.cli.db``), ``keys`` (``api.cli.keys``), and the client
commands of a remote server, ``files``, ``jobs``, ``adapters``, ``models``, ``login``, ``config``
(``api.cli.client``, over ``grft_client``).
"""

from __future__ import annotations

from api.cli import client as _client_commands  # noqa: F401  (registers files, jobs, adapters, models, login)
from api.cli.db import MIGRATIONS, upgrade_database
from api.cli.keys import KEY_MAX_DAYS, create_api_key, keys_table, list_api_keys, revoke_api_key
from api.cli.serve import (
    PARENT_PID_ENV,
    WORKER_STOP_TIMEOUT_S,
    HomeInUse,
    WorkerSupervisor,
    is_loopback,
    lock_home,
    start_worker,
    stop_worker,
    worker_command,
    worker_env,
)
from grft_core.cli import app
from grft_core.cli import main as _core_main

__all__ = [
    "KEY_MAX_DAYS",
    "MIGRATIONS",
    "PARENT_PID_ENV",
    "WORKER_STOP_TIMEOUT_S",
    "HomeInUse",
    "WorkerSupervisor",
    "app",
    "create_api_key",
    "is_loopback",
    "keys_table",
    "list_api_keys",
    "lock_home",
    "main",
    "revoke_api_key",
    "start_worker",
    "stop_worker",
    "upgrade_database",
    "worker_command",
    "worker_env",
]


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``grft``)."""
    _core_main(argv)
