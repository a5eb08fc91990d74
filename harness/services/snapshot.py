"""The team server's database as a backup sees it: where it is (`Target`: the local cluster, started
for the operation if need be, or $HARNESS_DB_URI), PostgreSQL's client tools, the MLflow schema
revision, the artifact folders its runs name, its row counts; and the backup's file helpers
(copies hashed on the way, dated folder names).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import unquote, urlsplit

from harness.core.errors import InputError, RunHalted
from harness.core.process import running_pid, stop_pid
from harness.services.folder import DB_NAME, DB_URI_ENV, ServerFolder, shown_db
from harness.services.postgres import _pg_env, create_database, local_database, postgres_bin


FORMAT = 1
DUMP, MANIFEST, ARTIFACTS, AUTH_DB = "mlflow.dump", "manifest.json", "artifacts", "basic_auth.db"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
STAMPED = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
PARTIAL = re.compile(r"^\.partial-.*-(\d+)$")
DEFAULT_KEEP = 7
ARTIFACT_SCHEME = "mlflow-artifacts:/"
CHUNK = 1 << 20


class ServerOperationFailed(RunHalted):
    """pg_dump, pg_restore or a copy failed (not bad input): one line, exit 1."""


# --------------------------------------------------------------------------- the database


@dataclass(frozen=True)
class Database:
    """Where MLflow's tables are: libpq parameters (the password travels in PGPASSWORD only)."""

    host: str
    port: int
    user: str
    password: str
    name: str
    shown: str

    @classmethod
    def of_uri(cls, uri: str) -> "Database":
        parts = urlsplit(uri)
        if not parts.scheme.startswith("postgres") or not parts.path.strip("/"):
            raise InputError(f"harness server: {DB_URI_ENV} must be postgresql://user:password@host:port/db "
                             f"(got {shown_db(uri)})")
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432, unquote(parts.username or ""),
                   unquote(parts.password or ""), parts.path.strip("/"), shown_db(uri).replace("+psycopg2", ""))

    def env(self) -> dict:
        return {**_pg_env(self.password), "PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user,
                "PGDATABASE": self.name, "PGCONNECT_TIMEOUT": "10"}

    def connect(self):
        import psycopg2

        try:
            return psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                    dbname=self.name, connect_timeout=10, application_name="harness-backup")
        except psycopg2.Error as exc:
            raise ServerOperationFailed(f"harness server: cannot connect to {self.shown}: "
                                        f"{str(exc).strip().splitlines()[0]}") from None


@dataclass
class Target:
    """The server a command works on: its folder (artifacts, PID files) and its database."""

    folder: ServerFolder
    db: Database
    external: bool
    started_postgres: Optional[int] = None  # a PostgreSQL this command started, stopped at the end

    def close(self) -> None:
        if self.started_postgres is not None:
            stop_pid(self.started_postgres, "postgres", signal.SIGINT)
            self.folder.postgres_pid.unlink(missing_ok=True)
            self.started_postgres = None


@contextmanager
def target(folder: ServerFolder, external: Optional[str], create: bool = False,
           db_port: Optional[int] = None) -> Iterator[Target]:
    """The folder's database: HARNESS_DB_URI's, else the folder's own cluster (started for the
    command's length when it is not running; initialized only with `create`, for a restore)."""
    if external:
        found = Target(folder, Database.of_uri(external), external=True)
    else:
        if not (folder.pg / "PG_VERSION").exists() and not create:
            raise InputError(f"harness server: no server in {folder.root} (no PostgreSQL cluster in {folder.pg}, "
                             f"and {DB_URI_ENV} is not set); give --dir the server's folder")
        was_running = running_pid(folder.postgres_pid, "postgres")
        uri, pid = local_database(folder, db_port, None, log=lambda *_: None)
        if create:  # a restore after the database was dropped: an empty one to restore into
            create_database(folder, DB_NAME)
        found = Target(folder, Database.of_uri(uri), external=False,
                       started_postgres=None if was_running else pid)
    try:
        yield found
    finally:
        found.close()


def pg_tool(name: str) -> str:
    bin_dir = postgres_bin()
    path = bin_dir / name if bin_dir else Path(shutil.which(name) or "")
    if not bin_dir and not path.name:
        raise InputError(f"harness server: {name} not found (Debian's PostgreSQL client: apt-get install postgresql)")
    return str(path)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def expected_revision() -> str:
    """The alembic head of this MLflow's migrations (read from its files; MLflow is not imported)."""
    from alembic.script import ScriptDirectory

    spec = importlib.util.find_spec("mlflow")
    migrations = Path(spec.submodule_search_locations[0]) / "store" / "db_migrations"
    return ScriptDirectory(str(migrations)).get_current_head()


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    spec = importlib.util.find_spec("mlflow")
    migrations = Path(spec.submodule_search_locations[0]) / "store" / "db_migrations"
    return {r.revision for r in ScriptDirectory(str(migrations)).walk_revisions()}


def mlflow_version() -> str:
    return importlib.metadata.version("mlflow")


def _query(cur, sql: str) -> Optional[list]:
    """The rows of `sql`, or None when this schema lacks its table (the transaction goes on)."""
    import psycopg2

    cur.execute("SAVEPOINT harness_query")
    try:
        cur.execute(sql)
        return cur.fetchall()
    except psycopg2.Error:
        cur.execute("ROLLBACK TO SAVEPOINT harness_query")
        return None


def _scalar(cur, sql: str, default=None):
    rows = _query(cur, sql)
    return rows[0][0] if rows else default


def artifact_folders(cur) -> set[str]:
    """Artifact folders (relative to the proxied artifact root) the database's runs, logged
    models and model versions name: `mlflow-artifacts:/1/<run>/artifacts` -> `1/<run>`."""
    found = set()
    for sql in ("SELECT artifact_uri FROM runs", "SELECT artifact_location FROM logged_models",
                "SELECT storage_location FROM model_versions"):
        for (uri,) in _query(cur, sql) or []:
            if uri and uri.startswith(ARTIFACT_SCHEME):
                relative = uri[len(ARTIFACT_SCHEME):].strip("/").removesuffix("/artifacts")
                if relative and ".." not in relative.split("/"):
                    found.add(relative)
    return found


def counts(cur) -> dict:
    return {name: _scalar(cur, f"SELECT count(*) FROM {table}", 0) for name, table in
            (("experiments", "experiments"), ("runs", "runs"), ("metrics", "metrics"), ("params", "params"),
             ("registered_models", "registered_models"), ("model_versions", "model_versions"))}


# --------------------------------------------------------------------------- files


def _copy_hashed(source: Path, dest: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(source, "rb") as src, open(dest, "wb") as out:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    shutil.copystat(source, dest)
    return digest.hexdigest(), size


def sha256_of(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def copy_tree(source: Path, dest: Path, relative_to: Path, files: dict) -> None:
    """Copy `source` into `dest` (regular files and folders; links are not followed), recording
    each file's sha256 and size in `files` under its path relative to `relative_to`."""
    for root, dirs, names in os.walk(source):
        here = dest / Path(root).relative_to(source)
        here.mkdir(parents=True, exist_ok=True)
        dirs[:] = sorted(d for d in dirs if not (Path(root) / d).is_symlink())
        for name in sorted(names):
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            try:
                sha, size = _copy_hashed(path, here / name)
            except FileNotFoundError:  # removed while copying (mlflow gc): not in this backup
                continue
            files[(here / name).relative_to(relative_to).as_posix()] = {"sha256": sha, "bytes": size}


def _fsync_tree(root: Path) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            with open(Path(folder) / name, "rb") as handle:
                os.fsync(handle.fileno())


def _stamp(now: dt.datetime, parent: Path) -> str:
    base = now.strftime(STAMP_FORMAT)
    name, n = base, 1
    while (parent / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def backups_in(parent: Path) -> list[Path]:
    """The finished backups in `parent`, oldest first (stamped names sort by time)."""
    if not parent.is_dir():
        return []
    return sorted((p for p in parent.iterdir() if STAMPED.match(p.name) and (p / MANIFEST).is_file()),
                  key=lambda p: (p.name[:16], int(p.name[17:] or 1) if len(p.name) > 16 else 1))


def default_backup_dir(folder: ServerFolder) -> Path:
    return folder.root.parent / f"{folder.root.name}-backups"
