"""One `harness sweep` process: a worker of a (possibly shared) Optuna study.

Loop: take the next trial (harness.sweep.claims: under the study lock, fail trials whose worker
is gone, retrying them; count the study's trials and take the next one, a waiting retry first,
or stop at the budget); outside the lock, train it through `launch.run_iteration` while a
heartbeat and a lease say it is alive; tell Optuna how it ended; update the sweep's parent run.
The last worker out (nothing left running or waiting) ends the parent run FINISHED. Why the
locks: harness.sweep.storage.
"""

from __future__ import annotations

import json
import math
import time
from typing import Optional

import yaml

from harness.core.errors import InputError
from harness.ledger.schema import LedgerError
from harness.core.records import (FINISHED, KIND_SWEEP, TAG_ITERATION, TAG_KIND, TAG_OVERRIDES, TAG_STORAGE,
                                  TAG_STUDY, TAG_SWEEP)
from harness.sweep.claims import TrialClaims, TrialRetry
from harness.sweep.storage import open_storage, redact
from harness.track.uris import sqlite_path
from harness.sweep.trial import (ATTR_FAILURE, ATTR_METRIC, ATTR_PARENT_RUN, ATTR_RUN, ATTR_SPACE, Plan, Trial,
                                 describe_values)


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True)


class Worker:
    """Takes the study's trials one at a time until it has `plan.trials` (see the module doc):
    the study and its parent run, the loop, and the closing lines. Which trial comes next is
    TrialClaims' job; training one is TrialRunner's."""

    def __init__(self, plan: Plan, log=print):
        import optuna

        from harness.track.store import Store

        self.plan, self.log, self.optuna = plan, log, optuna
        with _setup_lock(plan):
            self.store = Store(plan.tracking_uri)
            self.retry = TrialRetry(self.store, log)
            self.storage = open_storage(plan.storage_url, on_stale=self.retry.worker_gone)
        self.claims = TrialClaims(plan, self.storage, self.retry)
        self.parent = None
        self.ran: list[int] = []

    def open(self) -> None:
        """Create or join the study and its parent run; a study of another space or metric is
        exit 2."""
        from harness.track.sweeprun import open_sweep, sweep_run

        plan = self.plan
        with self.claims.lock():
            study = self.optuna.create_study(study_name=plan.study_name, storage=self.storage,
                                             direction=plan.direction, load_if_exists=True)
            attrs = study.user_attrs
            for key, mine in ((ATTR_SPACE, plan.space.as_dict()), (ATTR_METRIC, plan.metric)):
                if key in attrs and _canonical(attrs[key]) != _canonical(mine):
                    raise InputError(f"--study {plan.sweep}: that study has {key.split('.')[-1]} "
                                     f"{_canonical(attrs[key])}, not {_canonical(mine)}; choose another --study")
            if study.direction.name.lower() != plan.direction:
                raise InputError(f"--study {plan.sweep}: that study is set to {study.direction.name.lower()}")
            if ATTR_PARENT_RUN in attrs:
                self.parent = sweep_run(self.store, attrs[ATTR_PARENT_RUN])
                return
            self.parent = open_sweep(self.store, plan.book.experiment, plan.run_name, _parent_tags(plan),
                                     _parent_params(plan), _space_yaml(plan))
            study.set_user_attr(ATTR_SPACE, plan.space.as_dict())
            study.set_user_attr(ATTR_METRIC, plan.metric)
            study.set_user_attr(ATTR_PARENT_RUN, self.parent.run_id)

    def run(self) -> int:
        """Claim and train until the study has its trials or --timeout passes; the exit code."""
        plan = self.plan
        self.open()
        self.log(f"sweep {plan.run_name}: study {plan.study_name} in {redact(plan.storage_url)}, "
                 f"MLflow run {self.parent.run_id}")
        self.log(f"  space: {'; '.join(r.describe() for r in plan.space.ranges)}")
        self.log(f"  objective: {plan.metric} ({plan.direction}), best over the last pass; TPE seed {plan.seed}; "
                 f"median pruning after {plan.startup_trials} trials and {plan.warmup_epochs} epochs; "
                 f"{plan.trials} trials in the study")
        runner = TrialRunner(plan, self.claims, self.parent, self.log)
        started = time.time()
        while plan.timeout is None or time.time() - started < plan.timeout:
            claimed = self.claims.claim()
            if claimed is None:
                break
            trial, heartbeat, slot = claimed
            runner.train(trial, heartbeat, slot)
            self.ran.append(trial.number)
        else:
            self.log(f"--timeout {plan.timeout:g} s reached: no new trial started")
        return self.close(time.time() - started)

    def close(self, seconds: float) -> int:
        """The closing lines; the parent run ends when no trial is left running or waiting."""
        state = self.optuna.trial.TrialState
        study = self.claims.study()
        trials = study.get_trials(deepcopy=False)
        counts = _counts(trials, state)
        left = [t.number for t in trials if t.state in (state.RUNNING, state.WAITING)]
        times = ", ".join(f"{t.number}: {(t.datetime_complete - t.datetime_start).total_seconds():.0f}"
                          for t in trials if t.datetime_complete and t.datetime_start and t.state != state.FAIL)
        self.log(f"sweep {self.plan.run_name}: {len(trials)} trials ({counts['complete']} complete, "
                 f"{counts['pruned']} pruned, {counts['failed']} failed); this worker ran {len(self.ran)} in "
                 f"{seconds:.0f} s; trial seconds {{{times}}}")
        if left:
            self.log(f"  trials {left} still running or waiting in other workers; the parent run stays open")
        else:
            self.parent.end(FINISHED)
        complete = [t for t in trials if t.state == state.COMPLETE]
        if not complete:
            self.log("  no trial completed")
            return 1
        best = study.best_trial
        self.log(f"  best: trial {best.number}, {self.plan.metric} {best.value:.4f} "
                 f"({describe_values(self.plan.space.values_of(best.params))}), run {best.user_attrs.get(ATTR_RUN)}")
        import shlex

        from harness.ledger.overrides import Overrides

        again = shlex.join(Overrides.from_tag(self.plan.tags.get(TAG_OVERRIDES)).flags())  # `sweep --set`: kept
        self.log(f"  promote it: harness sweep {self.plan.name} --study {self.plan.sweep} "
                 f"{again + ' ' if again else ''}--promote {self.plan.name}_tuned")
        return 0


class TrialRunner:
    """Trains one claimed trial and tells Optuna and the sweep's parent run how it ended. Apart
    from Worker so that the loop reads as claim, train, close, and each stays short."""

    def __init__(self, plan: Plan, claims: TrialClaims, parent, log):
        import optuna

        self.plan, self.claims, self.parent, self.log, self.optuna = plan, claims, parent, log, optuna

    def train(self, trial, heartbeat, slot: int) -> None:
        """However the trial ends, its claim is released and Keras' models freed before the next."""
        plan = self.plan
        values = plan.space.suggest(trial)
        frozen = self.claims.study().get_trials(deepcopy=False)[trial.number]
        retry_of = self.optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        running = Trial(plan, trial, values, self.parent.run_id, retry_of, self.log)
        again = f" (retry of trial {running.retry_of})" if running.retry_of is not None else ""
        self.log(f"-- trial {trial.number} ({slot}/{plan.trials}){again}: {describe_values(values)}")
        started = time.time()
        try:
            state, value, note = self._outcome(running)
        finally:
            self.claims.release(heartbeat)
            import keras

            keras.backend.clear_session()  # each trial builds new models; free the last one's
        self._record(trial.number, state, value, note, time.time() - started)

    def _outcome(self, running: Trial) -> tuple[str, Optional[float], str]:
        """Train the trial and tell Optuna how it ended: (state, value, note)."""
        from harness.run.launch import run_iteration

        optuna, plan, number = self.optuna, self.plan, running.trial.number
        state = optuna.trial.TrialState
        study = self.claims.study()
        try:
            code = run_iteration(plan.book, plan.name, profile=plan.profile, data_dir=plan.data_dir,
                                 tracking_uri=plan.tracking_uri, work_dir=plan.work_dir, variant=running, log=self.log)
        except optuna.TrialPruned as exc:
            study.tell(number, state=state.PRUNED)
            return "PRUNED", None, str(exc)
        except LedgerError as exc:  # values that each fit but not together
            return self._failed(study, running, exc.lines[0])
        except KeyboardInterrupt:
            self.claims.retry.interrupted(study, number)
            raise
        except BaseException as exc:
            self._failed(study, running, f"{type(exc).__name__}: {exc}")
            raise
        value = running.value()
        if code != 0 or value is None or not math.isfinite(value):
            return self._failed(study, running, "training diverged" if code else f"no {plan.metric} logged")
        study.tell(number, value)
        return "COMPLETE", value, ""

    def _failed(self, study, running: Trial, reason: str) -> tuple[str, None, str]:
        running.trial.set_user_attr(ATTR_FAILURE, reason[:1000])
        study.tell(running.trial.number, state=self.optuna.trial.TrialState.FAIL)
        return "FAIL", None, reason

    def _record(self, number: int, state: str, value: Optional[float], note: str, seconds: float) -> None:
        """The trial on the parent run (value, best, counts, plots) and one line of output."""
        study = self.claims.study()
        trials = study.get_trials(deepcopy=False)
        counts = _counts(trials, self.optuna.trial.TrialState)
        complete = [t for t in trials if t.state == self.optuna.trial.TrialState.COMPLETE]
        best = study.best_trial if complete else None
        self.parent.trial_ended(number, value, best.value if best else None, counts["complete"] + counts["pruned"])
        self.parent.counts(counts)
        _plots(self.parent, study, complete)
        result = f"{self.plan.metric} {value:.4f}" if value is not None else note
        leader = f"; best so far: trial {best.number}, {self.plan.metric} {best.value:.4f}" if best else ""
        self.log(f"-- trial {number}: {state}, {result} ({seconds:.0f} s){leader}")


def _setup_lock(plan: Plan):
    """Workers started together on fresh SQLite files would both create the MLflow and Optuna
    tables ("table ... already exists"): one at a time, by a file lock beside the files."""
    from contextlib import nullcontext

    from filelock import FileLock

    from harness.track.uris import artifact_root, resolve_uri

    mlflow_root = artifact_root(resolve_uri(plan.tracking_uri))
    folder = mlflow_root.parent if mlflow_root is not None else None
    if folder is None and sqlite_path(plan.storage_url) is not None:
        folder = sqlite_path(plan.storage_url).parent
    if folder is None:
        return nullcontext()
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / ".harness-setup.lock"))


def _counts(trials, state) -> dict:
    return {"complete": sum(t.state == state.COMPLETE for t in trials),
            "pruned": sum(t.state == state.PRUNED for t in trials),
            "failed": sum(t.state == state.FAIL for t in trials)}


def _plots(parent, study, complete) -> None:
    """Optuna's optimization history and parameter importances, and trials.csv, on the parent."""
    import warnings

    from optuna.visualization import matplotlib as optuna_plots

    from harness.track.plots import close

    parent.text(study.trials_dataframe().to_csv(index=False), "trials.csv")
    drawings = [("plots/optimization_history.png", optuna_plots.plot_optimization_history)]
    if len(complete) >= 2:
        drawings.append(("plots/param_importances.png", optuna_plots.plot_param_importances))
    for path, draw in drawings:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                axes = draw(study)
            except (ValueError, RuntimeError):  # e.g. every trial drew the same value
                continue
        parent.figure(axes.figure, path)
        close(axes.figure)


def _space_yaml(plan: Plan) -> str:
    return yaml.safe_dump({"sweep": plan.space.as_dict()}, sort_keys=False, default_flow_style=None, width=100)


def _parent_tags(plan: Plan) -> dict:
    return {TAG_KIND: KIND_SWEEP, TAG_ITERATION: plan.name, TAG_SWEEP: plan.sweep, TAG_STUDY: plan.study_name,
            TAG_STORAGE: redact(plan.storage_url), "mlflow.source.name": "harness sweep", **plan.tags}


def _parent_params(plan: Plan) -> dict:
    params = {f"space.{path}": json.dumps(spec) for path, spec in plan.space.as_dict().items()}
    params.update({"metric": plan.metric, "direction": plan.direction, "sampler": f"TPESampler(seed={plan.seed})",
                   "pruner": f"MedianPruner(n_startup_trials={plan.startup_trials}, "
                             f"n_warmup_steps={plan.warmup_epochs})", "profile": plan.profile})
    return params
