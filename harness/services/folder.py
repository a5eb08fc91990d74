"""What `harness server` keeps on disk: the folder (`--dir`, $HARNESS_SERVER_DIR, mlruns/server),
its PID files, logs and `server.json` (mode 600), and the settings' names.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from typing import Optional



DB_URI_ENV = "HARNESS_DB_URI"
SERVER_DIR_ENV = "HARNESS_SERVER_DIR"
DEFAULT_SERVER_DIR = Path("mlruns") / "server"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
DB_USER, DB_NAME = "harness", "mlflow"
DEFAULT_PORT = 5000
# For throwaway clusters (tests, benchmarks of the client side): no fsync, a crash loses the data.
THROWAWAY_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@dataclass(frozen=True)
class ServerFolder:
    """What `harness server` keeps: `--dir`, else $HARNESS_SERVER_DIR, else mlruns/server."""

    root: Path

    @classmethod
    def of(cls, explicit: Optional[str] = None) -> "ServerFolder":
        return cls(Path(explicit or os.environ.get(SERVER_DIR_ENV) or DEFAULT_SERVER_DIR).expanduser().resolve())

    # PostgreSQL: its data folder, its unix socket, its log and PID file
    pg = property(lambda self: self.root / "pg")
    socket = property(lambda self: self.root / "socket")
    postgres_log = property(lambda self: self.root / "postgres.log")
    postgres_pid = property(lambda self: self.root / "postgres.pid")
    # MLflow: the proxied artifacts, its log and PID file, basic-auth settings and users
    artifacts = property(lambda self: self.root / "artifacts")
    mlflow_log = property(lambda self: self.root / "mlflow.log")
    mlflow_pid = property(lambda self: self.root / "mlflow.pid")
    auth_ini = property(lambda self: self.root / "basic_auth.ini")
    auth_db = property(lambda self: self.root / "basic_auth.db")
    # URL, database port and generated password (mode 600)
    state = property(lambda self: self.root / "server.json")


@dataclass(frozen=True)
class TeamServer:
    """A started server: its URL, PIDs, and the database it stores runs in."""

    folder: ServerFolder
    url: str
    mlflow_pid: int
    postgres_pid: Optional[int]  # None when HARNESS_DB_URI names the database
    db_uri: str  # with its password (a server found running: without)


def log_tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def read_state(folder: ServerFolder) -> dict:
    try:
        return json.loads(folder.state.read_text())
    except (OSError, ValueError):
        return {}


def save_state(folder: ServerFolder, state: dict) -> None:
    folder.state.touch(mode=0o600)
    folder.state.write_text(json.dumps(state, indent=1))


def shown_db(db_uri: str) -> str:
    """A database URI without its password."""
    parts = urlsplit(db_uri)
    return f"{parts.scheme}://{parts.username or ''}@{parts.hostname}:{parts.port or ''}{parts.path}"
