"""Several devices on one host: `compute.distribute: mirrored` trains under
tf.distribute.MirroredStrategy.

Why a scope around the whole run: Keras 3 binds a model to the strategy in force when the model
(and its optimizer) are created, so building, restoring, compiling, fitting, evaluating and the
feature cache of every pass all happen inside `strategy.scope()`. The ledger's batch size stays
the global batch: the tf.data pipeline batches as before and the strategy splits each batch over
the replicas (batch 32 over 2 replicas = 16 a replica), and batch normalization is synchronized
across them, so a mirrored run trains to the numbers of a single-device run of the iteration.

The replicas are every GPU the process sees; with none, every logical CPU device (one, unless
the process split its CPU with tf.config.set_logical_device_configuration before TensorFlow
started, which is how the test checks the mirrored path without a GPU).

`multi_worker` never gets here: the ledger refuses it (keras-team/keras#20585, Keras 3's fit does
not support MultiWorkerMirroredStrategy); several hosts train one iteration per GPU through Ray
(`harness run --all --ray`). No YAML, no MLflow.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

MIRRORED = "mirrored"


def replica_devices() -> list[str]:
    """The devices a mirrored run spreads over: every visible GPU, else every logical CPU."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]


@contextlib.contextmanager
def strategy_scope(distribute: str) -> Iterator[None]:
    """The scope a run trains in: a MirroredStrategy's for `mirrored`, nothing otherwise."""
    if distribute != MIRRORED:
        yield
        return
    with mirrored_strategy(tuple(replica_devices())).scope():
        yield


@functools.lru_cache(maxsize=None)
def mirrored_strategy(devices: tuple):
    """One MirroredStrategy per set of devices for the life of the process. A second one would
    number its collective ops from the same keys as the first, and TensorFlow, which remembers a
    key's tensor shapes process-wide, aborts the next run's gradient all-reduce ("Shape mismatch
    in the collective instance"); a Ray worker or a test trains several iterations in one process."""
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(devices=list(devices))


def synchronize_batch_norm(model, distribute: str) -> None:
    """Under `mirrored`, every BatchNormalization layer (those inside keras.applications
    backbones too) normalizes with the statistics of the global batch rather than of its
    replica's share: the ledger's batch size stays what batch norm sees, and a mirrored run
    trains to the single-device numbers. Keras reads the switch at each call."""
    if distribute != MIRRORED:
        return
    import keras

    from harness.models.freeze import iter_layers

    for layer, _ in iter_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


def batch_phrase(distribute: str, global_batch: int) -> str:
    """For the pass header, inside the run's scope: how a mirrored run splits its batch (empty
    for a plain run, whose header says nothing new)."""
    if distribute != MIRRORED:
        return ""
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return f"global batch {global_batch} over {replicas} replica{'s' if replicas != 1 else ''}"
