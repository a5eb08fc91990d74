"""Run one iteration: its passes, LR schedules, checkpoints, early stopping and resume.

No YAML and no MLflow here: the runner gets a resolved Iteration and the datasets, and reports
every finished epoch and pass to a `reporter` (harness.tracking's, or a test's). What it keeps
on disk is a work folder per run:

    state.json              passes done, epochs done in the current pass, per-epoch history
    pass-K/last.npz         weights + optimizer state after the last completed epoch of pass K
    pass-K/best.npz         the same for the best epoch of pass K by its monitor
    pass-K/best.keras       the best model of pass K, a complete Keras file (at the pass's end)
    pass-K/final.keras      the weights pass K ended with (after restore-best)

Every file is written under a temporary name and renamed into place, so a kill at any moment
leaves the previous complete checkpoint to resume from. The state is written before the epoch
is reported, and the state carries the epoch's metrics, so a resumed run can report the epochs
that never reached the tracker and report none twice.

Why arrays every epoch and .keras files once a pass: Keras's .keras writer takes ~0.25 s for a
1.3M-parameter model (one HDF5 dataset per variable), a tenth of a CPU-profile epoch; the arrays
take ~0.04 s, and a new best is a hard link to the last snapshot, so it costs nothing.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from harness import metrics
from harness.data.labels import output_name
from harness.ledger import Iteration, PassConfig


# An epoch whose training loss is this many times the run's lowest so far has diverged: real
# training never gets there, while an absurd LR can keep the loss finite (clipped softmax, huge
# weights) long after the model is ruined.
EXPLOSION_FACTOR = 1000.0


class TrainingDiverged(RuntimeError):
    """Loss became NaN or infinite, or exploded; the last good checkpoint is kept."""


class Reporter(Protocol):
    def pass_started(self, index: int, iteration: Iteration) -> None: ...
    def epoch_finished(self, pass_index: int, step: int, values: dict) -> None: ...
    def pass_finished(self, index: int, result: "PassResult") -> None: ...


@dataclass
class PassResult:
    index: int
    eval: dict  # the notes' evaluate dict, in harness names: loss, {head}_acc, {head}_loss
    best_checkpoint: Path
    best_epoch: Optional[int]  # global step of the best epoch by the pass's monitor
    stopped_early: bool
    predictions: dict  # head -> predicted class index per validation example
    labels: dict  # head -> true class index per validation example


@dataclass
class RunState:
    done_passes: list = field(default_factory=list)
    pass_index: int = 0
    epochs_in_pass: int = 0  # completed epochs of pass_index
    history: list = field(default_factory=list)  # [{"step", "pass", "metrics"}]
    best: dict = field(default_factory=dict)  # str(pass index) -> {"value", "step"}
    wait: int = 0  # epochs since the monitor last improved (early stopping)
    snapshot: str = ""  # the newest epoch snapshot, relative to the work folder

    @property
    def step(self) -> int:
        return len(self.history)

    @classmethod
    def load(cls, workdir: Path) -> "RunState":
        path = workdir / "state.json"
        return cls(**json.loads(path.read_text())) if path.exists() else cls()

    def save(self, workdir: Path) -> None:
        _atomic_write_text(workdir / "state.json", json.dumps(self.__dict__, indent=1))


# --------------------------------------------------------------------------- helpers


def set_seeds(seed: int) -> None:
    """Python, NumPy and TensorFlow seeds plus op determinism: same seed, same CPU run."""
    import keras
    import tensorflow as tf

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    # Keras retraces predict for each new dataset shape (features, then images); the warning
    # that follows is about speed, not correctness, and would bury the epoch lines.
    tf.get_logger().setLevel("ERROR")


@dataclass
class FeatureInputs:
    """What the runner needs to train on cached backbone features: the table rows to compute
    them for, the table's length, and how to turn a row-indexed feature array into datasets
    (harness.data.pipeline.make_datasets with `features=`)."""

    rows: np.ndarray
    n_rows: int
    build: callable

    @classmethod
    def of(cls, iteration, table, train_idx, val_idx) -> "FeatureInputs":
        """For a split of a table: features for every train and val row, turned into datasets
        that follow the image stream's order."""
        from harness.data.pipeline import make_datasets

        return cls(rows=np.union1d(train_idx, val_idx), n_rows=len(table),
                   build=lambda array: make_datasets(iteration, table, train_idx, val_idx, features=array))


def labels_for_model(dataset, heads: dict):
    """A single-output Keras model wants plain label arrays, not a one-key dict."""
    if len(heads) != 1:
        return dataset
    key = output_name(next(iter(heads)))
    return dataset.map(lambda image, labels: (image, labels[key]))


def lr_for_epoch(pass_: PassConfig, default_lr: float, epoch: int) -> float:
    if pass_.schedule is not None:
        return pass_.schedule.lr_at(epoch)
    return pass_.lr if pass_.lr is not None else default_lr


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_model_atomic(model, path: Path) -> None:
    """Keras insists on a `.keras` suffix, so the temporary name keeps it."""
    tmp = path.with_name(f"tmp-{path.name}")
    model.save(tmp)
    os.replace(tmp, path)


def save_snapshot(model, path: Path) -> None:
    """Weights (model.weights order) and, once built, the optimizer's variables, as arrays."""
    arrays = {f"w{i}": np.asarray(v) for i, v in enumerate(model.weights)}
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)})
    tmp = path.with_name(f"tmp-{path.name}")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)


def load_snapshot(model, path: Path, optimizer: bool = True) -> None:
    """Put a snapshot's weights (and optimizer state) back into a model built and compiled
    exactly as the one that was saved."""
    with np.load(path) as data:
        model.set_weights([data[f"w{i}"] for i in range(len(model.weights))])
        if optimizer and "o0" in data.files:
            opt = model.optimizer
            if not opt.built:
                opt.build(model.trainable_variables)
            for i, variable in enumerate(opt.variables):
                variable.assign(data[f"o{i}"])


def link_atomic(source: Path, path: Path) -> None:
    """`path` becomes another name for `source`'s current contents (source is later replaced
    by rename, so the link keeps these bytes)."""
    tmp = path.with_name(f"tmp-{path.name}")
    tmp.unlink(missing_ok=True)
    os.link(source, tmp)
    os.replace(tmp, path)


def _improves(value: float, previous: Optional[dict], monitor: str) -> bool:
    return metrics.improves(value, previous["value"] if previous else None, monitor)


# --------------------------------------------------------------------------- callback


def _make_callback(runner: "Runner", index: int, pass_: PassConfig):
    import keras  # here, not at module level, so importing this module stays cheap

    class PassCallback(keras.callbacks.Callback):
        """LR per epoch, checkpoints, early stopping, divergence stop, reporting.

        Epoch hooks only: a batch hook makes Keras turn every batch's logs into Python numbers,
        a device sync per step that cost ~5% of a CPU epoch. A NaN shows in the epoch's loss."""

        def on_epoch_begin(self, epoch, logs=None):
            self.model.optimizer.learning_rate.assign(lr_for_epoch(pass_, runner.iteration.optimizer.lr, epoch))
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            values = metrics.from_keras_logs(logs or {}, runner.dataset)
            values[metrics.LR] = float(self.model.optimizer.learning_rate)
            values[metrics.EPOCH_SECONDS] = time.perf_counter() - self._started
            loss = values.get(metrics.LOSS, 0)
            lowest = min((h["metrics"][metrics.LOSS] for h in runner.state.history), default=math.inf)
            if not runner.diverged and loss > EXPLOSION_FACTOR * lowest:
                runner.diverged = (f"loss exploded to {loss:.3g} ({EXPLOSION_FACTOR:g}x the lowest so far, "
                                   f"{lowest:.3g}) in pass {index + 1}, epoch {epoch + 1}")
            if runner.diverged or not all(math.isfinite(v) for v in values.values()):
                runner.diverged = runner.diverged or f"non-finite metrics in pass {index + 1}, epoch {epoch + 1}"
                self.model.stop_training = True
                return  # keep the last good checkpoint; report nothing from a broken epoch
            runner.epoch_done(index, pass_, self.model, values)
            runner.log(metrics.epoch_line(epoch, pass_.epochs, runner.state.step, values, runner.dataset))

    return PassCallback()


# --------------------------------------------------------------------------- runner


@dataclass
class Runner:
    """Trains `iteration` on `bundle` (from harness.data.pipeline.make_datasets) in `workdir`."""

    iteration: Iteration
    bundle: object
    workdir: Path
    reporter: Reporter
    log: callable = print
    feature_inputs: Optional["FeatureInputs"] = None
    state: RunState = field(init=False)
    diverged: Optional[str] = field(default=None, init=False)
    stopped_early: bool = field(default=False, init=False)

    def __post_init__(self):
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state = RunState.load(self.workdir)
        self.heads = self.bundle.heads
        self.dataset = self.iteration.data.name
        self.data = self.bundle
        self._features: dict = {}

    def pass_dir(self, index: int) -> Path:
        path = self.workdir / f"pass-{index + 1}"
        path.mkdir(exist_ok=True)
        return path

    # ---- per epoch

    def epoch_done(self, index: int, pass_: PassConfig, model, values: dict) -> None:
        """`model` is the one being fit (it gets stop_training); checkpoints are always of the
        whole model, even when the fit runs on cached features."""
        state = self.state
        step = state.step + 1
        folder = self.pass_dir(index)
        # A new name per epoch: until the state below names it, a kill leaves the state and
        # the snapshot it names in step (the previous epoch's), so a resume neither skips nor
        # repeats an epoch.
        snapshot = folder / f"epoch-{state.epochs_in_pass + 1}.npz"
        save_snapshot(self.full_model, snapshot)
        value = values.get(pass_.monitor)
        improved = value is not None and _improves(value, state.best.get(str(index)), pass_.monitor)
        if improved:
            link_atomic(snapshot, folder / "best.npz")
            state.best[str(index)] = {"value": value, "step": step}
        stopping = pass_.early_stopping
        if stopping:
            if stopping.monitor != pass_.monitor:
                key = f"{index}:{stopping.monitor}"
                watched = values[stopping.monitor]
                improved = _improves(watched, state.best.get(key), stopping.monitor)
                if improved:
                    state.best[key] = {"value": watched, "step": step}
            state.wait = 0 if improved else state.wait + 1
            if state.wait >= stopping.patience:
                model.stop_training = True
                self.stopped_early = True
        previous = self.workdir / state.snapshot if state.snapshot else None
        state.history.append({"step": step, "pass": index, "metrics": values})
        state.epochs_in_pass += 1
        state.snapshot = str(snapshot.relative_to(self.workdir))
        state.save(self.workdir)
        if previous is not None and previous != snapshot:
            previous.unlink(missing_ok=True)
        self.reporter.epoch_finished(index, step, values)

    # ---- per pass

    def _model_for_pass(self, index: int, pass_: PassConfig):
        """The model a pass starts from: a fresh build, the previous pass's best or final
        weights, or (resuming mid-pass) the last checkpoint with its optimizer state."""
        from harness.models import apply_freeze, build_model, load_model

        model = build_model(self.iteration)
        if self.state.pass_index == index and self.state.epochs_in_pass > 0:
            last = self.workdir / self.state.snapshot
            self.log(f"resuming pass {index + 1} after epoch {self.state.epochs_in_pass} from {last}")
            apply_freeze(model, pass_.freeze if pass_.freeze is not None else self.iteration.backbone.freeze)
            self._compile(model, pass_)
            load_snapshot(model, last)
            return model, True
        if index > 0 and pass_.resume_from != "none":
            name = "best.keras" if pass_.resume_from == "best" else "final.keras"
            source = self.pass_dir(index - 1) / name
            if not source.exists():  # a pass that never improved has no best: use where it ended
                source = self.pass_dir(index - 1) / "final.keras"
            self.log(f"pass {index + 1} starts from pass {index}'s {pass_.resume_from} checkpoint ({source.name})")
            model.set_weights(load_model(source, compile=False).get_weights())
        apply_freeze(model, pass_.freeze if pass_.freeze is not None else self.iteration.backbone.freeze)
        self._compile(model, pass_)
        return model, False

    def _compile(self, model, pass_: PassConfig, optimizer=None) -> None:
        import keras

        opt = self.iteration.optimizer
        if optimizer is None:
            lr = lr_for_epoch(pass_, opt.lr, 0)
            optimizer = (keras.optimizers.SGD(lr, momentum=opt.momentum) if opt.name == "sgd"
                         else keras.optimizers.Adam(lr))
        outputs = [output_name(head) for head in self.heads]
        model.compile(
            optimizer=optimizer,
            loss={name: "categorical_crossentropy" for name in outputs},
            metrics={name: [kind.keras for kind in metrics.compiled_kinds()] for name in outputs},
            jit_compile=self.iteration.compute.jit_compile,
        )

    # ---- frozen-backbone feature cache

    def _feature_cache_applies(self, pass_: PassConfig) -> bool:
        """Features can stand in for images only when the backbone cannot change (frozen for
        the whole pass) and the images cannot either (no flip or cutout between epochs)."""
        it = self.iteration
        policy = pass_.freeze if pass_.freeze is not None else it.backbone.freeze
        return (it.compute.feature_cache and self.feature_inputs is not None and policy == "backbone"
                and not it.augmentation.flip and it.augmentation.cutout is None)

    def _feature_data(self, model):
        """Datasets of backbone features for every train and val row, computed once per set of
        backbone weights (passes that reload the same frozen backbone reuse them)."""
        from harness.models import feature_model

        backbone = model.get_layer("backbone")
        key = float(sum(np.abs(w).sum(dtype=np.float64) for w in backbone.get_weights()))
        if key not in self._features:
            inputs = self.feature_inputs
            started = time.perf_counter()
            images = self.bundle.rows(inputs.rows).map(lambda x, y: x)
            computed = feature_model(model).predict(images, verbose=0).astype(np.float32)
            features = np.zeros((inputs.n_rows, *computed.shape[1:]), np.float32)
            features[inputs.rows] = computed
            self._features[key] = inputs.build(features)
            self.log(f"feature cache: backbone features of {len(inputs.rows)} images computed once "
                     f"({time.perf_counter() - started:.1f} s, {features.nbytes / 2**20:.0f} MiB in memory); "
                     f"the neck and heads train on them (compute.feature_cache: false turns this off)")
        return self._features[key]

    def _train_data(self, start_epoch: int):
        """The endless training stream from `start_epoch`, with per-head sample weights when
        the ledger asks for class weighting (Keras's class_weight only handles single-output
        models)."""
        stream = self._for_model(self.data.train_from(start_epoch))
        if not self.iteration.loss.class_weighting:
            return stream
        import tensorflow as tf

        from harness.data.split import class_weights

        tables = {output_name(head): tf.constant(class_weights(self.bundle.train_labels[head], len(classes)),
                                                dtype=tf.float32)
                  for head, classes in self.heads.items()}

        def add_weights(image, labels):
            # Keras matches sample weights to the model's outputs by position (its outputs are a
            # list in head order), while labels are matched by output name.
            by_output = labels if isinstance(labels, dict) else {next(iter(tables)): labels}
            weights = tuple(tf.gather(table, tf.argmax(by_output[name], axis=-1)) for name, table in tables.items())
            return image, labels, weights if len(weights) > 1 else weights[0]

        return stream.map(add_weights)

    def _for_model(self, dataset):
        return labels_for_model(dataset, self.heads)

    @property
    def _val(self):
        return self._for_model(self.data.val)

    def run_pass(self, index: int) -> PassResult:
        from harness import models

        it = self.iteration
        pass_ = it.passes[index]
        self.reporter.pass_started(index, it)
        model, resumed = self._model_for_pass(index, pass_)
        self.full_model, fit_model, self.data = model, model, self.bundle
        if self._feature_cache_applies(pass_):
            self.data = self._feature_data(model)
            fit_model = models.head_model(model)
            self._compile(fit_model, pass_, optimizer=model.optimizer)  # shared: saved with the model
        self.stopped_early = False
        if self.state.pass_index != index:
            self.state.pass_index, self.state.epochs_in_pass, self.state.wait = index, 0, 0
        if self.state.epochs_in_pass < pass_.epochs:
            fit_model.fit(
                # the stream is keyed by the global epoch, so every pass sees fresh orders
                self._train_data(self.state.step),
                steps_per_epoch=self.data.steps_per_epoch,
                validation_data=self._val,
                epochs=pass_.epochs,
                initial_epoch=self.state.epochs_in_pass,
                callbacks=[_make_callback(self, index, pass_)],
                shuffle=False,  # the stream is shuffled, per epoch and seeded, by the data layer
                # Keras's own progress logger syncs every batch (~5% of a CPU epoch); the epoch
                # line is printed by the pass callback instead.
                verbose=0,
            )
        folder = self.pass_dir(index)
        if self.diverged:
            last = self.workdir / self.state.snapshot if self.state.snapshot else None
            if last is not None and last.parent == folder:  # the last good epoch, loadable by anyone
                load_snapshot(model, last, optimizer=False)
                save_model_atomic(model, folder / "last.keras")
            raise TrainingDiverged(self.diverged)
        best_path = folder / "best.keras"
        restore = pass_.early_stopping.restore_best if pass_.early_stopping else False
        if (folder / "best.npz").exists():
            ended = None if restore else model.get_weights()  # restore-best keeps the best weights
            load_snapshot(model, folder / "best.npz", optimizer=False)
            save_model_atomic(model, best_path)
            if ended is not None:
                model.set_weights(ended)
        save_model_atomic(model, folder / "final.keras")
        result = self._evaluate(index, fit_model, best_path)
        self.state.done_passes.append(index)
        self.state.pass_index, self.state.epochs_in_pass, self.state.wait = index + 1, 0, 0
        self.state.save(self.workdir)
        self.reporter.pass_finished(index, result)
        return result

    def _evaluate(self, index: int, model, best_path: Path) -> PassResult:
        logs = model.evaluate(self._val, return_dict=True, verbose=0)
        eval_dict = metrics.from_keras_logs(logs, self.dataset)
        raw = model.predict(self._val, verbose=0)
        if not isinstance(raw, dict):  # a list in output order, or one array for one head
            raw = dict(zip(model.output_names, raw if isinstance(raw, (list, tuple)) else [raw]))
        predictions = {head: np.argmax(raw[output_name(head)], axis=-1) for head in self.heads}
        best = self.state.best.get(str(index))
        return PassResult(
            index=index,
            eval=dict(sorted(eval_dict.items())),
            best_checkpoint=best_path if best_path.exists() else self.pass_dir(index) / "final.keras",
            best_epoch=best["step"] if best else None,
            stopped_early=self.stopped_early,
            predictions=predictions,
            labels=dict(self.bundle.val_labels),
        )

    def run(self) -> list[PassResult]:
        import keras

        policy = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
        previous = keras.mixed_precision.global_policy().name
        keras.mixed_precision.set_global_policy(policy[self.iteration.compute.mixed_precision])
        try:
            results = []
            for index in range(len(self.iteration.passes)):
                if index in self.state.done_passes:
                    continue
                results.append(self.run_pass(index))
            return results
        finally:
            keras.mixed_precision.set_global_policy(previous)
