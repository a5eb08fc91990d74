"""`MlflowReader`: the runs of a store read through the MLflow client (a server, PostgreSQL, an unknown
SQLite schema); harness.track.fast_store reads a known SQLite store without MLflow.
"""

from __future__ import annotations

from typing import Iterable, Optional

from mlflow.exceptions import MlflowException


from harness.core.records import REFERENCES_QUERY, KIND_VARIANT, RunRecord
from harness.track.layout import run_record, search
from harness.track.store import Store
from harness.track.uris import resolve_uri, store_exists


class MlflowReader:
    """Read-only look-ups for `harness table`: nothing is created, and a store that does not
    exist yet reads as empty."""

    def __init__(self, uri: Optional[str], experiment: str):
        self.uri = resolve_uri(uri)
        self.experiment = experiment
        self._store = Store(self.uri) if store_exists(self.uri) else None

    def latest_finished(self, iteration: str, config_sha: Optional[str] = None) -> Optional[RunRecord]:
        """Store.latest_finished in this reader's experiment (None without a store)."""
        if self._store is None:
            return None
        return self._store.latest_finished(self.experiment, iteration, config_sha)

    # The rest answers as harness.track.fast_store.SqliteReader does, through the MLflow client (REST
    # for a server).

    def runs(self, iteration: Optional[str] = None, variants: bool = False) -> list[RunRecord]:
        """Parent runs of the experiment, newest first (with `variants`, the `--set` runs too)."""
        if self._store is None:
            return []
        found = self._store.runs(self.experiment, iteration)
        if variants:
            found = sorted(found + self._store.runs(self.experiment, iteration, KIND_VARIANT),
                           key=lambda r: r.start_time or 0, reverse=True)
        return found

    def references(self) -> list[RunRecord]:
        """Finished reference runs (`harness reference`), newest first."""
        if self._store is None:
            return []
        return [run_record(run) for run in search(self._store, self.experiment, REFERENCES_QUERY)]

    def known(self, run_ids: Iterable[str]) -> set[str]:
        """The ids among `run_ids` of runs the store holds (deleted ones not)."""
        found = set()
        for run_id in dict.fromkeys(i for i in run_ids if i):
            record = self.run(run_id) if self._store is not None else None
            if record is not None and record.run_id == run_id:
                found.add(run_id)
        return found

    def run(self, run_id: str) -> Optional[RunRecord]:
        """The run with this id, or the only parent run of the experiment whose id starts with it."""
        if self._store is None or not run_id:
            return None
        try:
            run = self._store._client.get_run(run_id)
            if run.info.lifecycle_stage == "active":
                return run_record(run)
        except MlflowException:
            pass
        matches = [r for r in self.runs() + self.references() if r.run_id.startswith(run_id)]
        return self._store.run(matches[0].run_id) if len(matches) == 1 else None

    def predictions(self, run_id: str):
        """The run's per-example predictions (harness.core.predictions), None when it logged none."""
        from harness.core import predictions

        if self._store is None or not run_id:
            return None
        try:
            text = self._store.artifact_text(run_id, predictions.ARTIFACT)
        except (MlflowException, OSError):
            return None
        return None if text is None else predictions.loads(text)
