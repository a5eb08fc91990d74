"""The team server (`harness server`) and every command against `--tracking-uri http://...`.

The session's server (conftest.team_server) is real: a PostgreSQL cluster initialized and started
from Debian's binaries and `mlflow server` over it with proxied artifacts, both on 127.0.0.1,
started and stopped by harness.services.server's own code. Training is real TensorFlow on tiny data."""

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness.core.process import free_port, running_pid
from harness.services.folder import ServerFolder
from harness import ledger

TINY = """\
experiment: http-commands
defaults:
  seed: 3
  data: {name: hvc, image_size: 32, val_fraction: 0.25, cache: memory}
  backbone: {name: custom, freeze: none}
  head: {neck: gap, neck_units: 8, tower_units: [4], tower_dropouts: [0.0]}
  optimizer: {name: sgd, lr: 0.01, momentum: 0.0}
  batch_size: {train: 12, eval: 12}
profiles:
  cpu: {set: {}, max_epochs_per_pass: 1}
  smoke: {set: {}, max_epochs_per_pass: 1}
iterations:
  one:
    passes: [{epochs: 3}]
"""


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from harness.data.synth import generate

    folder = tmp_path_factory.mktemp("synth")
    generate(folder, 48, seed=9)
    return folder


def status_of(path: str) -> str:
    return Path(path).read_text().split("State:")[1].split()[0] if Path(path).exists() else "gone"


def test_server_runs_postgres_and_mlflow_on_loopback_with_pid_files(team_server):

    folder = team_server.folder
    assert running_pid(folder.mlflow_pid, "mlflow") == team_server.mlflow_pid
    assert running_pid(folder.postgres_pid, "postgres") == team_server.postgres_pid
    command = Path(f"/proc/{team_server.postgres_pid}/cmdline").read_bytes().split(b"\0")
    assert command[command.index(b"-h") + 1] == b"127.0.0.1"  # TCP on loopback only
    assert command[command.index(b"-k") + 1] == str(folder.socket).encode()  # socket inside the folder
    owner = Path(f"/proc/{team_server.postgres_pid}/status").read_text().split("Uid:")[1].split()[0]
    assert owner != "0"  # PostgreSQL refuses root: as root, it runs as `postgres`
    assert team_server.url.startswith("http://127.0.0.1:")
    assert team_server.db_uri.startswith("postgresql+psycopg2://harness:")
    assert oct(folder.state.stat().st_mode & 0o777) == "0o600"
    state = json.loads(folder.state.read_text())
    assert team_server.db_uri.split(":")[2].split("@")[0] == state["db_password"]
    mlflow_args = Path(f"/proc/{team_server.mlflow_pid}/cmdline").read_bytes().decode()
    assert state["db_password"] not in mlflow_args  # the store URI travels in the environment
    # MLflow serves through gunicorn with the harness's settings (harness.services.gunicorn_config)
    pid = team_server.mlflow_pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    servers = [Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0") for child in children]
    assert any(b"gunicorn" in args and b"python:harness.services.gunicorn_config" in args for args in servers), servers


def test_the_servers_workers_collect_garbage_less_often_and_leave_the_app_out():
    import gc

    from harness.services import gunicorn_config

    thresholds = gc.get_threshold()
    try:
        gunicorn_config.post_worker_init(worker=None)
        assert gc.get_threshold() == gunicorn_config.GC_THRESHOLDS and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    assert gunicorn_config.worker_class == "gthread" and gunicorn_config.control_socket_disable


def test_team_database_gives_another_database_on_the_session_cluster(team_server, team_database):
    """The fixture other stores (Optuna's) use: a database of its own beside MLflow's, on the
    same loopback cluster; asking again returns the same one."""
    import sqlalchemy

    uri = team_database("scratch")
    assert uri == team_database("scratch") and uri.endswith("/scratch") and "@127.0.0.1:" in uri
    tables = lambda u: set(sqlalchemy.inspect(sqlalchemy.create_engine(u, poolclass=sqlalchemy.pool.NullPool))
                           .get_table_names())
    assert {"runs", "metrics", "alembic_version"} <= tables(team_server.db_uri)  # MLflow's, migrated
    assert tables(uri) == set()  # nothing of MLflow's: a store with its own migrations fits


def interrupt_after_first_epoch(lines: list):
    """A log that records lines and raises KeyboardInterrupt (Ctrl-C) at the first epoch's closing
    line (`epoch 1/3 (step 1) ...`), not at a progress line (`epoch 1/3: 1/3 batches`, printed
    when the epoch takes over 10 s on a loaded machine: no epoch would be finished to resume)."""
    def log(line):
        lines.append(line)
        if line.strip().startswith("epoch 1/") and "(step" in line and not any("interrupt" in l for l in lines):
            lines.append("(interrupt)")
            raise KeyboardInterrupt
    return log


def test_every_command_works_against_the_server(team_server, synth, tmp_path, monkeypatch, capsys):
    """run (interrupted by Ctrl-C after an epoch, then resumed), --all, eval, lr-find, reference,
    table and ui, all through http://...: the same layout as on SQLite, artifacts through the server's proxy."""
    from harness import cli
    from harness.run.evaluate import evaluate_iteration
    from harness.run.lrfind import lr_find_iteration
    from harness.run.launch import run_iteration
    from harness.track.store import Store

    url, work = team_server.url, tmp_path / "work"
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    book = ledger.load(path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # the way two machines are pointed at it

    lines = []
    with pytest.raises(KeyboardInterrupt):
        run_iteration(book, "one", profile="full", data_dir=str(synth), work_dir=str(work),
                      log=interrupt_after_first_epoch(lines))
    store = Store(url)
    [killed] = store.runs("http-commands", "one")
    assert killed.status == "KILLED"
    lines = []
    assert run_iteration(book, "one", profile="full", data_dir=str(synth), work_dir=str(work), log=lines.append) == 0
    assert f"one: resuming unfinished run {killed.run_id[:8]} (use --fresh to start over)" in lines, "\n".join(lines[:6])
    [run] = store.runs("http-commands", "one")
    assert run.run_id == killed.run_id and run.status == "FINISHED"
    for key in ("loss", "val_gender_acc", "lr"):
        assert [p.step for p in store.metric_history(run.run_id, key)] == [1, 2, 3], key
    children = store.children(run.run_id)
    assert [(c.name, c.status) for c in children] == [("one/pass-1", "FINISHED")]
    evaluated = json.loads(store.download(children[0].run_id, "eval.json", tmp_path / "dl").read_text())
    assert "gender_acc" in evaluated  # artifacts went up and come back through the server's proxy
    assert any(team_server.folder.artifacts.rglob("best.keras"))

    capsys.readouterr()
    assert cli.main(["run", "--all", "--ledger", str(path), "--profile", "full", "--data", str(synth),
                     "--work-dir", str(work)]) == 0
    out = capsys.readouterr().out
    assert "one: already finished with this config" in out  # --all: the server's record decides

    result = evaluate_iteration(book, "one", data_dir=str(synth), work_dir=str(work), log_to_run=True)
    assert result["run_id"] == run.run_id and 0 <= result["eval"]["gender_acc"] <= 1
    found = lr_find_iteration(book, "one", profile="full", data_dir=str(synth), work_dir=str(work), steps=5,
                              log=lambda *_: None)
    assert store.run(found["run_id"]).name == "one/lr-find"

    capsys.readouterr()
    assert cli.main(["reference", "--ledger", str(path), "--data", str(synth)]) == 0
    assert "reference/linear-probe (" in capsys.readouterr().out
    references = store.references("http-commands", run.tags["harness.split"])
    assert sorted(references) == ["linear-probe", "majority"]
    assert all(r.status == "FINISHED" for r in references.values())

    results = tmp_path / "RESULTS.md"
    assert cli.main(["table", "--ledger", str(path), "--out", str(results), "--no-readme"]) == 0
    rows = {}  # the first table (iterations, with their runs); the per-head tables follow
    for line in results.read_text().splitlines():
        if line.startswith("|  "):
            rows.setdefault(line.split("|")[2].strip(), line)
    assert run.run_id[:8] in rows["one"] and "0." in rows["one"]
    capsys.readouterr()
    assert cli.main(["ui"]) == 0
    assert capsys.readouterr().out.startswith(f"MLflow UI of the tracking server: open {url} ")


def test_serving_beyond_loopback_without_auth_refuses_in_one_line(tmp_path, capsys, monkeypatch):
    from harness import cli

    monkeypatch.delenv("MLFLOW_FLASK_SERVER_SECRET_KEY", raising=False)
    folder = tmp_path / "server"
    assert cli.main(["server", "--host", "0.0.0.0", "--dir", str(folder)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: harness server: serving on --host 0.0.0.0, beyond this machine, needs: --auth ")
    assert "--allowed-hosts" in line and "MLFLOW_FLASK_SERVER_SECRET_KEY" in line
    assert not folder.exists()


def answers(url: str, headers=None) -> int:
    request = urllib.request.Request(url + "/api/2.0/mlflow/experiments/search?max_results=1", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_second_server_on_an_existing_database_with_basic_auth_then_stop(team_server, tmp_path, monkeypatch):
    """HARNESS_DB_URI: MLflow over a database someone else runs (here the session's cluster),
    with basic auth: anonymous requests get 401, the admin's credentials work, runs land in the
    same database. `harness server --stop` stops it by PID."""
    import base64

    from harness import cli
    from harness.track.store import Store

    folder = tmp_path / "second"
    folder.mkdir()
    monkeypatch.setenv("HARNESS_DB_URI", team_server.db_uri.replace("+psycopg2", ""))
    monkeypatch.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", "test-secret-" + "x" * 24)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "first-admin-password-1")
    port = free_port()
    assert cli.main(["server", "--dir", str(folder), "--port", str(port), "--workers", "1", "--auth"]) == 0
    url = f"http://127.0.0.1:{port}"
    pid = running_pid(ServerFolder(folder).mlflow_pid, "mlflow")
    try:
        assert pid is not None and not (folder / "pg").exists()  # no cluster of its own
        assert answers(url) == 401
        token = base64.b64encode(b"admin:first-admin-password-1").decode()
        assert answers(url, {"Authorization": f"Basic {token}"}) == 200
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "first-admin-password-1")
        made = Store(url).experiment_id("two-servers")  # created through the authenticated server...
        assert Store(team_server.url).experiment_id("two-servers", create=False) == made  # ...one database
    finally:
        assert cli.main(["server", "--stop", "--dir", str(folder)]) == 0
    assert running_pid(ServerFolder(folder).mlflow_pid, "mlflow") is None
    assert status_of(f"/proc/{pid}/status") in ("gone", "Z")
