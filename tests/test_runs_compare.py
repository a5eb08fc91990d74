"""`harness runs` and `harness compare` as a user runs them (a subprocess), over the hand-made
store of tests/store_builder.py: every run with its state, side-by-side comparisons, JSON, bad
input, and neither TensorFlow nor MLflow imported for a SQLite store."""

import json
import os
import subprocess
import sys
from pathlib import Path

from store_builder import BASE_BACC, BASE_SELECTED, FIRST_BEST

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import sys
from harness.cli import main
code = main(sys.argv[1:])
print("HEAVY:" + ",".join(m for m in ("tensorflow", "keras", "mlflow") if m in sys.modules))
sys.exit(code)
"""


def harness(store, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-c", PROBE, *args, "--ledger", str(store["ledger"]),
                           "--tracking-uri", store["uri"]], cwd=store["folder"], env=env, capture_output=True,
                          text=True, timeout=120)


def test_runs_lists_every_run_with_its_state(records_store):
    result = harness(records_store, "runs")
    assert result.returncode == 0, result.stderr
    assert "HEAVY:\n" in result.stdout, "harness runs imported TensorFlow or MLflow"
    lines = result.stdout.splitlines()
    ids = records_store["runs"]
    row = {role: next(line for line in lines if line.startswith(run_id[:8])) for role, run_id in ids.items()}
    assert row["base"].split()[1:4] == ["base", "finished", "smoke"]
    assert f"{BASE_SELECTED['gender']:.4f} @ 1" in row["base"] and " 2/2 " in row["base"]
    assert f"{FIRST_BEST['gender']:.4f} @ 2‡" in row["first"] and "hvc synthetic (64 images)†" in row["first"]
    assert row["first-failed"].split()[1:3] == ["first", "failed"]
    assert row["second-killed"].split()[1:3] == ["second", "killed"] and " 1/4 " in row["second-killed"]
    assert row["majority-a"].split()[1] == "reference/majority"
    assert "2027-01-15 08:01" in row["base"] and "7 runs (5 finished)" in result.stdout


def test_runs_of_one_iteration_as_json(records_store):
    result = harness(records_store, "runs", "first", "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout.split("HEAVY:")[0])
    assert [(s["run_id"], s["status"]) for s in shown] == [
        (records_store["runs"]["first-failed"], "failed"), (records_store["runs"]["first"], "finished")]
    assert shown[1]["value"] == FIRST_BEST["gender"] and shown[1]["selected_checkpoint"] is False
    assert shown[1]["epochs_done"] == 2 and shown[1]["synthetic"] is True


def test_compare_shows_config_diff_heads_and_winners(records_store):
    result = harness(records_store, "compare", "base", "first")
    assert result.returncode == 0, result.stderr
    assert "HEAVY:\n" in result.stdout
    text = result.stdout
    diff = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith(("optimizer.", "batch_"))}
    assert diff == {"optimizer.lr": ["0.003", "0.001"]}  # under the smoke profile both train batch 8
    gender = next(line for line in text.splitlines() if line.startswith("val_gender_acc"))
    assert BASE_SELECTED["gender"] > FIRST_BEST["gender"]
    assert gender.split()[1:] == [f"{BASE_SELECTED['gender']:.4f}", "*", f"{FIRST_BEST['gender']:.4f}‡"]
    emotion = next(line for line in text.splitlines() if line.startswith("val_emotion_acc"))
    assert emotion.split()[1:] == [f"{BASE_SELECTED['emotion']:.4f}", f"{FIRST_BEST['emotion']:.4f}‡", "*"]
    bacc = next(line for line in text.splitlines() if line.startswith("val_gender_bacc"))
    assert bacc.split()[1:] == [f"{BASE_BACC['gender']:.4f}", "-"]  # one value: no winner


def test_compare_json_by_run_id_prefix(records_store):
    ids = records_store["runs"]
    result = harness(records_store, "compare", ids["base"][:10], "first", "second", "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.split("HEAVY:")[0])
    assert [r["run_id"] for r in found["runs"]] == [ids["base"], ids["first"], ids["second-killed"]]
    pose = found["metrics"]["val_pose_acc"]
    assert pose["values"][:2] == [BASE_SELECTED["pose"], FIRST_BEST["pose"]] and pose["values"][2] is None
    best = 0 if BASE_SELECTED["pose"] > FIRST_BEST["pose"] else 1
    assert pose["winners"] == [best]
    assert found["config_diff"]["optimizer.lr"] == ["0.003", "0.001", "0.001"]


def test_bad_names_exit_2_with_one_line(records_store):
    for args in (("compare", "base", "nosuch"), ("compare", "base"), ("runs", "nosuch")):
        result = harness(records_store, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
