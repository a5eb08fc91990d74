"""A sweep's parent run (`ITER/sweep-NAME`): opened, reopened, its trials' summary and plots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient


from harness.core import metrics
from harness.core.records import (FINISHED, RUNNING)
from harness.track.layout import now_ms, param_value, git_tags

if TYPE_CHECKING:  # an annotation only: the store imports this module
    from harness.track.store import Store


class SweepRun:
    """A sweep's parent run (`ITER/sweep-NAME`, one per study, shared by its workers): each
    trial's value, the best value as trials end, the trial counts, Optuna's plots."""

    def __init__(self, client: MlflowClient, run_id: str):
        self._client, self.run_id = client, run_id

    def trial_ended(self, number: int, value: Optional[float], best: Optional[float], ended: int) -> None:
        """`value` at step = trial number (none for a failed trial); `best` at step = trials ended."""
        now = now_ms()
        points = [Metric(metrics.SWEEP_TRIAL_VALUE, float(value), now, number)] if value is not None else []
        points += [Metric(metrics.SWEEP_BEST_VALUE, float(best), now, ended)] if best is not None else []
        if points:
            self._client.log_batch(self.run_id, metrics=points)

    def counts(self, counts: dict) -> None:
        """Trials by how they ended: {"complete": n, "pruned": n, "failed": n}."""
        now = now_ms()
        self._client.log_batch(self.run_id, metrics=[Metric(metrics.SWEEP_TRIALS[k], float(v), now, 0)
                                                     for k, v in counts.items()])

    def figure(self, figure, artifact_file: str) -> None:
        self._client.log_figure(self.run_id, figure, artifact_file)

    def text(self, text: str, artifact_file: str) -> None:
        self._client.log_text(self.run_id, text, artifact_file)

    def tag(self, key: str, value: str) -> None:
        self._client.set_tag(self.run_id, key, value)

    def end(self, status: str = FINISHED) -> None:
        self._client.set_terminated(self.run_id, status)


def open_sweep(store: Store, experiment: str, run_name: str, tags: dict, params: dict, space_yaml: str) -> SweepRun:
    """A new sweep parent run: its tags, the space and settings as params, `space.yaml`."""
    client = store._client
    run_id = client.create_run(store.experiment_id(experiment), run_name=run_name,
                               tags={**git_tags(), **tags}).info.run_id
    client.log_batch(run_id, params=[Param(k, param_value(v)) for k, v in params.items()])
    client.log_text(run_id, space_yaml, "space.yaml")
    return SweepRun(client, run_id)


def sweep_run(store: Store, run_id: str) -> SweepRun:
    """An existing sweep parent run, RUNNING again (another worker, or a rerun)."""
    store._client.update_run(run_id, status=RUNNING)
    return SweepRun(store._client, run_id)
