"""`harness server --backup / --restore / --check` (harness/services/backup.py) on a real team server:
a PostgreSQL cluster from Debian's binaries and `mlflow server` over it (tests/pg_server.py), a
real `harness run` logging to it from another process, real pg_dump and pg_restore.

This module starts a server of its own (not the session's `team_server`): it stops MLflow,
drops the database and deletes the artifact folder, which other test files must never see.

The main test backs up while a smoke run logs (backup A), lets the run finish, backs up again
(backup B), drops the database and deletes the artifacts, restores B: `harness table --format
json` and every artifact file are byte for byte what they were. A is restored into an empty
cluster (a new folder): the run that was logging is there, RUNNING, with the same epochs logged
for every metric (one snapshot), and its artifacts as A holds them. The fault cases (a damaged
dump, a truncated manifest, a restore onto a running server, a failing pg_dump, bad arguments)
are refused with one line and change nothing; they are in FAULTS.md (`faults` marker).
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.core.process import free_port, running_pid, stop_pid
from harness.services.folder import ServerFolder
from harness.services.postgres import _pg_env, postgres_bin

from fault_runs import REPO

LEDGER = """\
experiment: backup-during-run
defaults:
  seed: 5
  data: {name: hvc, image_size: 32, val_fraction: 0.25, cache: memory}
  backbone: {name: custom, freeze: none}
  head: {neck: gap, neck_units: 8, tower_units: [4], tower_dropouts: [0.2]}
  optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
  batch_size: {train: 16, eval: 16}
profiles:
  cpu: {set: {}, max_epochs_per_pass: 10}
  smoke: {set: {}, max_epochs_per_pass: 10}
iterations:
  early:
    passes: [{epochs: 2}]
  logging:
    passes: [{epochs: 10}]
"""


def expect(record_property, text: str) -> None:
    record_property("expectation", text)


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    from pg_server import missing_postgres, throwaway_server

    reason = missing_postgres()
    if reason:
        pytest.skip(reason)
    with throwaway_server(workers=1) as started:
        yield started


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from harness.data.synth import generate

    folder = tmp_path_factory.mktemp("synth")
    generate(folder, 48, seed=9)
    return folder


def harness(*argv, env=None) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, as a user types it."""
    return subprocess.run([sys.executable, "-m", "harness.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
                          timeout=600)


def tree(root: Path) -> dict:
    """Every file under `root`: relative path -> sha256 (a missing folder is empty)."""
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def table_json(book: Path, url: str, out: Path) -> str:
    done = harness("table", "--ledger", str(book), "--format", "json", "--out", str(out), "--tracking-uri", url)
    assert done.returncode == 0, done.stderr
    return out.read_text()


def stop_mlflow(started) -> None:

    pid = running_pid(started.folder.mlflow_pid, "mlflow")
    if pid is not None:
        stop_pid(pid, "mlflow", 15, group=True)
    started.folder.mlflow_pid.unlink(missing_ok=True)


def live_url(started) -> str:
    """The module server's URL now (a restore with --start may have moved it to another port)."""
    return json.loads(started.folder.state.read_text())["url"]


def psql(started, sql: str, database: str = "postgres") -> str:

    state = json.loads(started.folder.state.read_text())
    done = subprocess.run([str(postgres_bin() / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                           "-p", str(state["db_port"]), "-U", "harness", "-d", database, "-c", sql],
                          capture_output=True, text=True, env=_pg_env(state["db_password"]))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def server_state(started) -> dict:
    """What a refused command must leave alone: the database's rows and the artifact files."""
    return {"rows": psql(started, "SELECT (SELECT count(*) FROM runs) || ' ' || (SELECT count(*) FROM metrics) || ' ' "
                                  "|| (SELECT count(*) FROM tags) || ' ' || (SELECT version_num FROM alembic_version)",
                         "mlflow"),
            "artifacts": tree(started.folder.artifacts),
            "folder": sorted(p.name for p in started.folder.root.iterdir())}


def one_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def backed_up(own_server, synth, tmp_path_factory):
    """Backup A while `logging` logs its epochs, backup B once it has finished; the table and
    the artifacts as they were after it."""
    from fault_runs import wait_for

    tmp = tmp_path_factory.mktemp("backup")
    book = tmp / "ledger.yaml"
    book.write_text(LEDGER)
    url, folder = own_server.url, own_server.folder
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("HARNESS_FAULT", None)
    common = ["--ledger", str(book), "--profile", "smoke", "--data", str(synth), "--tracking-uri", url,
              "--work-dir", str(tmp / "work")]
    logs = {name: tmp / f"{name}.log" for name in ("early", "logging")}
    runs, fault = {}, tmp / "fault"
    fault.mkdir()
    # At once; `logging` waits before logging epoch 3 until `early` has finished, then goes on
    # logging epochs 3..10 while the backup is taken (HARNESS_FAULT pause, harness/faults.py).
    for name, log in logs.items():
        extra = {"HARNESS_FAULT": "after-snapshot:3:pause", "HARNESS_FAULT_DIR": str(fault)} if name == "logging" else {}
        with open(log, "w") as out:
            runs[name] = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", name, *common],
                                          env={**env, **extra}, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
    run, log = runs["logging"], logs["logging"]
    try:
        assert runs["early"].wait(timeout=600) == 0, logs["early"].read_text()[-3000:]
        assert wait_for(lambda: (fault / "paused").exists(), run, 600, "it paused before epoch 3", log)
        (fault / "go").touch()
        started = time.monotonic()
        during = harness("server", "--dir", str(folder.root), "--backup", str(tmp / "backups"))
        seconds = time.monotonic() - started
        assert during.returncode == 0, during.stderr
        assert run.poll() is None, "the run ended before the backup did: it must be taken while the run logs"
        assert run.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        for process in runs.values():
            if process.poll() is None:
                process.kill()
    [a] = [p for p in (tmp / "backups").iterdir()]
    after = harness("server", "--dir", str(folder.root), "--backup", str(tmp / "backups"))
    assert after.returncode == 0, after.stderr
    [b] = [p for p in (tmp / "backups").iterdir() if p != a]
    return {"tmp": tmp, "book": book, "a": a, "b": b, "during_line": during.stdout.strip(), "during_s": seconds,
            "table": table_json(book, url, tmp / "before.json"), "artifacts": tree(folder.artifacts)}


def test_backup_during_a_run_then_restore_gives_back_every_run_metric_and_artifact(own_server, backed_up,
                                                                                   record_property):
    """Drop the database, delete the artifacts, restore B: the table (as JSON) and every
    artifact file are byte for byte what they were; `harness server --check` says ok."""
    from harness.services import backup

    tmp, folder = backed_up["tmp"], own_server.folder
    assert backed_up["during_line"].startswith(f"backup {backed_up['a']}: ")
    manifest = json.loads((backed_up["b"] / "manifest.json").read_text())
    assert manifest["mlflow_version"] == backup.mlflow_version()
    assert manifest["alembic_revision"] == backup.expected_revision()
    assert manifest["counts"]["runs"] == 4  # early + its pass, logging + its pass
    assert manifest["counts"]["artifact_files"] == len(backed_up["artifacts"]) > 0
    record_property("result_detail", f"backup during the run: {backed_up['during_s']:.1f} s")

    stop_mlflow(own_server)
    psql(own_server, "DROP DATABASE mlflow")
    shutil.rmtree(folder.artifacts)
    port = free_port()  # the old one may be in TIME_WAIT for a minute
    restored = harness("server", "--dir", str(folder.root), "--restore", str(backed_up["b"]), "--start",
                       "--port", str(port), "--workers", "1")
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.startswith(f"restored {backed_up['b']} into ")
    assert table_json(backed_up["book"], live_url(own_server), tmp / "after.json") == backed_up["table"]
    assert tree(folder.artifacts) == backed_up["artifacts"]
    checked = harness("server", "--dir", str(folder.root), "--check")
    assert checked.returncode == 0 and checked.stdout.startswith("ok: 4 runs"), checked.stdout + checked.stderr


def test_the_backup_taken_during_the_run_restores_into_an_empty_cluster(backed_up):
    """Backup A into a new folder (a fresh cluster): every run the snapshot held, the one still
    logging RUNNING with the same epochs for every metric, artifacts as A holds them."""
    from harness.services import server
    from harness.track.store import Store

    fresh = Path(f"/tmp/harness-restore-{os.getpid()}")  # PostgreSQL (as root: `postgres`) must enter it
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(mode=0o755)
    try:
        port = free_port()
        # A PostgreSQL port of its own: the default may be another test module's cluster's.
        restored = harness("server", "--dir", str(fresh), "--restore", str(backed_up["a"]), "--start",
                           "--port", str(port), "--db-port", str(free_port()), "--workers", "1")
        assert restored.returncode == 0, restored.stderr
        store = Store(f"http://127.0.0.1:{port}")
        [early] = store.runs("backup-during-run", "early")
        [logging] = store.runs("backup-during-run", "logging")
        assert early.status == "FINISHED" and logging.status == "RUNNING"
        steps = {key: [p.step for p in store.metric_history(logging.run_id, key)]
                 for key in ("loss", "val_loss", "val_gender_acc", "lr")}
        logged = steps["loss"]
        assert logged and logged == list(range(1, len(logged) + 1)) and len(logged) < 10
        assert all(s == logged for s in steps.values()), steps  # one snapshot: every metric at the same epoch
        held = {name[len("artifacts/"):]: entry["sha256"]
                for name, entry in json.loads((backed_up["a"] / "manifest.json").read_text())["files"].items()
                if name.startswith("artifacts/")}
        assert tree(fresh / "artifacts") == held
        assert any(name.endswith("config.yaml") and logging.run_id in name for name in held)
        checked = harness("server", "--dir", str(fresh), "--check")
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        server.stop(ServerFolder(fresh), log=lambda *_: None)
        shutil.rmtree(fresh, ignore_errors=True)


def test_check_of_a_whole_backup_says_ok(backed_up):
    done = harness("server", "--check", str(backed_up["b"]))
    assert done.returncode == 0 and done.stdout.startswith(f"ok: {backed_up['b']} ("), done.stdout + done.stderr
    parent = harness("server", "--check", str(backed_up["b"].parent))
    assert parent.returncode == 2 and "name one, e.g. the newest: " in one_line(parent)


def damaged_copy(source: Path, into: Path, damage) -> Path:
    copy = into / source.name
    shutil.copytree(source, copy)
    damage(copy)
    return copy


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.faults
@pytest.mark.parametrize("case", ["damaged-dump", "truncated-manifest"])
def test_a_damaged_backup_is_refused_in_one_line_and_changes_nothing(case, own_server, backed_up, tmp_path,
                                                                     record_property):
    damage, said = {
        "damaged-dump": (lambda b: flip_a_byte(b / "mlflow.dump"), "mlflow.dump: checksum differs from the manifest"),
        "truncated-manifest": (lambda b: (b / "manifest.json").write_text((b / "manifest.json").read_text()[:200]),
                               "manifest.json: damaged, not a whole manifest"),
    }[case]
    expect(record_property, f"{case}: `harness server --check DIR` and `--restore DIR` exit 2 with one "
                            f"line saying '{said}'; the database's rows and every artifact file unchanged")
    bad = damaged_copy(backed_up["b"], tmp_path, damage)
    checked = harness("server", "--check", str(bad))
    assert checked.returncode == 2 and said in checked.stdout, checked.stdout + checked.stderr
    before = server_state(own_server)
    done = harness("server", "--dir", str(own_server.folder.root), "--restore", str(bad))
    line = one_line(done)  # the backup is verified first: refused for the damage, server running or not
    assert done.returncode == 2 and said in line and line.endswith("nothing was changed"), line
    record_property("result_detail", line)
    assert server_state(own_server) == before


@pytest.mark.faults
def test_restore_onto_a_running_server_is_refused_in_one_line_and_changes_nothing(own_server, backed_up,
                                                                                  record_property):
    expect(record_property, "`harness server --restore DIR` while the folder's MLflow server runs: exit 2, one line "
                            "naming it and `make server-stop`; the database's rows and every artifact file unchanged, "
                            "the server still answering")
    from harness.track.store import Store

    before = server_state(own_server)
    done = harness("server", "--dir", str(own_server.folder.root), "--restore", str(backed_up["a"]))
    line = one_line(done)
    assert done.returncode == 2 and "an MLflow server is running on" in line and "make server-stop" in line, line
    record_property("result_detail", line)
    assert server_state(own_server) == before
    assert Store(live_url(own_server)).runs("backup-during-run", "logging")


@pytest.mark.faults
def test_a_failing_dump_exits_1_in_one_line_and_leaves_no_backup(own_server, tmp_path, record_property):
    """pg_dump killed halfway (a stand-in that writes half a dump and fails), then a wrong password
    in HARNESS_DB_URI: exit 1, one line, no backup folder and no temporary folder left."""
    expect(record_property, "pg_dump failing halfway (a stand-in writing half a file, exit 1), and HARNESS_DB_URI with "
                            "a wrong password: `harness server --backup DIR` exits 1 with one line; DIR holds no "
                            "backup, whole or partial")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "pg_dump").write_text("#!/bin/sh\nfor a in \"$@\"; do f=\"$a\"; done\n"
                                  "head -c 5000 /dev/urandom > \"$f\"\necho 'pg_dump: error: connection lost' >&2\n"
                                  "exit 1\n")
    (fake / "pg_dump").chmod(0o755)
    from harness.services import backup

    out = tmp_path / "backups"
    original = backup.pg_tool
    backup.pg_tool = lambda name: str(fake / name) if name == "pg_dump" else original(name)
    try:
        code = backup.main(type("A", (), {"backup": str(out), "restore": None, "check": None, "stop": False,
                                          "start": False, "keep": 7})(), own_server.folder, None)
        pytest.fail(f"returned {code}")
    except backup.ServerOperationFailed as exc:
        [line] = exc.lines
        assert "pg_dump of " in line and "no backup written: pg_dump: error: connection lost" in line, line
    finally:
        backup.pg_tool = original
    assert list(out.iterdir()) == []

    uri = own_server.db_uri.replace("+psycopg2", "")
    wrong = uri.split("://")[0] + "://harness:wrong@" + uri.split("@")[1]
    done = harness("server", "--dir", str(tmp_path / "elsewhere"), "--backup", str(out), env={"HARNESS_DB_URI": wrong})
    line = one_line(done)
    assert done.returncode == 1 and "cannot connect to postgresql://harness@127.0.0.1:" in line, line
    assert "wrong" not in line  # the password is never shown
    record_property("result_detail", line)
    assert list(out.iterdir()) == []


@pytest.mark.faults
@pytest.mark.parametrize("argv, said", [
    (["--backup", "{out}", "--keep", "0"], "--keep 0: keep at least 1 backup"),
    (["--backup", "{out}", "--restore", "{out}"], "--backup and --restore cannot be combined"),
    (["--restore", "{out}/nowhere"], "no such backup folder"),
    (["--check", "{file}"], "is a file, not a backup folder"),
    (["--backup", "{file}"], "is a file, not a folder"),
    (["--start"], "--start goes with --restore"),
], ids=["keep-0", "backup-and-restore", "restore-missing", "check-a-file", "backup-into-a-file", "start-alone"])
def test_bad_arguments_are_one_line_exit_2_and_write_nothing(argv, said, own_server, tmp_path, record_property):
    expect(record_property, f"`harness server {' '.join(argv)}`: exit 2, one line saying '{said}', nothing written")
    (tmp_path / "a-file").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [a.format(out=tmp_path / "out", file=tmp_path / "a-file") for a in argv]
    done = harness("server", "--dir", str(own_server.folder.root), *argv)
    line = one_line(done)
    assert done.returncode == 2 and said in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_backup_works_with_harness_db_uri_and_keeps_the_last_n(own_server, tmp_path):
    """An external database (HARNESS_DB_URI; here the module's cluster) with a folder of no
    cluster of its own: the dump holds its runs; --keep 2 leaves the two newest."""
    folder = tmp_path / "external"
    out = tmp_path / "backups"
    for _ in range(3):
        done = harness("server", "--dir", str(folder), "--backup", str(out), "--keep", "2",
                       env={"HARNESS_DB_URI": own_server.db_uri.replace("+psycopg2", "")})
        assert done.returncode == 0, done.stderr
    kept = sorted(out.iterdir())
    assert len(kept) == 2 and all((k / "manifest.json").is_file() for k in kept)
    manifest = json.loads((kept[-1] / "manifest.json").read_text())
    assert manifest["counts"]["runs"] >= 4 and manifest["counts"]["artifact_files"] == 0  # no artifacts there
    assert not (folder / "pg").exists()


def test_check_lists_a_missing_run_folder_and_an_orphan(own_server, backed_up):
    folder = own_server.folder
    moved = None
    try:
        run_folder = next(p for p in folder.artifacts.glob("*/*") if p.is_dir() and p.name != "models")
        orphan = run_folder.parent / ("0" * 32)
        orphan.mkdir()
        moved = run_folder.with_name(run_folder.name + ".aside")
        run_folder.rename(moved)
        done = harness("server", "--dir", str(folder.root), "--check")
        lines = done.stdout.strip().splitlines()
        assert done.returncode == 1
        assert any(l.startswith(f"run {run_folder.name} (") and "no artifact folder" in l for l in lines), lines
        assert any(l.startswith(f"orphan artifact folder {orphan}") for l in lines), lines
        assert any(l.startswith(f"orphan artifact folder {moved}") for l in lines), lines
    finally:
        if moved is not None:
            moved.rename(run_folder)
        shutil.rmtree(orphan, ignore_errors=True)
