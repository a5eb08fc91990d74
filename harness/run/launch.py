"""`harness run` end to end: ledger -> data -> model -> train -> tracking.

The order is chosen so that bad input costs nothing: the ledger is resolved and the data
validated (every CSV row, every image) before a run is opened in MLflow or a file is written
(harness.run.prepare). Then tracking is asked once whether the run is new, resumed or skipped (a
killed run is resumed when the same command is given again, unless its config changed), and from
there on it is only told what happens. Checkpoints and run state go to the work dir
(harness.core.settings), never derived from the tracking URI.
"""

from __future__ import annotations


from pathlib import Path
from typing import Optional, Protocol

from harness.core import metrics, settings, signals
from harness.core.records import (KILLED, NEW, RESUME, SKIP, Decision)
from harness.run.console import ConsoleReporter
from harness.run.halts import halted_by
from harness.run.prepare import TRAINING_IMAGES, Prepared, model_facts, prepare


class Variant(Protocol):
    """How a caller trains an iteration differently through `run_iteration` (a sweep trial,
    harness.sweep.Trial): the values it changes, how its run is found or opened and named, and
    a wrapper around the tracker that sees every event (to report epochs, to prune)."""

    changes: dict  # nested changes, applied before the profile (harness.ledger.space.changes_for)
    # A variant may also carry `resolved`: a fully resolved Iteration trained as is, the ledger
    # and profile not applied again (a reproduction, harness.run.variant.Reproduction).
    # Variants: harness.sweep.Trial, harness.run.variant.OverrideRun (--set) and Reproduction.
    run_name: str
    tags: dict

    def decide(self, store, iteration, resumable) -> Decision: ...

    def watch(self, tracker): ...


def check_places(tracking_uri: Optional[str], work_root: Path) -> None:
    """Where the run will write must work before anything is written (harness.core.guards)."""
    from harness.core.guards import check_tracking_uri, check_work_dir
    from harness.track.uris import chosen_uri
    from harness.core.settings import TRACKING_URI_ENV

    check_tracking_uri(chosen_uri(tracking_uri), "--tracking-uri" if tracking_uri else TRACKING_URI_ENV)
    check_work_dir(work_root)


def run_iteration(book, name: str, *, profile: Optional[str] = None, data_dir: Optional[str] = None,
                  fresh: bool = False, tracking_uri: Optional[str] = None, work_dir: Optional[str] = None,
                  skip_bad_rows: bool = False, skip_finished: bool = False, limit: Optional[int] = None,
                  variant: Optional[Variant] = None, system_metrics: Optional[bool] = None, log=print,
                  on_run=None) -> int:
    """Train one iteration (or a `variant` of it); returns an exit code (0 done or skipped, 1 diverged).
    `on_run(run_id)` is told the run's id once it is opened (harness.api.run returns its record).
    Another process training it already (this work dir's lock, or a live lease on the store):
    refused with IterationHeld before anything is written (harness.lease)."""
    from harness.track.leases import IterationLock
    from harness.core.settings import work_dir as resolve_work_dir

    work = resolve_work_dir(work_dir)
    check_places(tracking_uri, work.root)  # before prepare, which may generate the synthetic set
    prepared = prepare(book, name, profile, data_dir, skip_bad_rows, log, limit=limit,
                       changes=variant.changes if variant else None, resolved=getattr(variant, "resolved", None))
    # A sweep's workers train trials of one iteration at once: each trial is its own lock.
    with IterationLock(work.root, book.experiment, variant.run_name if variant else name) as lock:
        return _run_locked(book, prepared, work, lock, tracking_uri, fresh, skip_finished, log, variant,
                           settings.system_metrics(system_metrics), on_run)


def _run_locked(book, prepared: Prepared, work, lock, tracking_uri, fresh: bool, skip_finished: bool, log,
                variant: Optional[Variant], system_metrics: bool, on_run=None) -> int:
    from harness.track.store import Store
    from harness.train.checkpoints import check_resumable

    store = Store(tracking_uri)  # a damaged or locked store refuses here (StoreUnusable, harness.track.store_check)
    # So does a damaged run state (CorruptState), before a run is opened or a file written.
    resumable = lambda run_id: check_resumable(work.run(run_id))  # noqa: E731
    decision = (variant.decide(store, prepared.iteration, resumable) if variant else
                store.begin(book.experiment, prepared.iteration, fresh=fresh, skip_finished=skip_finished,
                            resumable=resumable))
    if decision.message:
        log(decision.message)
    if decision.kind == SKIP:
        if on_run is not None and decision.run is not None:
            on_run(decision.run.run_id)
        return 0
    bundle = prepared.datasets(work.cache)
    tracker = store.start(decision, book.experiment, prepared.iteration,
                          {**prepared.tags, **(variant.tags if variant else {})}, variant.run_name if variant else None,
                          data=prepared.lineage(), system_metrics=system_metrics)
    tracker = variant.watch(tracker) if variant else tracker
    lock.record(tracker.run_id)
    if on_run is not None:
        on_run(tracker.run_id)
    if decision.kind == NEW:
        from harness.data.overlap import training_record

        tracker.model_built(*model_facts(prepared.iteration))
        store.attach(tracker.run_id, training_record(prepared.table, prepared.parts.train), TRAINING_IMAGES)
    return _train(prepared, bundle, decision, tracker, work.run(tracker.run_id), store, book.experiment, log)


def _train(prepared: Prepared, bundle, decision: Decision, tracker, folder: Path, store, experiment: str, log) -> int:
    """The passes of a started run, every event handed to `tracker`; its end told to it too.
    A run stopped by its surroundings (full disk, lost server, locked store) ends in RunHalted."""
    from harness.train import Runner, TrainingDiverged

    name = prepared.iteration.name
    reporter = ConsoleReporter(tracker, prepared.iteration, prepared.data_label(bundle), prepared.profile, log)
    from harness.core.settings import WorkDir

    # Features persist in the work dir the run's folder is in (--work-dir, else HARNESS_WORK_DIR).
    features = prepared.features(WorkDir(folder.parent).features)
    runner = Runner(prepared.iteration, bundle, folder, reporter, log, feature_inputs=features)
    try:
        if decision.kind == RESUME:
            replayed = tracker.replay(runner.state.history)
            if replayed:
                log(f"{name}: logged {replayed} epoch(s) the killed process had finished but not reported")
        results = runner.run()
    except TrainingDiverged as exc:
        tracker.fail(f"diverged: {exc}")
        log(f"{name}: FAILED, training diverged: {exc}. The last good checkpoint is in {folder}")
        return 1
    except KeyboardInterrupt as exc:
        cause = str(exc) or "SIGINT"
        tracker.fail(f"interrupted ({cause})", status="KILLED")
        log(f"{name}: interrupted ({cause}); run the same command again to resume")
        raise signals.mark_reported(exc)
    except BaseException as exc:
        halted = halted_by(exc, name, tracker, store.uri, folder, runner.state)
        if halted is not None:
            raise halted from None
        tracker.fail(f"{type(exc).__name__}: {exc}")
        raise
    try:
        selected = runner.selected_summary(results)
        log_predictions(prepared, bundle, store, tracker.run_id, runner.selected_outputs(results))
        if settings.log_model():
            log_final_model(prepared, tracker, runner.final_checkpoint(), selected.get(metrics.SELECTED_EPOCH), log)
        summary = tracker.finish(runner.state.history, results, runner.final_checkpoint(), selected)
    except Exception as exc:
        halted = halted_by(exc, name, tracker, store.uri, folder, runner.state, marking=False)
        if halted is not None:
            raise halted from None
        raise
    dataset = prepared.iteration.data.name
    log(f"{name}: FINISHED, {metrics.selected_phrase(summary, dataset)}; run {tracker.run_id}; "
        f"open the UI with `make ui` (experiment {experiment})")
    log(_verdict(prepared, bundle, summary, store, experiment))
    return 0


def log_predictions(prepared: Prepared, bundle, store, run_id: str, outputs: tuple) -> None:
    """The selected checkpoint's per-example validation predictions as the run's
    predictions/val.json (harness.core.predictions), from the predict pass the summary already
    made: what `compare` and `table` pair image by image (harness.report.stats)."""
    from harness.core import predictions

    rows = prepared.parts.val
    predicted, probability = outputs
    store.attach(run_id, predictions.build(rows, predictions.image_names(prepared.table, rows), bundle.heads,
                                           bundle.val_labels, predicted, probability), predictions.ARTIFACT)


def log_final_model(prepared: Prepared, tracker, checkpoint: Path, selected_epoch: Optional[int], log) -> None:
    """The run's selected checkpoint as an MLflow Model, once, before the run is marked finished.
    If logging fails the run is left KILLED, so the same command resumes it and logs it again."""
    from harness.serve.model import example_frame, output_types
    from harness.serve.predict import ModelCard

    if not Path(checkpoint).exists():
        return
    card = ModelCard.of(prepared.iteration, tracker.run_id, prepared.profile, str(getattr(prepared.table, "fingerprint", "")),
                        selected_epoch)
    try:
        tracker.log_model(checkpoint, card, example_frame(prepared.table, prepared.parts.val), output_types(card),
                          step=int(selected_epoch or 0))
    except Exception as exc:
        from harness.track.failures import unmarkable

        if not unmarkable(exc):  # marking the run would wait out the same retries or lock again
            tracker.fail(f"logging the model failed: {type(exc).__name__}: {exc}", status=KILLED)
            log(f"{prepared.iteration.name}: logging the MLflow Model failed ({exc}); run the same command again to finish")
        raise


def _verdict(prepared: Prepared, bundle, summary: dict, store, experiment: str) -> str:
    """Whether the run learned anything: its selected checkpoint against majority accuracy and,
    when `harness reference` fitted one on these validation images, the linear probe."""
    from harness.core.records import REFERENCE_LINEAR_PROBE
    from harness.run.reference import learning_verdict, majority_accuracy

    it = prepared.iteration
    majority = majority_accuracy(bundle.train_labels, bundle.val_labels)
    probe = None if it.data.validate_on_train else store.references(experiment, prepared.split_key).get(
        REFERENCE_LINEAR_PROBE)
    return learning_verdict(it.name, summary, it.data.name, majority, probe, it.loss.class_weighting)
