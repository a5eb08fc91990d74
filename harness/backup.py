"""`harness server --backup / --restore / --check`: the team server's runs kept safe (README, "A team server").

    harness server --backup [DIR] [--keep N]   # a dated backup in DIR (default: <server dir>-backups), last N kept
    harness server --check DIR                 # verify one backup (manifest, checksums, readable dump)
    harness server --restore DIR [--start]     # the backup back into the server's database and artifact folder
    harness server --check                     # the live server: schema revision, run artifact folders, orphans

A backup is one folder, `<DIR>/<UTC stamp>/`, written under a temporary name (`.partial-...`) and
renamed only once whole, so a folder with a stamp for a name is always complete:

    mlflow.dump      pg_dump's custom format (Debian's client), taken in one exported snapshot
    artifacts/       every artifact folder the snapshot's runs and logged models name, copied
    basic_auth.db    the basic-auth users, when the server has them (SQLite's online backup)
    manifest.json    time, MLflow version, alembic revision, counts, a sha256 and size per file

The counts and the list of artifact folders are read inside the same snapshot pg_dump dumps, so
the backup holds exactly the runs the dump holds, while clients keep logging; artifact folders of
runs created after the snapshot began are left for the next backup (they would be orphans).

Restore verifies the whole backup first (manifest, every checksum, `pg_restore --list`), refuses
while an MLflow server runs on the folder or anyone else is connected to the database, copies the
artifacts beside the folder's, then replaces the database's `public` schema with the dump in one
transaction (`psql --single-transaction`: a failure leaves the database as it was), and only then
swaps the artifact folders (the replaced one is kept, renamed). Works the same on the folder's
own cluster and on HARNESS_DB_URI. Bad input or a refused restore: one line, exit 2, nothing
changed; a failing pg_dump / pg_restore: one line, exit 1.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import unquote, urlsplit

from harness import server
from harness.errors import InputError, RunHalted
from harness.lease import pid_alive

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
            raise InputError(f"harness server: {server.DB_URI_ENV} must be postgresql://user:password@host:port/db "
                             f"(got {server.shown_db(uri)})")
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432, unquote(parts.username or ""),
                   unquote(parts.password or ""), parts.path.strip("/"), server.shown_db(uri).replace("+psycopg2", ""))

    def env(self) -> dict:
        return {**server._pg_env(self.password), "PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user,
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

    folder: server.ServerFolder
    db: Database
    external: bool
    started_postgres: Optional[int] = None  # a PostgreSQL this command started, stopped at the end

    def close(self) -> None:
        if self.started_postgres is not None:
            server.stop_pid(self.started_postgres, "postgres", signal.SIGINT)
            self.folder.postgres_pid.unlink(missing_ok=True)
            self.started_postgres = None


@contextmanager
def target(folder: server.ServerFolder, external: Optional[str], create: bool = False,
           db_port: Optional[int] = None) -> Iterator[Target]:
    """The folder's database: HARNESS_DB_URI's, else the folder's own cluster (started for the
    command's length when it is not running; initialized only with `create`, for a restore)."""
    if external:
        found = Target(folder, Database.of_uri(external), external=True)
    else:
        if not (folder.pg / "PG_VERSION").exists() and not create:
            raise InputError(f"harness server: no server in {folder.root} (no PostgreSQL cluster in {folder.pg}, "
                             f"and {server.DB_URI_ENV} is not set); give --dir the server's folder")
        was_running = server.running_pid(folder.postgres_pid, "postgres")
        uri, pid = server.local_database(folder, db_port, None, log=lambda *_: None)
        if create:  # a restore after the database was dropped: an empty one to restore into
            server.create_database(folder, server.DB_NAME)
        found = Target(folder, Database.of_uri(uri), external=False,
                       started_postgres=None if was_running else pid)
    try:
        yield found
    finally:
        found.close()


def pg_tool(name: str) -> str:
    bin_dir = server.postgres_bin()
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


def default_backup_dir(folder: server.ServerFolder) -> Path:
    return folder.root.parent / f"{folder.root.name}-backups"


# --------------------------------------------------------------------------- backup


def backup(folder: server.ServerFolder, external: Optional[str], parent: Path, keep: int = DEFAULT_KEEP,
           log=print) -> Path:
    """One dated backup in `parent`; older ones beyond `keep` removed. Returns its folder."""
    if keep < 1:
        raise InputError(f"harness server: --keep {keep}: keep at least 1 backup")
    parent = parent.expanduser().resolve()
    if parent.exists() and not parent.is_dir():
        raise InputError(f"harness server: --backup {parent}: is a file, not a folder")
    if parent == folder.artifacts or folder.artifacts in parent.parents:
        raise InputError(f"harness server: --backup {parent}: inside the artifact folder it backs up; pick another")
    pg_dump = pg_tool("pg_dump")
    started = time.monotonic()
    with target(folder, external) as where:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_partials(parent)
        now = dt.datetime.now(dt.timezone.utc)
        temp = parent / f".partial-{now.strftime(STAMP_FORMAT)}-{os.getpid()}"
        temp.mkdir()
        try:
            manifest = _write_backup(where, pg_dump, temp, now)
            final = parent / _stamp(now, parent)
            os.rename(temp, final)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
    removed = [old for old in backups_in(parent)[:-keep]]
    for old in removed:
        shutil.rmtree(old, ignore_errors=True)
    c = manifest["counts"]
    size = sum(f["bytes"] for f in manifest["files"].values())
    log(f"backup {final}: {c['runs']} runs, {c['artifact_files']} artifact files, {size / 2**20:.1f} MiB "
        f"in {time.monotonic() - started:.1f} s (MLflow {manifest['mlflow_version']}, schema "
        f"{manifest['alembic_revision']}); {len(backups_in(parent))} kept (--keep {keep})"
        + (f", {len(removed)} older removed" if removed else ""))
    return final


def _remove_dead_partials(parent: Path) -> None:
    """Temporary folders of backups whose process is gone (killed mid-backup)."""
    for path in parent.iterdir():
        matched = PARTIAL.match(path.name)
        if matched and path.is_dir() and not pid_alive(int(matched.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def _write_backup(where: Target, pg_dump: str, temp: Path, now: dt.datetime) -> dict:
    """The dump, the artifacts and the counts, all of one snapshot: a REPEATABLE READ transaction
    exports its snapshot, pg_dump dumps that snapshot, and the counts and the artifact folders
    are read in it; then the manifest."""
    conn = where.db.connect()
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        cur = conn.cursor()
        cur.execute("SELECT pg_export_snapshot(), current_setting('server_version')")
        snapshot, pg_version = cur.fetchone()
        dumped = subprocess.run([pg_dump, "--format=custom", f"--snapshot={snapshot}", "--file", str(temp / DUMP)],
                                capture_output=True, text=True, env=where.db.env())
        if dumped.returncode != 0:
            raise ServerOperationFailed(f"harness server: pg_dump of {where.db.shown} failed, no backup written: "
                                        f"{_last_line(dumped.stderr)}")
        revision = _scalar(cur, "SELECT version_num FROM alembic_version")
        numbers = counts(cur)
        folders = artifact_folders(cur)
        conn.rollback()
    finally:
        conn.close()
    files = {DUMP: dict(zip(("sha256", "bytes"), sha256_of(temp / DUMP)))}
    (temp / ARTIFACTS).mkdir()
    for relative in sorted(folders):
        source = where.folder.artifacts / relative
        if source.is_dir():
            copy_tree(source, temp / ARTIFACTS / relative, temp, files)
    if where.folder.auth_db.is_file():
        with sqlite3.connect(where.folder.auth_db) as live, sqlite3.connect(temp / AUTH_DB) as copy:
            live.backup(copy)
        files[AUTH_DB] = dict(zip(("sha256", "bytes"), sha256_of(temp / AUTH_DB)))
    artifact_files = [f for name, f in files.items() if name.startswith(ARTIFACTS + "/")]
    manifest = {
        "format": FORMAT,
        "created": now.isoformat(timespec="seconds"),
        "mlflow_version": mlflow_version(),
        "alembic_revision": revision,
        "postgres_version": pg_version,
        "pg_dump": _last_line(subprocess.run([pg_dump, "--version"], capture_output=True, text=True).stdout),
        "database": where.db.shown,
        "source_folder": str(where.folder.root),
        "counts": {**numbers, "artifact_folders": len(folders), "artifact_files": len(artifact_files),
                   "artifact_bytes": sum(f["bytes"] for f in artifact_files)},
        "files": files,
    }
    _fsync_tree(temp)
    with open(temp / MANIFEST, "w") as out:
        json.dump(manifest, out, indent=1, sort_keys=True)
        out.flush()
        os.fsync(out.fileno())
    return manifest


# --------------------------------------------------------------------------- verify


def _one_backup(path: Path) -> Path:
    path = path.expanduser().resolve()
    if not path.exists():
        raise InputError(f"harness server: {path}: no such backup folder")
    if not path.is_dir():
        raise InputError(f"harness server: {path}: is a file, not a backup folder")
    if not (path / MANIFEST).exists():
        inside = backups_in(path)
        if inside:
            raise InputError(f"harness server: {path} holds {len(inside)} backups; name one, e.g. the newest: "
                             f"{inside[-1]}")
        raise InputError(f"harness server: {path}: no {MANIFEST}, so not a harness backup")
    return path


def problems_of(path: Path, deep: bool = True) -> tuple[list[str], Optional[dict]]:
    """What is wrong with the backup in `path` (one line each; empty when whole) and its manifest."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return [f"{path / MANIFEST}: damaged, not a whole manifest ({type(exc).__name__}: {exc})"], None
    needed = ("format", "created", "mlflow_version", "alembic_revision", "counts", "files")
    missing = [key for key in needed if key not in manifest] if isinstance(manifest, dict) else list(needed)
    if missing or not isinstance(manifest.get("files"), dict) or DUMP not in manifest["files"]:
        return [f"{path / MANIFEST}: damaged, lacks {', '.join(missing) or 'the dump entry'}"], None
    if manifest["format"] != FORMAT:
        return [f"{path / MANIFEST}: backup format {manifest['format']}, this harness reads {FORMAT}"], None
    problems = []
    listed = manifest["files"]
    for name, entry in sorted(listed.items()):
        file = path / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            problems.append(f"{path / MANIFEST}: names a file outside the backup: {name}")
        elif not file.is_file():
            problems.append(f"{file}: missing (the manifest lists it)")
        elif file.stat().st_size != entry.get("bytes"):
            problems.append(f"{file}: {file.stat().st_size:,} bytes, the manifest says {entry.get('bytes'):,} "
                            "(damaged or changed since the backup)")
        elif deep and sha256_of(file)[0] != entry.get("sha256"):
            problems.append(f"{file}: checksum differs from the manifest (damaged or changed since the backup)")
    for root, _, names in os.walk(path):
        for name in names:
            relative = (Path(root) / name).relative_to(path).as_posix()
            if relative != MANIFEST and relative not in listed:
                problems.append(f"{path / relative}: not in the manifest (added since the backup)")
    revision = manifest["alembic_revision"]
    if revision not in known_revisions():
        problems.append(f"{path}: schema revision {revision} (MLflow {manifest['mlflow_version']}) is unknown to "
                        f"this MLflow {mlflow_version()}: restore it with that MLflow or a newer one")
    if not problems and deep:
        listing = subprocess.run([pg_tool("pg_restore"), "--list", str(path / DUMP)], capture_output=True, text=True)
        if listing.returncode != 0:
            problems.append(f"{path / DUMP}: pg_restore cannot read it: {_last_line(listing.stderr)}")
    return problems, manifest


def check_backup(path: Path, log=print) -> int:
    path = _one_backup(path)
    problems, manifest = problems_of(path)
    for line in problems:
        log(line)
    if problems:
        return 2
    c = manifest["counts"]
    log(f"ok: {path} ({manifest['created']}, MLflow {manifest['mlflow_version']}, schema "
        f"{manifest['alembic_revision']}): {c['runs']} runs, {c['artifact_files']} artifact files, "
        f"{len(manifest['files'])} checksums match")
    return 0


# --------------------------------------------------------------------------- restore


def restore(folder: server.ServerFolder, external: Optional[str], path: Path, log=print,
            db_port: Optional[int] = None) -> dict:
    """Verify the backup, refuse while a server uses the target, then database and artifacts."""
    path = _one_backup(path)
    problems, manifest = problems_of(path)
    if problems:
        more = f" ({len(problems)} problems: harness server --check {path} lists them)" if len(problems) > 1 else ""
        raise InputError(f"harness server: --restore refused, {problems[0]}{more}; nothing was changed")
    running = server.running_pid(folder.mlflow_pid, "mlflow")
    if running is not None:
        raise InputError(f"harness server: --restore refused, an MLflow server is running on {folder.root} "
                         f"(pid {running}); stop it first (make server-stop); nothing was changed")
    psql, pg_restore = pg_tool("psql"), pg_tool("pg_restore")
    started = time.monotonic()
    with target(folder, external, create=True, db_port=db_port) as where:
        others = _other_sessions(where.db)
        if others:
            raise InputError(f"harness server: --restore refused, {others} other connection(s) to {where.db.shown} "
                             "(an MLflow server elsewhere?); stop them first; nothing was changed")
        folder.root.mkdir(parents=True, exist_ok=True)
        staged = folder.root / f".artifacts-restoring-{os.getpid()}"
        shutil.rmtree(staged, ignore_errors=True)
        try:
            if (path / ARTIFACTS).is_dir():
                shutil.copytree(path / ARTIFACTS, staged, symlinks=True)
            else:
                staged.mkdir()
            _restore_database(where.db, psql, pg_restore, path / DUMP)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        replaced = None
        if folder.artifacts.exists():
            replaced = folder.root / f"artifacts.replaced-{dt.datetime.now(dt.timezone.utc).strftime(STAMP_FORMAT)}"
            os.rename(folder.artifacts, replaced)
        os.rename(staged, folder.artifacts)
        if (path / AUTH_DB).is_file():
            shutil.copy2(path / AUTH_DB, folder.auth_db)
        shown = where.db.shown
    c = manifest["counts"]
    log(f"restored {path} into {shown} and {folder.artifacts}: {c['runs']} runs, {c['artifact_files']} artifact "
        f"files in {time.monotonic() - started:.1f} s"
        + (f"; the artifact folder it replaced is kept as {replaced}" if replaced else ""))
    head = expected_revision()
    if manifest["alembic_revision"] != head:
        log(f"note: the schema is at revision {manifest['alembic_revision']}, this MLflow {mlflow_version()} "
            f"expects {head}: take a backup, then `mlflow db upgrade` the database (README, A team server)")
    return manifest


def _other_sessions(db: Database) -> int:
    conn = db.connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()")
        return cur.fetchone()[0]
    finally:
        conn.close()


def _restore_database(db: Database, psql: str, pg_restore: str, dump: Path) -> None:
    """The dump's tables replace the database's `public` schema in one transaction: pg_restore
    writes SQL, psql runs it after dropping the schema, and stops (rolling back) at any error."""
    script = subprocess.Popen([pg_restore, "--no-owner", "--no-privileges", "--file", "-", str(dump)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=db.env())
    applied = subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                              "-c", "DROP SCHEMA IF EXISTS public CASCADE", "-c", "CREATE SCHEMA public",
                              "-f", "-"], stdin=script.stdout, capture_output=True, text=True, env=db.env())
    script.stdout.close()
    errors = script.stderr.read().decode(errors="replace")
    script.wait()
    if script.returncode != 0 or applied.returncode != 0:
        why = _last_line(errors) if script.returncode != 0 else _last_line(applied.stderr)
        raise ServerOperationFailed(f"harness server: restoring {dump} into {db.shown} failed, the database was "
                                    f"left as it was: {why}")


# --------------------------------------------------------------------------- live check


def has_artifacts(kind: Optional[str], status: str) -> bool:
    """Whether a run must have an artifact folder (MLflow records no such thing): the harness's
    iteration, trial and sweep runs log config.yaml / space.yaml when they open, its pass runs
    eval.json and the checkpoint when they finish. References, LR range tests and runs other
    tools logged may have none."""
    return kind in ("iteration", "trial", "sweep") or (kind == "pass" and status == "FINISHED")


def check_server(folder: server.ServerFolder, external: Optional[str], log=print) -> int:
    """One line per problem of the live server (schema revision, runs without their artifact
    folder, artifact folders no run names), or "ok"; exit 1 when there are problems."""
    with target(folder, external) as where:
        conn = where.db.connect()
        try:
            conn.set_session(readonly=True, autocommit=False)
            cur = conn.cursor()
            revision = _scalar(cur, "SELECT version_num FROM alembic_version")
            runs = _query(cur, "SELECT r.run_uuid, r.name, r.experiment_id, r.artifact_uri, r.status, t.value "
                               "FROM runs r LEFT JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'harness.kind' "
                               "WHERE r.lifecycle_stage = 'active' ORDER BY r.start_time") or []
            named = artifact_folders(cur)
            experiments = {str(e) for (e,) in _query(cur, "SELECT experiment_id FROM experiments") or []}
            conn.rollback()
        finally:
            conn.close()
    problems = []
    head = expected_revision()
    if revision != head:
        problems.append(f"schema at revision {revision}, this MLflow {mlflow_version()} expects {head}"
                        + (": take a backup, then `mlflow db upgrade`" if revision in known_revisions() else
                           ": a newer MLflow wrote it; use that MLflow (or restore a backup made before)"))
    root = folder.artifacts
    for run_id, name, experiment_id, uri, status, kind in runs:
        if uri and uri.startswith(ARTIFACT_SCHEME) and has_artifacts(kind, status):
            relative = uri[len(ARTIFACT_SCHEME):].strip("/")
            if not (root / relative).is_dir():
                problems.append(f"run {run_id} ({name}, experiment {experiment_id}): no artifact folder {root / relative}")
    if root.is_dir():
        for experiment in sorted(root.iterdir()):
            if not experiment.is_dir() or experiment.name not in experiments:
                problems.append(f"orphan artifact folder {experiment}: no experiment {experiment.name} in the database")
                continue
            for child in sorted(experiment.iterdir()):
                candidates = sorted(child.iterdir()) if child.name == "models" and child.is_dir() else [child]
                for folder_ in candidates:
                    if folder_.relative_to(root).as_posix() not in named:
                        problems.append(f"orphan artifact folder {folder_}: no run or model in the database names it")
    for line in problems:
        log(line)
    if not problems:
        expected = sum(has_artifacts(kind, status) for *_, status, kind in runs)
        log(f"ok: {len(runs)} runs, the {expected} that log artifacts each with its folder; no orphan folders; "
            f"schema {revision} "
            f"(MLflow {mlflow_version()})")
    return 1 if problems else 0


# --------------------------------------------------------------------------- command


def add_arguments(parser) -> None:
    parser.add_argument("--backup", nargs="?", const="", default=None, metavar="DIR",
                        help="a dated backup (database dump, artifacts, manifest) in DIR "
                             "(default: the server folder's name + '-backups', beside it)")
    parser.add_argument("--keep", type=int, default=DEFAULT_KEEP, metavar="N",
                        help=f"with --backup: keep the last N backups (default {DEFAULT_KEEP})")
    parser.add_argument("--restore", default=None, metavar="DIR",
                        help="restore one backup folder (refused while a server runs on the target)")
    parser.add_argument("--start", action="store_true", help="with --restore: start the server afterwards")
    parser.add_argument("--check", nargs="?", const="", default=None, metavar="DIR",
                        help="verify the backup in DIR; without DIR, check the server's database against its artifacts")


def asked(args) -> bool:
    return args.backup is not None or args.restore is not None or args.check is not None


def main(args, folder: server.ServerFolder, external: Optional[str]) -> Optional[int]:
    """--backup / --restore / --check; returns None when --restore --start should go on to start."""
    chosen = [flag for flag, value in (("--backup", args.backup), ("--restore", args.restore),
                                       ("--check", args.check), ("--stop", args.stop or None)) if value is not None]
    if len(chosen) > 1:
        raise InputError(f"harness server: {' and '.join(chosen)} cannot be combined; give one")
    if args.start and args.restore is None:
        raise InputError("harness server: --start goes with --restore (plain `harness server` starts it)")
    try:
        if args.backup is not None:
            backup(folder, external, Path(args.backup) if args.backup else default_backup_dir(folder), args.keep)
            return 0
        if args.check is not None:
            return check_backup(Path(args.check)) if args.check else check_server(folder, external)
        restore(folder, external, Path(args.restore), db_port=getattr(args, "db_port", None))
    except RuntimeError as exc:  # the folder's PostgreSQL would not start: its log's last lines, one line
        raise ServerOperationFailed(str(exc)) from None
    if args.start:
        return None
    print(f"start it: make server   (harness server{f' --dir {folder.root}' if folder.root != server.ServerFolder.of().root else ''})")
    return 0
