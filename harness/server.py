"""`harness server`: the team's MLflow tracking server, on PostgreSQL (README, "A team server").

    harness server                 # local PostgreSQL under mlruns/server/, MLflow on http://127.0.0.1:5000
    HARNESS_DB_URI=postgresql://user:pw@dbhost:5432/mlflow harness server   # an existing database instead
    harness server --stop          # stops what it started, by PID (make server-stop)
    harness server --host 0.0.0.0 --auth --allowed-hosts mlflow.lab:5000    # beyond this machine, see below

Two engines, configured, nothing home-made: Debian's PostgreSQL (`initdb` once, then `postgres`
listening on 127.0.0.1 only, its unix socket inside the folder) and `mlflow server` over it, with
artifacts proxied (`--serve-artifacts --artifacts-destination <folder>/artifacts`) so clients need
no storage credentials. Both run detached, so the command returns and `make run` can follow in the
same shell; each leaves a PID file in the folder and `--stop` signals exactly those PIDs, then
waits for them to end. The database password is generated once and kept in `server.json` (mode
600); it reaches MLflow through its environment, never a command line `ps` would show.

Serving beyond 127.0.0.1 needs basic auth (`--auth`: MLflow's `basic-auth` app, from the
`mlflow[auth]` extra, users in `basic_auth.db` in the folder), `--allowed-hosts` (the names
clients use: MLflow's DNS-rebinding guard) and, in the environment, MLFLOW_FLASK_SERVER_SECRET_KEY
(and MLFLOW_AUTH_ADMIN_PASSWORD the first time); without them the command refuses with one line
naming what to add. PostgreSQL refuses to run as root, so as root the cluster runs as the
`postgres` user Debian's package creates (else `nobody`). No MLflow import here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from harness.errors import InputError
from harness.lease import pid_alive
from harness.ui import port_free, url_for, wait_until_up

DB_URI_ENV = "HARNESS_DB_URI"
SERVER_DIR_ENV = "HARNESS_SERVER_DIR"
DEFAULT_SERVER_DIR = Path("mlruns") / "server"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
DB_USER, DB_NAME = "harness", "mlflow"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_PORT = 5000
STARTUP_SECONDS = 120.0
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


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _state(folder: ServerFolder) -> dict:
    try:
        return json.loads(folder.state.read_text())
    except (OSError, ValueError):
        return {}


def _save_state(folder: ServerFolder, state: dict) -> None:
    folder.state.touch(mode=0o600)
    folder.state.write_text(json.dumps(state, indent=1))


def free_port() -> int:
    """A TCP port nobody on 127.0.0.1 listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        raise RuntimeError(f"harness server: initdb failed: {_tail(folder.postgres_log)}")
    log(f"PostgreSQL cluster initialized in {folder.pg} (runs as {user.pw_name if user else 'this user'})")
    state = {"db_port": None, "db_password": password, "database_created": False}
    _save_state(folder, state)
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
            raise RuntimeError(f"harness server: PostgreSQL did not start: {_tail(folder.postgres_log)}")
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
    state = _state(folder) if (folder.pg / "PG_VERSION").exists() else init_cluster(folder, bin_dir, user, log)
    port = db_port or state.get("db_port") or free_port()
    pid = running_pid(folder.postgres_pid, "postgres")
    if pid is None:
        if not port_free("127.0.0.1", port):
            raise InputError(f"harness server: 127.0.0.1:{port} (PostgreSQL's port) is in use; give --db-port another")
        pid = start_postgres(folder, bin_dir, user, port, settings, log)
    else:
        port = state.get("db_port") or port
    _save_state(folder, {**state, "db_port": port})
    if not state.get("database_created"):
        create_database(folder, DB_NAME)
    _save_state(folder, {**_state(folder), "database_created": True})
    return f"postgresql+psycopg2://{DB_USER}:{state['db_password']}@127.0.0.1:{port}/{DB_NAME}", pid


def create_database(folder: ServerFolder, name: str) -> str:
    """Another database on the folder's running cluster (kept if it exists), e.g. an Optuna
    study store beside MLflow's: both keep their schema version in `alembic_version`, so they
    cannot share one. Returns its URI (psycopg2, with the password)."""
    state = _state(folder)
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


# --------------------------------------------------------------------------- processes


def running_pid(pid_file: Path, expected: str) -> Optional[int]:
    """The PID in `pid_file` when that process is alive and its command line names `expected`
    (a PID file left by a reboot may name someone else's process now)."""
    try:
        pid = int(pid_file.read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) and expected in command else None


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # reaps it when it is this process's child
        except ChildProcessError:
            pass
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


def stop_pid(pid: int, expected: str, first: int, group: bool = False, grace: float = 30.0) -> None:
    """Signal `pid` (its process group with `group`) with `first`, wait up to `grace` s, then SIGKILL."""
    send = os.killpg if group else os.kill
    for sig, wait in ((first, grace), (signal.SIGKILL, 10.0)):
        try:
            send(pid, sig)
        except ProcessLookupError:
            return
        if _wait_gone(pid, wait):
            return
    raise RuntimeError(f"harness server: {expected} (pid {pid}) did not stop")


def stop(folder: ServerFolder, log=print) -> list[str]:
    """Stop the MLflow server, then PostgreSQL (a fast shutdown), by the PIDs in their files;
    waits until both are gone. Returns what was stopped."""
    stopped = []
    for label, pid_file, expected, first, group in (
            ("MLflow server", folder.mlflow_pid, "mlflow", signal.SIGTERM, True),
            ("PostgreSQL", folder.postgres_pid, "postgres", signal.SIGINT, False)):
        pid = running_pid(pid_file, expected)
        if pid is not None:
            stop_pid(pid, expected, first, group=group)
            stopped.append(f"{label} (pid {pid})")
        pid_file.unlink(missing_ok=True)
    log(f"stopped {', '.join(stopped)}" if stopped else f"nothing running from {folder.root}")
    return stopped


# --------------------------------------------------------------------------- MLflow


def exposure_problems(host: str, auth: bool, allowed_hosts: Optional[str], folder: ServerFolder,
                      environ=os.environ) -> list[str]:
    """What serving on `host` still needs: nothing on loopback without auth; beyond it, basic
    auth, --allowed-hosts and the secrets MLflow's auth app reads from the environment."""
    needed = []
    if host not in LOOPBACK:
        if not auth:
            needed.append("--auth (basic auth; the mlflow[auth] extra)")
        if not allowed_hosts:
            needed.append("--allowed-hosts NAME[:PORT],... (the names clients reach it by)")
    if auth or host not in LOOPBACK:
        if not environ.get(SECRET_KEY_ENV):
            needed.append(f"{SECRET_KEY_ENV} in the environment (a long random string)")
        if not folder.auth_db.exists() and not environ.get(ADMIN_PASSWORD_ENV):
            needed.append(f"{ADMIN_PASSWORD_ENV} in the environment (the admin's first password)")
    return needed


def _write_auth_config(folder: ServerFolder) -> None:
    """MLflow's basic-auth settings: users in the folder (not in the working directory, MLflow's
    default), and every signed-in user may log to any experiment (a team shares its ledger's)."""
    folder.auth_ini.write_text(
        "[mlflow]\ndefault_permission = EDIT\n"
        f"database_uri = sqlite:///{folder.auth_db}\n"
        f"admin_username = {os.environ.get('MLFLOW_AUTH_ADMIN_USERNAME') or 'admin'}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")


def mlflow_command(folder: ServerFolder, host: str, port: int, workers: int, auth: bool,
                   allowed_hosts: Optional[str]) -> list[str]:
    """`mlflow server` with proxied artifacts in the folder (the store URI goes in the environment)."""
    command = [sys.executable, "-m", "mlflow", "server", "--serve-artifacts",
               "--artifacts-destination", folder.artifacts.as_uri(), "--host", host, "--port", str(port),
               "--workers", str(workers)]
    if auth:
        command += ["--app-name", "basic-auth"]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    return command


def start_mlflow(folder: ServerFolder, db_uri: str, host: str, port: int, workers: int, auth: bool,
                 allowed_hosts: Optional[str]) -> tuple[str, int]:
    """The MLflow server, detached in its own process group; (URL, PID) once /health answers."""
    folder.artifacts.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MLFLOW_BACKEND_STORE_URI=db_uri, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    if auth:
        _write_auth_config(folder)
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(folder.auth_ini)
    with open(folder.mlflow_log, "ab") as out:
        process = subprocess.Popen(mlflow_command(folder, host, port, workers, auth, allowed_hosts), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=folder.root, env=env,
                                   start_new_session=True)
    folder.mlflow_pid.write_text(f"{process.pid}\n")
    url = url_for(host, port)
    if not wait_until_up(url, process, STARTUP_SECONDS):
        stop_pid(process.pid, "mlflow", signal.SIGTERM, group=True, grace=10)
        folder.mlflow_pid.unlink(missing_ok=True)
        raise RuntimeError(f"harness server: MLflow did not come up on {url}: {_tail(folder.mlflow_log)}")
    return url, process.pid


def _missing_packages(db_uri: str, auth: bool) -> list[str]:
    wanted = (["psycopg2"] if db_uri.startswith("postgres") else []) + (["flask_wtf"] if auth else [])
    return [name for name in wanted if importlib.util.find_spec(name) is None]


def start(folder: ServerFolder, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, db_uri: Optional[str] = None,
          db_port: Optional[int] = None, workers: int = 2, auth: bool = False, allowed_hosts: Optional[str] = None,
          durable: bool = True, log=print) -> TeamServer:
    """Start (or find running) the folder's server: PostgreSQL unless `db_uri` names a database,
    then MLflow. Bad settings raise InputError (one line) before anything starts."""
    needed = exposure_problems(host, auth, allowed_hosts, folder)
    if needed:
        what = f"serving on --host {host}, beyond this machine," if host not in LOOPBACK else "--auth"
        raise InputError(f"harness server: {what} needs: {'; '.join(needed)}")
    missing = _missing_packages(db_uri or "postgresql", auth)
    if missing:
        raise InputError(f"harness server: missing {', '.join(missing)}: pip install -e '.[server]' (make setup does)")
    running = running_pid(folder.mlflow_pid, "mlflow")
    if running is not None:
        state = _state(folder)
        log(f"already running: {state.get('url')} (pid {running}); stop it with `make server-stop`")
        return TeamServer(folder, state.get("url", ""), running, running_pid(folder.postgres_pid, "postgres"),
                          state.get("db_uri_shown", ""))
    if not port_free(host, port):
        raise InputError(f"harness server: {host}:{port} is already in use; pick another with --port")
    postgres_pid = None
    if db_uri is None:
        db_uri, postgres_pid = local_database(folder, db_port, None if durable else THROWAWAY_SETTINGS, log)
    try:
        url, mlflow_pid = start_mlflow(folder, db_uri, host, port, workers, auth, allowed_hosts)
    except BaseException:
        stop(folder, log=lambda *_: None)
        raise
    _save_state(folder, {**_state(folder), "url": url, "db_uri_shown": shown_db(db_uri)})
    return TeamServer(folder, url, mlflow_pid, postgres_pid, db_uri)


def shown_db(db_uri: str) -> str:
    """A database URI without its password."""
    parts = urlsplit(db_uri)
    return f"{parts.scheme}://{parts.username or ''}@{parts.hostname}:{parts.port or ''}{parts.path}"


# --------------------------------------------------------------------------- command


def add_arguments(parser) -> None:
    parser.add_argument("--stop", action="store_true", help="stop the server and its PostgreSQL, by PID")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1; any other needs --auth and --allowed-hosts)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"MLflow's port (default {DEFAULT_PORT})")
    parser.add_argument("--db-port", type=int, default=None,
                        help="the local PostgreSQL's port on 127.0.0.1 (default: a free one, kept)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="MLflow server worker processes (default: cores, at most 4)")
    parser.add_argument("--auth", action="store_true", help="basic auth (MLflow's basic-auth app)")
    parser.add_argument("--allowed-hosts", default=None, metavar="NAMES",
                        help="comma-separated host names (and host:port) clients use to reach the server")
    parser.add_argument("--dir", default=None, metavar="DIR",
                        help=f"the server's folder (default: ${SERVER_DIR_ENV}, else ./{DEFAULT_SERVER_DIR})")
    from harness import backup  # --backup, --restore, --check (harness/backup.py)

    backup.add_arguments(parser)


def main(args) -> int:
    folder = ServerFolder.of(args.dir)
    from harness import backup

    if backup.asked(args) or args.start:
        code = backup.main(args, folder, with_driver(os.environ[DB_URI_ENV]) if os.environ.get(DB_URI_ENV) else None)
        if code is not None:
            return code
    if args.stop:
        stop(folder)
        return 0
    if not 0 < args.port < 65536:
        raise InputError(f"harness server: --port {args.port} is not a TCP port")
    external = os.environ.get(DB_URI_ENV)
    external = with_driver(external) if external else None
    try:
        server = start(folder, args.host, args.port, db_uri=external, db_port=args.db_port, workers=args.workers,
                       auth=args.auth, allowed_hosts=args.allowed_hosts)
    except RuntimeError as exc:  # an engine that would not start: its own log's last lines, one line
        print(f"error: {exc}", file=sys.stderr)
        return 1
    where = f"{DB_URI_ENV} {shown_db(external)}" if external else f"local PostgreSQL in {folder.pg}"
    print(f"MLflow tracking server on {server.url} (runs in {where}; artifacts in {folder.artifacts})")
    print(f"point runs at it: export MLFLOW_TRACKING_URI={server.url}   (then make run ITER=..., make table)")
    print(f"stop it: make server-stop   (pids: mlflow {server.mlflow_pid}"
          f"{'' if server.postgres_pid is None else f', postgres {server.postgres_pid}'})")
    return 0
