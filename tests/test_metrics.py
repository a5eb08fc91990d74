"""The metric contract (harness.core.metrics): names, Keras log mapping, summary, console lines. No TensorFlow."""

import subprocess
import sys
from pathlib import Path

import pytest

from harness.core import metrics
from harness.core.labels import HVC_HEADS

REPO = Path(__file__).resolve().parents[1]


def test_epoch_names_multi_and_single_head():
    names = metrics.epoch_metric_names("hvc")
    assert names[:6] == ["loss", "val_loss", "gender_acc", "gender_loss", "val_gender_acc", "val_gender_loss"]
    assert len(names) == 2 + 4 * len(HVC_HEADS)
    assert metrics.epoch_metric_names("cifar10") == ["loss", "val_loss", "acc", "val_acc"]


def test_primary_head_and_summary_names():
    assert metrics.primary_head("hvc") == "gender" and metrics.primary_head("cifar10") == "class"
    assert metrics.val_acc("hvc") == "val_gender_acc" and metrics.val_acc("hvc", "age") == "val_age_acc"
    assert metrics.best_val_acc("hvc") == "best_val_gender_acc" and metrics.best_val_acc("cifar10") == "best_val_acc"
    assert metrics.reported_key("hvc") == "gender" and metrics.reported_key("cifar10") == "acc"


def test_selected_checkpoint_names():
    assert metrics.selected_name("hvc", "gender", metrics.ACC.short) == "selected_val_gender_acc"
    assert metrics.selected_name("hvc", "pose", metrics.BALANCED_ACC) == "selected_val_pose_bacc"
    assert metrics.selected_name("cifar10", "class", metrics.BALANCED_ACC) == "selected_val_bacc"
    assert metrics.selected_mean_name(metrics.BALANCED_ACC) == "selected_val_mean_bacc"
    assert metrics.SELECTED_EPOCH == "selected_epoch"


def test_keras_logs_map_to_contract_names():
    logs = {"loss": 1.0, "gender_output_accuracy": 0.5, "image_quality_output_loss": 0.7,
            "val_loss": 1.1, "val_image_quality_output_accuracy": 0.4}
    assert metrics.from_keras_logs(logs, "hvc") == {
        "loss": 1.0, "gender_acc": 0.5, "image_quality_loss": 0.7, "val_loss": 1.1, "val_image_quality_acc": 0.4}
    assert metrics.from_keras_logs({"accuracy": 0.3, "loss": 2.0, "val_accuracy": 0.2}, "cifar10") == {
        "acc": 0.3, "loss": 2.0, "val_acc": 0.2}


def test_unknown_keras_names_raise_instead_of_vanishing():
    with pytest.raises(metrics.UnknownMetric, match="gender_output_auc"):
        metrics.from_keras_logs({"gender_output_auc": 0.9}, "hvc")
    with pytest.raises(metrics.UnknownMetric, match="compile_metrics"):
        metrics.from_keras_logs({"compile_metrics": 0.9}, "hvc")


def test_a_new_kind_flows_through_names_logs_summary_and_table(monkeypatch):
    """What adding balanced accuracy takes on this side: one Kind."""
    bacc = metrics.Kind("bacc", "balanced_accuracy", "max", summarized=True)
    monkeypatch.setattr(metrics, "KINDS", metrics.KINDS + (bacc,))
    assert "val_gender_bacc" in metrics.epoch_metric_names("hvc")
    assert metrics.from_keras_logs({"val_gender_output_balanced_accuracy": 0.6}, "hvc") == {"val_gender_bacc": 0.6}
    assert [k.keras for k in metrics.compiled_kinds()] == ["accuracy", "balanced_accuracy"]
    assert metrics.monitor_mode("val_gender_bacc") == "max"
    history = [{"step": 1, "pass": 0, "metrics": {"val_gender_bacc": 0.5}},
               {"step": 2, "pass": 0, "metrics": {"val_gender_bacc": 0.7}}]
    assert metrics.summarize(history, "hvc")["best_val_gender_bacc"] == 0.7
    assert ("val age bacc", "best_val_age_bacc") in metrics.table_columns("hvc")


def test_monitor_mode_and_improves():
    assert metrics.monitor_mode("val_gender_acc") == "max" and metrics.monitor_mode("val_acc") == "max"
    assert metrics.monitor_mode("val_loss") == "min" and metrics.monitor_mode("val_age_loss") == "min"
    assert metrics.improves(0.5, None, "val_loss")
    assert metrics.improves(0.4, 0.5, "val_loss") and not metrics.improves(0.6, 0.5, "val_loss")
    assert metrics.improves(0.6, 0.5, "val_acc") and not metrics.improves(0.5, 0.5, "val_acc")


def history_entry(step, gender, age, seconds):
    return {"step": step, "pass": 0, "metrics": {"val_gender_acc": gender, "val_age_acc": age, "epoch_seconds": seconds}}


def test_summary_earliest_best_epoch_and_per_head_bests():
    history = [history_entry(1, 0.5, 0.3, 2.0), history_entry(2, 0.7, 0.2, 4.0), history_entry(3, 0.7, 0.6, 3.0)]
    summary = metrics.summarize(history, "hvc")
    assert summary == {"best_val_gender_acc": 0.7, "best_epoch": 2, "best_val_age_acc": 0.6, "mean_epoch_seconds": 3.0}
    assert list(summary)[:2] == ["best_val_gender_acc", "best_epoch"]
    single = [{"step": 1, "pass": 0, "metrics": {"val_acc": 0.4}}, {"step": 2, "pass": 0, "metrics": {"val_acc": 0.6}}]
    assert metrics.summarize(single, "cifar10") == {"best_val_acc": 0.6, "best_epoch": 2}
    assert metrics.summarize([], "hvc") == {}
    assert metrics.pass_summary(None) == {} and metrics.pass_summary(3) == {"best_epoch": 3}


def test_table_columns_and_curve_panels():
    columns = metrics.table_columns("hvc")
    assert columns[0] == ("val image_quality", "best_val_image_quality_acc")
    assert len(columns) == len(HVC_HEADS) - 1 and all(not h.endswith("gender") for h, _ in columns)
    assert metrics.table_columns("cifar10") == []
    assert metrics.curve_panels("cifar10") == [("loss", "val_loss", "loss"), ("acc", "val_acc", "accuracy")]
    assert metrics.curve_panels("hvc")[1] == ("gender_acc", "val_gender_acc", "gender")


def test_console_lines():
    values = {"loss": 1.23456, "val_loss": 1.5, "lr": 0.001, "epoch_seconds": 2.34,
              **{f"val_{h}_acc": 0.5 for h in HVC_HEADS}}
    line = metrics.epoch_line(0, 3, 1, values, "hvc")
    assert line.startswith("  epoch 1/3 (step 1) 2.3s  loss 1.2346  val_loss 1.5000  val acc gender 0.500 ")
    assert line.endswith("  lr 0.001")
    single = metrics.epoch_line(1, 3, 2, {"loss": 1, "val_loss": 1, "acc": 0.25, "val_acc": 0.5, "lr": 0.1,
                                          "epoch_seconds": 1}, "cifar10")
    assert "acc 0.2500  val_acc 0.5000  lr 0.1" in single
    assert metrics.eval_line(1, {"gender_acc": 0.5, "gender_loss": 0.7, "loss": 1.0}) == \
        "   pass 2 eval: loss 1.0000; gender_acc 0.5000"
    assert metrics.best_phrase({"best_val_gender_acc": 0.61, "best_epoch": 3}, "hvc") == \
        "best val_gender_acc 0.6100 at epoch 3"
    assert metrics.best_phrase({}, "cifar10") == "no val accuracy"


def test_contract_imports_neither_tensorflow_nor_mlflow():
    code = ("import sys, harness.core.metrics; "
            "assert not {'tensorflow', 'keras', 'mlflow'} & set(sys.modules), 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
