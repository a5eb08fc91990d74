"""The two faces of the track package that callers program against, as Protocols.

`Tracker`: the events of one training run. harness.track.tracker.RunTracker writes them to MLflow;
harness.sweep.trial.Trial wraps one, reporting each epoch on to Optuna as well; the training loop's
own `harness.train.loop.Reporter` (pass_started, epoch_finished, pass_finished) is the part of it
the Runner calls, and harness.run.console.ConsoleReporter prints those before handing them on.

`RunReader`: the runs of one experiment, read back as plain `RunRecord`s.
harness.track.fast_store.SqliteReader answers from a SQLite store of a known schema without
MLflow; harness.track.reader.MlflowReader through the MLflow client (a server, PostgreSQL, any
other schema); harness.track.fast_store.open_reader picks one. A test keeps them equal run for run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Protocol

from harness.core.records import RunRecord


class Tracker(Protocol):
    """What a run tells its tracking, in order: model_built, replay (epochs a killed process
    finished but never reported), per pass pass_started / epoch_finished... / pass_finished, then
    log_model once and finish, or fail."""

    run_id: str

    def model_built(self, total: int, trainable: int, summary_text: str) -> None: ...

    def replay(self, history: Iterable[dict]) -> int: ...

    def pass_started(self, index: int, iteration, freeze=None) -> None: ...

    def epoch_finished(self, pass_index: int, step: int, values: dict) -> None: ...

    def flush(self) -> None:
        """Wait until the epochs handed over have landed (their logging is asynchronous)."""

    def pass_finished(self, index: int, result) -> None: ...

    def log_model(self, checkpoint: Path, card, example, outputs: dict[str, str], step: int = 0) -> str: ...

    def finish(self, history: list[dict], results: list, final_checkpoint: Optional[Path],
               selected: Optional[dict] = None) -> dict: ...

    def fail(self, reason: str, status: str = ...) -> None: ...


class RunReader(Protocol):
    """The runs of one experiment, newest first where there are several."""

    def latest_finished(self, iteration: str, config_sha: Optional[str] = None) -> Optional[RunRecord]: ...

    def runs(self, iteration: Optional[str] = None, variants: bool = False) -> list[RunRecord]: ...

    def references(self) -> list[RunRecord]: ...

    def known(self, run_ids: Iterable[str]) -> set[str]: ...

    def run(self, run_id: str) -> Optional[RunRecord]: ...

    def predictions(self, run_id: str): ...  # harness.core.predictions.Predictions, or None
