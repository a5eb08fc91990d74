"""The tracking boundary without training: URI and work-dir settings, Store.begin's decision,
plain records out. A real SQLite MLflow store in a temp folder."""

from pathlib import Path

import pytest

from harness import ledger
from harness.core.records import NEW, RESUME, SKIP, Decision, RunRecord
from harness.core.settings import WorkDir, work_dir

ITERATION = {"name": "one", "passes": [{"epochs": 1}], "data": {"name": "hvc", "image_size": 32},
             "backbone": {"name": "custom"}}


def test_resolve_uri_flag_env_default_and_creates_nothing(tmp_path, monkeypatch):
    from harness.track.uris import resolve_uri, store_exists

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri() == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env/mlflow.db")
    assert resolve_uri() == f"sqlite:///{tmp_path}/env/mlflow.db"
    assert resolve_uri("http://127.0.0.1:5001") == "http://127.0.0.1:5001"
    assert not (tmp_path / "env").exists() and not store_exists()
    resolve_uri(create=True)
    assert (tmp_path / "env").is_dir()


def test_work_dir_flag_env_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HARNESS_WORK_DIR", raising=False)
    assert work_dir() == WorkDir(tmp_path / "mlruns" / "work")
    monkeypatch.setenv("HARNESS_WORK_DIR", "elsewhere")
    assert work_dir().run("abc") == tmp_path / "elsewhere" / "abc"
    assert work_dir(tmp_path / "flag").cache == tmp_path / "flag" / "cache"
    assert not (tmp_path / "elsewhere").exists()


def test_begin_answers_new_resume_or_skip_and_hands_out_records(tmp_path):
    from harness.track.store import Store

    store = Store(f"sqlite:///{tmp_path}/store/mlflow.db")
    iteration = ledger.validate_dict(ITERATION)
    assert store.begin("exp", iteration) == Decision(NEW)
    tracker = store.start(Decision(NEW), "exp", iteration, {"harness.profile": "cpu"})
    has_state = {tracker.run_id}

    assert store.begin("exp", iteration, resumable=lambda run_id: False) == Decision(NEW)
    resume = store.begin("exp", iteration, resumable=has_state.__contains__)
    assert resume.kind == RESUME and resume.run.run_id == tracker.run_id
    assert resume.message == f"one: resuming unfinished run {tracker.run_id[:8]} (use --fresh to start over)"
    assert store.begin("exp", iteration, fresh=True, resumable=has_state.__contains__) == Decision(NEW)
    changed = store.begin("exp", ledger.with_changes(iteration, {"optimizer": {"lr": 0.5}}),
                          resumable=has_state.__contains__)
    assert changed.kind == NEW and "differs from the ledger's" in changed.message

    tracker.pass_started(0, iteration)
    values = {"loss": 1.0, "val_loss": 1.2, "val_gender_acc": 0.6, "lr": 0.001, "epoch_seconds": 2.0}
    tracker.epoch_finished(0, 1, values)
    summary = tracker.finish([{"step": 1, "pass": 0, "metrics": values}], [], None)
    assert summary == {"best_val_gender_acc": 0.6, "best_epoch": 1, "mean_epoch_seconds": 2.0}
    skip = store.begin("exp", iteration, skip_finished=True)
    assert skip.kind == SKIP and skip.run.run_id == tracker.run_id and "already finished" in skip.message
    assert store.begin("exp", iteration, resumable=has_state.__contains__) == Decision(NEW)

    [run] = store.runs("exp", "one")
    assert isinstance(run, RunRecord) and run == store.run(tracker.run_id) == store.latest_finished("exp", "one")
    assert (run.name, run.status, run.profile, run.iteration, run.config_sha) == (
        "one", "FINISHED", "cpu", "one", iteration.config_sha())
    assert run.metrics["best_val_gender_acc"] == 0.6 and run.params["optimizer.lr"] == "0.001"
    [child] = store.children(run.run_id)
    assert (child.name, child.pass_index, child.status) == ("one/pass-1", 0, "RUNNING")
    assert [(p.step, p.value) for p in store.metric_history(run.run_id, "val_gender_acc")] == [(1, 0.6)]
    assert store.latest_finished("exp", "one", "0" * 12) is None and store.runs("nope") == []
    with pytest.raises(ValueError):
        store.start(skip, "exp", iteration, {})


def test_reader_over_a_missing_store_is_empty_and_creates_nothing(tmp_path):
    from harness.track.reader import MlflowReader

    reader = MlflowReader(f"sqlite:///{tmp_path}/none/mlflow.db", "exp")
    assert reader.latest_finished("one") is None
    assert not Path(tmp_path / "none").exists()
