"""System metrics (harness.track.system_metrics): MLflow's own monitors and metric names, sampled on
the SystemMetricsMonitor daemon thread, logged inside each epoch's asynchronous parent batch
instead of by requests of their own, with no per-sample run-status look-up. Real SQLite store,
real psutil samples; no training (the tracker is told about epochs directly)."""

import threading
import time

import pytest

from harness import ledger
from harness.core import metrics
from harness.core.records import NEW, Decision

LEDGER = """\
experiment: sysmetrics
defaults:
  seed: 1
  data: {name: hvc, image_size: 32, val_fraction: 0.25}
  backbone: {name: custom, freeze: none}
  head: {neck: gap, neck_units: 8, tower_units: [4], tower_dropouts: [0.0]}
  optimizer: {name: sgd, lr: 0.01}
  batch_size: {train: 8, eval: 8}
profiles:
  cpu: {set: {}, max_epochs_per_pass: 3}
  smoke: {set: {}, max_epochs_per_pass: 3}
iterations:
  one:
    passes: [{epochs: 3}]
"""
CPU = metrics.SYSTEM_PREFIX + "cpu_utilization_percentage"


@pytest.fixture
def setup(tmp_path, monkeypatch):
    from harness.track.store import Store

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    (tmp_path / "l.yaml").write_text(LEDGER)
    return Store(f"sqlite:///{tmp_path}/mlflow.db"), ledger.load(tmp_path / "l.yaml").resolve("one")


def test_samples_ride_with_the_epochs_under_mlflows_names_and_steps(setup):
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    store, iteration = setup
    tracker = store.start(Decision(NEW), "sysmetrics", iteration, {}, system_metrics=True)
    [thread] = [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]
    assert thread.daemon
    tracker.pass_started(0, iteration)
    seen = []
    for step in (1, 2, 3):
        time.sleep(0.5)
        tracker.epoch_finished(0, step, {metrics.LOSS: 1.0 / step})
        tracker.flush()
        seen.append(len(store.metric_history(tracker.run_id, CPU)))
    assert 0 < seen[0] < seen[1] < seen[2]  # on the run while it trains, not only at its end
    tracker.fail("test: stopped on purpose")
    assert not thread.is_alive()
    run = store.run(tracker.run_id)
    cpu = store.metric_history(tracker.run_id, CPU)
    assert [p.step for p in cpu] == list(range(len(cpu))) and len(cpu) >= seen[2]
    probe = SystemMetricsMonitor(tracker.run_id, tracking_uri=store.uri)
    names = {metrics.SYSTEM_PREFIX + k for k in probe.collect_metrics()}
    assert names <= set(run.metrics)  # MLflow's monitor's metrics, all of them
    assert all(len(store.metric_history(tracker.run_id, name)) == len(cpu) for name in names)
    [child] = store.children(tracker.run_id)
    assert not [k for k in child.metrics if k.startswith(metrics.SYSTEM_PREFIX)]  # the parent's only


def test_a_sample_costs_a_fraction_of_mlflows_own_monitor(setup):
    """CPU time of this process per sample, both monitors side by side on a run with 24 logged
    epochs (what a status look-up of the whole run reads), sampling every 0.1 s for 3 s."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    store, iteration = setup
    costs = {}
    for kind in ("mlflow", "harness"):
        tracker = store.start(Decision(NEW), "sysmetrics", iteration, {})
        for step in range(1, 25):
            tracker.epoch_finished(0, step, {f"val_{h}_acc": 0.5 for h in range(40)} | {metrics.LOSS: 1.0})
        tracker.flush()
        cpu = time.process_time()
        if kind == "mlflow":
            monitor = SystemMetricsMonitor(tracker.run_id, sampling_interval=0.1, tracking_uri=store.uri)
            monitor.start()
            time.sleep(3.0)
            monitor.finish()
        else:
            from harness.track.system_metrics import SystemMetrics

            tracker.monitor = SystemMetrics(store.uri, tracker.run_id, False, interval=0.1)
            time.sleep(3.0)
            tracker.fail("test")
        cpu = time.process_time() - cpu
        costs[kind] = cpu / max(1, len(store.metric_history(tracker.run_id, CPU)))
        if kind == "mlflow":
            tracker.fail("test")
    assert costs["harness"] < costs["mlflow"] / 2, costs
