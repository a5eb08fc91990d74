"""Trust statistics (issue #23): per-example predictions of the selected checkpoint, the paired
statistics of harness.report.stats, and `harness compare`'s intervals and verdicts. Real
TensorFlow, a real SQLite MLflow store in a temp folder, the tiny synthetic hvc set of
tests/test_train.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness import ledger
from harness.core.labels import HVC_HEADS
from test_real_learning import SHORT as REAL_LEARNING_SHORT

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
  other:
    extends: one
    data: {split_seed: 7}
  lower:
    extends: one
    optimizer: {lr: 0.001}
    remark: Acc improved.
"""
# `harness compare` in a subprocess, reporting what it imported (tests/test_runs_compare.py's probe).
PROBE = """
import sys
from harness.cli import main
code = main(sys.argv[1:])
print("HEAVY:" + ",".join(m for m in ("tensorflow", "keras", "mlflow") if m in sys.modules))
sys.exit(code)
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store with one finished smoke run each of `one`, `other` (another split seed) and
    `lower` (one's split, another LR), on a 96-image synthetic set: trained once for the
    module's read-only tests."""
    from harness.data.synth import generate
    from harness.run.launch import run_iteration

    folder = tmp_path_factory.mktemp("trust")
    generate(folder / "synth", 96, seed=5)
    (folder / "tiny.yaml").write_text(TINY)
    book = ledger.load(folder / "tiny.yaml")
    uri = f"sqlite:///{folder}/store/mlflow.db"
    for name in ("one", "other", "lower"):
        lines = []
        assert run_iteration(book, name, profile="smoke", data_dir=str(folder / "synth"), tracking_uri=uri,
                             log=lines.append) == 0, lines
    return {"book": book, "uri": uri, "data": folder / "synth", "folder": folder}


def compare(trained, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-c", PROBE, "compare", *args, "--ledger", str(trained["book"].path),
                           "--tracking-uri", trained["uri"]], cwd=trained["folder"], env=env, capture_output=True,
                          text=True, timeout=120)


def test_predictions_of_the_selected_checkpoint_equal_eval_argmax(trained, tmp_path):
    """The artifact holds, per validation row, what `harness eval` predicts with the logged checkpoint."""
    from harness.core.labels import heads_for
    from harness.run.evaluate import _eval_rows, checkpoint_outputs
    from harness.track.fast_store import open_reader
    from harness.track.reader import MlflowReader
    from harness.track.store import Store

    book, uri = trained["book"], trained["uri"]
    reader = open_reader(uri, book.experiment)
    run = reader.latest_finished("one")
    found = reader.predictions(run.run_id)
    assert found is not None and found == MlflowReader(uri, book.experiment).predictions(run.run_id)
    iteration = book.resolve("one", run.profile)
    table, rows, _ = _eval_rows(run, iteration, None)
    assert list(found.rows) == [int(r) for r in rows] and len(rows) == 24  # 25% of 96
    assert found.images[0] == table.frame["image_path"].to_numpy()[rows[0]]
    _, predicted = checkpoint_outputs(Store(uri), run, iteration, table, rows, tmp_path)
    for head, classes in heads_for("hvc").items():
        assert list(found.pred[head]) == [classes[i] for i in predicted[head]]
        assert list(found.true[head]) == [classes[i] for i in table.labels[head][rows]]
        assert all(0.0 < p <= 1.0 for p in found.prob[head])
        accuracy = np.mean(np.array(found.pred[head]) == np.array(found.true[head]))
        assert accuracy == pytest.approx(run.metrics[f"selected_val_{head}_acc"], abs=1e-9)


def test_a_run_compared_with_itself_is_within_noise(trained):
    result = compare(trained, "one", "one")
    assert result.returncode == 0, result.stderr
    assert "HEAVY:\n" in result.stdout, "compare imported TensorFlow or MLflow"
    lines = result.stdout.splitlines()
    assert any("95% CI" in line for line in lines)
    for head in HVC_HEADS:
        row = next(line for line in lines if line.startswith(f"{head} acc "))
        assert "+0.0000" in row and "[+0.0000, +0.0000]" in row and row.endswith("within noise")
    shown = json.loads(compare(trained, "one", "one", "--json").stdout.split("HEAVY:")[0])
    gender = shown["stats"][0]["heads"]["gender"]["acc"]
    assert gender["difference"] == 0 and gender["verdict"] == "within noise" and gender["p"] == 1.0
    assert gender["method"] == "percentile"  # BCa is undefined without spread: the fallback


def test_runs_on_different_images_get_no_paired_interval(trained):
    result = compare(trained, "one", "other")
    assert result.returncode == 0, result.stderr
    assert "did not score the same images" in result.stdout
    shown = json.loads(compare(trained, "one", "other", "--json").stdout.split("HEAVY:")[0])
    assert shown["stats"][0]["heads"] == {} and "same images" in shown["stats"][0]["note"]


def test_table_shows_vs_parent_and_the_trust_table(trained):
    """`vs parent` = the gender difference to the parent's run and its verdict; RESULTS' trust
    table has every head's interval and p, and the remark beside the verdict; a row whose parent
    scored other images stays empty there; the README block stays within 220 bytes a line."""
    import re

    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    out = trained["folder"] / "RESULTS.md"
    result = subprocess.run([sys.executable, "-c", PROBE, "table", "--out", str(out), "--ledger",
                             str(trained["book"].path), "--tracking-uri", trained["uri"]], cwd=trained["folder"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "mlflow" not in result.stdout.split("HEAVY:")[1] and "tensorflow" not in result.stdout.split("HEAVY:")[1]
    block = [line for line in result.stdout.split("HEAVY:")[0].splitlines() if line.startswith("|")]
    assert max(len(line.encode()) for line in block) <= 220
    header = [c.strip() for c in block[0].strip("|").split("|")]
    rows = {cells[1]: dict(zip(header, cells)) for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in block[2:])}
    assert re.fullmatch(r"[+-]\d\.\d{3} (better|worse|within noise)", rows["lower"]["vs parent"])
    assert rows["other"]["vs parent"] == "" and rows["one"]["vs parent"] == ""
    text = out.read_text()
    assert "## Against the parent: paired 95% intervals" in text
    lower = next(line for line in text.splitlines() if line.startswith("| 10 | lower") or "| lower " in line
                 and "notes:" in line)
    verdict = rows["lower"]["vs parent"].split(" ", 1)[1]
    assert f"notes: Acc improved ; measured: {verdict}" in lower
    assert len(re.findall(r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] p=", lower)) == len(HVC_HEADS)
    other = next(line for line in text.splitlines() if "| other " in line and "| one " in line)
    assert "did not score the same images" in other


def test_runs_without_predictions_show_a_note_not_a_failure(records_store):
    """Runs logged before predictions/val.json (tests/store_builder.py's hand-made runs)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run([sys.executable, "-m", "harness.cli", "compare", "base", "first", "--ledger",
                             str(records_store["ledger"]), "--tracking-uri", records_store["uri"]],
                            cwd=records_store["folder"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "logged no per-example predictions" in result.stdout


def test_the_interval_is_scipy_bootstrap_on_the_same_arrays():
    """compare_pair's interval is scipy.stats.bootstrap (paired, BCa, the fixed generator) on the
    per-image right/wrong arrays; McNemar's p is statsmodels' exact test on their 2x2 table."""
    from scipy.stats import bootstrap
    from statsmodels.stats.contingency_tables import mcnemar

    from harness.core.predictions import Predictions
    from harness.report import stats

    generator = np.random.default_rng(1)
    n, classes = 300, HVC_HEADS["gender"]
    true = generator.integers(0, 2, n)
    pred_a = np.where(generator.random(n) < 0.6, true, 1 - true)
    pred_b = np.where(generator.random(n) < 0.75, true, 1 - true)

    def side(pred):
        names = lambda codes: tuple(classes[c] for c in codes)  # noqa: E731
        return Predictions(tuple(range(n)), tuple(map(str, range(n))), {"gender": names(true)},
                           {"gender": names(pred)}, {"gender": (None,) * n})

    acc, bacc = stats.compare_pair(side(pred_a), side(pred_b))
    right_a, right_b = (pred_a == true).astype(float), (pred_b == true).astype(float)
    direct = bootstrap((right_b, right_a), lambda b, a, axis: b.mean(axis=axis) - a.mean(axis=axis), paired=True,
                       confidence_level=0.95, method="BCa", n_resamples=stats.N_RESAMPLES,
                       rng=np.random.default_rng(stats.RNG_SEED)).confidence_interval
    assert (acc.low, acc.high) == pytest.approx((direct.low, direct.high), abs=1e-12)
    assert acc.method == "BCa" and acc.difference == pytest.approx(right_b.mean() - right_a.mean())
    assert acc.verdict == ("better" if direct.low > 0 else "worse" if direct.high < 0 else "within noise")
    table = [[np.sum((right_a == 1) & (right_b == 1)), np.sum((right_a == 1) & (right_b == 0))],
             [np.sum((right_a == 0) & (right_b == 1)), np.sum((right_a == 0) & (right_b == 0))]]
    assert acc.p == pytest.approx(mcnemar(table, exact=True).pvalue)
    from sklearn.metrics import balanced_accuracy_score

    assert bacc.difference == pytest.approx(balanced_accuracy_score(true, pred_b) - balanced_accuracy_score(true, pred_a))
    same = stats.compare_pair(side(pred_a), side(pred_a))[0]
    assert (same.difference, same.low, same.high, same.verdict) == (0, 0, 0, "within noise")


REPEATED = TINY.replace("  smoke: {set: {}, max_epochs_per_pass: 1}", "  smoke: {set: {}, max_epochs_per_pass: 2}")


def harness_run(folder: Path, *args, fault=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    env.pop("HARNESS_FAULT", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    if fault:
        env["HARNESS_FAULT"] = fault
    command = [sys.executable, "-m", "harness.cli", *args, "--ledger", str(folder / "tiny.yaml"),
               "--tracking-uri", f"sqlite:///{folder}/mlflow.db"]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def test_repeats_two_seeds_and_a_killed_repeat_resumes_alone(tmp_path):
    """`--repeats 2`: repeat 2 is SIGKILLed after its first epoch (the third snapshot of the
    process: repeat 1 took two); the same command again skips repeat 1 and resumes repeat 2.
    Then the table and compare show the group's mean ± sd over the two seeds."""
    from harness.data.synth import generate
    from harness.track.store import Store

    generate(tmp_path / "synth", 96, seed=5)
    (tmp_path / "tiny.yaml").write_text(REPEATED)
    train = ["run", "one", "--repeats", "2", "--profile", "smoke", "--data", str(tmp_path / "synth"),
             "--work-dir", str(tmp_path / "work")]
    killed = harness_run(tmp_path, *train, fault="after-snapshot:3")
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    store = Store(f"sqlite:///{tmp_path}/mlflow.db")
    before = {r.tags["harness.repeat"]: (r.run_id, r.status) for r in store.runs("tiny", "one")}
    assert before["1/2"][1] == "FINISHED" and before["2/2"][1] == "RUNNING"  # SIGKILL: nobody marked it

    rerun = harness_run(tmp_path, *train)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"one repeat 1/2: already finished (run {before['1/2'][0][:8]}" in rerun.stdout
    assert f"one repeat 2/2: resuming unfinished run {before['2/2'][0][:8]}" in rerun.stdout
    runs = store.runs("tiny", "one")
    assert sorted((r.tags["harness.repeat"], r.run_id, r.status) for r in runs) == [
        ("1/2", before["1/2"][0], "FINISHED"), ("2/2", before["2/2"][0], "FINISHED")]
    assert len({r.tags["harness.group"] for r in runs}) == 1
    assert sorted(store.run(r.run_id).params["seed"] for r in runs) == ["3", "4"]

    table = harness_run(tmp_path, "table", "--out", str(tmp_path / "R.md"))
    assert table.returncode == 0, table.stderr
    row = next(line for line in (tmp_path / "R.md").read_text().splitlines() if line.startswith("| 1 | one"))
    assert "(n=2)" in row and " ± " in row
    shown = json.loads(harness_run(tmp_path, "compare", "one", "one", "--json").stdout)
    gender = shown["stats"][0]["heads"]["gender"]["acc"]
    assert (gender["n_a"], gender["n_b"], gender["verdict"]) == (2, 2, "within noise")
    assert gender["method"] == "two-level percentile" and gender["difference"] == 0


def test_ledger_repeats_give_seeds_and_one_group_and_bad_counts_exit_2(tmp_path):
    """`repeats: 3` in the ledger (what `--all` honours too) and `--repeats N` resolve to the
    same plan; a count below 1 is one line naming the flag, exit 2, nothing written."""
    from harness.run.repeats import repeats_of

    (tmp_path / "tiny.yaml").write_text(TINY.replace("    passes: [{epochs: 2, monitor: val_gender_acc}]",
                                                     "    passes: [{epochs: 2, monitor: val_gender_acc}]\n    repeats: 3"))
    book = ledger.load(tmp_path / "tiny.yaml")
    plan = repeats_of(book, "one", "smoke", None)
    assert [(r.seed, r.tags["harness.repeat"]) for r in plan] == [(3, "1/3"), (4, "2/3"), (5, "3/3")]
    assert len({r.tags["harness.group"] for r in plan}) == 1
    assert repeats_of(book, "one", "smoke", 1) == [] and len(repeats_of(book, "other", "smoke", 2)) == 2
    plain = tmp_path / "plain.yaml"
    plain.write_text(TINY)
    assert ledger.load(plain).resolve("one").config_sha() == book.resolve("one").config_sha()  # not what a run trains

    from cli_run import harness

    result = harness("run", "one", "--repeats", "0", "--ledger", str(plain), "--tracking-uri",
                     f"sqlite:///{tmp_path}/store/mlflow.db", cwd=tmp_path)
    assert result.returncode == 2 and not (tmp_path / "store").exists()
    assert (result.stdout + result.stderr).strip().splitlines() == [
        "error: harness run: --repeats 0: give a number of runs, 1 or more"]


REAL = os.environ.get("HARNESS_HVC_REAL", "")
# tests/test_real_learning.py's short run on the real subset, one epoch longer: a clearer margin.
SHORT = REAL_LEARNING_SHORT.replace("real-short", "real-trust").replace("epochs: 3,", "epochs: 4,")


@pytest.mark.real  # the module is not in conftest's REAL set: only this test reads the real subset
@pytest.mark.skipif(not REAL or not (Path(REAL) / "hvc_annotations.csv").is_file(),
                    reason="real hvc subset not available: set HARNESS_HVC_REAL to the folder holding "
                           "hvc_annotations.csv")
def test_a_trained_model_on_real_images_is_better_than_majority(tmp_path):
    """tests/test_real_learning.py's short run on the real subset (900 validation images) against
    `harness reference`'s majority predictor on the same split: gender `better`, McNemar p < 0.01."""
    from harness.core.records import TAG_REFERENCE
    from harness.report.trust import Judge
    from harness.run.launch import run_iteration
    from harness.run.reference import run_references
    from harness.track.fast_store import open_reader

    (tmp_path / "real.yaml").write_text(SHORT)
    book = ledger.load(tmp_path / "real.yaml")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    lines = []
    assert run_iteration(book, "short", profile="full", data_dir=REAL, tracking_uri=uri, log=lines.append) == 0, lines
    run_references(book, data_dir=REAL, profile="full", tracking_uri=uri, log=lines.append)
    reader = open_reader(uri, book.experiment)
    majority = next(r for r in reader.references() if r.tags.get(TAG_REFERENCE) == "majority")
    found = Judge(reader).compare([majority], [reader.latest_finished("short")])
    gender = found["heads"]["gender"]["acc"]
    assert found["note"] is None and gender["images"] == 900
    assert gender["verdict"] == "better" and gender["p"] < 0.01, (gender, lines[-3:])
