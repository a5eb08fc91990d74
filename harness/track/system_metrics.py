"""MLflow's system metrics (CPU, memory, disk, network; GPU through nvidia-ml-py when one is
visible) at a fraction of MLflow's own monitor's cost, with the same metrics: MLflow's monitors
sample (`SystemMetricsMonitor.collect_metrics`, psutil: ~0.1 ms) and aggregate under the same
`system/` names and steps; only what happens around a sample changes.

Where MLflow's monitor spends a sample (measured on this machine type, a SQLite store, a run with
24 logged epochs; README "System metrics" has the numbers): psutil's reads ~0.13 ms CPU; the
run-status check, a new MlflowClient and `get_run` of the whole run every sample, ~7 ms CPU (27 ms
wall); the sample's own synchronous `log_batch` through BatchMetricsLogger, ~20 ms CPU (100 ms
wall) every sample at the 10 s interval; each of those holds the GIL the training loop's Python
needs between batches. So here:

- no status check: the harness ends the monitor itself (`RunTracker.finish` / `fail`); a killed
  process loses the daemon thread with it;
- no request of its own: the samples wait in `pending` and ride in the next epoch's parent
  `log_batch` (already asynchronous, harness.track.tracker), each with its own step and
  timestamp; `stop` logs what is left.
"""

from __future__ import annotations

import threading
import time

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient

from harness.core import metrics


class _Monitor(SystemMetricsMonitor):
    """MLflow's monitor whose loop only samples: every interval, the aggregated sample becomes
    Metrics in `pending` (same names, steps counting from the run's last one)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self.pending: list[Metric] = []

    def monitor(self):
        while not self._shutdown_event.is_set():
            for _ in range(self.samples_before_logging):
                self.collect_metrics()
                if self._shutdown_event.wait(self.sampling_interval):
                    return
            self.publish_metrics(self.aggregate_metrics())

    def publish_metrics(self, values):
        """The aggregated sample as pending Metrics at the next step (MLflow's publish_metrics
        hands them to its BatchMetricsLogger instead)."""
        prefix = metrics.SYSTEM_PREFIX + (self.node_id + "/" if self.node_id else "")
        now = int(time.time() * 1000)
        with self._lock:
            self.pending += [Metric(prefix + k, float(v), now, self._logging_step) for k, v in values.items()]
        self._logging_step += 1
        for monitor in self.monitors:
            monitor.clear_metrics()

    def drain(self) -> list[Metric]:
        with self._lock:
            taken, self.pending = self.pending, []
        return taken


class SystemMetrics:
    """The system-metrics monitor of one run: it samples on a daemon thread named
    SystemMetricsMonitor (every 10 s, or $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL); the tracker
    takes the samples into each epoch's batch (`drain`); `stop` ends the thread and logs the rest,
    including what was sampled since the last interval, so a run shorter than one interval still
    gets a point. A resumed run continues its steps."""

    def __init__(self, uri: str, run_id: str, resumed: bool, interval: float = 10.0):
        self._uri, self._run_id = uri, run_id
        self._monitor = _Monitor(run_id, sampling_interval=interval, resume_logging=resumed, tracking_uri=uri)
        self._monitor.start()

    def drain(self) -> list[Metric]:
        """The samples taken since the last drain, as Metrics to log on the run."""
        return self._monitor.drain()

    def stop(self) -> None:
        monitor = self._monitor
        monitor.finish()
        leftover = monitor.aggregate_metrics()
        if leftover:
            monitor.publish_metrics(leftover)
        points = monitor.drain()
        if points:
            try:
                MlflowClient(self._uri).log_batch(self._run_id, metrics=points)
            except MlflowException:
                pass  # the run is gone or terminated: nothing left to record
