"""Progress inside an epoch (harness.train.progress) on a real Keras fit: one rewritten line on a
terminal, plain lines at most every 10 s elsewhere. The clock is a counter the test advances, so
the 10 s spacing is checked without waiting for it."""

import io
import re

import numpy as np
import pytest

from harness.train import progress

STEPS, BATCH = 12, 4


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    """3 s per reading: every fourth batch is more than 10 s after the last line."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 3.0
        return self.now


@pytest.fixture(scope="module")
def fit():
    import keras

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(STEPS * BATCH, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("sgd", "binary_crossentropy")

    def run(callback, epochs=2):
        model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[callback])

    return run


def test_plain_lines_when_not_a_terminal(fit):
    lines = []
    fit(progress.epoch_progress(STEPS, BATCH, 2, log=lines.append, stream=io.StringIO(), clock=Clock()))
    assert lines, "no progress line in a 12-batch epoch that the clock says took 36 s"
    for line in lines:
        found = re.fullmatch(r"  epoch ([12])/2: (\d+)/12 batches, ETA [0-9:]+, ([\d,]+) img/s", line)
        assert found, line
        assert 0 < int(found.group(2)) < STEPS
    # at most one line per 10 s of the clock: the clock moves 3 s a batch
    per_epoch = [sum(line.startswith(f"  epoch {e}/2") for line in lines) for e in (1, 2)]
    assert all(1 <= n <= STEPS * 3 // 10 for n in per_epoch), per_epoch


def test_one_line_rewritten_in_place_on_a_terminal(fit):
    screen = Terminal()
    lines = []
    fit(progress.epoch_progress(STEPS, BATCH, 1, log=lines.append, stream=screen, clock=Clock()), epochs=1)
    text = screen.getvalue()
    assert lines == []  # nothing through the log: the line is tqdm's
    assert "\n" not in text.rstrip("\n") and "\r" in text  # redrawn with carriage returns, never a new line
    assert re.search(r"epoch 1/1: \d+/12 batches \|.*\|, [\d,]+ img/s ETA", text), text
    assert text.endswith("\r") or text.endswith("\x1b[A"), "the bar is removed when the epoch ends"


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(progress.PROGRESS_ENV, "0")
    assert progress.callbacks(10, 4, 1) == []
    monkeypatch.delenv(progress.PROGRESS_ENV)
    assert len(progress.callbacks(10, 4, 1)) == 1
