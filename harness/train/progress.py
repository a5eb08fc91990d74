"""Progress inside an epoch: batches done / total, images per second and the epoch's ETA.

On a terminal, one line that tqdm rewrites in place at most twice a second and removes when the
epoch ends (the harness's epoch line follows). When stdout is not a terminal (a pipe, a log
file, CI), a plain line at most every PLAIN_INTERVAL seconds, in the same words (tqdm's own
meter, so nothing here draws a bar).

Only `on_train_batch_begin` is hooked: Keras hands it no logs, so counting batches costs no
device sync, and with no batch-end hook Keras keeps dispatching batch ends asynchronously (a
batch-end hook makes it turn every batch's logs into Python numbers, ~5% of a CPU epoch).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional

TERMINAL_INTERVAL = 0.5  # seconds between redraws of the terminal line
PLAIN_INTERVAL = 10.0  # seconds between plain lines when stdout is not a terminal
PROGRESS_ENV = "HARNESS_PROGRESS"  # "0" turns the progress off


def enabled() -> bool:
    return os.environ.get(PROGRESS_ENV, "1") != "0"


def on_terminal(stream=None) -> bool:
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def epoch_progress(steps: int, batch_size: int, epochs: int, log: Callable[[str], None] = print,
                   stream=None, clock: Callable[[], float] = time.monotonic):
    """A Keras callback showing the progress of each epoch of a fit of `steps` batches."""
    import keras
    from tqdm import tqdm

    terminal = on_terminal(stream)

    class EpochProgress(keras.callbacks.Callback):
        """One tqdm line on a terminal; plain lines every PLAIN_INTERVAL seconds elsewhere."""

        def on_epoch_begin(self, epoch, logs=None):
            self._label = f"  epoch {epoch + 1}/{epochs}"
            self._started = self._last_line = clock()
            self._bar: Optional[tqdm] = None
            if terminal:
                # Redrawn by this callback only (refresh below), on its own clock: tqdm's interval
                # timers would start a monitor thread and draw on update().
                self._bar = tqdm(total=steps, desc=self._label, unit="batch", leave=False, file=stream or sys.stdout,
                                 mininterval=float("inf"), maxinterval=0, dynamic_ncols=True,
                                 bar_format="{desc}: {n_fmt}/{total_fmt} batches |{bar}|{postfix} ETA {remaining}")
                self._bar.set_postfix_str("", refresh=False)

        def on_train_batch_begin(self, batch, logs=None):
            done = batch  # batches finished before this one starts
            if done == 0:
                return
            now = clock()
            rate = done * batch_size / max(now - self._started, 1e-9)
            if self._bar is not None:
                if now - self._last_line >= TERMINAL_INTERVAL:  # redraw at most twice a second
                    self._last_line = now
                    self._bar.n = done
                    self._bar.set_postfix_str(f"{rate:,.0f} img/s", refresh=False)
                    self._bar.refresh()
            elif now - self._last_line >= PLAIN_INTERVAL:
                self._last_line = now
                meter = tqdm.format_meter(done, steps, now - self._started, unit="batch",
                                          bar_format="{n_fmt}/{total_fmt} batches, ETA {remaining}")
                log(f"{self._label}: {meter}, {rate:,.0f} img/s")

        def on_epoch_end(self, epoch, logs=None):
            if self._bar is not None:
                self._bar.close()
                self._bar = None

        def on_train_end(self, logs=None):
            self.on_epoch_end(-1)

    return EpochProgress()


def callbacks(steps: int, batch_size: int, epochs: int, log: Callable[[str], None] = print) -> list:
    """The progress callback for a fit, or none when HARNESS_PROGRESS=0."""
    return [epoch_progress(steps, batch_size, epochs, log)] if enabled() and steps else []
