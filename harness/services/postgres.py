"""The team server's PostgreSQL: Debian's binaries, a cluster initialised once in the folder and
started on 127.0.0.1 (its unix socket inside the folder), as the `postgres` user when run as root.
"""

from __future__ import annotations

import os
import pwd
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

from harness.core.errors import InputError
from harness.core.process import (STARTUP_SECONDS, free_port, port_free, running_pid, stop_pid)
from harness.services.folder import DB_NAME, DB_URI_ENV, DB_USER, PG_BIN_GLOB, ServerFolder, save_state, read_state, log_tail


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin() -> Optional[Path]:
    """The newest Debian PostgreSQL bin folder (/usr/lib/postgresql/<version>/bin), or None."""
    found = [p for p in Path("/").glob(PG_BIN_GLOB.lstrip("/")) if (p / "initdb").exists() and (p / "postgres").exists()]
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, default=None)


def service_user() -> Optional[pwd.struct_passwd]:
    """Whom PostgreSQL runs as: this user, or, for root (whom it refuses), `postgres`, else `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise InputError("harness server: running as root, and neither a `postgres` nor a `nobody` user exists "
                     "for PostgreSQL to run as")


def _as_user(user: Optional[pwd.struct_passwd]) -> dict:
    """Popen arguments that run a command as `user` (only its own group)."""
    return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _unreachable_ancestor(path: Path, user: pwd.struct_passwd) -> Optional[Path]:
    """The first folder above `path` that `user` may not enter, or None."""
    for folder in (*reversed(path.parents), path):
        st = folder.stat()
        if st.st_mode & 0o001 or (st.st_uid == user.pw_uid and st.st_mode & 0o100) or (
                st.st_gid == user.pw_gid and st.st_mode & 0o010):
            continue
        return folder
    return None


def init_cluster(folder: ServerFolder, bin_dir: Path, user, log=print) -> dict:
    """`initdb` a new cluster in <folder>/pg owned by `user`, with a generated password for the
    `harness` role (scram-sha-256 over TCP and the socket alike). Returns the saved state."""
    if user is not None:
        blocked = _unreachable_ancestor(folder.root, user)
        if blocked is not None:
            raise InputError(f"harness server: PostgreSQL refuses to run as root, so it runs as '{user.pw_name}', "
                             f"who cannot enter {blocked}; give --dir a folder it can reach (e.g. /var/tmp/harness-server)")
    password = secrets.token_urlsafe(24)
    pwfile = folder.root / ".initdb-password"
    pwfile.touch(mode=0o600)
    pwfile.write_text(password + "\n")
    for path in (folder.pg, folder.socket):
        path.mkdir(mode=0o700, exist_ok=True)
    for path in (pwfile, folder.pg, folder.socket):
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)
    try:
        with open(folder.postgres_log, "ab") as out:
            done = subprocess.run([str(bin_dir / "initdb"), "-D", str(folder.pg), "-U", DB_USER, "--pwfile", str(pwfile),
                                   "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-locale"],
                                  stdout=out, stderr=subprocess.STDOUT, cwd=folder.root, env=_pg_env(), **_as_user(user))
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"harness server: initdb failed: {log_tail(folder.postgres_log)}")
    log(f"PostgreSQL cluster initialized in {folder.pg} (runs as {user.pw_name if user else 'this user'})")
    state = {"db_port": None, "db_password": password, "database_created": False}
    save_state(folder, state)
    return state


def _pg_env(password: Optional[str] = None) -> dict:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    if password:
        env["PGPASSWORD"] = password
    return env


def start_postgres(folder: ServerFolder, bin_dir: Path, user, port: int, settings: Optional[dict] = None,
                   log=print) -> int:
    """`postgres` on 127.0.0.1:`port` (socket in <folder>/socket), detached; its PID file
    written once it accepts connections. Returns the PID."""
    extra = [arg for key, value in (settings or {}).items() for arg in ("-c", f"{key}={value}")]
    with open(folder.postgres_log, "ab") as out:
        process = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(folder.pg), "-k", str(folder.socket), "-h", "127.0.0.1",
             "-p", str(port), *extra],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=folder.root, env=_pg_env(),
            start_new_session=True, **_as_user(user))
    folder.postgres_pid.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            folder.postgres_pid.unlink(missing_ok=True)
            raise RuntimeError(f"harness server: PostgreSQL did not start: {log_tail(folder.postgres_log)}")
        ready = subprocess.run([str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)], env=_pg_env())
        if ready.returncode == 0:
            log(f"PostgreSQL on 127.0.0.1:{port} (pid {process.pid}, log {folder.postgres_log})")
            return process.pid
        time.sleep(0.2)
    stop_pid(process.pid, "postgres", signal.SIGINT)
    raise RuntimeError(f"harness server: PostgreSQL did not accept connections in {STARTUP_SECONDS:.0f} s")


def local_database(folder: ServerFolder, db_port: Optional[int], settings: Optional[dict], log=print) -> tuple[str, int]:
    """(database URI, postgres PID) of the folder's cluster: initialized on first use, started
    unless running, its `mlflow` database created once."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise InputError(f"harness server: no PostgreSQL found under {PG_BIN_GLOB}: install Debian's `postgresql` "
                         f"(apt-get install postgresql), or set {DB_URI_ENV} to an existing database")
    user = service_user()
    folder.root.mkdir(parents=True, exist_ok=True)
    state = read_state(folder) if (folder.pg / "PG_VERSION").exists() else init_cluster(folder, bin_dir, user, log)
    port = db_port or state.get("db_port") or free_port()
    pid = running_pid(folder.postgres_pid, "postgres")
    if pid is None:
        if not port_free("127.0.0.1", port):
            raise InputError(f"harness server: 127.0.0.1:{port} (PostgreSQL's port) is in use; give --db-port another")
        pid = start_postgres(folder, bin_dir, user, port, settings, log)
    else:
        port = state.get("db_port") or port
    save_state(folder, {**state, "db_port": port})
    if not state.get("database_created"):
        create_database(folder, DB_NAME)
    save_state(folder, {**read_state(folder), "database_created": True})
    return f"postgresql+psycopg2://{DB_USER}:{state['db_password']}@127.0.0.1:{port}/{DB_NAME}", pid


def create_database(folder: ServerFolder, name: str) -> str:
    """Another database on the folder's running cluster (kept if it exists), e.g. an Optuna
    study store beside MLflow's: both keep their schema version in `alembic_version`, so they
    cannot share one. Returns its URI (psycopg2, with the password)."""
    state = read_state(folder)
    made = subprocess.run([str(postgres_bin() / "createdb"), "-h", "127.0.0.1", "-p", str(state["db_port"]),
                           "-U", DB_USER, name], capture_output=True, text=True, env=_pg_env(state["db_password"]))
    if made.returncode != 0 and "already exists" not in made.stderr:
        raise RuntimeError(f"harness server: createdb {name} failed: {made.stderr.strip()}")
    return f"postgresql+psycopg2://{DB_USER}:{state['db_password']}@127.0.0.1:{state['db_port']}/{name}"


def with_driver(db_uri: str) -> str:
    """`postgresql://` pinned to psycopg2 (SQLAlchemy 2.1's default driver for it is psycopg 3,
    which the harness does not install)."""
    scheme, sep, rest = db_uri.partition("://")
    return f"postgresql+psycopg2://{rest}" if sep and scheme in ("postgres", "postgresql") else db_uri
