"""Compiling a model for a pass, and the streams it is fit and scored on.

Public so that everything that trains (the pass loop, lr-find, bench/) compiles and feeds a model
the same way: `compile_model` (optimizer, per-head loss, the metric contract's metrics, XLA
switch), `train_stream` (the endless training stream from an epoch, class weights included),
`val_stream`. No YAML, no MLflow; TensorFlow is imported when a function runs.
"""

from __future__ import annotations

from harness.core import metrics
from harness.core.labels import heads_for, output_name
from harness.ledger.schema import Iteration, PassConfig

# Keras name of a metric kind (harness.core.metrics.KINDS) -> a factory of the keras.metrics.Metric
# that logs under that name, for metrics Keras does not know by name (it knows "accuracy").
KERAS_METRICS: dict = {}

LOSS = "categorical_crossentropy"


def lr_for_epoch(pass_: PassConfig, default_lr: float, epoch: int) -> float:
    """The LR of a 0-based epoch within the pass: its schedule, its constant, or the optimizer's."""
    if pass_.schedule is not None:
        return pass_.schedule.lr_at(epoch)
    return pass_.lr if pass_.lr is not None else default_lr


def make_optimizer(iteration: Iteration, pass_: PassConfig):
    """The iteration's optimizer at the pass's first LR."""
    import keras

    opt = iteration.optimizer
    lr = lr_for_epoch(pass_, opt.lr, 0)
    return keras.optimizers.SGD(lr, momentum=opt.momentum) if opt.name == "sgd" else keras.optimizers.Adam(lr)


def _keras_metric(kind: metrics.Kind):
    """What model.compile is given for a kind: its Keras name, or a metric from KERAS_METRICS."""
    factory = KERAS_METRICS.get(kind.keras)
    return factory() if factory is not None else kind.keras


def compile_model(model, iteration: Iteration, pass_: PassConfig, optimizer=None) -> None:
    """Compile for a pass: `optimizer` (default: a new one at the pass's first LR), categorical
    cross-entropy on every head, the contract's per-head metrics. Compile again after every
    apply_freeze. Passing the full model's optimizer to its head model shares the state."""
    outputs = [output_name(head) for head in heads_for(iteration.data.name)]
    model.compile(
        optimizer=optimizer if optimizer is not None else make_optimizer(iteration, pass_),
        loss={name: LOSS for name in outputs},
        metrics={name: [_keras_metric(kind) for kind in metrics.compiled_kinds()] for name in outputs},
        jit_compile=iteration.compute.jit_compile,
    )


def build_now(model, stream) -> None:
    """Create a compiled model's state (the optimizer's slots, the compiled loss's and metrics'
    variables) now, eagerly, from the shapes of `stream`'s batches, before fit or evaluate.

    Why: without a distribution strategy Keras builds that state inside the first traced train
    (or test) step, and a tf.function whose first trace creates variables is traced twice. On a
    smoke run of 8 heads that second trace is most of a pass's start-up: three tiny iterations
    (one, two passes, a frozen backbone) took 51.7 s, 41.5 s built first, the same numbers to the
    last digit. This is Keras's own build (`_symbolic_build`, what its fit runs first under a
    distribution strategy), from the element spec, so no batch is read. A Keras without it (the
    pin is 3.15) builds as before."""
    build = getattr(model, "_symbolic_build", None)
    if build is None:
        return
    build(data_batch=stream.element_spec)


def labels_for_model(dataset, heads: dict):
    """A single-output Keras model wants plain label arrays, not a one-key dict."""
    if len(heads) != 1:
        return dataset
    key = output_name(next(iter(heads)))
    return dataset.map(lambda image, labels: (image, labels[key]))


def train_stream(iteration: Iteration, data, start_epoch: int = 0):
    """The endless training stream of `data` (harness.data.pipeline.Datasets, images or
    features) from `start_epoch`, shaped for the model, with per-head sample weights when the
    ledger asks for class weighting (Keras's class_weight only handles single-output models)."""
    stream = labels_for_model(data.train_from(start_epoch), data.heads)
    if not iteration.loss.class_weighting:
        return stream
    import tensorflow as tf

    from harness.data.split import class_weights

    tables = {output_name(head): tf.constant(class_weights(data.train_labels[head], len(classes)), dtype=tf.float32)
              for head, classes in data.heads.items()}

    def add_weights(image, labels):
        # Keras matches sample weights to the model's outputs by position (its outputs are a
        # list in head order), while labels are matched by output name.
        by_output = labels if isinstance(labels, dict) else {next(iter(tables)): labels}
        weights = tuple(tf.gather(table, tf.argmax(by_output[name], axis=-1)) for name, table in tables.items())
        return image, labels, weights if len(weights) > 1 else weights[0]

    return stream.map(add_weights)


def val_stream(data):
    """The validation dataset of `data`, shaped for the model."""
    return labels_for_model(data.val, data.heads)
