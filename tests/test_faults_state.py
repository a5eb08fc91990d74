"""Damaged run state, a damaged or locked MLflow store, a full disk: real subprocesses
(`python -m harness.cli run`), real TensorFlow, a real SQLite store, a real tmpfs.

Every case ends in one located line on stderr (`error: FILE: what is wrong; the way out`), no
traceback, exit 2 when refused before anything was written, 1 for a full disk met mid-run, and
the damaged file left exactly as it was: the harness never throws away what may be the only copy.

Cost: one run is trained per module and SIGKILLed after its first epoch (HARNESS_FAULT); each
case works on a copy of its store and work dir. The copies share the original's artifact folder
(its absolute path is recorded in the store), which only the disk-full case, the one that
finishes, writes to.
"""

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[1]
ITER = "tiny"
LEDGER = """\
experiment: faults-state
defaults:
  seed: 3
  data: {name: hvc, image_size: 32, val_fraction: 0.25, cache: memory}
  backbone: {name: custom, freeze: none}
  head: {neck: gap, neck_units: 16, tower_units: [8], tower_dropouts: [0.3]}
  optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
  batch_size: {train: 16, eval: 16}
profiles:
  cpu: {set: {}, max_epochs_per_pass: 3}
  smoke: {set: {}, max_epochs_per_pass: 3}
iterations:
  tiny:
    passes: [{epochs: 3}]
"""
STEPS = [1, 2, 3]


@pytest.fixture(autouse=True)
def expectation(request, record_property):
    """Each test's docstring is its FAULTS.md expectation (tests/faults_report.py reads it)."""
    record_property("expectation", " ".join((request.function.__doc__ or "").split()))


def harness(store: Path, base, *extra, command="run", fault=None, work=None, timeout=300):
    """`harness run tiny` (or `runs`) in a subprocess against the store in `store`; the worktree's
    harness package first on the path, whatever the venv's editable install points at."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("HARNESS_FAULT", None)
    if fault:
        env["HARNESS_FAULT"] = fault
    args = [sys.executable, "-m", "harness.cli", command, ITER, "--ledger", str(base.ledger),
            "--tracking-uri", f"sqlite:///{store}/mlflow.db"]
    if command == "run":
        args += ["--profile", "smoke", "--data", str(base.data), "--work-dir", str(work or store / "work")]
    return subprocess.run([*args, *extra], cwd=store, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """The run every case starts from: trained one epoch, then SIGKILLed, so it is unfinished
    (RUNNING in MLflow) with a state.json and one epoch snapshot in its work folder."""
    from harness.data.synth import generate

    base = tmp_path_factory.mktemp("killed")
    generate(base / "data", 96, seed=5)
    (base / "tiny.yaml").write_text(LEDGER)
    run = SimpleNamespace(folder=base, data=base / "data", ledger=base / "tiny.yaml")
    result = harness(base, run, fault="after-snapshot:1")
    assert result.returncode == -9, result.stdout[-2000:] + result.stderr[-2000:]
    return run


def copy_of(killed, dest: Path, work: Path = None) -> Path:
    """A private copy of the killed run's store and work dir in `dest` (the work dir in `work`)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(killed.folder / "mlflow.db", dest / "mlflow.db")
    shutil.copytree(killed.folder / "work", work or dest / "work", symlinks=True, dirs_exist_ok=True)
    return dest


def run_folder(work: Path) -> Path:
    [folder] = [path.parent for path in work.glob("*/state.json")]
    return folder


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def refused(result, code: int) -> str:
    """The one `error:` line of a command that exited `code` without a traceback."""
    shown = result.stdout[-2000:] + result.stderr[-3000:]
    assert result.returncode == code, shown
    assert "Traceback" not in result.stderr, shown
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, shown
    print(errors[0])  # the line itself, in the report of a failing case (pytest -rA: of every case)
    return errors[0]


def status(db: Path, run_id: str) -> str:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT status FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()[0]


def parent_runs(db: Path) -> list:
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT run_uuid, status FROM runs WHERE run_uuid NOT IN "
            "(SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId')").fetchall()


def steps(db: Path, run_id: str, key: str = "val_loss") -> list:
    """Every logged step of a metric, duplicates included (the store's full history)."""
    with sqlite3.connect(db) as connection:
        return [row[0] for row in connection.execute(
            "SELECT step FROM metrics WHERE run_uuid = ? AND key = ? ORDER BY step", (run_id, key))]


def test_garbage_state_json_refused_in_one_line_and_kept(killed, tmp_path):
    """A garbage state.json in the unfinished run's work folder: exit 2, one line naming state.json
    and the ways out (`--fresh`, or moving the run folder away), no traceback, the store and the
    file byte for byte as they were; then `--fresh` gets past it (a new run trains an epoch in a
    new folder) and the damaged folder is still there."""
    store = copy_of(killed, tmp_path)
    folder = run_folder(store / "work")
    state = folder / "state.json"
    garbage = state.read_bytes()[:40] + os.urandom(64)
    state.write_bytes(garbage)
    before = digest(store / "mlflow.db")
    line = refused(harness(store, killed), 2)
    assert f"{state}: not a run state" in line and "--fresh" in line and f"move {folder} away" in line, line
    assert state.read_bytes() == garbage and digest(store / "mlflow.db") == before
    fresh = harness(store, killed, "--fresh", fault="after-snapshot:1")
    assert fresh.returncode == -9, fresh.stdout[-2000:] + fresh.stderr[-2000:]
    assert len(list((store / "work").glob("*/state.json"))) == 2 and state.read_bytes() == garbage


def test_truncated_snapshot_refused_in_one_line_and_kept(killed, tmp_path):
    """The epoch snapshot state.json names, cut to half its length: exit 2, one line naming the
    snapshot as damaged and `--fresh`, no traceback; the snapshot, state.json and the store
    byte for byte as they were."""
    store = copy_of(killed, tmp_path)
    folder = run_folder(store / "work")
    [snapshot] = folder.glob("pass-1/epoch-*.npz")
    cut = snapshot.read_bytes()[: snapshot.stat().st_size // 2]
    snapshot.write_bytes(cut)
    before = (digest(store / "mlflow.db"), digest(folder / "state.json"))
    line = refused(harness(store, killed), 2)
    assert f"{snapshot}: the epoch snapshot is damaged" in line and "--fresh" in line, line
    assert snapshot.read_bytes() == cut
    assert (digest(store / "mlflow.db"), digest(folder / "state.json")) == before


def test_garbage_mlflow_db_refused_in_one_line_and_kept(killed, tmp_path):
    """mlflow.db overwritten with random bytes: `harness run` and `harness runs` both exit 2 with
    one line naming the file as damaged and how to go on (restore it, or move it aside), no
    traceback, no MLflow retry loop; the file and the work folder are left as they were."""
    store = copy_of(killed, tmp_path)
    db = store / "mlflow.db"
    garbage = os.urandom(16384)
    db.write_bytes(garbage)
    state = digest(run_folder(store / "work") / "state.json")
    started = time.monotonic()
    line = refused(harness(store, killed), 2)
    assert line.startswith(f"error: {db}: the MLflow store is damaged (file is not a database)"), line
    assert f"mv {db} {db}.damaged" in line, line
    assert refused(harness(store, killed, command="runs"), 2) == line
    assert time.monotonic() - started < 90  # MLflow alone retries ~100 s before it gives up
    assert db.read_bytes() == garbage and digest(run_folder(store / "work") / "state.json") == state


def test_locked_mlflow_db_refused_after_mlflows_wait(killed, tmp_path):
    """mlflow.db held by another connection in BEGIN EXCLUSIVE: `harness run` waits MLflow's 20 s
    busy timeout, then exits 2 with one line naming the file as locked and saying to wait for
    the holder; nothing is written, and once the lock goes the store reads as before."""
    store = copy_of(killed, tmp_path)
    db = store / "mlflow.db"
    before = digest(db)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        line = refused(harness(store, killed), 2)
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert line.startswith(f"error: {db}: the MLflow store is locked by another process (still locked after 20 s"), line
    assert "Wait for that process to finish" in line and waited >= 20, (line, waited)
    assert digest(db) == before
    listed = harness(store, killed, command="runs")
    assert listed.returncode == 0 and ITER in listed.stdout, listed.stdout + listed.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs at tmp_path/disk (None when it cannot be mounted: not root, no
    CAP_SYS_ADMIN), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
                             capture_output=True, text=True).returncode == 0
    yield disk if mounted else None
    if mounted:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` to the last byte, then give `leave` bytes back: a filler file to remove later."""
    filler = disk / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError:
            pass
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def test_disk_full_mid_run_is_one_line_then_the_rerun_resumes(killed, tmp_path, small_disk, record_property):
    """The work dir on a small tmpfs filled to within half a snapshot (fallback where mounting is
    refused: HARNESS_FAULT=during-snapshot:1:enospc): the resumed run stops at its next snapshot
    with exit 1 and one line naming the run's work folder and the full disk, no traceback; the
    run is KILLED in MLflow, state.json still names the last good snapshot, which is intact, and
    no partial file is left. With the space back, the same command resumes and ends with one
    FINISHED run whose steps 1..3 are each logged once."""
    work = (small_disk or tmp_path) / "work"
    store = copy_of(killed, tmp_path / "store", work=work)
    folder = run_folder(work)
    [snapshot] = folder.glob("pass-1/epoch-*.npz")
    kept = (digest(folder / "state.json"), digest(snapshot))
    if small_disk is not None:
        filler = fill(small_disk, leave=snapshot.stat().st_size // 2)
        assert os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize < snapshot.stat().st_size
        failed = harness(store, killed, work=work)
    else:
        filler = None
        failed = harness(store, killed, work=work, fault="during-snapshot:1:enospc")
    way = "a real full tmpfs" if small_disk is not None else "injected ENOSPC (mount refused)"
    record_property("expectation", f"[{way}] " + " ".join(test_disk_full_mid_run_is_one_line_then_the_rerun_resumes
                                                          .__doc__.split()))
    line = refused(failed, 1)
    assert f"{ITER}: stopped, the disk is full" in line and str(folder) in line, line
    assert f"run {folder.name[:8]} is marked KILLED" in line and "last good snapshot pass-1/epoch-1.npz (step 1)" in line, line
    assert status(store / "mlflow.db", folder.name) == "KILLED"
    assert (digest(folder / "state.json"), digest(snapshot)) == kept
    assert not list(folder.rglob("tmp-*")), list(folder.rglob("*"))
    if filler is not None:
        filler.unlink()
    resumed = harness(store, killed, work=work)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resuming pass 1 after epoch 1" in resumed.stdout, resumed.stdout[-2000:]
    assert parent_runs(store / "mlflow.db") == [(folder.name, "FINISHED")]
    assert steps(store / "mlflow.db", folder.name) == STEPS
