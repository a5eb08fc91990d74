"""Reference rows (`harness reference`), the selected-checkpoint scores, and the guard against
metrics routed to the wrong head: real scikit-learn, TensorFlow and MLflow on a tiny synthetic set."""

import numpy as np
import pytest

from harness import ledger
from harness.core.labels import HVC_HEADS

TINY = """\
experiment: tiny-ref
defaults:
  seed: 3
  data: {name: hvc, image_size: 32, val_fraction: 0.25, cache: memory}
  backbone: {name: custom, freeze: none}
  head: {neck: gap, neck_units: 16, tower_units: [8], tower_dropouts: [0.0]}
  optimizer: {name: adam, lr: 0.003}
  batch_size: {train: 16, eval: 16}
profiles:
  cpu: {set: {}, max_epochs_per_pass: 2}
  smoke: {set: {}, max_epochs_per_pass: 1}
iterations:
  trained_on_train:
    data: {validate_on_train: true}
    passes: [{epochs: 1}]
  one:
    passes: [{epochs: 1}]
  other_seed:
    data: {split_seed: 7}
    passes: [{epochs: 1}]
"""


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from harness.data.synth import generate

    folder = tmp_path_factory.mktemp("synth")
    generate(folder, 96, seed=5)
    return folder


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    path = tmp_path_factory.mktemp("ledger") / "tiny.yaml"
    path.write_text(TINY)
    return ledger.load(path)


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


@pytest.fixture(scope="module")
def references(book, synth, store_uri):
    from harness.run.reference import run_references

    lines = []
    run_ids = run_references(book, data_dir=str(synth), tracking_uri=store_uri, log=lines.append)
    return run_ids, lines


def test_reference_runs_are_logged_per_split_with_the_iteration_metric_names(book, store_uri, references):
    from harness.track.store import Store

    run_ids, lines = references
    assert len(run_ids) == 4  # two splits (seed 1, seed 7) x two references; none for validate-on-train
    store = Store(store_uri)
    runs = [store.run(run_id) for run_id in run_ids]
    assert [r.name for r in runs] == ["reference/majority", "reference/linear-probe"] * 2
    assert all(r.status == "FINISHED" and r.tags["harness.kind"] == "reference" for r in runs)
    assert [r.tags["harness.reference"] for r in runs] == ["majority", "linear-probe"] * 2
    splits = [r.tags["harness.split"] for r in runs]
    assert splits[0] == splits[1] != splits[2] == splits[3] and "seed 1" in splits[0] and "seed 7" in splits[2]
    names = {f"selected_val_{h}_{k}" for h in HVC_HEADS for k in ("acc", "bacc")}
    names |= {"selected_val_mean_acc", "selected_val_mean_bacc"} | {f"val_{h}_acc" for h in HVC_HEADS}
    for run in runs:
        assert set(run.metrics) == names
        assert run.metrics["val_gender_acc"] == run.metrics["selected_val_gender_acc"]
    probe = runs[1]
    assert probe.params["pca_components"] == "200" and probe.params["C"] == "0.05"
    assert probe.params["train_images"] == "72" and probe.params["val_images"] == "24"
    assert lines[1].startswith("reference/linear-probe (hvc ") and "val_gender_acc" in lines[1]


def test_majority_reference_scores_the_most_frequent_training_class(book, synth, store_uri, references):
    from harness.data.hvc import load_hvc
    from harness.data.split import split
    from harness.run.reference import majority_accuracy
    from harness.track.store import Store

    run_ids, _ = references
    table = load_hvc(synth)
    parts = split(table, 0.25, 1)
    expected = majority_accuracy({h: v[parts.train] for h, v in table.labels.items()},
                                 {h: v[parts.val] for h, v in table.labels.items()})
    majority = Store(store_uri).run(run_ids[0])
    for head in HVC_HEADS:
        assert majority.metrics[f"selected_val_{head}_acc"] == pytest.approx(expected[head])
    # Predicting one class scores 1/(classes present in validation) as balanced accuracy.
    for head in HVC_HEADS:
        present = len(np.unique(table.labels[head][parts.val]))
        assert majority.metrics[f"selected_val_{head}_bacc"] == pytest.approx(1 / present)


def test_a_run_on_the_same_split_is_judged_against_the_probe(book, synth, store_uri, references):
    from harness.run.launch import run_iteration
    from harness.track.store import Store

    run_ids, _ = references
    lines = []
    assert run_iteration(book, "one", profile="full", data_dir=str(synth), tracking_uri=store_uri,
                         log=lines.append) == 0
    store = Store(store_uri)
    run = store.runs("tiny-ref", "one")[0]
    probe = store.run(run_ids[1])
    assert run.tags["harness.split"] == probe.tags["harness.split"]
    assert store.references("tiny-ref", run.tags["harness.split"])["linear-probe"].run_id == probe.run_id
    verdict = lines[-1]
    assert verdict.startswith("one: ") and f"linear probe (run {probe.run_id[:8]})" in verdict
    assert lines[0].startswith("profile full (as asked): training one as written")


def test_heads_with_equal_class_counts_get_their_own_accuracy(book, synth):
    """Guard against metrics routed to the wrong output (keras-team/keras#22625): image_quality,
    bag, footwear and pose all have 3 classes, so a mix-up would not fail on shapes."""
    from harness.data.hvc import load_hvc
    from harness.data.pipeline import make_datasets
    from harness.data.split import split
    from harness.core.metrics import from_keras_logs
    from harness.train import compile_model, val_stream
    from harness.train.loop import new_model, predict_outputs

    iteration = book.resolve("one")
    table = load_hvc(synth)
    parts = split(table, 0.25, 1)
    data = make_datasets(iteration, table, parts.train, parts.val)
    model, _ = new_model(iteration, 0)
    compile_model(model, iteration, iteration.passes[0])
    logged = from_keras_logs(model.evaluate(val_stream(data), return_dict=True, verbose=0), "hvc")
    predicted = predict_outputs(model, data)[0]
    accuracies = {head: float(np.mean(predicted[head] == data.val_labels[head])) for head in HVC_HEADS}
    assert len({accuracies[h] for h in ("image_quality", "bag", "footwear", "pose")}) > 1  # distinguishable
    for head in HVC_HEADS:
        assert logged[f"{head}_acc"] == pytest.approx(accuracies[head], abs=1e-6), head
