"""A throwaway team server for tests: a PostgreSQL cluster and `mlflow server` over it, both on
free 127.0.0.1 ports, started by harness.services.server's own code (as `make server` does) and stopped by
PID. conftest.py turns it into the session fixtures `team_server` and `team_database`; any test
file uses them by naming them (the Ray and sweep tests too), so a session starts one server.

Outside pytest (a script, a benchmark):

    with throwaway_server() as started:    # harness.TeamServer
        started.url                        # http://127.0.0.1:PORT, for --tracking-uri / MLFLOW_TRACKING_URI
        started.db_uri                     # MLflow's own database (postgresql+psycopg2://...)
        new_database(started, "optuna")    # another database on the same cluster, its URI
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

from harness.core.process import free_port
from harness.services.folder import PG_BIN_GLOB, ServerFolder, TeamServer
from harness.services.postgres import create_database, postgres_bin
from harness.services import server


def missing_postgres() -> Optional[str]:
    """Why no server can start here (Debian's PostgreSQL binaries are absent), or None."""
    if postgres_bin() is None:
        return f"PostgreSQL binaries not found under {PG_BIN_GLOB} (apt-get install postgresql)"
    return None


@contextlib.contextmanager
def throwaway_server(workers: int = 2) -> Iterator[TeamServer]:
    """Start a server in a new folder under /tmp (not pytest's tmp_path: as root, PostgreSQL
    runs as `postgres`, who may not enter pytest's 0700 base folder), without fsync (a test's
    data need not survive a crash); stop both processes by PID and remove the folder on exit."""
    root = Path(tempfile.mkdtemp(prefix="harness-server-"))
    root.chmod(0o755)
    folder = ServerFolder(root)
    try:
        yield server.start(folder, port=free_port(), db_port=free_port(), workers=workers,
                           durable=False, log=lambda *_: None)
    finally:
        server.stop(folder, log=lambda *_: None)
        shutil.rmtree(root, ignore_errors=True)


def new_database(started: TeamServer, name: str) -> str:
    """The URI of database `name` on the server's cluster, created if new: a store that must not
    share MLflow's database (Optuna's RDB storage: both keep an `alembic_version` table)."""
    return create_database(started.folder, name)
