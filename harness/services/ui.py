"""`harness ui`: the MLflow UI over the project's store.

    harness ui                       # http://127.0.0.1:5000, the store of `harness run`
    harness ui --port 5050 --tracking-uri sqlite:///elsewhere/mlflow.db
    harness ui --tracking-uri http://team:5000   # a server: prints its address, starts nothing

Runs `mlflow server` (uvicorn, one worker) over the SQLite store with its artifact root served,
bound to 127.0.0.1 unless --host says otherwise, and prints the URL once the server answers.
Ctrl-C or SIGTERM to this process stops the server. MLflow's GenAI job runner is switched off:
a results UI does not need its background workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from harness.core.errors import InputError
from harness.core.process import LOOPBACK, kill_group, port_free, url_for, wait_until_up
from harness.core.metrics import val_acc

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
SERVER_LOG = "ui-server.log"  # beside the SQLite store, unless -v
STOP_GRACE_SECONDS = 3.0


def runs_page(url: str, experiment_id: Optional[str], sort_by: Optional[str] = None) -> str:
    """The UI's page of an experiment's runs table, best `sort_by` metric first (the UI's home
    without an experiment). MLflow 3.17's runs table shows no metric column until one is picked
    under Columns; the sort is what a URL can carry, and it puts the best run on top."""
    if not experiment_id:
        return url
    page = f"{url}/#/experiments/{experiment_id}/runs"
    return page + f"?orderByKey=metrics.%60{sort_by}%60&orderByAsc=false" if sort_by else page


def serve(tracking_uri: Optional[str] = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          log=print, experiment: Optional[str] = None, sort_by: Optional[str] = None) -> int:
    """Start the server, print the URL of `experiment`'s runs page, wait until it ends (or this
    process is told to stop). Experiments holding harness runs are tagged as model training
    first, so the UI opens them on their runs table, not on the GenAI overview. A tracking server
    URI (http://...) already has a UI: its address is printed, nothing started."""
    from harness.track.uris import chosen_uri, is_server

    if is_server(chosen_uri(tracking_uri)):
        log(f"MLflow UI of the tracking server: open {chosen_uri(tracking_uri)}  (a server already serves it; "
            f"nothing started here)")
        return 0
    from harness.core.quiet import is_verbose
    from harness.track.store import Store, mark_harness_experiments
    from harness.track.uris import artifact_root, resolve_uri, server_command

    if not 0 < port < 65536:
        raise InputError(f"harness ui: --port {port} is not a TCP port")
    if host not in LOOPBACK:
        # MLflow's UI has no login of its own: on another address anyone who reaches the port
        # reads every run and can delete them.
        raise InputError(f"harness ui: --host {host}: the MLflow UI has no authentication, so it listens on "
                         f"loopback only (127.0.0.1, localhost, ::1); reach it remotely through an SSH tunnel "
                         f"(ssh -L {port}:127.0.0.1:{port} HOST)")
    if not port_free(host, port):
        raise InputError(f"harness ui: {host}:{port} is already in use; pick another with --port")
    uri = resolve_uri(tracking_uri, create=True)
    store = Store(uri)
    mark_harness_experiments(store)
    experiment_id = store.experiment_id(experiment, create=False) if experiment else None
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    # Quiet unless -v: the server's start-up notices and access lines go to a log file beside the
    # store (its tail is printed if the server does not come up).
    server_log = None if is_verbose() else open(artifact_root(uri).parent / SERVER_LOG, "w")
    # Its own process group, so that stopping it reaches uvicorn too, whatever happens to mlflow.
    process = subprocess.Popen(server_command(uri, host, port), env=env, start_new_session=True,
                               stdout=server_log, stderr=subprocess.STDOUT if server_log else None)
    stopping: list[float] = []

    def stop(signum, _frame):
        kill_group(process.pid, signal.SIGTERM)  # mlflow, its uvicorn and any worker
        stopping.append(time.monotonic())

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    url = url_for(host, port)
    if not wait_until_up(url, process):
        stop(signal.SIGTERM, None)
        _reap(process, stopping)
        if server_log is not None:
            server_log.close()
            log("".join(Path(server_log.name).read_text().splitlines(keepends=True)[-20:]).rstrip("\n"))
        log(f"harness ui: the MLflow server did not come up on {host}:{port} (its output is above)")
        return 1
    log(f"MLflow UI for {uri}")
    log(f"open {runs_page(url, experiment_id, sort_by)}  (pid {os.getpid()}; Ctrl-C stops it)")
    if experiment and experiment_id is None:
        log(f"no experiment {experiment} in this store yet: train an iteration first (make run ITER=name)")
    log(f"compare iterations: pick the experiment, select runs, Compare, then the {val_acc('hvc')} chart")
    if server_log is not None:
        log(f"server log: {server_log.name} (harness -v ui shows it here)")
    sys.stdout.flush()
    return _reap(process, stopping)


def _reap(process: subprocess.Popen, stopping: list[float], grace: float = STOP_GRACE_SECONDS) -> int:
    """Wait for the server to end; once asked to stop, kill its process group after `grace`
    seconds, or at once on a second stop signal. The grace fits inside the 5 s a service
    manager (or `timeout`) is promised: uvicorn usually exits within a second of SIGTERM, but
    an open browser's keep-alive connections can hold it for its own 30 s shutdown timeout."""
    while True:
        try:
            code = process.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            if stopping and (len(stopping) > 1 or time.monotonic() - stopping[0] > grace):
                kill_group(process.pid, signal.SIGKILL)
    kill_group(process.pid, signal.SIGTERM)  # a uvicorn left behind by a dead mlflow
    return 0 if stopping or code == 0 else 1
