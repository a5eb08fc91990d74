"""`harness table` over a store of hand-made runs (tests/store_builder.py, written by MLflow):
the selected checkpoint and reference lifts, a fresh clone that keeps the committed rows,
`--out` writing nothing else, `--rebuild`, csv and json. No training: every number is one the
store builder chose."""

import csv
import io
import json
import shutil

import pytest

from harness import report
from harness.report import committed
from harness import ledger
from harness.cli import main

from store_builder import (BASE_BACC, BASE_MEAN_BACC, BASE_SELECTED, FIRST_BEST, MAJORITY_A, MAJORITY_C, PROBE_A,
                           SPLIT_A, SPLIT_C, T0)

README = "# Project\n\n<!-- results:start -->\nold\n<!-- results:end -->\n\nAfter.\n"


def tables_of(path) -> dict:
    return {t.heading: t for t in committed.read_tables(path)}


@pytest.fixture()
def project(records_store, tmp_path, monkeypatch):
    """A checkout-like folder (runs.yaml, README.md, experiments/) as the working directory."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(records_store["ledger"], tmp_path / "runs.yaml")
    (tmp_path / "README.md").write_text(README)
    return tmp_path


def table(*args) -> int:
    return main(["table", *args])


def test_selected_checkpoint_lifts_on_the_same_split_and_reference_rows(records_store, project, capsys):
    assert table("--tracking-uri", records_store["uri"]) == 0
    found = tables_of(project / "experiments" / "RESULTS.md")
    main_rows = found["Iterations"].by_iteration()
    base, first, second = main_rows["base"], main_rows["first"], main_rows["second"]
    # base: the selected checkpoint, real data, lifts against split A's reference runs
    assert base["Val gender (epoch)"] == f"{BASE_SELECTED['gender']:.4f} @ 1"
    assert base["vs majority"] == f"{BASE_SELECTED['gender'] - MAJORITY_A:+.4f}"
    assert base["vs probe"] == f"{BASE_SELECTED['gender'] - PROBE_A:+.4f}"
    assert base["Run"] == records_store["runs"]["base"] and base["Started (UTC)"] == committed.started_text(T0 + 60_000)
    # first: an older run (best epoch, marked), synthetic (marked), split B has no reference run
    assert first["Val gender (epoch)"] == f"{FIRST_BEST['gender']:.4f} @ 2‡†"
    assert first["vs majority"] == f"{FIRST_BEST['gender'] - 0.556:+.4f}°" and first["vs probe"] == ""
    assert first["Run"] == records_store["runs"]["first"]  # the newer FAILED run is not shown
    assert second["Val gender (epoch)"] == "not run"  # only a KILLED run
    refs = [r for r in found["Iterations"].rows if r["#"] == "ref"]
    assert {(r["Iteration"], r["Split"], r["Val gender (epoch)"]) for r in refs} == {
        ("majority", SPLIT_A, f"{MAJORITY_A:.4f}"), ("linear probe", SPLIT_A, f"{PROBE_A:.4f}"),
        ("majority", SPLIT_C, f"{MAJORITY_C:.4f}")}
    assert base["Data"] == "hvc real (6,000 images)" and first["Data"] == "hvc synthetic (64 images)"
    accs = found["Validation accuracy per head"].by_iteration()
    baccs = found["Balanced accuracy per head"].by_iteration()
    assert accs["base"]["pose"] == f"{BASE_SELECTED['pose']:.4f}" and accs["first"]["age"] == f"{FIRST_BEST['age']:.4f}"
    assert baccs["base"]["emotion"] == f"{BASE_BACC['emotion']:.4f}" and baccs["base"]["mean"] == f"{BASE_MEAN_BACC:.4f}"
    assert baccs["first"]["gender"] == ""  # no balanced accuracy before the selected checkpoint
    block = (project / "README.md").read_text()
    assert "base, " not in block and "Data: hvc real (6,000 images); † = trained on hvc synthetic (64 images)" in block
    assert max(len(line.encode()) for line in block.splitlines()) <= report.README_WIDTH


def test_a_fresh_clone_keeps_the_committed_rows(records_store, project, tmp_path_factory, capsys):
    """Committed from the records store; then a clone whose store lacks those runs."""
    assert table("--tracking-uri", records_store["uri"]) == 0
    results, readme = project / "experiments" / "RESULTS.md", project / "README.md"
    committed_bytes = (results.read_bytes(), readme.read_bytes())
    clone = tmp_path_factory.mktemp("clone")
    empty = f"sqlite:///{clone}/none/mlflow.db"
    capsys.readouterr()
    assert table("--tracking-uri", empty) == 0
    assert (results.read_bytes(), readme.read_bytes()) == committed_bytes
    assert "kept 5 committed row(s)" in capsys.readouterr().out  # base, first and three reference rows
    assert not (clone / "none").exists()

    # The clone trains base: an older run than the committed one changes nothing, a newer one replaces it.
    from store_builder import history
    from harness.track.store import Store
    from harness.track.finished import record_finished_run

    store, book = Store(f"sqlite:///{clone}/mlruns/mlflow.db"), ledger.load("runs.yaml")
    summary = {"selected_val_gender_acc": 0.7777, "selected_epoch": 2}
    record_finished_run(store, book.experiment, book.resolve("base", "smoke"), {"harness.profile": "smoke"},
                        history(2, 0.0), summary, start_time=T0)
    assert table("--tracking-uri", store.uri) == 0
    assert (results.read_bytes(), readme.read_bytes()) == committed_bytes
    newer = record_finished_run(store, book.experiment, book.resolve("base", "smoke"), {"harness.profile": "smoke"},
                                history(2, 0.0), summary, start_time=T0 + 3_600_000)
    assert table("--tracking-uri", store.uri) == 0
    rows = tables_of(results)["Iterations"].by_iteration()
    assert rows["base"]["Run"] == newer and rows["base"]["Val gender (epoch)"].startswith("0.7777 @ 2")
    assert rows["first"]["Run"] == records_store["runs"]["first"]  # still the committed one

    # --rebuild: the store alone.
    assert table("--tracking-uri", empty, "--rebuild") == 0
    rows = tables_of(results)["Iterations"].rows
    assert {r["Val gender (epoch)"] for r in rows} == {"not run"} and all(r["#"] != "ref" for r in rows)


def test_out_writes_that_file_and_nothing_else(records_store, project, capsys):
    (project / "experiments").mkdir()
    (project / "experiments" / "RESULTS.md").write_text("committed\n")
    assert table("--tracking-uri", records_store["uri"], "--out", "elsewhere/r.md") == 0
    assert (project / "README.md").read_text() == README
    assert (project / "experiments" / "RESULTS.md").read_text() == "committed\n"
    assert "Iterations" in tables_of(project / "elsewhere" / "r.md")
    assert "README" not in capsys.readouterr().out
    assert sorted(p.name for p in project.rglob("*") if p.is_file()) == ["README.md", "RESULTS.md", "r.md", "runs.yaml"]


def test_csv_and_json_give_the_stores_numbers(records_store, project, capsys):
    assert table("--tracking-uri", records_store["uri"], "--format", "json") == 0
    rows = {r["iteration"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["base"]["val_gender_acc"] == pytest.approx(BASE_SELECTED["gender"])
    assert rows["base"]["val_pose_bacc"] == pytest.approx(BASE_BACC["pose"])
    assert rows["base"]["lift_vs_linear_probe"] == pytest.approx(BASE_SELECTED["gender"] - PROBE_A)
    assert rows["first"]["selected_checkpoint"] is False and rows["first"]["synthetic"] is True
    assert rows["second"]["state"] == "not run" and rows["second"]["run_id"] is None
    assert not (project / "experiments").exists() and (project / "README.md").read_text() == README
    assert table("--tracking-uri", records_store["uri"], "--format", "csv", "--out", "t.csv") == 0
    parsed = list(csv.DictReader(io.StringIO((project / "t.csv").read_text())))
    assert [r["iteration"] for r in parsed][:3] == ["base", "first", "second"]
    assert float(parsed[0]["val_gender_acc"]) == pytest.approx(BASE_SELECTED["gender"])


def test_committed_rows_parse_back_and_keep_only_unknown_runs():
    text = "## Iterations\n\n| # | Iteration | Run | Started (UTC) |\n|--:|:--|:--|:--|\n| 1 | a \\| b | r1 | x |\n"
    (parsed,) = committed.parse_tables(text)
    assert parsed.heading == "Iterations" and parsed.rows == [{"#": "1", "Iteration": "a | b", "Run": "r1",
                                                               "Started (UTC)": "x"}]
    started = committed.started_text(T0)
    assert committed.started_ms(started) == T0
    assert committed.keeps("r1", started, None, known=False) is True
    assert committed.keeps("r1", started, T0 + 59_000, known=False) is True  # the same minute is not newer
    assert committed.keeps("r1", started, T0 + 60_000, known=False) is False
    assert committed.keeps("r1", started, None, known=True) is False  # the store's to decide
    assert committed.keeps("", started, None, known=False) is False  # "not run" is never kept


LEGACY = """\
# Results: person-attributes

|   # | Iteration | Architecture | Total params | Trainable params | Freeze | Batch (train/val) | Epochs | \
Best val gender acc (epoch) | val image_quality | val age | val weight | val bag | val footwear | val pose | val emotion | \
Gender lift vs majority (0.556) | s/epoch | Changes vs parent | Reported gender | vs reported | Remark | Run | Profile | Data |
|----:|:--|:--|--:|--:|:--|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|:--|--:|--:|:--|:--|:--|:--|
| 1 | base | vgg16 + flatten-512 | 16,292,571 | 1,577,883 | backbone | 32/64 | 10 | 0.5688 @ 1 | 0.5829 | 0.4112 | \
0.6324 | 0.5841 | 0.4424 | 0.6276 | 0.7324 | +0.0128 | 0.9 | data.validate_on_train: true -> false | 0.6248 | -0.0560 | \
old remark | 07a10551 | cpu | hvc-synth |
| 2 | first | vgg16 + flatten-512 | | | backbone | 32/64 | 10 | not run | | | | | | | | | | (root) | | | | | | |
"""


def test_a_fresh_clone_keeps_rows_of_the_older_wide_table(project, tmp_path_factory, capsys):
    """experiments/RESULTS.md as committed before this layout (one wide table, 8-character run
    ids, no synthetic mark): an empty store keeps its numbers under today's columns, marks the
    synthetic row, and the README block fits."""
    (project / "experiments").mkdir()
    (project / "experiments" / "RESULTS.md").write_text(LEGACY)
    empty = f"sqlite:///{tmp_path_factory.mktemp('legacy')}/none/mlflow.db"
    assert table("--tracking-uri", empty) == 0
    assert "kept 1 committed row(s)" in capsys.readouterr().out
    found = tables_of(project / "experiments" / "RESULTS.md")
    base = found["Iterations"].by_iteration()["base"]
    assert base["Val gender (epoch)"] == "0.5688 @ 1†" and base["vs majority"] == "+0.0128°"
    assert base["Total/trainable"] == "16,292,571/1,577,883" and base["Run"] == "07a10551"
    assert base["Changes vs parent"] == "(root)" and base["Remark"] == "The root."  # the ledger's, not the old text
    accs = found["Validation accuracy per head"].by_iteration()["base"]
    assert accs["gender"] == "0.5688" and accs["age"] == "0.4112" and accs["emotion"] == "0.7324"
    assert found["Iterations"].by_iteration()["first"]["Val gender (epoch)"] == "not run"
    block = (project / "README.md").read_text()
    assert "16.3M/1.58M" in block
    assert "Data: no row on real data; † = trained on hvc-synth" in block
    assert max(len(line.encode()) for line in block.splitlines()) <= report.README_WIDTH
