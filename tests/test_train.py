"""Training and tracking end to end: real TensorFlow, a real SQLite MLflow store in a temp folder,
a tiny synthetic dataset in the real hvc format."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness import ledger
from harness.core.labels import HVC_HEADS
from harness.core.settings import work_dir

pytestmark = pytest.mark.slow  # trains models: left out by `make test-fast`

REPO = Path(__file__).resolve().parents[1]

TINY = """\
experiment: tiny
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
  one:
    passes: [{epochs: 2, monitor: val_gender_acc}]
  two:
    extends: one
    passes:
      - {epochs: 2}
      - {epochs: 2, lr: 0.0005, resume_from: best}
  weighted:
    extends: one
    loss: {class_weighting: true}
    passes: [{epochs: 1}]
  diverge:
    extends: one
    optimizer: {name: sgd, lr: 0.001, momentum: 0.9}
    passes:
      - epochs: 3
        schedule: {boundaries: [1], values: [0.001, 1.0e+30]}
  frozen:
    extends: one
    backbone: {name: vgg16, freeze: backbone}
    head: {neck: flatten}
    optimizer: {name: sgd, lr: 0.01, momentum: 0.9}
    passes: [{epochs: 2}, {epochs: 1, lr: 0.001, resume_from: best}]
  frozen_uncached:
    extends: frozen
    compute: {feature_cache: false}
  mixed:
    extends: one
    head: {batch_norm: true}
    compute: {mixed_precision: bfloat16, jit_compile: true}
    passes: [{epochs: 1}]
  slow:
    extends: one
    data: {image_size: 64}
    passes:
      - {epochs: 3}
      - {epochs: 3, resume_from: best}
"""

METRICS = {"loss", "val_loss", "lr", "epoch_seconds"} | {
    f"{prefix}{head}_{kind}" for head in HVC_HEADS for prefix in ("", "val_") for kind in ("acc", "loss")
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from harness.data.synth import generate

    folder = tmp_path_factory.mktemp("synth")
    generate(folder, 96, seed=5)
    return folder


@pytest.fixture(scope="module")
def other_synth(tmp_path_factory):
    from harness.data.synth import generate

    folder = tmp_path_factory.mktemp("heldout")
    generate(folder, 40, seed=11)
    return folder


@pytest.fixture()
def book(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return ledger.load(path)


@pytest.fixture()
def store_uri(tmp_path):
    return f"sqlite:///{tmp_path}/store/mlflow.db"


@pytest.fixture(scope="module")
def trained_one(tmp_path_factory, synth):
    """A store holding one finished run of `one`, trained once for the module's tests that only
    need such a run to exist and read it (eval, skip, a second seeded run): each gets a copy
    (`with_one`). A test that writes to that run trains its own: MLflow caches a run's artifact
    location by run id within a process, so the copy's writes would land in this store."""
    folder = tmp_path_factory.mktemp("one")
    path = folder / "tiny.yaml"
    path.write_text(TINY)
    code, lines = run(ledger.load(path), "one", synth, f"sqlite:///{folder}/store/mlflow.db")
    assert code == 0, lines
    return folder / "store"


@pytest.fixture()
def with_one(trained_one, store_uri):
    """`store_uri`, holding a copy of trained_one's store: its SQLite file and artifacts, the
    artifact locations the database records moved to the copy, so a test writes only there."""
    import sqlite3

    target = Path(store_uri[len("sqlite:///"):]).parent
    shutil.copytree(trained_one, target)
    db = sqlite3.connect(target / "mlflow.db")
    with db:
        tables = {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}
        for table, column in (("runs", "artifact_uri"), ("experiments", "artifact_location"),
                              ("logged_models", "artifact_location")):
            if table in tables:
                db.execute(f"update {table} set {column} = replace({column}, ?, ?)", (str(trained_one), str(target)))
    db.close()
    return store_uri


def run(book, name, synth, uri, **kwargs):
    from harness.run.launch import run_iteration

    lines = []
    code = run_iteration(book, name, profile=kwargs.pop("profile", "full"), data_dir=str(synth),
                         tracking_uri=uri, log=lines.append, **kwargs)
    return code, lines


def parents(uri, name):
    from harness.track.store import Store

    store = Store(uri)
    return store, store.runs("tiny", name)


def steps(store, run_id, key):
    return [point.step for point in store.metric_history(run_id, key)]


def values(store, run_id, key):
    return [point.value for point in store.metric_history(run_id, key)]


def artifacts(uri, run_id, path=None):
    """The run's artifact paths, as MLflow itself lists them."""
    from mlflow.tracking import MlflowClient

    return {a.path for a in MlflowClient(uri).list_artifacts(run_id, path)}


def test_two_passes_log_one_parent_two_children_with_contiguous_steps(book, synth, store_uri):
    code, lines = run(book, "two", synth, store_uri)
    assert code == 0, lines
    assert lines[0].startswith("profile full")
    header = next(line for line in lines if line.startswith("== two pass 2/2"))
    assert header.startswith("== two pass 2/2: 2 epochs, lr 0.0005, from pass 1's best | data ")
    assert header.endswith("| profile full")
    assert "FINISHED, selected checkpoint (epoch " in lines[-2] and "val_gender_acc" in lines[-2]
    assert lines[-1].startswith("two: ") and "majority on validation" in lines[-1]
    assert "no linear-probe run" in lines[-1]

    store, runs = parents(store_uri, "two")
    assert len(runs) == 1
    parent = runs[0]
    assert parent.status == "FINISHED" and parent.name == "two · synthetic"  # the tag stays "two"
    tags = parent.tags
    assert tags["harness.iteration"] == "two" and tags["harness.extends"] == "one"
    assert tags["harness.config_sha"] == book.resolve("two").config_sha()
    assert tags["harness.profile"] == "full" and tags["harness.data"]
    assert tags["harness.ledger"].endswith("tiny.yaml")
    assert tags["harness.kind"] == "iteration" and tags["mlflow.source.name"] == "harness run"
    assert parent.params["optimizer.lr"] == "0.003"

    children = store.children(parent.run_id)
    assert [c.name for c in children] == ["two/pass-1", "two/pass-2"]
    assert all(c.status == "FINISHED" for c in children)
    assert [(c.tags["harness.kind"], c.tags["harness.pass"], c.tags["mlflow.parentRunId"]) for c in children] == [
        ("pass", "0", parent.run_id), ("pass", "1", parent.run_id)]
    assert children[1].params["pass.lr"] == "0.0005" and children[1].metrics["best_epoch"] in (3, 4)

    assert METRICS <= set(parent.metrics)
    for key in METRICS:
        assert steps(store, parent.run_id, key) == [1, 2, 3, 4], key
    assert steps(store, children[0].run_id, "val_gender_acc") == [1, 2]
    assert steps(store, children[1].run_id, "val_gender_acc") == [3, 4]
    assert values(store, parent.run_id, "lr") == pytest.approx([0.003, 0.003, 0.0005, 0.0005])

    selected = {f"selected_val_{h}_{k}" for h in HVC_HEADS for k in ("acc", "bacc")}
    assert selected | {"selected_val_mean_acc", "selected_val_mean_bacc", "selected_epoch"} <= set(parent.metrics)
    assert parent.metrics["selected_epoch"] == children[1].metrics["best_epoch"]  # the last pass's best
    history = values(store, parent.run_id, "val_gender_acc")
    assert parent.metrics["best_val_gender_acc"] == pytest.approx(max(history))
    assert parent.metrics["best_epoch"] == steps(store, parent.run_id, "val_gender_acc")[history.index(max(history))]
    assert parent.metrics["total_params"] > parent.metrics["trainable_params"] > 0 or \
        parent.metrics["total_params"] == parent.metrics["trainable_params"]

    assert {"config.yaml", "checkpoint", "plots", "model_summary.txt", "eval.json"} <= artifacts(store_uri, parent.run_id)
    assert artifacts(store_uri, parent.run_id, "plots") == {"plots/training_curves.png"}
    assert {"eval.json", "checkpoint", "plots"} <= artifacts(store_uri, children[1].run_id)
    plots = artifacts(store_uri, children[1].run_id, "plots")
    assert plots == {f"plots/confusion_{head}.png" for head in HVC_HEADS}
    local = Path(store.download(children[1].run_id, "eval.json", Path(store_uri[len("sqlite:///"):]).parent / "dl"))
    evaluated = json.loads(local.read_text())
    assert set(evaluated) == {"loss"} | {f"{h}_{k}" for h in HVC_HEADS for k in ("acc", "loss")}


def test_resume_from_best_starts_from_the_best_weights(book, synth, store_uri):
    import keras

    from harness.data.split import split
    from harness.data.pipeline import make_datasets
    from harness.data.source import open_dataset
    from harness.train import Runner
    from harness.train.loop import new_model

    iteration = book.resolve("two")
    table, _ = open_dataset(iteration, str(synth))
    train_idx, val_idx, *_ = split(table, 0.25, 1)
    bundle = make_datasets(iteration, table, train_idx, val_idx)

    class Quiet:
        def pass_started(self, *a): pass
        def epoch_finished(self, *a): pass
        def pass_finished(self, *a): pass

    workdir = Path(store_uri[len("sqlite:///"):]).parent / "work"
    runner = Runner(iteration, bundle, workdir, Quiet(), log=lambda *_: None)
    first = runner.run_pass(0)
    best = keras.models.load_model(first.best_checkpoint)
    model, _ = new_model(iteration, 1)
    runner.restore(1, model)
    for got, want in zip(model.get_weights(), best.get_weights()):
        np.testing.assert_array_equal(got, want)
    # and the best checkpoint is the one whose val_loss was lowest
    logged = [h["metrics"]["val_loss"] for h in runner.state.history]
    scored = best.evaluate(bundle.val, return_dict=True, verbose=0)
    assert scored["loss"] == pytest.approx(min(logged), rel=1e-4)


def test_same_seed_gives_identical_validation_metrics(book, synth, with_one, store_uri):
    run(book, "one", synth, store_uri, fresh=True)
    store, runs = parents(store_uri, "one")
    assert len(runs) == 2
    for key in ("val_loss", "val_gender_acc", "val_age_loss"):
        a, b = (values(store, r.run_id, key) for r in runs)
        assert a == b, key


def test_class_weighting_trains(book, synth, store_uri):
    code, lines = run(book, "weighted", synth, store_uri)
    assert code == 0, lines


def test_eval_scores_another_folder(book, synth, other_synth, store_uri):
    from harness.run.evaluate import evaluate_iteration

    # its own run, not a copy of trained_one's: it logs to the run, and MLflow caches a run's
    # artifact location by run id within a process
    run(book, "one", synth, store_uri)
    result = evaluate_iteration(book, "one", data_dir=str(other_synth), tracking_uri=store_uri)
    assert set(result["eval"]) == {"loss"} | {f"{h}_{k}" for h in HVC_HEADS for k in ("acc", "loss", "bacc")}
    assert all(0 <= result["eval"][f"{h}_acc"] <= 1 for h in HVC_HEADS)
    assert result["images"] == 40 and result["warning"] is None  # a folder the run never saw
    store, runs = parents(store_uri, "one")
    assert not any(path.startswith("eval/") for path in artifacts(store_uri, runs[0].run_id))
    logged = evaluate_iteration(book, "one", data_dir=str(other_synth), tracking_uri=store_uri, log_to_run=True)
    assert logged["eval"] == result["eval"]
    assert artifacts(store_uri, runs[0].run_id, "eval") == {f"eval/{other_synth.name}.json"}


def test_selected_checkpoint_summary_equals_a_fresh_eval_of_the_validation_split(book, synth, store_uri):
    """One meaning of "best": the run's selected_* summary is what `harness eval` measures anew."""
    from harness.run.evaluate import evaluate_iteration

    run(book, "two", synth, store_uri)
    store, runs = parents(store_uri, "two")
    result = evaluate_iteration(book, "two", data_dir=None, tracking_uri=store_uri)
    assert result["images"] == 24 and "validation split" in result["scored"]  # 25% of 96
    for head in HVC_HEADS:
        assert runs[0].metrics[f"selected_val_{head}_acc"] == pytest.approx(result["eval"][f"{head}_acc"], abs=1e-6)
        assert runs[0].metrics[f"selected_val_{head}_bacc"] == pytest.approx(result["eval"][f"{head}_bacc"], abs=1e-6)


def test_eval_warns_when_the_folder_holds_training_images(book, synth, with_one, store_uri, tmp_path):
    from harness.run.evaluate import evaluate_iteration

    copy = tmp_path / "copy"
    shutil.copytree(synth, copy)  # the same images under other paths: caught by content
    result = evaluate_iteration(book, "one", data_dir=str(copy), tracking_uri=store_uri)
    assert result["images"] == 96
    assert result["warning"].startswith("WARNING: 72 of 96 images are training images of run")  # 75% of 96
    assert "0 by path, 72 by identical content" in result["warning"]
    same = evaluate_iteration(book, "one", data_dir=str(synth), tracking_uri=store_uri)
    assert "72 by path, 72 by identical content" in same["warning"]


def test_divergence_marks_the_run_failed_and_keeps_the_last_good_checkpoint(book, synth, store_uri):
    code, lines = run(book, "diverge", synth, store_uri)
    assert code == 1
    assert "diverged" in lines[-1]
    store, runs = parents(store_uri, "diverge")
    assert runs[0].status == "FAILED"
    assert "diverged" in runs[0].tags["harness.failure_reason"]
    workdir = work_dir().run(runs[0].run_id)
    state = json.loads((workdir / "state.json").read_text())
    assert len(state["history"]) == 1  # epoch 1 at lr 1e-3 was good, epoch 2 blew up
    assert (workdir / "pass-1" / "last.keras").exists() and state["snapshot"] == "pass-1/epoch-1.npz"
    import keras

    keras.models.load_model(workdir / "pass-1" / "last.keras")  # loadable, not half-written
    assert steps(store, runs[0].run_id, "loss") == [1]


def test_all_skips_iterations_already_finished_with_the_same_config(book, synth, with_one, store_uri):
    code, lines = run(book, "one", synth, store_uri, skip_finished=True)
    assert code == 0 and any("already finished" in line for line in lines)
    _, runs = parents(store_uri, "one")
    assert len(runs) == 1


def test_changed_config_is_not_resumed(book, synth, tmp_path, store_uri):
    from harness.core.records import NEW, Decision
    from harness.track.store import Store

    # an unfinished run of `one` from an older config: open it and leave it RUNNING
    store = Store(store_uri)
    old = book.resolve("two")  # a different config under the name `one`
    tracker = store.start(Decision(NEW), "tiny", old.model_copy(update={"name": "one"}), {})
    folder = work_dir().run(tracker.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.json").write_text(json.dumps({"history": []}))
    code, lines = run(book, "one", synth, store_uri)
    assert code == 0
    assert any("not resuming run" in line and "differs" in line for line in lines)
    _, runs = parents(store_uri, "one")
    assert len(runs) == 2 and runs[0].status == "FINISHED" and runs[1].status == "RUNNING"


def test_feature_cache_matches_the_image_path_and_saves_the_whole_model(book, synth, other_synth, store_uri):
    from harness.run.evaluate import evaluate_iteration

    code, cached_lines = run(book, "frozen", synth, store_uri)
    assert code == 0
    assert any(line.startswith("feature cache: backbone features of 96 images computed once") for line in cached_lines)
    code, lines = run(book, "frozen_uncached", synth, store_uri)
    assert code == 0
    assert not any(line.startswith("feature cache") for line in lines)
    store, _ = parents(store_uri, None)
    histories = {}
    for name in ("frozen", "frozen_uncached"):
        run_id = store.runs("tiny", name)[0].run_id
        histories[name] = {key: values(store, run_id, key) for key in ("val_loss", "val_gender_acc", "loss")}
    for key in ("val_loss", "val_gender_acc", "loss"):
        assert len(histories["frozen"][key]) == 3
        assert histories["frozen"][key] == pytest.approx(histories["frozen_uncached"][key], rel=1e-4, abs=1e-5), key
    # the checkpoint is the whole model: it scores image folders
    result = evaluate_iteration(book, "frozen", data_dir=str(other_synth), tracking_uri=store_uri)
    assert "gender_acc" in result["eval"]


def test_interrupted_pass_on_cached_features_resumes_mid_pass(book, synth, tmp_path):
    from harness.data.pipeline import make_datasets
    from harness.data.source import open_dataset
    from harness.data.split import split
    from harness.train import FeatureInputs, Runner

    iteration = book.resolve("frozen")
    table, _ = open_dataset(iteration, str(synth))
    parts = split(table, 0.25, 1)
    bundle = make_datasets(iteration, table, parts.train, parts.val)
    inputs = FeatureInputs.of(iteration, table, parts.train, parts.val)

    class StopAfterFirstEpoch:
        def __init__(self): self.steps = []
        def pass_started(self, *a): pass
        def epoch_finished(self, pass_index, step, metrics):
            self.steps.append(step)
            raise KeyboardInterrupt
        def pass_finished(self, *a): pass

    first = StopAfterFirstEpoch()
    with pytest.raises(KeyboardInterrupt):
        Runner(iteration, bundle, tmp_path / "work", first, log=lambda *_: None, feature_inputs=inputs).run()
    assert first.steps == [1]

    class Record:
        def __init__(self): self.steps = []
        def pass_started(self, *a): pass
        def epoch_finished(self, pass_index, step, metrics): self.steps.append(step)
        def pass_finished(self, *a): pass

    second = Record()
    lines = []
    runner = Runner(iteration, bundle, tmp_path / "work", second, log=lines.append, feature_inputs=inputs)
    runner.run()
    assert second.steps == [2, 3]
    assert any("resuming pass 1 after epoch 1" in line for line in lines)
    assert [h["step"] for h in runner.state.history] == [1, 2, 3]


def test_mixed_precision_and_jit_switches_do_not_break_a_cpu_run(book, synth, store_uri):
    import keras

    code, lines = run(book, "mixed", synth, store_uri)
    assert code == 0, lines
    store, [parent] = parents(store_uri, "mixed")
    assert parent.params["compute.mixed_precision"] == "bfloat16"
    assert parent.params["compute.jit_compile"] == "True"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored for whatever runs next


def test_bad_data_exits_2_and_writes_nothing(tmp_path, synth):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "hvc_annotations.csv").write_text((synth / "hvc_annotations.csv").read_text().replace(",male,", ",mail,", 1))
    shutil.copytree(synth / "resized", bad / "resized")
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    result = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "base", "--profile", "smoke", "--data", str(bad),
         "--tracking-uri", uri], cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "hvc_annotations.csv:" in errors[0] and "mail" in errors[0]
    assert not (tmp_path / "store").exists()


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    from harness.train import atomic_write

    path = tmp_path / "state.json"
    atomic_write(path, lambda tmp: tmp.write_text("one"))
    assert path.read_text() == "one"

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, broken)
    assert path.read_text() == "one"
    atomic_write(path, lambda tmp: tmp.write_text("two"))
    assert path.read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_pass_header_names_freeze_rules_that_match_no_layer(book):
    from harness.run.console import ConsoleReporter
    from harness.models import FreezeSummary

    class Tracker:
        def pass_started(self, *a): self.started = a

    lines, tracker = [], Tracker()
    iteration = book.resolve("one")
    reporter = ConsoleReporter(tracker, iteration, "synth", "full", log=lines.append)
    reporter.pass_started(0, iteration, FreezeSummary("rules [...]", ("a",), (), ("^stage9_",)))
    reporter.pass_started(0, iteration, FreezeSummary("none", ("a",), ()))
    assert lines[0].endswith("| profile full | freeze rules that decide no layer: ^stage9_")
    assert lines[1].endswith("| profile full")
    assert tracker.started[0] == 0
