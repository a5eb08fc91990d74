"""Sweeps end to end: real Optuna studies in SQLite, real TensorFlow trials on the smoke profile,
a real MLflow SQLite store, real worker processes (two at once; one killed with SIGKILL)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from harness import cli, ledger
from harness.ledger.space import changes_for, load_space

REPO = Path(__file__).resolve().parents[1]

# `iterations` is not the last block, so promote's insertion has text after it to keep intact.
LEDGER = """\
# A tiny sweep ledger.   Comments and odd spacing must survive a promote.
experiment: sweepy
defaults:
  seed: 3
  data: {name: hvc, image_size: 32, val_fraction: 0.25, cache: memory}
  backbone: {name: custom, freeze: backbone}   # trials train neck and heads on cached features
  head: {neck: gap, neck_units: 16, tower_units: [8], tower_dropouts: [0.0]}
  optimizer: {name: sgd, lr: 0.003, momentum: 0.9}
  batch_size: {train: 12, eval: 12}   # 36 train / 12 val images: whole batches, no retrace
iterations:
  base:
    title: the searched one   # trailing comment
    passes: [{epochs: 1, monitor: val_loss}]
    sweep:
      # Two LRs far apart: every trial at 1e-7 ends its epoch well above every trial at 0.1, so
      # with TPE seeded by the ledger seed (trials 0-2 at 0.1, trial 3 at 1e-7) the median rule
      # prunes trial 3 on any machine.
      optimizer.lr: {choice: [1.0e-7, 0.1]}
  duo:
    extends: base
    sweep:
      optimizer.lr: {log_uniform: [1.0e-4, 1.0e-2]}
      head.tower_units: {choice: [[8], [4]]}
  slow:
    extends: base
    data: {image_size: 64}
    passes: [{epochs: 2}]
    sweep:
      optimizer.lr: {log_uniform: [1.0e-4, 1.0e-2]}

profiles:
  cpu: {set: {}, max_epochs_per_pass: 2}
  smoke: {set: {data: {limit: 48}}, max_epochs_per_pass: 2}
# the end
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from harness.data.synth import generate

    root = tmp_path_factory.mktemp("sweep")
    generate(root / "data", 48, seed=5)
    (root / "sweep.yaml").write_text(LEDGER)
    return root


def uri(root: Path) -> str:
    return f"sqlite:///{root}/store/mlflow.db"


def study_of(root: Path, name: str):
    storage = f"sqlite:///{root}/store/optuna.db"
    names = [s for s in optuna.get_all_study_names(storage) if s.startswith(f"sweepy/{name}/")]
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=storage)


def mlflow_runs(root: Path, kind: str):
    from mlflow.tracking import MlflowClient

    from harness.track.store import Store

    experiment = Store(uri(root)).experiment_id("sweepy", create=False)
    return MlflowClient(uri(root)).search_runs([experiment], f"tags.`harness.kind` = '{kind}'")


@pytest.fixture(scope="module")
def swept(folder):
    """A 4-trial sweep of `base`, in this process, that prunes: median rule from the second trial."""
    from harness.sweep.plan import plan_sweep, run_sweep

    book = ledger.load(folder / "sweep.yaml")
    lines = []
    plan = plan_sweep(book, "base", trials=4, startup_trials=1, warmup_epochs=0, profile="smoke",
                      data_dir=str(folder / "data"), tracking_uri=uri(folder), log=lines.append)
    code = run_sweep(plan, log=lines.append)
    return code, lines, plan


def test_four_trials_with_pruning_log_one_parent_and_four_children(folder, swept):
    code, lines, plan = swept
    assert code == 0, "\n".join(lines)
    study = study_of(folder, "base")
    states = [t.state for t in study.trials]
    assert len(states) == 4
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert [t.number for t in pruned] == [3], "\n".join(lines)
    assert pruned[0].intermediate_values[1] > max(t.value for t in study.trials[:3])  # the median rule held
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)

    parents = mlflow_runs(folder, "sweep")
    assert [p.info.run_name for p in parents] == [plan.run_name]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["harness.iteration"] == "base"
    assert json.loads(parent.data.params["space.optimizer.lr"]) == {"choice": [1e-07, 0.1]}
    assert parent.data.metrics["sweep_trials_pruned"] == len(pruned)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert parent.data.metrics["sweep_best_value"] == pytest.approx(max(t.value for t in complete))

    children = mlflow_runs(folder, "trial")
    assert len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    by_trial = {int(c.data.tags["harness.trial"]): c for c in children}
    assert sorted(by_trial) == [0, 1, 2, 3]
    for trial in study.trials:
        run = by_trial[trial.number]
        assert run.info.run_name == f"{plan.run_name}/trial-{trial.number}"
        assert trial.user_attrs["harness.run"] == run.info.run_id
        assert float(run.data.params["optimizer.lr"]) == trial.params["optimizer.lr"]
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert run.info.status == "KILLED" and run.data.tags["harness.pruned"] == "true"
            assert "pruned at epoch" in run.data.tags["harness.failure_reason"]
        else:
            assert run.info.status == "FINISHED" and "harness.pruned" not in run.data.tags
            # the trial's value is the val_loss of its (only) epoch, as logged in MLflow
            assert run.data.metrics["val_loss"] == pytest.approx(trial.value)
        # every epoch it trained was reported to Optuna under the same step
        assert set(trial.intermediate_values) == set(range(1, len(trial.intermediate_values) + 1))

    from mlflow.tracking import MlflowClient

    artifacts = {a.path for a in MlflowClient(uri(folder)).list_artifacts(parent.info.run_id, "plots")}
    assert artifacts == {"plots/optimization_history.png", "plots/param_importances.png"}
    assert sum(line.startswith("-- trial") and ": PRUNED, pruned at epoch" in line for line in lines) == len(pruned)


def test_the_results_table_ignores_sweep_runs(folder, swept):
    from harness.track.store import Store

    assert Store(uri(folder)).runs("sweepy") == []
    assert Store(uri(folder)).latest_finished("sweepy", "base") is None


def test_promote_appends_a_valid_iteration_and_keeps_every_other_byte(folder, swept, tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(LEDGER)
    code = cli.main(["sweep", "base", "--promote", "base_tuned", "--ledger", str(path),
                     "--tracking-uri", uri(folder)])
    assert code == 0, capsys.readouterr()
    new = path.read_text()
    start = new.rindex("\n\n", 0, new.index("  base_tuned:")) + 1  # the inserted block, from its blank line
    end = new.index("\nprofiles:")
    assert new[:start] + new[end:] == LEDGER  # a pure insertion at the end of the iterations
    added = new[start:end]
    study = study_of(folder, "base")
    best = study.best_trial
    assert f"trial {best.number} run {best.user_attrs['harness.run']}" in added
    assert f"val_loss {best.value:.4f}" in added and "extends: base" in added

    capsys.readouterr()
    assert cli.main(["validate", "--ledger", str(path)]) == 0
    assert cli.main(["show", "base_tuned", "--ledger", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "changes vs base:" in shown and "optimizer.lr: 0.003 -> " in shown
    book = ledger.load(path)
    values = {"optimizer.lr": best.params["optimizer.lr"]}
    trained = book.resolve("base", changes=changes_for(book.resolve("base"), values))
    assert book.resolve("base_tuned").config_sha() == trained.config_sha()
    assert "base_tuned" not in book.sweeps

    assert cli.main(["sweep", "base", "--promote", "base_tuned", "--ledger", str(path),
                     "--tracking-uri", uri(folder)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert path.read_text() == new


def worker(folder, name, trials, *extra, tracking_uri=None):
    command = [sys.executable, "-m", "harness.cli", "sweep", name, "--trials", str(trials),
               "--ledger", str(folder / "sweep.yaml"), "--profile", "smoke", "--data", str(folder / "data"),
               "--tracking-uri", tracking_uri or uri(folder), *extra]
    return subprocess.Popen(command, cwd=folder, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def two_workers(folder, capsys, name: str, tracking_uri: str, storage: list[str]):
    """One worker in a subprocess, one in this process, at the same time, on one study of 2
    trials; checks each trial trained once, by one worker, with its MLflow run, under one parent."""
    from mlflow.tracking import MlflowClient

    other = worker(folder, name, 2, *storage, tracking_uri=tracking_uri)
    code = cli.main(["sweep", name, "--trials", "2", "--ledger", str(folder / "sweep.yaml"), "--profile", "smoke",
                     "--data", str(folder / "data"), "--tracking-uri", tracking_uri, *storage])
    outputs = [other.communicate(timeout=600)[0], capsys.readouterr().out]
    assert [other.returncode, code] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    optuna_db = storage[1] if storage else f"sqlite:///{folder}/store/optuna.db"
    [study_name] = [s for s in optuna.get_all_study_names(optuna_db) if s.startswith(f"sweepy/{name}/")]
    study = optuna.load_study(study_name=study_name, storage=optuna_db)
    assert len(study.trials) == 2
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)
    ran = [sorted(int(line.split()[2]) for line in out.splitlines() if line.startswith("-- trial") and "/2)" in line)
           for out in outputs]
    assert sorted(ran[0] + ran[1]) == [0, 1]  # each trial trained once, by one worker
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("sweepy").experiment_id

    def tagged(kind):
        return [r for r in client.search_runs([experiment], f"tags.`harness.kind` = '{kind}'")
                if r.data.tags["harness.study"] == study.study_name]

    runs = tagged("trial")
    assert sorted(int(r.data.tags["harness.trial"]) for r in runs) == [0, 1]
    assert {t.user_attrs["harness.run"] for t in study.trials} == {r.info.run_id for r in runs}
    parents = tagged("sweep")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def test_two_concurrent_workers_share_one_study_exactly(folder, capsys):
    """Two workers on one SQLite study (the default storage, optuna.db beside mlflow.db)."""
    two_workers(folder, capsys, "duo", uri(folder), [])


def test_two_workers_share_one_study_on_the_team_server(folder, capsys, team_server, team_database):
    """Two workers on one study in the team server's PostgreSQL (--storage), logging to its
    MLflow server: what two machines pointed at one server do."""
    two_workers(folder, capsys, "duo", team_server.url, ["--storage", team_database("optuna_sweep")])


def test_sigkilled_sweep_resumes_its_trial_when_rerun(folder, capsys):
    process = worker(folder, "slow", 1, "--work-dir", str(folder / "work"))
    deadline, killed_after = time.time() + 300, None
    while time.time() < deadline and process.poll() is None:
        states = list((folder / "work").glob("*/state.json"))
        if states and len(json.loads(states[0].read_text())["history"]) >= 1:
            process.send_signal(signal.SIGKILL)
            killed_after = len(json.loads(states[0].read_text())["history"])
            break
        time.sleep(0.05)
    process.wait(timeout=30)
    assert killed_after is not None and killed_after < 2, process.stdout.read()[-3000:]
    study = study_of(folder, "slow")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.RUNNING]

    code = cli.main(["sweep", "slow", "--trials", "1", "--ledger", str(folder / "sweep.yaml"), "--profile", "smoke",
                     "--data", str(folder / "data"), "--tracking-uri", uri(folder), "--work-dir", str(folder / "work")])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "trial 0 was left RUNNING by a worker that is gone: marked FAIL, retried as trial 1" in out
    study = study_of(folder, "slow")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    runs = [r for r in mlflow_runs(folder, "trial") if r.data.tags["harness.study"] == study.study_name]
    assert len(runs) == 1  # the retry resumed the killed trial's run
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["harness.retry_of"] == "0"
    assert run.data.tags["harness.trial"] == "1" and study.trials[1].user_attrs["harness.run"] == run.info.run_id
    from harness.track.store import Store

    assert [p.step for p in Store(uri(folder)).metric_history(run.info.run_id, "loss")] == [1, 2]
    assert sorted(study.trials[1].intermediate_values) == [1, 2]


BAD = LEDGER.replace("optimizer.lr: {choice: [1.0e-7, 0.1]}", "head.tower_unit: {choice: [[8], [4]]}").replace(
    "{log_uniform: [1.0e-4, 1.0e-2]}\n      head", "{log_uniform: [0, 1.0e-2]}\n      head")


def test_a_bad_space_is_exit_2_with_file_line_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    assert cli.main(["validate", "--ledger", str(path)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        f"error: {path}:18: base.sweep.head.tower_unit: no field 'tower_unit' in head (did you mean "
        f"'tower_units'?); known: batch_norm, last_activation, neck, neck_units, tower_defect, tower_dropouts, "
        f"tower_units",
        f"error: {path}:22: duo.sweep.optimizer.lr: log_uniform needs low > 0 (got 0)",
    ]
    store = tmp_path / "store"
    code = cli.main(["sweep", "base", "--trials", "2", "--ledger", str(path), "--profile", "smoke",
                     "--tracking-uri", f"sqlite:///{store}/mlflow.db"])
    assert code == 2 and not store.exists()
    assert capsys.readouterr().err.startswith(f"error: {path}:18: base.sweep.head.tower_unit")


def test_space_values_apply_to_passes_whole_and_to_unset_fields(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(LEDGER)
    book = ledger.load(path)
    base = book.resolve("base")
    changes = changes_for(base, {"passes.0.epochs": 5, "passes.0.early_stopping.patience": 2, "optimizer.lr": 0.1})
    varied = book.resolve("base", "smoke", changes)
    assert varied.passes[0].epochs == 2  # the profile's cap holds for trials too
    assert varied.passes[0].monitor == "val_loss" and varied.passes[0].early_stopping.patience == 2
    assert varied.optimizer.lr == 0.1 and varied.optimizer.momentum == 0.9
    assert [r.describe() for r in load_space(book, "duo").ranges] == ["optimizer.lr log_uniform [0.0001, 0.01]",
                                                                      "head.tower_units choice [[8], [4]]"]


def test_a_space_file_is_read_and_checked_with_its_own_file_and_line(tmp_path, capsys):
    """`--space FILE`: the ranges come from the file, its errors name the file's lines, nothing is written."""
    path = tmp_path / "sweep.yaml"
    path.write_text(LEDGER)
    book = ledger.load(path)
    good = tmp_path / "space.yaml"
    good.write_text("# searched apart from the ledger\nsweep:\n  optimizer.momentum: {uniform: [0.5, 0.99]}\n"
                    "  batch_size.train: {choice: [6, 12]}\n")
    assert [r.describe() for r in load_space(book, "base", good).ranges] == [
        "optimizer.momentum uniform [0.5, 0.99]", "batch_size.train choice [6, 12]"]
    bad = tmp_path / "bad_space.yaml"
    bad.write_text("sweep:\n  optimizer.lr: {log_uniform: [1.0e-4, 1.0e-2]}\n  optimizer.lrr: {uniform: [0.1, 0.2]}\n")
    store = tmp_path / "store"
    code = cli.main(["sweep", "base", "--trials", "2", "--space", str(bad), "--ledger", str(path), "--profile", "smoke",
                     "--tracking-uri", f"sqlite:///{store}/mlflow.db"])
    err = capsys.readouterr().err
    assert code == 2 and not store.exists()
    assert err.startswith(f"error: {bad}:3: ") and "lrr" in err and "'lr'" in err, err
    missing = tmp_path / "none.yaml"
    assert cli.main(["sweep", "base", "--trials", "2", "--space", str(missing), "--ledger", str(path),
                     "--tracking-uri", f"sqlite:///{store}/mlflow.db"]) == 2
    assert f"{missing}: file not found" in capsys.readouterr().err and not store.exists()
