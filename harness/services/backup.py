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
import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Optional

from harness.core.errors import InputError
from harness.core.process import pid_alive, running_pid
from harness.services.folder import ServerFolder
from harness.services.backup_check import _one_backup, check_backup, check_server, problems_of
from harness.services.snapshot import ARTIFACTS, AUTH_DB, DEFAULT_KEEP, DUMP, Database, FORMAT, MANIFEST, PARTIAL, STAMP_FORMAT, ServerOperationFailed, Target, _fsync_tree, _last_line, _scalar, _stamp, artifact_folders, backups_in, copy_tree, counts, default_backup_dir, expected_revision, mlflow_version, pg_tool, sha256_of, target


# --------------------------------------------------------------------------- backup


def backup(folder: ServerFolder, external: Optional[str], parent: Path, keep: int = DEFAULT_KEEP,
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


# --------------------------------------------------------------------------- restore


def restore(folder: ServerFolder, external: Optional[str], path: Path, log=print,
            db_port: Optional[int] = None) -> dict:
    """Verify the backup, refuse while a server uses the target, then database and artifacts."""
    path = _one_backup(path)
    problems, manifest = problems_of(path)
    if problems:
        more = f" ({len(problems)} problems: harness server --check {path} lists them)" if len(problems) > 1 else ""
        raise InputError(f"harness server: --restore refused, {problems[0]}{more}; nothing was changed")
    running = running_pid(folder.mlflow_pid, "mlflow")
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


def main(args, folder: ServerFolder, external: Optional[str]) -> Optional[int]:
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
    print(f"start it: make server   (harness server{f' --dir {folder.root}' if folder.root != ServerFolder.of().root else ''})")
    return 0
