"""The LR range test on synthetic data: curve logged, suggestion in range, plot written."""

import numpy as np
import pytest

from harness import ledger
from harness.run.lrfind import LRCurve, lr_at

LEDGER = """\
experiment: tiny-lr
defaults:
  seed: 3
  data: {name: hvc, image_size: 32, val_fraction: 0.25, cache: memory}
  backbone: {name: custom, freeze: none}
  head: {neck: gap, neck_units: 16, tower_units: [8], tower_dropouts: [0.0]}
  optimizer: {name: sgd, lr: 0.01, momentum: 0.9}
  batch_size: {train: 8, eval: 8}
profiles:
  cpu: {set: {}, max_epochs_per_pass: 2}
  smoke: {set: {}, max_epochs_per_pass: 1}
iterations:
  one:
    passes: [{epochs: 1}]
"""


def test_exponential_schedule_hits_both_ends():
    assert lr_at(0, 50, 1e-6, 1.0) == pytest.approx(1e-6)
    assert lr_at(49, 50, 1e-6, 1.0) == pytest.approx(1.0)
    assert lr_at(25, 51, 1e-6, 1.0) == pytest.approx(1e-3)


def test_suggestion_is_the_steepest_descent_before_divergence():
    lrs = list(np.logspace(-6, 0, 40))
    losses = [2.0 if lr < 1e-4 else 2.0 - 0.5 * np.log10(lr / 1e-4) if lr < 1e-2 else 1.0 + 50 * (lr - 1e-2)
              for lr in lrs]
    curve = LRCurve(lrs=lrs, raw=losses, smoothed=losses, diverged_at=lrs[-5])
    assert 1e-4 <= curve.suggestion() <= 1e-2
    assert curve.max_lr == lrs[-5]


@pytest.mark.slow
def test_lr_find_logs_the_curve_and_plot(tmp_path):
    from mlflow.tracking import MlflowClient

    from harness.data.synth import generate
    from harness.run.lrfind import lr_find_iteration
    from harness.track.store import Store

    data = tmp_path / "data"
    generate(data, 120, seed=2)
    path = tmp_path / "ledger.yaml"
    path.write_text(LEDGER)
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    out = tmp_path / "lr.png"
    lines = []
    result = lr_find_iteration(ledger.load(path), "one", profile="full", data_dir=str(data), tracking_uri=uri,
                               min_lr=1e-5, max_lr=1e3, steps=40, out=str(out), log=lines.append)
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
    assert 1e-5 <= result["suggested_lr"] <= result["max_lr"] <= 1e3
    assert result["diverged"]  # LR 1e3 with SGD blows up long before the last batch
    assert lines[-1].startswith("one: suggested LR ")

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny-lr")
    [run] = client.search_runs([exp.experiment_id], "tags.`harness.kind` = 'lr-find'")
    assert run.info.run_name == "one/lr-find" and run.info.status == "FINISHED"
    store = Store(uri)
    history = store.metric_history(run.info.run_id, "lr_find_smoothed_loss")
    assert [m.step for m in history] == list(range(1, result["batches"] + 1))
    lrs = [m.value for m in store.metric_history(run.info.run_id, "lr_find_lr")]
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-5)
    assert run.data.metrics["suggested_lr"] == pytest.approx(result["suggested_lr"])
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["lr_find.png"]
    # lr-find runs are not iteration runs: the table and resume never see them
    assert store.runs("tiny-lr", "one") == []
