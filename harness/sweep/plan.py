"""`harness sweep ITER`: an Optuna search over the ranges of the iteration's `sweep:` block.

    harness sweep second --trials 6                 # TPE (seeded), MedianPruner, 6 trials
    harness sweep second --trials 6 --storage postgresql://...   # a worker of a shared study
    harness sweep second --promote second_tuned     # the best trial -> a new ledger iteration

A trial is the iteration with the trial's values applied (harness.ledger.space.changes_for, then
ledger.with_changes, validated like any ledger entry) and trained by `launch.run_iteration`, the
code path of `harness run`: same profile, feature cache, checkpoints and work dir. `Trial` is the
launch.Variant that names its run and wraps its tracker: every epoch it reports the objective
metric (by default the last pass's monitor, the metric the selected checkpoint is chosen by) to
Optuna and asks the pruner; a pruned trial stops at once and its run ends KILLED with
harness.pruned=true (its metrics and summary kept, so it compares with the rest). The trial's
value is the best of that metric over its last pass.

MLflow: one parent run `ITER/sweep-NAME` per study (harness.kind=sweep): the space (params and
space.yaml), sweep_trial_value and sweep_best_value, the trial counts, Optuna's optimization
history and parameter importance plots, trials.csv. One child run per trial,
`ITER/sweep-NAME/trial-N` (harness.kind=trial, so the results table never takes it for an
iteration run), with the trial's config as params and the usual per-epoch metrics.

Workers: every `harness sweep` with the same study and storage is a worker of one study; the
study lock, trial leases and heartbeats (harness.sweep.storage) make `--trials N` exactly N trials
however many workers run, and a trial left RUNNING by a killed worker is failed, said so, and
retried: the retry resumes the killed trial's run from its last finished epoch.
"""

from __future__ import annotations

import hashlib
import json
from typing import Optional

from harness.core import metrics
from harness.core.errors import InputError
from harness.core.records import TAG_OVERRIDES
from harness.ledger.schema import Iteration
from harness.ledger.book import Ledger
from harness.ledger.diffing import flatten
from harness.ledger.space import Space, load_space, space_from_dict
from harness.sweep.trial import (ATTR_METRIC, ATTR_PARENT_RUN, ATTR_RUN, ATTR_SPACE, Plan, describe_values,
                                 quiet_optuna)


def default_sweep_name(space: Space, iteration: Iteration, metric: str, data: str) -> str:
    """Same space, config (under the profile), metric and data -> same name: rerunning the same
    command continues the same study; changing any of them starts another."""
    key = json.dumps([space.as_dict(), iteration.config_sha(), metric, data], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def objective_metric(iteration: Iteration, requested: Optional[str]) -> tuple[str, str]:
    """(metric, direction): --metric, else the last pass's monitor."""
    metric = requested or iteration.passes[-1].monitor
    known = metrics.epoch_metric_names(iteration.data.name)
    if metric not in known or not metric.startswith(metrics.VAL):
        raise InputError(f"--metric: '{metric}' is not a logged validation metric; one of: "
                         f"{', '.join(m for m in known if m.startswith(metrics.VAL))}")
    return metric, "maximize" if metrics.monitor_mode(metric) == "max" else "minimize"




def plan_sweep(book: Ledger, name: str, *, trials: Optional[int], space_file=None, study: Optional[str] = None,
               storage: Optional[str] = None, metric: Optional[str] = None, seed: Optional[int] = None,
               startup_trials: Optional[int] = None, warmup_epochs: int = 2, timeout: Optional[float] = None,
               profile: Optional[str] = None, data_dir: Optional[str] = None, tracking_uri: Optional[str] = None,
               work_dir: Optional[str] = None, overrides=None, log=print) -> Plan:
    """Every check before anything is written: ledger, space, arguments, data (exit 2).
    `overrides` (harness.ledger.overrides.Overrides, `--set`): the sweep searches around that
    variant of the iteration, every trial trains them too."""
    from harness.run.prepare import prepare
    from harness.sweep.storage import check_url, default_storage
    from harness.track.uris import artifact_root, resolve_uri

    space = load_space(book, name, space_file)
    if trials is not None and trials < 1:
        raise InputError(f"--trials: need at least 1 (got {trials})")
    if timeout is not None and timeout <= 0:
        raise InputError(f"--timeout: need a positive number of seconds (got {timeout:g})")
    if warmup_epochs < 0 or (startup_trials is not None and startup_trials < 0):
        raise InputError("--warmup-epochs and --startup-trials take a number >= 0")
    if study is not None and not study.replace("-", "").replace("_", "").isalnum():
        raise InputError(f"--study: '{study}' must be letters, digits, '-' or '_'")
    base_changes = {}
    if overrides:
        overrides.check(book.resolve(name))
        base_changes = overrides.changes(book.resolve(name))
    prepared = prepare(book, name, profile, data_dir, False, log, changes=base_changes or None)
    chosen, direction = objective_metric(prepared.iteration, metric)
    overlay = book.profiles.get(prepared.profile)
    overridden = [r.path for r in space.ranges if overlay is not None and r.path in flatten(overlay.set)]
    if overridden:
        log(f"note: profile {prepared.profile} sets {', '.join(overridden)}: every trial trains the profile's value")
    scale = getattr(overlay, "batch_scale", 1) or 1
    if scale != 1 and any(r.path == "batch_size.train" for r in space.ranges):
        log(f"note: profile {prepared.profile} scales batch_size.train by {scale:g}: a trial's value is scaled too")
    url = storage or default_storage(artifact_root(resolve_uri(tracking_uri)))
    check_url(url)
    data = prepared.tags.get("harness.data", "")
    return Plan(book=book, name=name, space=space, base=book.resolve(name, changes=base_changes or None), profile=prepared.profile, metric=chosen,
                direction=direction, sweep=study or default_sweep_name(space, prepared.iteration, chosen, data),
                storage_url=url, tags={**prepared.tags, **({TAG_OVERRIDES: overrides.tag()} if overrides else {})}, trials=trials or 0,
                seed=prepared.iteration.seed if seed is None else seed,
                startup_trials=startup_trials if startup_trials is not None else min(10, max(2, (trials or 0) // 3)),
                warmup_epochs=warmup_epochs, data_dir=data_dir, tracking_uri=tracking_uri, work_dir=work_dir,
                timeout=timeout, base_changes=base_changes)


def run_sweep(plan: Plan, log=print) -> int:
    """Run trials until the study has `plan.trials` of them (or the timeout); exit code."""
    from harness.sweep.worker import Worker

    quiet_optuna()
    return Worker(plan, log).run()


# --------------------------------------------------------------------------- promote


def find_study(storage, experiment: str, name: str, study: Optional[str]) -> str:
    """The study to promote from: --study, or the iteration's only study in the storage."""
    import optuna

    prefix = f"{experiment}/{name}/sweep-"
    found = [s for s in optuna.get_all_study_names(storage) if s.startswith(prefix)]
    if study is not None:
        if prefix + study not in found:
            raise InputError(f"--study: no sweep '{study}' of {name} in the storage; it has: "
                             f"{', '.join(s[len(prefix):] for s in found) or 'none'}")
        return prefix + study
    if not found:
        raise InputError(f"{name}: no sweep in the storage; run one first: harness sweep {name} --trials N")
    if len(found) > 1:
        which = ", ".join(s[len(prefix):] for s in found)
        raise InputError(f"{name}: {len(found)} sweeps in the storage ({which}); name one with --study")
    return found[0]


def promote_best(book: Ledger, name: str, new_name: str, *, study: Optional[str] = None,
                 storage: Optional[str] = None, tracking_uri: Optional[str] = None, overrides=None,
                 log=print) -> str:
    """Write the study's best trial into the ledger as `new_name` (harness.promote); with the
    sweep's `--set` overrides, those values too."""
    import optuna

    from harness.ledger import promote
    from harness.sweep.storage import check_url, default_storage, open_storage
    from harness.track.uris import artifact_root, resolve_uri, sqlite_path

    quiet_optuna()
    promote.check_name(book, new_name)
    url = storage or default_storage(artifact_root(resolve_uri(tracking_uri)))
    check_url(url)
    if sqlite_path(url) is not None and not sqlite_path(url).exists():
        raise InputError(f"{name}: no sweep storage at {url}; run `harness sweep {name} --trials N` first")
    rdb = open_storage(url, on_stale=lambda study, trial: None)
    study_name = find_study(rdb, book.experiment, name, study)
    loaded = optuna.load_study(study_name=study_name, storage=rdb)
    complete = [t for t in loaded.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise InputError(f"{name}: sweep {study_name} has no complete trial to promote")
    best = loaded.best_trial
    space = space_from_dict(name, loaded.user_attrs[ATTR_SPACE])
    values = {**(overrides.values if overrides else {}), **space.values_of(best.params)}
    note = (f"promoted from sweep {study_name.split('/', 1)[1]} (MLflow run {loaded.user_attrs.get(ATTR_PARENT_RUN)}, "
            f"trial {best.number} run {best.user_attrs.get(ATTR_RUN)}): "
            f"{loaded.user_attrs.get(ATTR_METRIC)} {best.value:.4f}")
    sweep = study_name.rsplit("sweep-", 1)[1]
    line = promote.append_iteration(book, name, new_name, values, note,
                                    title=f"{name} with the best trial of sweep {sweep}",
                                    remark=f"Best trial of sweep {sweep}: {loaded.user_attrs.get(ATTR_METRIC)} "
                                           f"{best.value:.4f}.")
    log(f"{book.path}:{line}: added iteration {new_name} (extends {name}): {describe_values(values)}; {note}")
    log(f"see it with `harness show {new_name}`; train it with `make run ITER={new_name}`")
    return new_name
