"""A run stopped by its surroundings (a full disk, the work folder's or the store's; a tracking server
gone; a SQLite store locked): one line saying what happened and what was kept (errors.RunHalted).
"""

from __future__ import annotations


from pathlib import Path
from typing import Optional

from harness.core.errors import DiskFull, RunHalted, StoreLocked, TrackingLost, is_disk_full
from harness.core.records import (KILLED)


def halted_by(exc: BaseException, name: str, tracker, uri: str, folder: Path, state,
            marking: bool = True) -> Optional[RunHalted]:
    """The RunHalted (one line) for a run its surroundings stopped: a full disk (the work
    folder's or the store's), a tracking server gone past MLflow's retries, a SQLite store locked
    past its busy timeout; None for anything else (a bug: the run is failed, with a traceback).
    Not `marking` after training: the final logging marks the run itself (log_final_model)."""
    from harness.track.failures import server_lost, store_full, store_locked

    full = store_full(exc, uri)
    if full is not None or is_disk_full(exc):
        if not marking:
            return DiskFull(_disk_full_line(name, tracker, folder, state, exc, full, marked=None))
        return _disk_full(name, tracker, folder, state, exc, full)
    if server_lost(exc):
        return _server_lost(name, tracker, uri, folder, state)
    locked = store_locked(exc, uri)
    if locked is not None:
        return StoreLocked(f"{name}: stopped, {locked}; run {tracker.run_id[:8]} is left RUNNING there (marking it "
                           f"needs the store); its work folder {folder} is kept, {_kept(state)}: run the same command "
                           f"again once the lock is released to resume (the epochs it has not logged are sent then)")
    return None


def _disk_full(name: str, tracker, folder: Path, state, exc: BaseException, store: Optional[str] = None) -> DiskFull:
    """A run stopped by a full disk: marked KILLED (an unfinished run, so the same command
    resumes it), its work folder left as it is, and the one line saying so. Marking it needs
    the store, which may sit on the same full disk: then the line says that too, and the run
    is resumed all the same (its lease's holder is gone). `store`: how the store's own full disk
    is worded (harness.track.store_full), when that is the full one."""
    try:
        tracker.fail(f"disk full: {store or exc}", status=KILLED)
        marked = f"run {tracker.run_id[:8]} is marked KILLED"
    except Exception as also:  # noqa: BLE001 - the line must still come out
        marked = f"run {tracker.run_id[:8]} could not be marked in MLflow either ({type(also).__name__})"
    return DiskFull(_disk_full_line(name, tracker, folder, state, exc, store, marked))


def _disk_full_line(name: str, tracker, folder: Path, state, exc: BaseException, store: Optional[str],
                    marked: Optional[str]) -> str:
    """The one line of a full disk: which disk (the store's, named, or the work folder's), the
    run's mark, what was kept, what to do."""
    what = store or f"the disk is full ({exc})"
    where = "on the store's disk" if store else "there"
    marked = marked or f"run {tracker.run_id[:8]} is left unfinished"
    return (f"{name}: stopped, {what}; {marked}; its work folder {folder} is kept, {_kept(state)}: free space "
            f"{where}, then run the same command again to resume")


def _kept(state) -> str:
    return (f"with its last good snapshot {state.snapshot} (step {state.step})" if state.snapshot
            else "(no epoch had been saved yet)")


def _server_lost(name: str, tracker, uri: str, folder: Path, state) -> TrackingLost:
    """A run whose tracking server stopped answering for longer than MLflow's retries: left as
    it is (RUNNING there; its lease's holder is gone once this process ends), and the line."""
    from harness.track.remote import retry_window

    return TrackingLost(f"{name}: stopped, the tracking server {uri} did not answer for about {retry_window()} s "
                        f"of retries; run {tracker.run_id[:8]} is left RUNNING there; its work folder {folder} is "
                        f"kept, {_kept(state)}: once the server answers, run the same command again to resume "
                        f"(the epochs it has not logged are sent then)")
