"""What the mid-run fault tests share (tests/test_faults_server.py, tests/test_faults_store.py):
a tiny ledger (one pass of 3 epochs at 32 px), `harness run` of it in a subprocess that can pause
at a named moment (HARNESS_FAULT=after-snapshot:2:pause, harness/faults.py), and the check that
every metric of the finished run arrived once and equal to what the trainer computed. Kept out
of the test files so that neither imports the other (pytest would collect its tests twice)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTAGE = """\
experiment: outage
defaults:
  seed: 5
  data: {name: hvc, image_size: 32, val_fraction: 0.25, cache: memory}
  backbone: {name: custom, freeze: none}
  head: {neck: gap, neck_units: 8, tower_units: [4], tower_dropouts: [0.2]}
  optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
  batch_size: {train: 16, eval: 16}
profiles:
  cpu: {set: {}, max_epochs_per_pass: 3}
  smoke: {set: {}, max_epochs_per_pass: 3}
iterations:
  outage:
    passes: [{epochs: 3}]
"""
STEPS = [1, 2, 3]
HTTP_SETTINGS = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER")


def wait_for(found, process: subprocess.Popen, seconds: float, what: str, log: Path) -> bool:
    """Poll `found()` until true; False after `seconds`; fails at once if `process` ended."""
    deadline = time.monotonic() + seconds
    while not found():
        assert process.poll() is None, f"the run ended ({process.returncode}) before {what}:\n{log.read_text()[-3000:]}"
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def start_run(book: Path, synth: Path, folder: Path, uri: str, fault_dir: Path, log: Path, pause: bool = True,
              work: Path = None, **settings: str) -> subprocess.Popen:
    """`harness run outage` in a subprocess that pauses before logging epoch 2 (unless not
    `pause`); output to `log`; its work dir `work` (folder/work by default). The worktree's
    harness is imported (PYTHONPATH); MLflow's HTTP settings are the harness's, or `settings`
    (e.g. MLFLOW_HTTP_REQUEST_MAX_RETRIES="2")."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO), "HARNESS_FAULT_DIR": str(fault_dir)}
    if pause:
        env["HARNESS_FAULT"] = "after-snapshot:2:pause"
    else:
        env.pop("HARNESS_FAULT", None)
    for name in HTTP_SETTINGS:
        env.pop(name, None)
    env.update(settings)
    command = [sys.executable, "-m", "harness.cli", "run", "outage", "--ledger", str(book), "--profile", "smoke",
               "--data", str(synth), "--tracking-uri", uri, "--work-dir", str(work or folder / "work")]
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def check_every_metric_arrived(uri: str, work: Path) -> None:
    """One FINISHED parent and pass run; on both, each epoch metric at steps 1..3 exactly once,
    equal to the value the trainer recorded in its state.json (JSON floats round-trip exactly)."""
    from harness.track.store import Store

    store = Store(uri)
    [parent] = store.runs("outage", "outage")
    assert parent.status == "FINISHED", parent.tags.get("harness.failure_reason")
    [child] = store.children(parent.run_id)
    assert (child.name, child.status) == ("outage/pass-1", "FINISHED")
    history = json.loads((work / parent.run_id / "state.json").read_text())["history"]
    assert [h["step"] for h in history] == STEPS
    for key in history[0]["metrics"]:
        expected = [(h["step"], float(h["metrics"][key])) for h in history]
        for run_id in (parent.run_id, child.run_id):
            assert [(p.step, p.value) for p in store.metric_history(run_id, key)] == expected, (run_id, key)
