"""The pass loop: one iteration's passes, with LR schedules, checkpoints, early stopping, a
divergence stop and resume after a kill.

No YAML and no MLflow here: the Runner gets a resolved Iteration and the datasets, and reports
every pass start, finished epoch and finished pass to a `Reporter` (harness.track's tracker
behind the console, or a test's). What it keeps on disk is described in
harness.train.checkpoints; how a model is compiled and fed, in harness.train.compile.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol

import numpy as np

from harness.core import faults, metrics
from harness.core.labels import output_name
from harness.ledger.schema import Iteration, PassConfig
from harness.train import feature_cache, progress
from harness.train.checkpoints import (EpochWriter, RunFolder, RunState, capture_snapshot, link, load_snapshot,
                                       save_last_good, save_pass_models, write_snapshot)
from harness.train.compile import build_now, compile_model, lr_for_epoch, train_stream, val_stream
from harness.train.distribute import strategy_scope, synchronize_batch_norm
from harness.train.rng import seed_pass

# An epoch whose training loss is this many times the run's lowest so far has diverged: real
# training never gets there, while an absurd LR can keep the loss finite (clipped softmax, huge
# weights) long after the model is ruined.
EXPLOSION_FACTOR = 1000.0

PRECISION_POLICIES = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


class TrainingDiverged(RuntimeError):
    """Loss became NaN or infinite, or exploded; the last good checkpoint is kept."""


@dataclass
class PassResult:
    index: int
    eval: dict  # the notes' evaluate dict in contract names: loss, {head}_acc, {head}_loss
    best_checkpoint: Path  # the pass's best model, or where it ended when it never improved
    best_epoch: Optional[int]  # global step of the best epoch by the pass's monitor
    stopped_early: bool
    predictions: dict  # head -> predicted class index per validation example
    labels: dict  # head -> true class index per validation example
    probabilities: dict = field(default_factory=dict)  # head -> the predicted class's softmax probability


class Reporter(Protocol):
    """What the Runner tells about a run, in order: per pass, pass_started, then epoch_finished
    per epoch (step = epoch counted across passes), then pass_finished."""

    def pass_started(self, index: int, iteration: Iteration, freeze) -> None:
        """`freeze`: the harness.models.FreezeSummary of the pass's freeze policy."""

    def epoch_finished(self, pass_index: int, step: int, values: dict) -> None:
        """`values`: the epoch's metrics in contract names (harness.core.metrics). Called on the
        Runner's background writer thread, after the epoch's state is on disk; a reporter with
        a `flush()` (its logging asynchronous) is flushed there too, before the next epoch."""

    def pass_finished(self, index: int, result: PassResult) -> None: ...


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


def divergence(values: dict, history: list, index: int, epoch: int) -> Optional[str]:
    """Why an epoch's metrics count as diverged (None: they do not)."""
    loss = values.get(metrics.LOSS, 0)
    lowest = min((h["metrics"][metrics.LOSS] for h in history), default=math.inf)
    if loss > EXPLOSION_FACTOR * lowest:
        return (f"loss exploded to {loss:.3g} ({EXPLOSION_FACTOR:g}x the lowest so far, {lowest:.3g}) "
                f"in pass {index + 1}, epoch {epoch + 1}")
    if not all(math.isfinite(v) for v in values.values()):
        return f"non-finite metrics in pass {index + 1}, epoch {epoch + 1}"
    return None


def new_model(iteration: Iteration, index: int, training_mean=None):
    """(model, FreezeSummary): pass `index`'s model, built with the pass's freeze policy
    applied, before any weights are restored (Runner.restore does that, and compiles).
    `training_mean`: the data's per-pixel mean, when the pixel encoding subtracts one."""
    from harness.models import apply_freeze, build_model, policy_for

    model = build_model(iteration, freeze=False, training_mean=training_mean)
    synchronize_batch_norm(model, iteration.compute.distribute)
    return model, apply_freeze(model, policy_for(iteration, index))


def predicted_outputs(model, inputs, heads) -> tuple[dict, dict]:
    """(head -> the class `model` predicts for every example of the dataset `inputs`, in order;
    head -> that class's softmax probability). One predict pass gives both, so the run's
    per-example predictions artifact (harness.core.predictions) costs no extra pass."""
    raw = model.predict(inputs, verbose=0)
    if not isinstance(raw, dict):  # a list in output order, or one array for one head
        raw = dict(zip(model.output_names, raw if isinstance(raw, (list, tuple)) else [raw]))
    outputs = {head: np.asarray(raw[output_name(head)]) for head in heads}
    return ({head: np.argmax(out, axis=-1) for head, out in outputs.items()},
            {head: np.max(out, axis=-1).astype(np.float64) for head, out in outputs.items()})


def predicted_classes(model, inputs, heads) -> dict:
    """head -> the class `model` predicts for every example of the dataset `inputs`, in order."""
    return predicted_outputs(model, inputs, heads)[0]


def predict_outputs(model, data) -> tuple[dict, dict]:
    """predicted_outputs on every validation example of `data`, in its order."""
    return predicted_outputs(model, val_stream(data), data.heads)


def evaluate(model, data, dataset: str) -> tuple[dict, dict, dict]:
    """(the evaluate dict in contract names, sorted; head -> predicted class per validation
    example; head -> its probability) of `model` on `data`'s validation set."""
    build_now(model, stream := val_stream(data))  # a pass resumed at its end trained nothing
    evaluated = metrics.from_keras_logs(model.evaluate(stream, return_dict=True, verbose=0), dataset)
    return (dict(sorted(evaluated.items())), *predict_outputs(model, data))


def budget_line(index: int, pass_: PassConfig, state: RunState) -> str:
    """The line for a pass its cost cap ended: where, and the measured cost."""
    seconds = [h["metrics"].get(metrics.EPOCH_SECONDS, 0.0) for h in state.history if h["pass"] == index]
    return (f"   pass {index + 1} ended after epoch {state.epochs_in_pass}/{pass_.epochs} by its cost cap: "
            f"{sum(seconds):.0f} s spent at {sum(seconds) / len(seconds):.1f} s an epoch, cap {pass_.max_seconds} s "
            f"(the profile's; --profile full trains every epoch); the best checkpoint by {pass_.monitor} is kept")


def early_stop_line(index: int, pass_: PassConfig, state: RunState) -> str:
    """What a person needs to know when early stopping ends a pass: when, on what, and which
    weights the pass hands on."""
    stopping = pass_.early_stopping
    best = state.stopping_best(index, pass_) or {}
    kept = "the best epoch's weights are kept" if stopping.restore_best else "the last epoch's weights are kept"
    return (f"   early stopping ended pass {index + 1} after epoch {state.epochs_in_pass}/{pass_.epochs}: "
            f"{stopping.monitor} did not improve for {stopping.patience} epochs (best {best.get('value', math.nan):.4f} "
            f"at epoch {best.get('step', '?')}); {kept}")


def _pass_callback(runner: "Runner", index: int, pass_: PassConfig):
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
            # a MirroredVariable under compute.distribute: mirrored, which float() refuses
            values[metrics.LR] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            values[metrics.EPOCH_SECONDS] = time.perf_counter() - self._started
            runner.diverged = runner.diverged or divergence(values, runner.state.history, index, epoch)
            if runner.diverged:
                self.model.stop_training = True
                return  # keep the last good checkpoint; report nothing from a broken epoch
            runner.epoch_done(index, pass_, self.model, values)
            runner.log(metrics.epoch_line(epoch, pass_.epochs, runner.state.step, values, runner.dataset))

    return PassCallback()


def selected_outputs(iteration: Iteration, folder: RunFolder, bundle, results: list) -> tuple[dict, dict]:
    """The selected checkpoint's (predicted classes, their probabilities) on the validation set:
    the last pass's own evaluation when this process ran it, else (the pass finished before a
    kill) by predicting with the checkpoint file."""
    from harness.models import load_model

    last = len(iteration.passes) - 1
    result = next((r for r in results if r.index == last), None)
    if result is not None and result.probabilities:
        return result.predictions, result.probabilities
    return predict_outputs(load_model(folder.checkpoint(last), compile=False), bundle)


def selected_scores(iteration: Iteration, folder: RunFolder, state: RunState, bundle, results: list,
                    outputs: Optional[tuple] = None) -> dict:
    """The selected checkpoint's per-head scores on the validation set (harness.core.metrics
    selected_summary), from `outputs` (selected_outputs) when the caller has them."""
    last = len(iteration.passes) - 1
    predictions = (outputs or selected_outputs(iteration, folder, bundle, results))[0]
    best = state.best.get(str(last))
    epoch = best["step"] if best else state.step
    return metrics.selected_summary(bundle.val_labels, predictions, iteration.data.name, epoch)


def fit_epochs(fit_model, iteration: Iteration, data, state: RunState, pass_: PassConfig, callbacks: list) -> None:
    """The rest of a pass's epochs, from where the run state says the pass is."""
    # the stream is keyed by the global epoch, so every pass sees fresh orders
    build_now(fit_model, stream := train_stream(iteration, data, state.step))
    fit_model.fit(
        stream,
        steps_per_epoch=data.steps_per_epoch,
        validation_data=val_stream(data),
        epochs=pass_.epochs,
        initial_epoch=state.epochs_in_pass,
        callbacks=callbacks,
        shuffle=False,  # the stream is shuffled, per epoch and seeded, by the data layer
        verbose=0,  # Keras's logger syncs every batch (~5% of a CPU epoch); the pass callback prints
    )


def keep_pass_models(folder: RunFolder, index: int, pass_: PassConfig, model) -> None:
    """Write the pass's .keras files and leave its best weights in `model`: the pass is scored
    on its best checkpoint, the one it hands on as best.keras and the notes evaluated ("load
    model.017 and evaluate"), never on where it happened to end."""
    restore_best = pass_.early_stopping.restore_best if pass_.early_stopping else False
    save_pass_models(folder, index, model, restore_best)
    if not restore_best and folder.best_snapshot(index).exists():
        load_snapshot(model, folder.best_snapshot(index), optimizer=False)


@dataclass
class Runner:
    """Trains `iteration` on `bundle` (harness.data.pipeline.make_datasets) in the work folder
    `workdir`, resuming from whatever state the folder holds."""

    iteration: Iteration
    bundle: object
    workdir: Path
    reporter: Reporter
    log: Callable = print
    feature_inputs: Optional[feature_cache.FeatureInputs] = None
    state: RunState = field(init=False)
    diverged: Optional[str] = field(default=None, init=False)
    stopped_early: bool = field(default=False, init=False)
    _outputs: Optional[tuple] = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.folder = RunFolder(self.workdir)
        self.workdir = self.folder.root
        self.state = RunState.load(self.workdir)
        self.writer = EpochWriter()
        self.dataset = self.iteration.data.name
        self.cache = (feature_cache.FeatureCache(self.bundle, self.feature_inputs, self.log)
                      if self.feature_inputs is not None else None)

    def final_checkpoint(self) -> Path:
        """The selected checkpoint: the last pass's best by its monitor, else where it ended."""
        return self.folder.checkpoint(len(self.iteration.passes) - 1)

    def selected_outputs(self, results: list[PassResult]) -> tuple[dict, dict]:
        """The selected checkpoint's (predicted classes, probabilities) on the validation set,
        computed once (see selected_outputs): the summary and the predictions artifact share them."""
        if self._outputs is None:
            self._outputs = selected_outputs(self.iteration, self.folder, self.bundle, results)
        return self._outputs

    def selected_summary(self, results: list[PassResult]) -> dict:
        """The selected checkpoint's per-head scores on the validation set (see selected_scores)."""
        return selected_scores(self.iteration, self.folder, self.state, self.bundle, results,
                               self.selected_outputs(results))

    def epoch_done(self, index: int, pass_: PassConfig, model, values: dict) -> None:
        """`model` is the one being fit (it gets stop_training); checkpoints are always of the
        whole model, even when the fit runs on cached features. The decisions (best, early
        stop, budget) and the state in memory are made here; the files and the report go to
        the background writer, after the previous epoch's have landed: snapshot, then state,
        then the report (its logging waited for), as a synchronous epoch did them."""
        self.settle()
        state = self.state
        step = state.step + 1
        # A new name per epoch: until the state names it, a kill leaves state and snapshot in
        # step (the previous epoch's), so a resume neither skips nor repeats an epoch.
        snapshot = self.folder.epoch_snapshot(index, state.epochs_in_pass + 1)
        arrays = capture_snapshot(self.full_model)
        value = values.get(pass_.monitor)
        improved = value is not None and state.improve(str(index), value, step, pass_.monitor)
        if state.should_stop(index, pass_, values, step, improved):
            model.stop_training = True
            self.stopped_early = True
        persist = state.record_epoch(self.folder, index, values, snapshot)
        if state.epochs_in_pass < pass_.epochs and state.over_budget(index, pass_):
            model.stop_training = True
            self.stopped_early = True
        best = self.folder.best_snapshot(index) if improved else None

        def write() -> None:
            write_snapshot(arrays, snapshot)
            if best is not None:
                link(snapshot, best)
            persist()
            faults.reach("after-snapshot")
            self.reporter.epoch_finished(index, step, values)
            flush = getattr(self.reporter, "flush", None)
            if flush is not None:  # the epoch's logging lands before the next epoch is recorded
                flush()

        self.writer.submit(write)

    def settle(self) -> None:
        """Wait for the background writer; if it failed, the state in memory goes back to the
        one on disk (the last epoch whose files were written) before the error goes on."""
        try:
            self.writer.join()
        except BaseException:
            self.state = RunState.load(self.workdir)
            raise

    def restore(self, index: int, model) -> None:
        """Compile `model` with the weights pass `index` starts from: fresh, the previous pass's
        best or final, or (resuming mid-pass) the last checkpoint with its optimizer state."""
        from harness.models import load_model

        pass_ = self.iteration.passes[index]
        if self.state.pass_index == index and self.state.epochs_in_pass > 0:
            last = self.folder.resolve(self.state.snapshot)
            self.log(f"resuming pass {index + 1} after epoch {self.state.epochs_in_pass} from {last}")
            compile_model(model, self.iteration, pass_)
            load_snapshot(model, last)
            return
        if index > 0 and pass_.resume_from != "none":
            source = self.folder.checkpoint(index - 1, "best" if pass_.resume_from == "best" else "final")
            self.log(f"pass {index + 1} starts from pass {index}'s {pass_.resume_from} checkpoint ({source.name})")
            model.set_weights(load_model(source, compile=False).get_weights())
        compile_model(model, self.iteration, pass_)

    def run_pass(self, index: int) -> PassResult:
        from harness.models import head_model

        it, pass_ = self.iteration, self.iteration.passes[index]
        seed_pass(it.seed, index)  # the pass's model is the same in a fresh and a resumed process
        model, freeze = new_model(it, index, getattr(self.bundle, "pixel_mean", None))
        self.reporter.pass_started(index, it, freeze)
        self.restore(index, model)
        self.full_model, fit_model, data = model, model, self.bundle
        if self.cache is not None and feature_cache.applies(it, index):
            data = self.cache.datasets_for(model)
            fit_model = head_model(model)
            compile_model(fit_model, it, pass_, optimizer=model.optimizer)  # shared: saved with the model
        self.state.start_pass(index)
        self.stopped_early = self.state.stopped(pass_) or (
            self.state.epochs_in_pass < pass_.epochs and self.state.over_budget(index, pass_))
        if self.state.epochs_in_pass < pass_.epochs and not self.stopped_early:
            fit_epochs(fit_model, it, data, self.state, pass_,
                       # progress first: its line ends before the epoch's
                       [*progress.callbacks(data.steps_per_epoch, it.batch_size.train, pass_.epochs, self.log),
                        *(c for c in (_pass_callback(self, index, pass_), faults.mid_epoch_callback()) if c)])
        self.settle()
        if self.diverged:
            save_last_good(self.folder, self.state, index, model)
            raise TrainingDiverged(self.diverged)
        if self.stopped_early:
            self.log(early_stop_line(index, pass_, self.state) if self.state.stopped(pass_)
                     else budget_line(index, pass_, self.state))
        keep_pass_models(self.folder, index, pass_, model)
        evaluated, predictions, probabilities = evaluate(fit_model, data, self.dataset)
        best = self.state.best.get(str(index))
        result = PassResult(index=index, eval=evaluated, best_checkpoint=self.folder.checkpoint(index),
                            best_epoch=best["step"] if best else None, stopped_early=self.stopped_early,
                            predictions=predictions, labels=dict(self.bundle.val_labels),
                            probabilities=probabilities)
        # Reported first, recorded second: a kill in between repeats the pass's end (scored
        # again, logged again over the same names) instead of leaving it never logged.
        self.reporter.pass_finished(index, result)
        faults.reach("between-passes")
        self.state.finish_pass(index)
        self.state.save(self.workdir)
        return result

    def run(self) -> list[PassResult]:
        """Every pass not yet done, under the iteration's precision policy (restored after) and
        its distribution strategy (harness.train.distribute)."""
        import keras

        previous = keras.mixed_precision.global_policy().name
        keras.mixed_precision.set_global_policy(PRECISION_POLICIES[self.iteration.compute.mixed_precision])
        try:
            with strategy_scope(self.iteration.compute.distribute):
                return [self.run_pass(index) for index in range(len(self.iteration.passes))
                        if index not in self.state.done_passes]
        except BaseException:
            try:  # every exit waits for the writer: nothing half-reported behind the caller's back
                self.settle()
            except BaseException:
                pass  # the error already on its way comes first
            raise
        finally:
            keras.mixed_precision.set_global_policy(previous)
