"""Safe concurrency: several `harness run` processes against one store.

Real processes, real locks, a real SQLite store in a temp folder and the session's real
PostgreSQL-backed MLflow server (conftest.team_server): different iterations at once all finish
with every step logged; a second run of a held iteration refuses, naming the holder, and writes
nothing; a lease left by a dead or silent holder is taken over, and the output says so."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import ledger
from harness.core.labels import HVC_HEADS
from harness.core.errors import IterationHeld

REPO = Path(__file__).resolve().parents[1]

# One pass of two epochs, batches that divide the 36 training and 12 validation images (a
# partial last batch would cost Keras another trace), plain SGD (Adam's update traces ~40% slower):
# the least a process can do and still show contiguous steps.
CONCURRENT = """\
experiment: {experiment}
defaults:
  seed: 3
  data: {{name: hvc, image_size: 32, val_fraction: 0.25, cache: memory}}
  backbone: {{name: custom, freeze: none}}
  head: {{neck: gap, neck_units: 8, tower_units: [4], tower_dropouts: [0.0]}}
  optimizer: {{name: sgd, lr: 0.01, momentum: 0.0}}
  batch_size: {{train: 12, eval: 12}}
profiles:
  cpu: {{set: {{}}, max_epochs_per_pass: 2}}
  smoke: {{set: {{data: {{limit: 48}}}}, max_epochs_per_pass: 2}}
iterations:
  a:
    passes: [{{epochs: 2}}]
  b:
    extends: a
    optimizer: {{lr: 0.02}}
  c:
    extends: a
    optimizer: {{lr: 0.005}}
"""

EPOCH_METRICS = {"loss", "val_loss", "lr", "epoch_seconds"} | {
    f"{prefix}{head}_{kind}" for head in HVC_HEADS for prefix in ("", "val_") for kind in ("acc", "loss")}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from harness.data.synth import generate

    folder = tmp_path_factory.mktemp("synth")
    generate(folder, 48, seed=7)
    return folder


def write_ledger(folder: Path, experiment: str) -> Path:
    path = folder / f"{experiment}.yaml"
    path.write_text(CONCURRENT.format(experiment=experiment))
    return path


def run_at_once(ledger_path: Path, names, data: Path, uri: str, work: Path) -> list:
    """`harness run NAME --profile smoke` for each name, all started together; their results."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    processes = [subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", name, "--ledger", str(ledger_path), "--profile", "smoke",
         "--data", str(data), "--tracking-uri", uri, "--work-dir", str(work)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for name in names]
    return [(p.args[4], p.communicate(timeout=600)[0], p.returncode) for p in processes]


def assert_all_finished_and_complete(uri: str, experiment: str, names) -> None:
    """Each iteration: one FINISHED parent and pass run, every epoch metric at steps 1, 2."""
    from harness.track.store import Store

    store = Store(uri)
    for name in names:
        [parent] = store.runs(experiment, name)
        assert parent.status == "FINISHED", (name, parent.tags.get("harness.failure_reason"))
        children = store.children(parent.run_id)
        assert [(c.name, c.status) for c in children] == [(f"{name}/pass-1", "FINISHED")]
        assert EPOCH_METRICS <= set(parent.metrics), name
        for key in EPOCH_METRICS:
            assert [p.step for p in store.metric_history(parent.run_id, key)] == [1, 2], (name, key)
        assert [p.step for p in store.metric_history(children[0].run_id, "val_gender_acc")] == [1, 2]


def test_three_iterations_at_once_into_one_new_sqlite_store(tmp_path, synth):
    """A store nobody has created yet: three processes create, migrate and fill it together."""
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    results = run_at_once(write_ledger(tmp_path, "concurrent-sqlite"), "abc", synth, uri, tmp_path / "work")
    for name, output, code in results:
        assert code == 0, f"{name}:\n{output[-3000:]}"
        assert "database is locked" not in output and "already exists" not in output
    assert_all_finished_and_complete(uri, "concurrent-sqlite", "abc")


def test_three_iterations_at_once_into_the_team_server(tmp_path, synth, team_server):
    results = run_at_once(write_ledger(tmp_path, "concurrent-server"), "abc", synth, team_server.url, tmp_path / "work")
    for name, output, code in results:
        assert code == 0, f"{name}:\n{output[-3000:]}"
    assert_all_finished_and_complete(team_server.url, "concurrent-server", "abc")


HOLD = """
import sys, time
from harness.track.leases import IterationLock
lock = IterationLock(sys.argv[1], sys.argv[2], sys.argv[3]).acquire()
lock.record("run-held-elsewhere")
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_run_of_a_held_iteration_refuses_naming_the_holder_and_writes_nothing(tmp_path, synth, capsys):
    """Another process holds the work dir's lock on `a`: `harness run a` exits 2 with one line
    naming it, creates no store and no run folder; once the holder is killed, the lock is free."""
    from harness import cli

    work = tmp_path / "work"
    path = write_ledger(tmp_path, "held")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(work), "held", "a"], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        uri = f"sqlite:///{tmp_path}/store/mlflow.db"
        argv = ["run", "a", "--ledger", str(path), "--profile", "smoke", "--data", str(synth), "--tracking-uri", uri,
                "--work-dir", str(work)]
        capsys.readouterr()
        assert cli.main(argv) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1
        assert errors[0].startswith("error: a: already being trained by host ")
        assert f"pid {holder.pid}, run run-held-elsewhere" in errors[0]
        assert not (tmp_path / "store").exists()
        assert sorted(p.name for p in work.iterdir()) == ["locks"]
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # the kernel released the killed holder's lock: the next run can take it
    from harness.track.leases import IterationLock

    with IterationLock(work, "held", "a") as lock:
        assert lock.describe_holder().endswith(f"pid {os.getpid()}, run (starting)")


def set_lease(uri: str, run_id: str, host: str, pid: int, expires: float) -> None:
    """What another machine's `harness run` writes on its run (through MLflow itself)."""
    from mlflow.tracking import MlflowClient

    from harness.track.leases import Lease

    MlflowClient(uri).set_tag(run_id, "harness.lease", Lease(host, pid, expires).to_tag())


def test_leases_on_the_store_refuse_while_live_and_are_taken_over_once_gone(tmp_path, synth):
    """Two machines see each other through the run's lease tag: live (another host, not expired)
    refuses with host, pid and run id; expired, or left by a dead process on this host, is taken
    over with a line saying so, and the run resumes."""
    from harness.track.leases import Lease, this_host
    from harness.core.records import RESUME
    from harness.track.store import Store

    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    book = ledger.load(write_ledger(tmp_path, "leases"))
    iteration = book.resolve("a", "smoke")
    store = Store(uri)
    tracker = store.start(store.begin("leases", iteration), "leases", iteration, {})
    mine = store.begin("leases", iteration)  # our own lease never holds us back, nor is "taken over"
    assert mine.kind == RESUME and "lease" not in mine.message

    set_lease(uri, tracker.run_id, "gpu-box-2", 4242, time.time() + 600)
    with pytest.raises(IterationHeld) as held:
        store.begin("leases", iteration, resumable=lambda run_id: True)
    [line] = held.value.lines
    assert line.startswith(f"a: already being trained by host gpu-box-2, pid 4242, run {tracker.run_id} "
                           f"(its lease runs until ")
    assert line.endswith("); wait for it to finish, or stop that process")

    set_lease(uri, tracker.run_id, "gpu-box-2", 4242, time.time() - 90)
    decision = store.begin("leases", iteration, resumable=lambda run_id: True)
    assert decision.kind == RESUME and decision.run.run_id == tracker.run_id
    taken, resuming = decision.message.splitlines()
    assert taken.startswith(f"a: taking over run {tracker.run_id[:8]}'s lease: it expired at ")
    assert taken.endswith("(host gpu-box-2, pid 4242)") and resuming.startswith("a: resuming unfinished run")

    gone = subprocess.Popen(["true"])
    gone.wait()
    set_lease(uri, tracker.run_id, this_host(), gone.pid, time.time() + 600)
    message = store.begin("leases", iteration, resumable=lambda run_id: True).message
    assert message.splitlines()[0] == (f"a: taking over run {tracker.run_id[:8]}'s lease: its process is gone "
                                       f"(host {this_host()}, pid {gone.pid})")
    resumed = store.start(store.begin("leases", iteration, resumable=lambda run_id: True), "leases", iteration, {})
    assert resumed.run_id == tracker.run_id
    lease = store.run(tracker.run_id).tags["harness.lease"]
    assert Lease.from_tag(lease).pid == os.getpid() and Lease.from_tag(lease).host == this_host()


def test_lease_is_renewed_with_each_epoch_and_outlives_slow_epochs(tmp_path, monkeypatch):
    from harness.track.leases import Lease
    from harness.track.store import Store

    monkeypatch.setenv("HARNESS_LEASE_SECONDS", "60")
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    iteration = ledger.load(write_ledger(tmp_path, "renew")).resolve("a", "smoke")
    store = Store(uri)
    tracker = store.start(store.begin("renew", iteration), "renew", iteration, {})
    first = Lease.from_tag(store.run(tracker.run_id).tags["harness.lease"])
    assert 55 < first.expires - time.time() <= 60
    tracker.pass_started(0, iteration)
    tracker.epoch_finished(0, 1, {"loss": 1.0, "epoch_seconds": 100.0})
    tracker.flush()  # the epoch's batch (and the lease in it) is logged asynchronously; the Runner flushes it too
    renewed = Lease.from_tag(store.run(tracker.run_id).tags["harness.lease"])
    assert 295 < renewed.expires - time.time() <= 300  # three of the longest epoch, more than 60 s


def test_an_unreachable_server_fails_fast_with_one_line_naming_it(tmp_path):
    """A server that accepts connections and never answers (the worst case: no refusal to
    notice) stops `harness run` within 15 s, before TensorFlow is imported or anything written."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "harness.cli", "run", "eleventh", "--profile", "smoke",
                                 "--tracking-uri", uri, "--work-dir", str(tmp_path / "work")],
                                cwd=REPO, capture_output=True, text=True, timeout=60)
        seconds = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert seconds < 15, seconds
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"error: tracking server {uri} is unreachable (")
    assert not (tmp_path / "work").exists()
