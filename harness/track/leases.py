"""Who is training an iteration right now, so that a second `harness run ITER` refuses.

Two guards, for two kinds of neighbour:

- Processes sharing a work dir (two terminals on one machine): `IterationLock`, a `filelock`
  lock file per (experiment, iteration) under `<work dir>/locks/`, with a small JSON file beside
  it naming the holder (host, pid, run id). The kernel drops the lock when its process dies,
  however it dies, so a killed run never leaves this guard stuck.
- Processes on other machines writing to the same tracking server: a `Lease`, the
  `harness.lease` tag on the run (host, pid, expiry), written when the run starts and renewed
  with every epoch's metrics (harness.track). A lease is live until it expires, or, on its
  own host, until its process is gone; an expired one is taken over and the output says so.

A lease lasts `HARNESS_LEASE_SECONDS` (default 30 minutes) or three times the longest epoch so
far, whichever is longer, so a slow epoch never looks abandoned. A process never counts its own
lease as held by someone else. Pure Python: no MLflow, no TensorFlow.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from filelock import FileLock, Timeout

from harness.core.errors import IterationHeld
from harness.core.process import pid_alive
from harness.core.records import TAG_LEASE, RunRecord

LEASE_SECONDS_ENV = "HARNESS_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 1800.0
EPOCHS_OF_SLACK = 3  # a lease outlives three of the run's longest epochs
LOCKS = "locks"


def this_host() -> str:
    return socket.gethostname()


def lease_seconds() -> float:
    """$HARNESS_LEASE_SECONDS, else 30 minutes: how long a run stays held after its last sign of life."""
    return float(os.environ.get(LEASE_SECONDS_ENV) or DEFAULT_LEASE_SECONDS)


def _clock(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


@dataclass(frozen=True)
class Lease:
    """A run's claim to its iteration: which process on which host, and until when."""

    host: str
    pid: int
    expires: float  # seconds since the epoch

    @classmethod
    def mine(cls, longest_epoch: float = 0.0) -> "Lease":
        """This process's lease from now: the lease time or three of its longest epochs."""
        return cls(this_host(), os.getpid(), time.time() + max(lease_seconds(), EPOCHS_OF_SLACK * longest_epoch))

    def to_tag(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_tag(cls, text: Optional[str]) -> Optional["Lease"]:
        """The lease a tag holds; None for no tag or one this code cannot read (never held)."""
        try:
            data = json.loads(text or "")
            return cls(str(data["host"]), int(data["pid"]), float(data["expires"]))
        except (ValueError, KeyError, TypeError):
            return None

    def mine_already(self) -> bool:
        return self.host == this_host() and self.pid == os.getpid()

    def gone_because(self, now: Optional[float] = None) -> Optional[str]:
        """Why this lease no longer holds anything, or None while it is live."""
        now = time.time() if now is None else now
        if self.host == this_host() and not pid_alive(self.pid):
            return f"its process is gone (host {self.host}, pid {self.pid})"
        if now >= self.expires:
            return (f"it expired at {_clock(self.expires)}, {now - self.expires:.0f} s ago "
                    f"(host {self.host}, pid {self.pid})")
        return None

    def holder(self, run_id: str) -> str:
        return f"host {self.host}, pid {self.pid}, run {run_id}"

    def until(self) -> str:
        return _clock(self.expires)


def lines(*parts: Optional[str]) -> Optional[str]:
    """Log lines joined, None when there are none."""
    return "\n".join(p for p in parts if p) or None


def check_running(iteration: str, running: list[RunRecord]) -> Optional[str]:
    """Given an iteration's RUNNING runs: raise IterationHeld (naming host, pid and run) when
    one holds a live lease of another process; otherwise a line for each lease taken over (its
    holder expired or, on this host, died), or None. Runs without a lease hold nothing."""
    notes = []
    for run in running:
        lease = Lease.from_tag(run.tags.get(TAG_LEASE))
        if lease is None or lease.mine_already():
            continue
        gone = lease.gone_because()
        if gone is None:
            raise IterationHeld(f"{iteration}: already being trained by {lease.holder(run.run_id)} (its lease "
                                f"runs until {lease.until()}); wait for it to finish, or stop that process")
        notes.append(f"{iteration}: taking over run {run.run_id[:8]}'s lease: {gone}")
    return lines(*notes)


class IterationLock:
    """The work dir's lock on one iteration of one experiment, held while `harness run` trains it.

        <work>/locks/<experiment>/<iteration>.lock   the filelock
        <work>/locks/<experiment>/<iteration>.json   its holder: host, pid, run id, since

    `acquire` never waits: a second process refuses at once (IterationHeld, naming the holder),
    before it has written anything."""

    def __init__(self, work_root: Path, experiment: str, iteration: str):
        folder = Path(work_root) / LOCKS / quote(experiment, safe="")
        self.iteration = iteration
        self.path = folder / f"{quote(iteration, safe='')}.lock"
        self.holder_file = folder / f"{quote(iteration, safe='')}.json"
        self._lock = FileLock(str(self.path), timeout=0)

    def acquire(self) -> "IterationLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise IterationHeld(f"{self.iteration}: already being trained by {self.describe_holder()} "
                                f"(lock {self.path}); wait for it to finish, or stop that process") from None
        self.record(None)
        return self

    def record(self, run_id: Optional[str]) -> None:
        """Name this process (and, once it has one, its run) as the holder."""
        from harness.train.checkpoints import atomic_write  # here: `harness list` imports this module's callers

        holder = {"host": this_host(), "pid": os.getpid(), "run_id": run_id, "since": time.time()}
        atomic_write(self.holder_file, lambda tmp: tmp.write_text(json.dumps(holder)))

    def describe_holder(self, wait: float = 1.0) -> str:
        """"host H, pid P, run R" from the holder file (which the holder writes just after locking)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                holder = json.loads(self.holder_file.read_text())
                return f"host {holder['host']}, pid {holder['pid']}, run {holder.get('run_id') or '(starting)'}"
            except (OSError, ValueError, KeyError):
                if time.monotonic() > deadline:
                    return "another process (it has not named itself yet)"
                time.sleep(0.05)

    def release(self) -> None:
        if self._lock.is_locked:
            self.holder_file.unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> "IterationLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
