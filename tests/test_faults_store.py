"""The MLflow SQLite store failing under a running `harness run`: locked by another process past
MLflow's 20 s busy timeout, and its disk full. Real parts only: a real sqlite3 connection holding
`BEGIN EXCLUSIVE` on mlflow.db, a real tmpfs filled by a real file, real TensorFlow training in a
subprocess.

Both are treated like a tracking server lost for good (tests/test_faults_server.py): the run
stops with exit 1 and one line (no traceback, no SQL statement), its work folder and last good
snapshot kept, and the same command, once the lock is released or space freed, resumes it, sends
the epoch it had not logged and finishes with every metric logged once. The moment is named, not
timed: the run pauses after epoch 2's snapshot, before epoch 2 is logged
(HARNESS_FAULT=after-snapshot:2:pause, harness/faults.py), the test locks or fills the store,
then lets it go on, so the run's next call to the store is the one that meets the fault.
"""

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from fault_runs import OUTAGE, check_every_metric_arrived, start_run, wait_for

pytestmark = pytest.mark.faults

STORE_DISK = "16m"  # the tmpfs under the store: a new store and its artifacts take about 1 MiB


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from harness.data.synth import generate

    folder = tmp_path_factory.mktemp("synth")
    generate(folder, 64, seed=5)
    return folder


@pytest.fixture
def store_disk(tmp_path):
    """A small tmpfs at tmp_path/disk for the store alone (the work folder stays on the normal
    disk); skipped with the reason where mounting is refused; unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={STORE_DISK}", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"a full disk under the store needs a tmpfs, and `mount -t tmpfs` was refused "
                    f"(uid {os.getuid()}; needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield disk
    if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)  # still busy: detach it


def fill(disk: Path) -> Path:
    """Fill `disk` to its last page (1 MiB writes, then 4 KiB ones): a filler file to remove."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for chunk in (b"\0" * (1 << 20), b"\0" * 4096):
            try:
                while True:
                    handle.write(chunk)
            except OSError:
                pass
    return filler


def the_line(output: str) -> str:
    """The run's one `error:` line; fails when there is a traceback, a SQL statement or more."""
    assert "Traceback" not in output and "[SQL:" not in output, output[-4000:]
    [line] = [line for line in output.splitlines() if line.startswith("error:")]
    return line


def parent_status(db: Path) -> str:
    """The outage run's status, read with sqlite3 (MLflow not asked)."""
    with sqlite3.connect(str(db)) as connection:
        [(status,)] = connection.execute("SELECT status FROM runs WHERE name LIKE 'outage%' AND name NOT LIKE "
                                         "'%/pass-%'").fetchall()
    return status


def kept_snapshot(work: Path) -> str:
    """The snapshot the run's state.json names, checked to exist (the work folder intact)."""
    [state] = work.glob("*/state.json")
    snapshot = json.loads(state.read_text())["snapshot"]
    assert (state.parent / snapshot).is_file(), snapshot
    return snapshot


def rerun(book: Path, synth: Path, folder: Path, uri: str, fault_dir: Path, work: Path) -> str:
    """The same command again, without the pause: exit 0, the run resumed and epoch 2 sent."""
    log = folder / "rerun.log"
    run = start_run(book, synth, folder, uri, fault_dir, log, pause=False, work=work)
    try:
        code = run.wait(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    output = log.read_text(errors="replace")
    assert code == 0 and "resuming unfinished run" in output, output[-3000:]
    assert "logged 1 epoch(s) the killed process had finished but not reported" in output, output[-3000:]
    return output


def test_store_locked_mid_run_stops_in_one_line_and_the_rerun_resumes(synth, tmp_path, record_property):
    """Another process holds BEGIN EXCLUSIVE on mlflow.db when the run is about to log epoch 2:
    after MLflow's 20 s busy timeout the run stops, exit 1, one line naming the store file, the
    run left RUNNING and the kept work folder and snapshot, no traceback. Lock released: the same
    command resumes, sends epoch 2, trains epoch 3, and every metric arrives once."""
    record_property("expectation", "mlflow.db held in BEGIN EXCLUSIVE by another process just before epoch 2 is "
                    "logged, past MLflow's 20 s busy timeout: exit 1, one line naming the store file, run left "
                    "RUNNING, work folder and last good snapshot kept, no traceback; lock released: the same "
                    "command resumes, one FINISHED run and pass, steps 1..3 once each, every metric equal to the "
                    "trainer's own history")
    book, fault_dir, log = tmp_path / "outage.yaml", tmp_path / "fault", tmp_path / "run.log"
    book.write_text(OUTAGE)
    fault_dir.mkdir()
    db, work = (tmp_path / "store" / "mlflow.db").resolve(), tmp_path / "work"
    uri = f"sqlite:///{db}"
    run, holder = start_run(book, synth, tmp_path, uri, fault_dir, log), None
    try:
        assert wait_for((fault_dir / "paused").exists, run, 300, "it paused", log), log.read_text()[-3000:]
        holder = sqlite3.connect(str(db), timeout=30, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        (fault_dir / "go").touch()
        locked_at = time.monotonic()
        code = run.wait(timeout=300)
        waited = time.monotonic() - locked_at
        line = the_line(log.read_text(errors="replace"))
        assert code == 1 and waited >= 20, (code, waited, line)
        snapshot = kept_snapshot(work)
        assert line.startswith(f"error: outage: stopped, the MLflow store {db} is locked by another process (still "
                               f"locked after 20 s: database is locked); run "), line
        assert "is left RUNNING there (marking it needs the store)" in line and str(work) in line, line
        assert f"last good snapshot {snapshot} (step 2)" in line, line
        assert "run the same command again once the lock is released to resume" in line, line
        holder.execute("ROLLBACK")
        holder.close()
        holder = None
        assert parent_status(db) == "RUNNING"
        rerun(book, synth, tmp_path, uri, fault_dir, work)
        check_every_metric_arrived(uri, work)
        record_property("result_detail", f"stopped {waited:.0f} s after the lock; " + line.split("; ")[0])
    finally:
        if holder is not None:
            holder.close()
        if run.poll() is None:
            run.kill()
            run.wait()


def test_store_disk_full_mid_run_stops_in_one_line_and_the_rerun_resumes(synth, tmp_path, store_disk,
                                                                         record_property):
    """mlflow.db on a small tmpfs (the work folder on the normal disk), filled to its last page
    while the run is about to log epoch 2: the run stops, exit 1, one line naming the store's
    full disk and the kept work folder and snapshot, no traceback; the store still opens and
    passes PRAGMA integrity_check, no journal is left behind. Filler removed: the same command
    resumes, sends epoch 2, trains epoch 3, and every metric arrives once."""
    record_property("expectation", f"mlflow.db on a {STORE_DISK} tmpfs filled to its last page just before epoch 2 "
                    "is logged: exit 1, one line naming the store's full disk, the work folder (normal disk) and "
                    "last good snapshot kept, no traceback; the store passes PRAGMA integrity_check; filler "
                    "removed: the same command resumes, one FINISHED run and pass, steps 1..3 once each, every "
                    "metric equal to the trainer's own history")
    book, fault_dir, log = tmp_path / "outage.yaml", tmp_path / "fault", tmp_path / "run.log"
    book.write_text(OUTAGE)
    fault_dir.mkdir()
    db, work = (store_disk / "store" / "mlflow.db").resolve(), tmp_path / "work"
    uri = f"sqlite:///{db}"
    run = start_run(book, synth, tmp_path, uri, fault_dir, log, work=work)
    try:
        assert wait_for((fault_dir / "paused").exists, run, 300, "it paused", log), log.read_text()[-3000:]
        filler = fill(store_disk)
        (fault_dir / "go").touch()
        code = run.wait(timeout=300)
        line = the_line(log.read_text(errors="replace"))
        assert code == 1, (code, line)
        snapshot = kept_snapshot(work)
        assert line.startswith(f"error: outage: stopped, the disk under the MLflow store {db} is full (database or "
                               f"disk is full); run "), line
        assert str(work) in line and f"last good snapshot {snapshot} (step 2)" in line, line
        assert "free space on the store's disk, then run the same command again to resume" in line, line
        left = sorted(p.name for p in db.parent.iterdir())
        assert not [name for name in left if name.endswith(("-journal", "-wal"))], left
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        status = parent_status(db)
        filler.unlink()
        rerun(book, synth, tmp_path, uri, fault_dir, work)
        check_every_metric_arrived(uri, work)
        record_property("result_detail", f"run left {status}; " + line.split("; ")[0])
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
