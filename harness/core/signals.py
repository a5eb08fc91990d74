"""Stop signals for long-running commands: SIGTERM and SIGHUP end a run the way Ctrl-C does.

Service managers, `timeout` and a plain `kill` send SIGTERM; a closed terminal sends SIGHUP.
Python turns only SIGINT into KeyboardInterrupt, so without this a SIGTERM kills a training
process between two MLflow calls and leaves its run RUNNING. `install()` makes the other two
raise `Stopped`, a KeyboardInterrupt, so the one `except KeyboardInterrupt` in launch marks the
run KILLED, prints the resume line once and the process exits 128 + signal number.

No TensorFlow, no MLflow: the CLI installs this before it imports either.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A stop signal other than SIGINT arrived; `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, _frame):
    raise Stopped(signum)


def install() -> None:
    """SIGTERM and SIGHUP raise `Stopped` in the main thread (SIGINT keeps Python's
    KeyboardInterrupt). Commands that manage a child process (`harness ui`) install their own."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_stopped)


def exit_code(exc: KeyboardInterrupt) -> int:
    """The shell's convention: 128 + the signal's number (130 for Ctrl-C)."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def mark_reported(exc: BaseException) -> BaseException:
    """The command already said it was interrupted and how to resume: the CLI adds nothing."""
    exc.harness_reported = True
    return exc


def reported(exc: BaseException) -> bool:
    return bool(getattr(exc, "harness_reported", False))
