"""`harness run ITER --set PATH=VALUE` and `--save-as NAME`, and harness.api reading the same store:
real TensorFlow, a real SQLite MLflow store in a temp folder, the smoke profile on a tiny synthetic
set in the real hvc format."""

import json
from pathlib import Path

import pandas as pd
import pytest

from cli_run import harness
from harness import ledger
from harness.core.records import (DIFF_ARTIFACT, KIND_VARIANT, REQUIREMENTS_ARTIFACT, TAG_OVERRIDES)

pytestmark = pytest.mark.slow  # trains models: left out by `make test-fast`

LEDGER = """\
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
    # the iteration every variant here changes
    passes: [{epochs: 2, monitor: val_gender_acc}]
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A ledger, a synthetic data folder, a store holding one plain smoke run of `one` and one
    `--set optimizer.lr=3e-4` variant of it."""
    from harness.data.synth import generate

    folder = tmp_path_factory.mktemp("variants")
    (folder / "tiny.yaml").write_text(LEDGER)
    generate(folder / "synth", 96, seed=5)
    uri = f"sqlite:///{folder}/store/mlflow.db"
    common = ["--profile", "smoke", "--ledger", str(folder / "tiny.yaml"), "--data", str(folder / "synth"),
              "--tracking-uri", uri]
    plain = harness("run", "one", *common)
    assert plain.returncode == 0, plain.stderr
    variant = harness("run", "one", "--set", "optimizer.lr=3e-4", *common)
    assert variant.returncode == 0, variant.stderr
    return {"folder": folder, "ledger": str(folder / "tiny.yaml"), "uri": uri, "common": common,
            "data": str(folder / "synth")}


def _store(uri):
    from harness.track.store import Store

    return Store(uri)


def _artifacts(uri, run_id, path=None):
    from mlflow.tracking import MlflowClient

    return {a.path for a in MlflowClient(uri).list_artifacts(run_id, path)}


def test_set_run_is_tagged_shown_by_runs_and_compare_and_absent_from_the_table(project):
    uri, book = project["uri"], ["--ledger", project["ledger"], "--tracking-uri", project["uri"]]
    store = _store(uri)
    [variant] = store.runs("tiny", "one", KIND_VARIANT)
    [plain] = store.runs("tiny", "one")
    assert json.loads(variant.tags[TAG_OVERRIDES]) == {"optimizer.lr": 0.0003}
    assert variant.name == "one +lr=3e-4 · synthetic" and variant.iteration == "one"
    assert variant.params["optimizer.lr"] == "0.0003" and plain.params["optimizer.lr"] == "0.003"
    assert variant.config_sha != plain.config_sha

    shown = json.loads(harness("runs", *book, "--json").stdout)
    assert [(s["run_id"], s["iteration"], s["overrides"]) for s in shown] == [
        (variant.run_id, "one +lr=3e-4", {"optimizer.lr": 0.0003}), (plain.run_id, "one", None)]
    assert "one +lr=3e-4" in harness("runs", "one", *book).stdout

    compared = harness("compare", "one", variant.run_id[:8], *book)
    assert compared.returncode == 0 and f"one +lr=3e-4 ({variant.run_id[:8]})" in compared.stdout
    assert json.loads(harness("compare", "one", variant.run_id, *book, "--json").stdout)["config_diff"][
        "optimizer.lr"] == ["0.003", "0.0003"]

    table = harness("table", *book, "--format", "json")
    assert table.returncode == 0
    rows = json.loads(table.stdout)
    assert [r["run_id"] for r in rows if r["iteration"] == "one"] == [plain.run_id]
    assert variant.run_id not in table.stdout

    for run in (plain, variant):  # what reproducing it needs
        assert REQUIREMENTS_ARTIFACT in _artifacts(uri, run.run_id, "environment")
        text = store.artifact_text(run.run_id, REQUIREMENTS_ARTIFACT)
        assert "tensorflow" in text.lower() and "mlflow==" in text
        assert run.tags["harness.git_dirty"] in ("true", "false")
        assert (DIFF_ARTIFACT in _artifacts(uri, run.run_id, "code")) == (run.tags["harness.git_dirty"] == "true")


def test_api_table_and_runs_equal_the_cli_json(project):
    from harness import api

    book = ["--ledger", project["ledger"], "--tracking-uri", project["uri"]]
    cli = pd.DataFrame(json.loads(harness("table", *book, "--format", "json").stdout))
    pd.testing.assert_frame_equal(api.table(ledger=project["ledger"], tracking_uri=project["uri"]), cli)
    assert len(cli) >= 1 and cli.loc[0, "iteration"] == "one"
    runs = pd.DataFrame(json.loads(harness("runs", *book, "--json").stdout))
    pd.testing.assert_frame_equal(api.runs(ledger=project["ledger"], tracking_uri=project["uri"]), runs)
    compared = api.compare("one", runs.loc[0, "run_id"], ledger=project["ledger"], tracking_uri=project["uri"])
    assert compared["config_diff"]["optimizer.lr"] == ["0.003", "0.0003"]


@pytest.mark.parametrize("flag, problem", [
    ("optimizer.lrr=3e-4", "--set optimizer.lrr: no field 'lrr' in optimizer (did you mean 'lr'?)"),
    ("optimizer.lr=-1", "--set optimizer.lr: -1 does not fit the field"),
    ("optimizer.lr=fast", "--set optimizer.lr: \"fast\" does not fit the field"),
    ("passes.3.epochs=2", "--set passes.3.epochs: passes has 1 entry"),
    ("optimizer.lr", "--set optimizer.lr: give PATH=VALUE"),
    ("title=x", "--set title: 'title' describes the iteration"),
])
def test_bad_set_exits_2_with_one_line_and_writes_nothing(project, tmp_path, flag, problem):
    before = Path(project["ledger"]).read_bytes()
    done = harness("run", "one", "--set", flag, "--profile", "smoke", "--ledger", project["ledger"],
                   "--data", project["data"], "--tracking-uri", f"sqlite:///{tmp_path}/store/mlflow.db",
                   "--work-dir", str(tmp_path / "work"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {problem}"), done.stderr
    assert not (tmp_path / "store").exists() and not (tmp_path / "work").exists()
    assert Path(project["ledger"]).read_bytes() == before


def test_save_as_writes_a_ledger_that_validates_and_trains_the_same_config(project, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(LEDGER)
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    flags = ["--set", "optimizer.lr=3e-4", "--set", "head.tower_units=[4]", "--save-as", "one_lr", "--profile",
             "smoke", "--ledger", str(path), "--data", project["data"], "--tracking-uri", uri]
    done = harness("run", "one", *flags)
    assert done.returncode == 0, done.stderr
    assert "added iteration one_lr (extends one)" in done.stdout
    text = path.read_text()
    assert text.startswith(LEDGER)  # every byte of the ledger kept; the new entry appended
    assert harness("validate", "--ledger", str(path)).returncode == 0
    book = ledger.load(path)
    raw = book.raw_iterations["one_lr"]
    assert raw["extends"] == "one" and raw["optimizer"] == {"lr": 0.0003} and raw["head"] == {"tower_units": [4]}
    assert "passes" not in raw and "data" not in raw  # only the changed keys

    from harness.ledger.overrides import Overrides

    overrides = Overrides.parse(["optimizer.lr=3e-4", "head.tower_units=[4]"])
    variant_sha = book.resolve("one", "smoke", overrides.changes(book.resolve("one"))).config_sha()
    assert book.resolve("one_lr", "smoke").config_sha() == variant_sha
    [run] = _store(uri).runs("tiny", "one_lr")  # trained as the new iteration: the table's row
    assert run.config_sha == variant_sha and TAG_OVERRIDES not in run.tags

    again = harness("run", "one", *flags)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "--save-as: iteration 'one_lr' already exists" in again.stderr
    assert path.read_text() == text


def test_a_notebook_trains_tabulates_compares_and_predicts_through_the_api(project, tmp_path):
    """The notebook the README shows, using harness.api only."""
    from harness import api
    from harness.core.records import TAG_OVERRIDES

    path = tmp_path / "tiny.yaml"
    path.write_text(LEDGER + "  two:\n    extends: one\n    optimizer: {lr: 0.001}\n")
    where = {"ledger": str(path), "tracking_uri": f"sqlite:///{tmp_path}/store/mlflow.db"}
    assert api.load_ledger(path).names == ["one", "two"]
    lines: list[str] = []
    first = api.run("one", profile="smoke", data=project["data"], log=lines.append, **where)
    second = api.run("two", profile="smoke", data=project["data"], log=lines.append, **where)
    assert (first.iteration, second.iteration) == ("one", "two") and first.finished and second.finished
    assert "selected_val_gender_acc" in second.metrics and TAG_OVERRIDES not in second.tags
    assert not any("\r" in line or "\x1b" in line for line in lines)  # plain lines in a notebook cell, no redraws

    frame = api.table(**where)
    assert list(frame["iteration"][:2]) == ["one", "two"] and list(frame["run_id"][:2]) == [first.run_id, second.run_id]
    compared = api.compare("one", "two", **where)
    assert compared["config_diff"]["optimizer.lr"] == ["0.003", "0.001"]
    assert [r["run_id"] for r in compared["runs"]] == [first.run_id, second.run_id]

    images = sorted((Path(project["data"]) / "resized").iterdir())[:3]
    predicted = api.predict("two", images, **where)
    assert list(predicted["path"]) == [str(p) for p in images]
    assert {"gender", "gender_prob", "age"} <= set(predicted.columns)
