"""Faults during a run, through the test-only HARNESS_FAULT switch (harness/faults.py): real
subprocesses, real signals (SIGKILL/SIGTERM sent by the process to itself at a named moment),
real TensorFlow, a real SQLite MLflow store. The headline: a run killed at epoch k and resumed
logs exactly the numbers of an uninterrupted run at every later epoch."""

import os
import subprocess
import sys

import pytest

from harness import ledger

pytestmark = pytest.mark.faults

# Dropout, flip augmentation and SGD momentum: every kind of random and optimizer state a resume
# has to bring back. Two passes, the second from the first's best checkpoint.
EXACT = """\
experiment: exact
defaults:
  seed: 7
  data: {name: hvc, image_size: 32, val_fraction: 0.25, cache: memory}
  backbone: {name: custom, freeze: none}
  head: {neck: gap, neck_units: 16, tower_units: [8], tower_dropouts: [0.3]}
  optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
  batch_size: {train: 16, eval: 16}
  augmentation: {flip: true}
profiles:
  cpu: {set: {}, max_epochs_per_pass: 3}
  smoke: {set: {}, max_epochs_per_pass: 3}
iterations:
  exact:
    passes: [{epochs: 3}, {epochs: 2, lr: 0.01, resume_from: best}]
"""
STEPS = [1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from harness.data.synth import generate

    folder = tmp_path_factory.mktemp("synth")
    generate(folder, 96, seed=5)
    return folder


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    path = tmp_path_factory.mktemp("ledger") / "exact.yaml"
    path.write_text(EXACT)
    return ledger.load(path)


def histories(uri: str) -> tuple[str, str, dict]:
    """(run id, status, metric -> [(step, value)]) of the one parent run in the store; the
    epoch's wall time is the only metric allowed to differ."""
    from harness.track.store import Store

    store = Store(uri)
    [parent] = store.runs("exact", "exact")
    out = {key: [(p.step, p.value) for p in store.metric_history(parent.run_id, key)]
           for key in parent.metrics if key != "epoch_seconds"}
    return parent.run_id, parent.status, out


@pytest.fixture(scope="module")
def uninterrupted(book, synth, tmp_path_factory):
    """The reference: the same command, never interrupted, in this process."""
    from harness.run.launch import run_iteration

    folder = tmp_path_factory.mktemp("uninterrupted")
    uri = f"sqlite:///{folder}/mlflow.db"
    code = run_iteration(book, "exact", profile="smoke", data_dir=str(synth), tracking_uri=uri,
                         work_dir=str(folder / "work"), log=lambda *_: None)
    assert code == 0
    return histories(uri)[2]


def harness_run(book, synth, folder, fault=None, timeout=300):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("HARNESS_FAULT", None)
    if fault:
        env["HARNESS_FAULT"] = fault
    command = [sys.executable, "-m", "harness.cli", "run", "exact", "--ledger", str(book.path), "--profile", "smoke",
               "--data", str(synth), "--tracking-uri", f"sqlite:///{folder}/mlflow.db", "--work-dir", str(folder / "work")]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)


def per_epoch(history: dict) -> dict:
    return {key: points for key, points in history.items() if [s for s, _ in points] == STEPS}


def test_killed_at_epoch_2_and_resumed_logs_exactly_the_uninterrupted_numbers(book, synth, uninterrupted, tmp_path):
    killed = harness_run(book, synth, tmp_path, fault="after-snapshot:2")
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    killed_id, status, _ = histories(f"sqlite:///{tmp_path}/mlflow.db")
    assert status == "RUNNING"  # SIGKILL: nobody marked it
    resumed = harness_run(book, synth, tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"resuming unfinished run {killed_id[:8]}" in resumed.stdout
    assert "resuming pass 1 after epoch 2" in resumed.stdout
    # the killed process's lease on the run: taken over at once (its pid is gone), and said so
    assert f"exact: taking over run {killed_id[:8]}'s lease: its process is gone (host " in resumed.stdout
    run_id, status, history = histories(f"sqlite:///{tmp_path}/mlflow.db")
    assert run_id == killed_id and status == "FINISHED"
    from harness.track.store import Store

    children = Store(f"sqlite:///{tmp_path}/mlflow.db").children(run_id)
    assert [c.name for c in children] == ["exact/pass-1", "exact/pass-2"]
    assert all(c.status == "FINISHED" for c in children)
    expected = per_epoch(uninterrupted)
    assert "val_loss" in expected and "val_gender_acc" in expected and "lr" in expected
    assert per_epoch(history).keys() == expected.keys()
    for key, points in expected.items():
        assert history[key] == points, key  # exact: same floats at steps 1..5, nothing duplicated
    # and the summary the table reads
    for key in ("best_val_gender_acc", "selected_val_gender_acc", "selected_epoch"):
        assert history[key] == uninterrupted[key], key


KILL_POINTS = ["mid-epoch:2", "during-snapshot:1", "after-snapshot:1", "between-passes:1", "final-upload:1"]


def test_sigkill_at_each_awkward_moment_then_rerun_ends_with_one_finished_run(book, synth, uninterrupted, tmp_path,
                                                                             record_property):
    """One run killed five times, once at each point (each rerun continues from the last kill),
    then a clean rerun: one FINISHED parent and two FINISHED passes, every epoch logged once,
    and the same numbers as the uninterrupted run."""
    record_property("expectation", "SIGKILL at " + ", ".join(KILL_POINTS) + ": the rerun ends with one FINISHED "
                    "run, steps 1..5 each once, metrics equal to an uninterrupted run")
    for fault in KILL_POINTS:
        killed = harness_run(book, synth, tmp_path, fault=fault)
        assert killed.returncode == -9, (fault, killed.stdout[-2000:] + killed.stderr[-2000:])
    final = harness_run(book, synth, tmp_path)
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
    from harness.track.store import Store

    store = Store(f"sqlite:///{tmp_path}/mlflow.db")
    [parent] = store.runs("exact", "exact")
    assert parent.status == "FINISHED"
    children = store.children(parent.run_id)
    assert sorted(c.name for c in children) == ["exact/pass-1", "exact/pass-2"]
    assert all(c.status == "FINISHED" for c in children)
    _, _, history = histories(f"sqlite:///{tmp_path}/mlflow.db")
    for key, points in per_epoch(uninterrupted).items():
        assert history[key] == points, key
