"""`harness run`, `eval` and `lr-find` end to end: ledger -> data -> model -> train -> tracking.

The order is chosen so that bad input costs nothing: the ledger is resolved and the data
validated (every CSV row, every image) before a run is opened in MLflow or a file is written.
Then tracking is asked once whether the run is new, resumed or skipped (a killed run is resumed
when the same command is given again, unless its config changed), and from there on it is only
told what happens. Checkpoints and run state go to the work dir (harness.settings), never
derived from the tracking URI.
"""

from __future__ import annotations

import io

import numpy as np
from pathlib import Path
from typing import Optional, Protocol

from harness import ledger, metrics, signals
from harness.errors import DiskFull, InputError, RunHalted, StoreLocked, TrackingLost, is_disk_full
from harness.profiles import announcement
from harness.records import (KILLED, NEW, RESUME, SKIP, TAG_DATA, TAG_DATA_DIR, TAG_LEDGER, TAG_PROFILE, TAG_SPLIT,
                             TAG_SYNTHETIC, Decision, RunRecord)


def gpu_visible() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def choose_profile(requested: Optional[str]) -> tuple[str, str]:
    """(profile, why): an explicit --profile wins; otherwise `full` with a GPU, `cpu` without."""
    if requested:
        return requested, "as asked"
    if gpu_visible():
        return "full", "a GPU is visible"
    return "cpu", "no GPU visible"


class ConsoleReporter:
    """Prints a header per pass and passes every event on to the tracker."""

    def __init__(self, tracker, iteration, data_label: str, profile: str, log=print):
        self.tracker, self.iteration, self.data_label, self.profile, self.log = tracker, iteration, data_label, profile, log

    def pass_started(self, index, iteration, freeze):
        pass_ = iteration.passes[index]
        start = "" if index == 0 else f", from pass {index}'s {pass_.resume_from}"
        stopping = f", early stopping patience {pass_.early_stopping.patience}" if pass_.early_stopping else ""
        if pass_.max_seconds:
            stopping += f", capped by measured cost at {pass_.max_seconds} s"
        # Rules that decide no layer are usually typos, or patterns meant for another backbone.
        unmatched = f" | freeze rules that decide no layer: {', '.join(freeze.unmatched)}" if freeze.unmatched else ""
        from harness.train.distribute import batch_phrase

        replicas = batch_phrase(iteration.compute.distribute, iteration.batch_size.train)
        self.log(f"== {iteration.name} pass {index + 1}/{len(iteration.passes)}: {pass_.epochs} epochs, "
                 f"{pass_.describe_lr(iteration.optimizer.lr)}{start}{stopping} | data {self.data_label} | "
                 f"{replicas + ' | ' if replicas else ''}profile {self.profile}{unmatched}")
        self.tracker.pass_started(index, iteration, freeze)

    def epoch_finished(self, pass_index, step, values):
        self.tracker.epoch_finished(pass_index, step, values)

    def pass_finished(self, index, result):
        self.log(metrics.eval_line(index, result.eval))
        self.tracker.pass_finished(index, result)


def _model_summary(model) -> str:
    buffer = io.StringIO()
    model.summary(print_fn=lambda line, *a, **k: buffer.write(line + "\n"), expand_nested=True)
    return buffer.getvalue()


def model_facts(iteration) -> tuple[int, int, str]:
    """(total, trainable parameters, the model summary) of the model an iteration builds."""
    from harness.models import build_model, count_params

    model = build_model(iteration)
    total, trainable, _ = count_params(model)
    return total, trainable, _model_summary(model)


class Prepared:
    """An iteration resolved under its profile, its data validated and split, seeds set."""

    def __init__(self, book, iteration, profile, table, parts, data_dir):
        from harness.data.split import split_key
        from harness.data.synth import is_synthetic

        self.iteration, self.profile, self.table, self.parts = iteration, profile, table, parts
        self.data_dir = data_dir
        data = iteration.data
        self.split_key = split_key(table, data.val_fraction, data.split_seed, data.validate_on_train)
        self.tags = {
            TAG_LEDGER: str(book.path),
            TAG_PROFILE: profile,
            TAG_DATA: str(getattr(table, "fingerprint", "")),
            TAG_DATA_DIR: str(getattr(table, "folder", data_dir or "")),
            TAG_SYNTHETIC: str(is_synthetic(table)).lower(),  # the table marks such runs' numbers
            TAG_SPLIT: self.split_key,
        }

    def datasets(self, cache_dir: Optional[Path] = None):
        from harness.data.pipeline import make_datasets

        return make_datasets(self.iteration, self.table, self.parts.train, self.parts.val, cache_dir=cache_dir)

    def features(self, folder: Optional[Path] = None):
        """What the feature cache needs (harness.train.FeatureInputs): features persisted in
        `folder`, by default the work dir's features/ (settings.WorkDir.features)."""
        from harness.settings import work_dir
        from harness.train import FeatureInputs

        folder = folder if folder is not None else work_dir().features
        return FeatureInputs.of(self.iteration, self.table, self.parts.train, self.parts.val, folder=folder)

    def lineage(self):
        """The data as the run's MLflow dataset input records it (harness.records.DataLineage)."""
        from harness.data.source import lineage

        return lineage(self.table, self.parts.train, self.parts.val)

    def data_label(self, bundle) -> str:
        """The data as a pass header names it: folder, split sizes, image size."""
        from harness.data.pixels import describe

        folder = Path(str(getattr(self.table, "folder", self.data_dir or self.iteration.data.name))).name
        backbone = self.iteration.backbone
        encoding = describe(self.iteration.data.pixels, backbone.weights)
        return (f"{folder} ({bundle.n_train} train / {bundle.n_val} val, {self.iteration.data.image_size} px, "
                f"{encoding})")


def prepare(book, name, profile, data_dir, skip_bad_rows, log, limit: Optional[int] = None,
            changes: Optional[dict] = None) -> Prepared:
    """Everything before tracking: bad input fails here, before MLflow or a file is touched.
    `changes` (a sweep trial's values) apply to the iteration before the profile."""
    from harness.data.source import open_dataset
    from harness.data.split import split

    written = book.resolve(name, changes=changes)  # a bad name or field fails before TensorFlow is even imported
    if limit is not None and limit <= 0:
        raise InputError(f"--limit: a number of images must be positive (got {limit})")
    profile, reason = choose_profile(profile)
    iteration = book.resolve(name, profile, changes)
    if limit is not None:
        iteration = ledger.with_changes(iteration, {"data": {"limit": limit}})
    log(announcement(name, profile, reason, written, iteration, book.path))
    table, messages = open_dataset(iteration, data_dir, skip_bad_rows=skip_bad_rows)
    for message in messages:
        log(message)
    from harness.train import set_seeds

    set_seeds(iteration.seed)
    parts = split(table, iteration.data.val_fraction, iteration.data.split_seed,
                  validate_on_train=iteration.data.validate_on_train)
    if parts.message:
        log(parts.message)
    return Prepared(book, iteration, profile, table, parts, data_dir)


class Variant(Protocol):
    """How a caller trains an iteration differently through `run_iteration` (a sweep trial,
    harness.sweep.Trial): the values it changes, how its run is found or opened and named, and
    a wrapper around the tracker that sees every event (to report epochs, to prune)."""

    changes: dict  # nested changes, applied before the profile (harness.sweep_space.changes_for)
    run_name: str
    tags: dict

    def decide(self, store, iteration, resumable) -> Decision: ...

    def watch(self, tracker): ...


def check_places(tracking_uri: Optional[str], work_root: Path) -> None:
    """Where the run will write must work before anything is written (harness.guards)."""
    from harness.guards import check_tracking_uri, check_work_dir
    from harness.remote import chosen_uri
    from harness.settings import TRACKING_URI_ENV

    check_tracking_uri(chosen_uri(tracking_uri), "--tracking-uri" if tracking_uri else TRACKING_URI_ENV)
    check_work_dir(work_root)


def run_iteration(book, name: str, *, profile: Optional[str] = None, data_dir: Optional[str] = None,
                  fresh: bool = False, tracking_uri: Optional[str] = None, work_dir: Optional[str] = None,
                  skip_bad_rows: bool = False, skip_finished: bool = False, limit: Optional[int] = None,
                  variant: Optional[Variant] = None, system_metrics: bool = True, log=print) -> int:
    """Train one iteration (or a `variant` of it); returns an exit code (0 done or skipped, 1 diverged).
    Another process training it already (this work dir's lock, or a live lease on the store):
    refused with IterationHeld before anything is written (harness.lease)."""
    from harness.lease import IterationLock
    from harness.settings import work_dir as resolve_work_dir

    work = resolve_work_dir(work_dir)
    check_places(tracking_uri, work.root)  # before prepare, which may generate the synthetic set
    prepared = prepare(book, name, profile, data_dir, skip_bad_rows, log, limit=limit,
                       changes=variant.changes if variant else None)
    # A sweep's workers train trials of one iteration at once: each trial is its own lock.
    with IterationLock(work.root, book.experiment, variant.run_name if variant else name) as lock:
        return _run_locked(book, prepared, work, lock, tracking_uri, fresh, skip_finished, log, variant, system_metrics)


def _run_locked(book, prepared: Prepared, work, lock, tracking_uri, fresh: bool, skip_finished: bool, log,
                variant: Optional[Variant], system_metrics: bool) -> int:
    from harness.tracking import Store
    from harness.train.checkpoints import check_resumable

    store = Store(tracking_uri)  # a damaged or locked store refuses here (StoreUnusable, harness.store_check)
    # So does a damaged run state (CorruptState), before a run is opened or a file written.
    resumable = lambda run_id: check_resumable(work.run(run_id))  # noqa: E731
    decision = (variant.decide(store, prepared.iteration, resumable) if variant else
                store.begin(book.experiment, prepared.iteration, fresh=fresh, skip_finished=skip_finished,
                            resumable=resumable))
    if decision.message:
        log(decision.message)
    if decision.kind == SKIP:
        return 0
    bundle = prepared.datasets(work.cache)
    tracker = store.start(decision, book.experiment, prepared.iteration,
                          {**prepared.tags, **(variant.tags if variant else {})}, variant.run_name if variant else None,
                          data=prepared.lineage(), system_metrics=system_metrics)
    tracker = variant.watch(tracker) if variant else tracker
    lock.record(tracker.run_id)
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
    from harness.settings import WorkDir

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
        halted = _halted(exc, name, tracker, store.uri, folder, runner.state)
        if halted is not None:
            raise halted from None
        tracker.fail(f"{type(exc).__name__}: {exc}")
        raise
    try:
        selected = runner.selected_summary(results)
        log_final_model(prepared, tracker, runner.final_checkpoint(), selected.get(metrics.SELECTED_EPOCH), log)
        summary = tracker.finish(runner.state.history, results, runner.final_checkpoint(), selected)
    except Exception as exc:
        halted = _halted(exc, name, tracker, store.uri, folder, runner.state, marking=False)
        if halted is not None:
            raise halted from None
        raise
    dataset = prepared.iteration.data.name
    log(f"{name}: FINISHED, {metrics.selected_phrase(summary, dataset)}; run {tracker.run_id}; "
        f"open the UI with `make ui` (experiment {experiment})")
    log(_verdict(prepared, bundle, summary, store, experiment))
    return 0


def _halted(exc: BaseException, name: str, tracker, uri: str, folder: Path, state,
            marking: bool = True) -> Optional[RunHalted]:
    """The RunHalted (one line) for a run its surroundings stopped: a full disk (the work
    folder's or the store's), a tracking server gone past MLflow's retries, a SQLite store locked
    past its busy timeout; None for anything else (a bug: the run is failed, with a traceback).
    Not `marking` after training: the final logging marks the run itself (log_final_model)."""
    from harness.tracking import server_lost, store_full, store_locked

    full = store_full(exc, uri)
    if full is not None or is_disk_full(exc):
        if not marking:
            return DiskFull(_disk_full_line(name, tracker, folder, state, exc, full, marked=None))
        return _disk_full(name, tracker, folder, state, exc, full)
    if server_lost(exc):
        return _server_lost(name, tracker, uri, folder, state)
    locked = store_locked(exc, uri)
    if locked is not None:
        return StoreLocked(f"{name}: stopped, {locked}; run {tracker.run_id[:8]} is left RUNNING there (marking it "
                           f"needs the store); its work folder {folder} is kept, {_kept(state)}: run the same command "
                           f"again once the lock is released to resume (the epochs it has not logged are sent then)")
    return None


def _disk_full(name: str, tracker, folder: Path, state, exc: BaseException, store: Optional[str] = None) -> DiskFull:
    """A run stopped by a full disk: marked KILLED (an unfinished run, so the same command
    resumes it), its work folder left as it is, and the one line saying so. Marking it needs
    the store, which may sit on the same full disk: then the line says that too, and the run
    is resumed all the same (its lease's holder is gone). `store`: how the store's own full disk
    is worded (harness.tracking.store_full), when that is the full one."""
    try:
        tracker.fail(f"disk full: {store or exc}", status=KILLED)
        marked = f"run {tracker.run_id[:8]} is marked KILLED"
    except Exception as also:  # noqa: BLE001 - the line must still come out
        marked = f"run {tracker.run_id[:8]} could not be marked in MLflow either ({type(also).__name__})"
    return DiskFull(_disk_full_line(name, tracker, folder, state, exc, store, marked))


def _disk_full_line(name: str, tracker, folder: Path, state, exc: BaseException, store: Optional[str],
                    marked: Optional[str]) -> str:
    """The one line of a full disk: which disk (the store's, named, or the work folder's), the
    run's mark, what was kept, what to do."""
    what = store or f"the disk is full ({exc})"
    where = "on the store's disk" if store else "there"
    marked = marked or f"run {tracker.run_id[:8]} is left unfinished"
    return (f"{name}: stopped, {what}; {marked}; its work folder {folder} is kept, {_kept(state)}: free space "
            f"{where}, then run the same command again to resume")


def _kept(state) -> str:
    return (f"with its last good snapshot {state.snapshot} (step {state.step})" if state.snapshot
            else "(no epoch had been saved yet)")


def _server_lost(name: str, tracker, uri: str, folder: Path, state) -> TrackingLost:
    """A run whose tracking server stopped answering for longer than MLflow's retries: left as
    it is (RUNNING there; its lease's holder is gone once this process ends), and the line."""
    from harness.remote import retry_window

    return TrackingLost(f"{name}: stopped, the tracking server {uri} did not answer for about {retry_window()} s "
                        f"of retries; run {tracker.run_id[:8]} is left RUNNING there; its work folder {folder} is "
                        f"kept, {_kept(state)}: once the server answers, run the same command again to resume "
                        f"(the epochs it has not logged are sent then)")


def log_final_model(prepared: Prepared, tracker, checkpoint: Path, selected_epoch: Optional[int], log) -> None:
    """The run's selected checkpoint as an MLflow Model, once, before the run is marked finished.
    If logging fails the run is left KILLED, so the same command resumes it and logs it again."""
    from harness.predict import ModelCard, example_image

    if not Path(checkpoint).exists():
        return
    card = ModelCard.of(prepared.iteration, tracker.run_id, prepared.profile, str(getattr(prepared.table, "fingerprint", "")),
                        selected_epoch)
    try:
        tracker.log_model(checkpoint, card, example_image(prepared.table, prepared.parts.val), step=int(selected_epoch or 0))
    except Exception as exc:
        from harness.tracking import unmarkable

        if not unmarkable(exc):  # marking the run would wait out the same retries or lock again
            tracker.fail(f"logging the model failed: {type(exc).__name__}: {exc}", status=KILLED)
            log(f"{prepared.iteration.name}: logging the MLflow Model failed ({exc}); run the same command again to finish")
        raise


def _verdict(prepared: Prepared, bundle, summary: dict, store, experiment: str) -> str:
    """Whether the run learned anything: its selected checkpoint against majority accuracy and,
    when `harness reference` fitted one on these validation images, the linear probe."""
    from harness.records import REFERENCE_LINEAR_PROBE
    from harness.reference import learning_verdict, majority_accuracy

    it = prepared.iteration
    majority = majority_accuracy(bundle.train_labels, bundle.val_labels)
    probe = None if it.data.validate_on_train else store.references(experiment, prepared.split_key).get(
        REFERENCE_LINEAR_PROBE)
    return learning_verdict(it.name, summary, it.data.name, majority, probe, it.loss.class_weighting)


TRAINING_IMAGES = "data/training_images.json"  # the run's training rows (harness.data.overlap)


def evaluate_iteration(book, name: str, *, data_dir: Optional[str], tracking_uri: Optional[str] = None,
                       work_dir: Optional[str] = None, log_to_run: bool = False) -> dict:
    """The notes' evaluate dict, plus each head's balanced accuracy, for the selected checkpoint of
    the latest finished run: on the run's own validation split, or on every image of another
    folder in the same format (a held-out set, say), checked for images the run trained on.
    The checkpoint is downloaded into the work dir."""
    from harness.settings import work_dir as resolve_work_dir
    from harness.tracking import Store

    book.resolve(name)
    store = Store(tracking_uri)
    run = store.latest_finished(book.experiment, name)
    if run is None:
        raise InputError(f"{name}: no finished run in experiment '{book.experiment}' of {store.uri}; "
                         f"train it first with `make run ITER={name}`")
    iteration = book.resolve(name, run.profile)
    table, rows, scored = _eval_rows(run, iteration, data_dir)
    warning = None if data_dir is None else _overlap_warning(store, run, table, rows)
    work = resolve_work_dir(work_dir)
    work.root.mkdir(parents=True, exist_ok=True)
    result = _evaluate_checkpoint(store, run, iteration, table, rows, work.root)
    if log_to_run:
        store.attach(run.run_id, result, f"eval/{Path(str(data_dir)).name or 'data'}.json")
    return {"run_id": run.run_id, "profile": run.profile, "eval": result, "images": len(rows), "scored": scored,
            "warning": warning}


def _eval_rows(run: RunRecord, iteration, data_dir: Optional[str]):
    """(table, rows, what they are): the run's validation split when no folder is given, else
    every image of the folder (CIFAR-10: its test batch)."""
    from harness.data.source import open_dataset
    from harness.data.split import split

    if data_dir is None:
        table, _ = open_dataset(iteration, run.data_dir or None)
        data = iteration.data
        parts = split(table, data.val_fraction, data.split_seed, validate_on_train=data.validate_on_train)
        changed = "" if table.fingerprint == run.data_fingerprint else " (WARNING: the data changed since the run)"
        return table, parts.val, f"the run's validation split of {run.data_dir or table.name}{changed}"
    if iteration.data.name == "cifar10":
        from harness.data.cifar10 import load_cifar10

        table = load_cifar10(data_dir)
        rows = table.predefined_split[1] if table.predefined_split is not None else np.arange(len(table))
        return table, rows, f"{data_dir}"
    from harness.data.hvc import load_hvc

    table = load_hvc(data_dir)
    return table, np.arange(len(table)), f"every image of {data_dir}"


def _overlap_warning(store, run: RunRecord, table, rows) -> Optional[str]:
    """A line when the evaluated images include the run's training images (by path or bytes)."""
    import json
    import tempfile

    from harness.data.overlap import overlap

    with tempfile.TemporaryDirectory(prefix="eval-") as tmp:
        try:
            record = json.loads(store.download(run.run_id, TRAINING_IMAGES, Path(tmp)).read_text())
        except InputError:
            raise
        except Exception:  # a run from before training rows were recorded
            return (f"WARNING: run {run.run_id[:8]} has no record of its training images ({TRAINING_IMAGES}), "
                    f"so overlap with them was not checked")
    found = overlap(record, table, rows)
    if not found.shared:
        return None
    return (f"WARNING: {found.shared} of {len(rows)} images are training images of run {run.run_id[:8]} "
            f"({found.by_path} by path, {found.by_content} by identical content; e.g. {found.example}): "
            f"these numbers are not held-out")


def _evaluate_checkpoint(store, run: RunRecord, iteration, table, rows, scratch: Path) -> dict:
    import tempfile

    from harness.data.labels import heads_for
    from harness.data.pipeline import eval_dataset
    from harness.models import load_model
    from harness.train import labels_for_model
    from harness.train.loop import predicted_classes

    dataset_name = iteration.data.name
    heads = heads_for(dataset_name)
    with tempfile.TemporaryDirectory(prefix="eval-", dir=scratch) as tmp:
        checkpoint = store.download(run.run_id, "checkpoint", Path(tmp))
        files = sorted(Path(checkpoint).glob("*.keras"))
        if not files:
            raise InputError(f"{iteration.name}: run {run.run_id} has no checkpoint artifact")
        model = load_model(files[0])
        dataset = labels_for_model(eval_dataset(table, rows, iteration), heads)
        logs = model.evaluate(dataset, return_dict=True, verbose=0)
        predictions = predicted_classes(model, dataset.map(lambda x, y: x), heads)
    scores = metrics.selected_summary({head: table.labels[head][rows] for head in heads}, predictions, dataset_name, None)
    balanced = {metrics.head_metric(dataset_name, head, metrics.BALANCED_ACC):
                scores[metrics.selected_name(dataset_name, head, metrics.BALANCED_ACC)] for head in heads}
    return dict(sorted({**metrics.from_keras_logs(logs, dataset_name), **balanced}.items()))


def lr_find_iteration(book, name: str, *, profile: Optional[str] = None, data_dir: Optional[str] = None,
                      tracking_uri: Optional[str] = None, work_dir: Optional[str] = None, min_lr: float = 1e-7,
                      max_lr: float = 10.0, steps: int = 100, out: Optional[str] = None, limit: Optional[int] = None,
                      log=print) -> dict:
    """The LR range test for an iteration's first pass, logged as an `ITER/lr-find` run."""
    from harness import lrfind
    from harness.plots import close
    from harness.settings import work_dir as resolve_work_dir
    from harness.tracking import Store, log_lr_find

    if steps < 5:
        raise InputError(f"lr-find: --steps must be at least 5 (got {steps})")
    if not 0 < min_lr < max_lr:
        raise InputError(f"lr-find: need 0 < --min < --max (got {min_lr:g}, {max_lr:g})")
    prepared = prepare(book, name, profile, data_dir, False, log, limit=limit)
    store = Store(tracking_uri)
    curve = lrfind.range_test(prepared.iteration, prepared.datasets(resolve_work_dir(work_dir).cache),
                              min_lr, max_lr, steps, log)
    figure = lrfind.plot(curve, f"{name}: LR range test ({prepared.profile} profile)")
    if out:
        figure.savefig(out, dpi=110)
    run_id = log_lr_find(store, book.experiment, prepared.iteration, prepared.tags, curve, figure)
    close(figure)
    stop = f"diverged at {curve.diverged_at:.3g}" if curve.diverged_at else f"no divergence up to {curve.max_lr:.3g}"
    log(f"{name}: suggested LR {curve.suggestion():.3g} (steepest loss descent); {stop}; "
        f"{len(curve.lrs)} batches; run {run_id} ({name}/lr-find, open with `make ui`)")
    return {metrics.SUGGESTED_LR: curve.suggestion(), metrics.MAX_LR: curve.max_lr,
            "diverged": curve.diverged_at is not None, "batches": len(curve.lrs), "run_id": run_id}
