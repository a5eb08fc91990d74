"""A test-only switch that makes a run fail at a named awkward moment, not by timing luck.

    HARNESS_FAULT=after-snapshot:2          SIGKILL this process the 2nd time it gets there
    HARNESS_FAULT=between-passes:1:sigterm  send itself SIGTERM (also: sigint, sighup)
    HARNESS_FAULT=during-snapshot:1:enospc  raise OSError(ENOSPC), as a full disk would
    HARNESS_FAULT=after-snapshot:2:pause    write $HARNESS_FAULT_DIR/paused, wait for .../go there

Points, in the order a run meets them:
    mid-epoch        after the first training batch of an epoch (a batch hook exists only then)
    during-snapshot  the snapshot's temporary file is written, not yet renamed into place
    after-snapshot   the snapshot and state.json are on disk, the epoch is not yet logged
    queue-not-flushed  the epoch is handed to MLflow's asynchronous logging, not yet flushed
    between-passes   a pass is saved as done, its end not yet logged, the next not started
    final-upload     inside the run's final artifact upload

Unset (always, outside tests) every call is a dictionary lookup and nothing else. The signals
are real: os.kill on this process.

`pause` hands the moment to the test: the run stops at the point, says so with a file, and goes
on only when the test creates `go` (or after PAUSE_SECONDS, so a test that forgot cannot hang it).
Meanwhile the test does what the fault is about to another process (kills the tracking server,
say), so what the run meets next is decided by the test, not by timing.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

ENV = "HARNESS_FAULT"
POINTS = ("mid-epoch", "during-snapshot", "after-snapshot", "queue-not-flushed", "between-passes", "final-upload")
DIR_ENV = "HARNESS_FAULT_DIR"  # where `pause` writes `paused` and waits for `go`
PAUSE_SECONDS = 600.0
ACTIONS = {"kill": signal.SIGKILL, "sigint": signal.SIGINT, "sigterm": signal.SIGTERM, "sighup": signal.SIGHUP}

_reached: dict = {}


def armed(point: str) -> bool:
    """Whether the switch names `point` (so a caller can add a hook it otherwise avoids)."""
    return os.environ.get(ENV, "").split(":")[0] == point


def reach(point: str) -> None:
    """The run is at `point`: fail here if the switch says so and this is the chosen time."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, rest = spec.partition(":")
    if name != point:
        return
    count, _, action = rest.partition(":")
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] != int(count or 1):
        return
    action = action or "kill"
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{point} (injected by {ENV})")
    if action == "pause":
        return _pause(point)
    os.kill(os.getpid(), ACTIONS[action])  # a Python handler runs at the next bytecode


def _pause(point: str) -> None:
    """Write `paused` (this PID and the point) into $HARNESS_FAULT_DIR, then wait for `go`."""
    folder = os.environ.get(DIR_ENV)
    if not folder:
        raise RuntimeError(f"{ENV}={os.environ[ENV]}: the pause action needs {DIR_ENV} (a folder)")
    paused, go = Path(folder) / "paused", Path(folder) / "go"
    tmp = paused.with_suffix(".tmp")
    tmp.write_text(f"{os.getpid()} {point}\n")
    tmp.replace(paused)  # the test never reads half a file
    deadline = time.monotonic() + PAUSE_SECONDS
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def mid_epoch_callback():
    """A Keras callback that reaches `mid-epoch` after each epoch's first batch; None unless
    the switch names that point (a batch hook costs a device sync per step)."""
    if not armed("mid-epoch"):
        return None
    import keras

    class MidEpoch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                reach("mid-epoch")

    return MidEpoch()
