"""One sweep trial: the plan every trial shares, and the trial itself as a launch.Variant.

`Trial` changes the iteration by the trial's values, names its run `ITER/sweep-NAME/trial-N`
(harness.kind=trial, nested under the sweep's parent run), and wraps the run's tracker: every
epoch goes to MLflow as in `harness run`, then its objective metric to Optuna, whose pruner may
stop the trial there (optuna.TrialPruned through the training loop; the run then ends KILLED with
harness.pruned=true, its metrics and summary kept). A retry of a trial a killed worker left
resumes that trial's run and work folder, and replays the finished epochs to Optuna.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Optional

from harness.ledger.schema import Iteration
from harness.ledger.book import Ledger
from harness.core.records import (FAILED, KILLED, KIND_TRIAL, NEW, RESUME, TAG_KIND, TAG_RETRY_OF, TAG_STUDY,
                                  TAG_SWEEP, TAG_TRIAL, Decision)
from harness.ledger.space import Space, changes_for
from harness.ledger.diffing import deep_merge

# Study and trial attributes the harness keeps in Optuna's storage.
ATTR_SPACE, ATTR_METRIC, ATTR_PARENT_RUN = "harness.space", "harness.metric", "harness.parent_run"
ATTR_RUN, ATTR_FAILURE = "harness.run", "harness.failure"
MAX_RETRIES = 3


@dataclass
class Plan:
    """One sweep: what is searched, how it is scored, where it is kept."""

    book: Ledger
    name: str
    space: Space
    base: Iteration  # the iteration as written (profile full); trials change this, then the profile applies
    profile: str
    metric: str
    direction: str  # "minimize" or "maximize"
    sweep: str  # NAME in ITER/sweep-NAME
    storage_url: str
    tags: dict  # ledger, profile, data
    trials: int
    seed: int
    startup_trials: int
    warmup_epochs: int
    data_dir: Optional[str] = None
    tracking_uri: Optional[str] = None
    work_dir: Optional[str] = None
    timeout: Optional[float] = None
    base_changes: dict = field(default_factory=dict)  # `sweep --set`: the variant every trial starts from

    @property
    def study_name(self) -> str:
        return f"{self.book.experiment}/{self.name}/sweep-{self.sweep}"

    @property
    def run_name(self) -> str:
        return f"{self.name}/sweep-{self.sweep}"


class Trial:
    """A sweep trial as a launch.Variant, and the tracker wrapper that reports each epoch to
    Optuna, asks the pruner, and ends a pruned run as such."""

    def __init__(self, plan: Plan, trial, values: dict, parent_run_id: str, retry_of: Optional[int], log):
        self.plan, self.trial, self.values, self.log = plan, trial, values, log
        self.retry_of = retry_of  # the trial a killed worker left, when this one retries it
        self.changes = deep_merge(plan.base_changes, changes_for(plan.base, values))
        self.run_name = f"{plan.run_name}/trial-{trial.number}"
        self.tags = {TAG_KIND: KIND_TRIAL, TAG_SWEEP: plan.sweep, TAG_STUDY: plan.study_name,
                     TAG_TRIAL: str(trial.number), "mlflow.parentRunId": parent_run_id,
                     "mlflow.source.name": "harness sweep"}
        self.history: list[dict] = []
        self.pruned_reason: Optional[str] = None
        self.tracker = None

    # ---- launch.Variant

    def decide(self, store, iteration, resumable) -> Decision:
        """NEW, or (a retry of a killed worker's trial) RESUME of that trial's run where it stopped."""
        from harness.track.store import end_run

        previous = self.trial.user_attrs.get(ATTR_RUN) if self.retry_of is not None else None
        if previous and resumable(previous):
            return Decision(RESUME, store.run(previous), f"trial {self.trial.number}: resuming run {previous[:8]} "
                                                         f"of trial {self.retry_of} from its last finished epoch")
        if previous:  # its checkpoints are on another machine: a new run, and the old one closed
            end_run(store, previous, KILLED, f"worker gone; trial {self.retry_of} retried as trial "
                                             f"{self.trial.number} without its checkpoints")
            return Decision(NEW, None, f"trial {self.trial.number}: run {previous[:8]} of trial {self.retry_of} "
                                       f"left no checkpoints here; training from the start")
        return Decision(NEW)

    def watch(self, tracker):
        self.tracker = tracker
        self.trial.set_user_attr(ATTR_RUN, tracker.run_id)
        if self.retry_of is not None:
            tracker.retag({TAG_TRIAL: str(self.trial.number), TAG_RETRY_OF: str(self.retry_of)})
        return self

    # ---- the tracker (harness.track.protocols.Tracker), by composition: the events a trial
    # does not change (run_id, model_built, pass_started, pass_finished, finish, log_model: a
    # finished trial's selected checkpoint is registrable like any run's) are the tracker's own;
    # replay, epoch_finished and fail also feed Optuna.

    def __getattr__(self, name):
        if name == "tracker":  # not watching yet
            raise AttributeError(name)
        return getattr(self.tracker, name)

    def replay(self, history) -> int:
        """Epochs a killed worker finished: to MLflow where missing, and all of them to Optuna
        (the retry is a new Optuna trial)."""
        replayed = self.tracker.replay(history)
        for entry in history:
            self._report(entry["pass"], entry["step"], entry["metrics"], prune=False)
        return replayed

    def epoch_finished(self, pass_index: int, step: int, values: dict) -> None:
        self.tracker.epoch_finished(pass_index, step, values)
        self._report(pass_index, step, values, prune=True)

    def fail(self, reason: str, status: str = FAILED) -> None:
        if self.pruned_reason:
            self.tracker.pruned(self.history, self.pruned_reason)
        else:
            self.tracker.fail(reason, status)

    def _report(self, pass_index: int, step: int, values: dict, prune: bool) -> None:
        import optuna

        self.history.append({"step": step, "pass": pass_index, "metrics": dict(values)})
        value = values.get(self.plan.metric)
        if value is None:
            return
        self.trial.report(float(value), step)
        if prune and self.trial.should_prune():
            self.pruned_reason = (f"pruned at epoch {step}: {self.plan.metric} {value:.4f} is worse than the "
                                  f"median of earlier trials at that epoch")
            raise optuna.TrialPruned(self.pruned_reason)

    def value(self) -> Optional[float]:
        """The trial's score: the best value of the metric over its last pass."""
        last = len(self.plan.base.passes) - 1
        scored = [h["metrics"][self.plan.metric] for h in self.history
                  if h["pass"] == last and self.plan.metric in h["metrics"]]
        if not scored:
            return None
        return max(scored) if self.plan.direction == "maximize" else min(scored)


def describe_values(values: dict) -> str:
    return ", ".join(f"{path}={json.dumps(value)}" for path, value in values.items())


def quiet_optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # ask/tell with heartbeats is what the sweep worker does on purpose (harness.sweep.storage)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


