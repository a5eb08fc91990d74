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
import os
import signal
import subprocess
import sys
from typing import Optional

from harness.core.errors import InputError
from harness.track.uris import mlflow_server_command
from harness.core.process import (LOOPBACK, STARTUP_SECONDS, port_free, running_pid, stop_pid, url_for,
                                  wait_until_up)
from harness.services.folder import shown_db, ADMIN_PASSWORD_ENV, DB_URI_ENV, DEFAULT_PORT, DEFAULT_SERVER_DIR, SECRET_KEY_ENV, SERVER_DIR_ENV, ServerFolder, THROWAWAY_SETTINGS, TeamServer, save_state, read_state, log_tail
from harness.services import gunicorn_config
from harness.services.postgres import local_database, with_driver


# --------------------------------------------------------------------------- processes


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
    """`mlflow server` with proxied artifacts in the folder (the store URI goes in the environment),
    under gunicorn with harness.services.gunicorn_config (why: that module's docstring)."""
    return mlflow_server_command(host, port, workers, folder.artifacts.as_uri(), app_name="basic-auth" if auth else None,
                                 allowed_hosts=allowed_hosts, gunicorn_config=gunicorn_config.__name__)


def start_mlflow(folder: ServerFolder, db_uri: str, host: str, port: int, workers: int, auth: bool,
                 allowed_hosts: Optional[str]) -> tuple[str, int]:
    """The MLflow server, detached in its own process group; (URL, PID) once /health answers."""
    folder.artifacts.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MLFLOW_BACKEND_STORE_URI=db_uri, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    # A training process keeps two epoch batches in flight (parent and pass run, logged
    # asynchronously): MLflow's default pool (5 + 10 overflow a worker) ran dry under 20 processes
    # ("QueuePool limit ... reached"). 80 connections in all, under PostgreSQL's default 100.
    per_worker = str(max(5, 40 // max(1, workers)))
    env.setdefault("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", per_worker)
    env.setdefault("MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", per_worker)
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
        raise RuntimeError(f"harness server: MLflow did not come up on {url}: {log_tail(folder.mlflow_log)}")
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
        state = read_state(folder)
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
    save_state(folder, {**read_state(folder), "url": url, "db_uri_shown": shown_db(db_uri)})
    return TeamServer(folder, url, mlflow_pid, postgres_pid, db_uri)


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
    from harness.services import backup  # --backup, --restore, --check (harness/services/backup.py)

    backup.add_arguments(parser)


def main(args) -> int:
    folder = ServerFolder.of(args.dir)
    from harness.services import backup

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
