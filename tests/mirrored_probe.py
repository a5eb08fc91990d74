"""Run by tests/test_distribute.py in a fresh interpreter: TensorFlow's CPU is split into two
logical devices before TensorFlow initialises (it cannot be split after); then an iteration is
trained on one device, and under MirroredStrategy over both, interrupted after its first epoch
and resumed. Prints one JSON line with what the test checks.

    python tests/mirrored_probe.py LEDGER DATA_DIR WORK_DIR
"""

import json
import sys


def split_cpu(devices: int) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)


class Recorder:
    """The tracker behind the console reporter: keeps the steps; with `stop`, the first finished
    epoch raises KeyboardInterrupt, where Ctrl-C would arrive."""

    def __init__(self, stop: bool = False):
        self.stop, self.steps = stop, []

    def pass_started(self, *args):
        pass

    def epoch_finished(self, pass_index, step, values):
        self.steps.append(step)
        if self.stop:
            raise KeyboardInterrupt

    def pass_finished(self, *args):
        pass


def train(iteration, data_dir, folder, interrupt: bool) -> dict:
    """The iteration through the harness's Runner on cached backbone features (its pass header
    from the console reporter); with `interrupt`, stopped after the first epoch and resumed by a
    new Runner from the same folder."""
    import keras

    from harness.data.pipeline import make_datasets
    from harness.data.source import open_dataset
    from harness.data.split import split
    from harness.run.console import ConsoleReporter
    from harness.models.freeze import iter_layers
    from harness.train import FeatureInputs, Runner, RunState, set_seeds

    set_seeds(iteration.seed)
    table, _ = open_dataset(iteration, data_dir)
    parts = split(table, iteration.data.val_fraction, iteration.data.split_seed)
    bundle = make_datasets(iteration, table, parts.train, parts.val)
    inputs = FeatureInputs.of(iteration, table, parts.train, parts.val)
    lines, trackers = [], [Recorder(stop=interrupt), Recorder()]

    def runner(tracker):
        reporter = ConsoleReporter(tracker, iteration, "synth", "full", lines.append)
        return Runner(iteration, bundle, folder, reporter, log=lines.append, feature_inputs=inputs)

    try:
        results = runner(trackers[0]).run()
    except KeyboardInterrupt:
        results = runner(trackers[1]).run()
    state = RunState.load(folder)
    norms = [layer for layer, _ in iter_layers(keras.models.load_model(results[-1].best_checkpoint))
             if isinstance(layer, keras.layers.BatchNormalization)]
    return {"lines": lines, "steps": [t.steps for t in trackers],
            "loss": [h["metrics"]["loss"] for h in state.history],
            "val_loss": [h["metrics"]["val_loss"] for h in state.history],
            "eval_loss": results[-1].eval["loss"],
            "synchronized_bn": bool(norms) and all(layer.synchronized for layer in norms)}


def main(ledger_path, data_dir, work_dir) -> None:
    split_cpu(2)
    from harness import ledger
    from harness.train.distribute import replica_devices

    book = ledger.load(ledger_path)
    report = {"devices": replica_devices()}
    report["single"] = train(book.resolve("single"), data_dir, f"{work_dir}/single", interrupt=False)
    report["mirrored"] = train(book.resolve("mirrored"), data_dir, f"{work_dir}/mirrored", interrupt=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:4])
