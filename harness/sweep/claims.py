"""Which trial a sweep worker trains next, when any number of workers share one study.

Kept apart from the worker (harness.sweep.worker), which trains whatever it is handed. Here the
study's trials are counted and the next one is taken under the study lock, so N trials stay N
with many workers. A trial whose worker is gone (a silent heartbeat on any machine, or a lease
nobody holds on this one) is failed and retried, so a killed worker costs a retry, not a trial.
The lock, lease and heartbeat themselves: harness.sweep.storage.
"""

from __future__ import annotations

import hashlib

from harness.core.records import KILLED
from harness.sweep.storage import Heartbeat, TrialLease, study_lock
from harness.sweep.trial import ATTR_RUN, MAX_RETRIES, Plan


class TrialRetry:
    """Queues a failed trial again through Optuna's retry callback, which records on the new
    trial which one it retries, so that its run resumes from its last finished epoch instead of
    starting over. A trial retried MAX_RETRIES times stays failed and its run is closed, so a
    trial that kills its worker every time cannot hold the sweep forever."""

    def __init__(self, store, log):
        import optuna

        self.optuna, self.store, self.log = optuna, store, log
        self.callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)

    def worker_gone(self, study, trial) -> None:
        """A trial whose worker is gone was just failed: retry it (its run resumes), or close its
        run when it was retried too often. Said, never silent."""
        retry_cb = self.optuna.storages.RetryHeartbeatStaleTrialCallback
        self.callback(study, trial)
        retries = [t.number for t in study.get_trials(deepcopy=False) if trial.number in retry_cb.retry_history(t)]
        run_id = trial.user_attrs.get(ATTR_RUN)
        if retries:
            resumes = f"; it resumes run {run_id[:8]} from its last finished epoch" if run_id else ""
            self.log(f"trial {trial.number} was left RUNNING by a worker that is gone: marked FAIL, "
                     f"retried as trial {max(retries)}{resumes}")
            return
        self.log(f"trial {trial.number} was left RUNNING by a worker that is gone: marked FAIL, not retried "
                 f"(retried {MAX_RETRIES} times already)")
        if run_id:
            from harness.track.store import end_run  # MLflow only when a run has to be closed

            end_run(self.store, run_id, KILLED, f"worker gone; trial {trial.number} failed after {MAX_RETRIES} retries")

    def interrupted(self, study, number: int) -> None:
        """Ctrl-C during a trial: failed and queued again at once, so that rerunning the same
        command resumes it rather than waiting out the heartbeat's grace period."""
        study.tell(number, state=self.optuna.trial.TrialState.FAIL)
        self.callback(study, study.get_trials(deepcopy=False)[number])
        self.log(f"trial {number} interrupted: marked FAIL and queued again; the same command resumes it")


class TrialClaims:
    """This worker's share of the study: the next trial, taken under the study lock, with the
    heartbeat and lease that tell other workers it is alive until `release`."""

    def __init__(self, plan: Plan, storage, retry: TrialRetry):
        import optuna

        from harness.core.settings import work_dir

        self.plan, self.storage, self.retry, self.optuna = plan, storage, retry, optuna
        key = hashlib.sha256(f"{plan.storage_url} {plan.study_name}".encode()).hexdigest()[:12]
        self.lease = TrialLease(work_dir(plan.work_dir).root / "sweeps" / key)

    def study(self, seed_offset: int = 0):
        """The study with a sampler seeded for the next trial: one worker draws the same trials
        every time; two workers never draw the same random start."""
        optuna = self.optuna
        plan = self.plan
        return optuna.load_study(
            study_name=plan.study_name, storage=self.storage,
            sampler=optuna.samplers.TPESampler(seed=plan.seed + seed_offset, n_startup_trials=plan.startup_trials),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=plan.startup_trials, n_warmup_steps=plan.warmup_epochs))

    def lock(self):
        """Held while the study's trials are counted or its attributes set; see sweep_storage."""
        return study_lock(self.storage, self.plan.storage_url, self.plan.study_name)

    def claim(self):
        """(trial, heartbeat, slot) of the next trial, or None when the study has its trials."""
        state = self.optuna.trial.TrialState
        retry_cb = self.optuna.storages.RetryHeartbeatStaleTrialCallback
        with self.lock():
            study = self.study()
            self.optuna.storages.fail_stale_trials(study)  # silent workers on any machine
            self._reap(study)
            trials = study.get_trials(deepcopy=False)
            retried = {number for t in trials for number in retry_cb.retry_history(t)}
            taken = len(trials) - len(retried)
            waiting = any(t.state == state.WAITING for t in trials)
            if not waiting and taken >= self.plan.trials:
                return None
            trial = self.study(seed_offset=len(trials)).ask()
            heartbeat = Heartbeat(self.storage, self.plan.study_name, trial.number)
            self.lease.take(trial.number)
        return trial, heartbeat, taken if waiting else taken + 1

    def release(self, heartbeat: Heartbeat) -> None:
        """The claimed trial has ended here, however it ended: stop saying it is alive."""
        heartbeat.stop()
        self.lease.drop()

    def _reap(self, study) -> None:
        """Trials this machine trained in a process that is gone: failed (and retried) now."""
        state = self.optuna.trial.TrialState
        for trial in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
            if self.lease.abandoned(trial.number):
                study.tell(trial.number, state=state.FAIL)
                self.lease.forget(trial.number)
                self.retry.worker_gone(study, study.get_trials(deepcopy=False)[trial.number])
