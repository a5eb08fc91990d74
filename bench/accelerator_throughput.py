"""Training throughput of an iteration's model on whatever accelerator Keras sees, in images/s.

    python -m bench.accelerator_throughput eleventh --profile full --epochs 3 --steps 40

The model is the harness's own (`harness.models.build_model`, compiled by
`harness.train.compile_model` with the iteration's optimizer, losses and metrics); the inputs are
synthetic (uniform pixels, random one-hot labels), so the number measures the accelerator and the
graph, not the input pipeline or the disk. Three settings side by side, each in this process:
fp32; bfloat16 mixed precision with XLA (`compute.mixed_precision: bfloat16`, `jit_compile: true`);
the same data-parallel over every visible device (TensorFlow: tf.distribute.MirroredStrategy;
JAX: keras.distribution.DataParallel). The first epoch (tracing, compilation) is reported
separately from the steady epochs. Works with any Keras backend (KERAS_BACKEND).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _strategy(distributed: bool):
    """A context that builds and compiles the model data-parallel over every device, or a no-op."""
    import contextlib

    import keras

    if not distributed:
        return contextlib.nullcontext(), 1
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy()
        return strategy.scope(), strategy.num_replicas_in_sync
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return contextlib.nullcontext(), len(devices)


def measure(iteration, epochs: int, steps: int, batch: int, precision: str, jit: bool, distributed: bool) -> dict:
    import keras

    from harness import ledger
    from harness.core.labels import heads_for, output_name
    from harness.models import build_model
    from harness.train import compile_model

    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    variant = ledger.with_changes(iteration, {"compute": {"mixed_precision": precision, "jit_compile": jit}})
    scope, replicas = _strategy(distributed)
    with scope:
        model = build_model(variant)
        compile_model(model, variant, variant.passes[0])
    size = variant.data.image_size
    rng = np.random.default_rng(0)
    n = steps * batch
    x = rng.random((n, size, size, 3), dtype=np.float32)
    y = {output_name(head): np.eye(len(classes), dtype=np.float32)[rng.integers(0, len(classes), n)]
         for head, classes in heads_for(variant.data.name).items()}
    times = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.started)

    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=[Clock()], shuffle=False)
    if distributed and keras.backend.backend() != "tensorflow":
        keras.distribution.set_distribution(None)
    steady = times[1:] or times
    return {"first_epoch_s": times[0], "img_per_s": n / (sum(steady) / len(steady)), "replicas": replicas}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("iteration")
    parser.add_argument("--ledger", default="runs.yaml")
    parser.add_argument("--profile", default="full")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="batches an epoch")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: the ledger's)")
    args = parser.parse_args(argv)

    import keras

    from harness import ledger

    iteration = ledger.load(args.ledger).resolve(args.iteration, args.profile)
    batch = args.batch or iteration.batch_size.train
    devices = keras.distribution.list_devices()
    print(f"{args.iteration} ({iteration.backbone.name}, {iteration.data.image_size} px, batch {batch}), "
          f"Keras {keras.__version__} on {keras.backend.backend()}, devices: {', '.join(map(str, devices))}")
    print("| setting | replicas | first epoch (s) | steady img/s |")
    print("|---|---:|---:|---:|")
    for label, precision, jit, distributed in (("fp32", "none", False, False),
                                               ("bfloat16 + XLA", "bfloat16", True, False),
                                               ("bfloat16 + XLA, data-parallel", "bfloat16", True, True)):
        result = measure(iteration, args.epochs, args.steps, batch, precision, jit, distributed)
        print(f"| {label} | {result['replicas']} | {result['first_epoch_s']:.1f} | {result['img_per_s']:,.0f} |",
              flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
