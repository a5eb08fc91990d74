"""After-training costs, each measured side by side in one run on the real hvc subset.

    HARNESS_HVC_REAL=../shared/data/hvc .venv/bin/python bench/bench_model.py [--json]

logging:  `RunTracker.log_model` of the cpu-profile eleventh model (the custom CNN at 64 px, the
          checkpoint a `make run ITER=eleventh` on a CPU hands on), median of 3, against the
          training it follows: the run's epoch period (median, from MLflow's epoch timestamps of
          a short `harness run` of the same model on 2,000 real images) times the 24 epochs
          (2 passes x 12) of the cpu profile. Target: <= 5% of the run.
serving:  `mlflow models serve` of that model (--env-manager local, loopback), one real image
          per POST to /invocations, median of 20 after one warm-up call, against the same
          prediction in-process through pyfunc.
system metrics: the epoch period of that short run with MLflow's system-metrics monitor on
          (the default) against --no-system-metrics, after one warm-up run, in ABBA order
          (on/off/off/on: a drift in the machine's speed cancels; noisy on a shared machine),
          and the monitor's own CPU time per sample, measured with nothing else
          running, as a share of its default 10 s interval. Target <= 1.02 / <= 0.5%.

Prints markdown, or one JSON object with --json (bench/run_all.py collects it).
Not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from harness import ledger
from harness.core import metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_training import DEFAULT_DATA, missing_real_data  # noqa: E402

CPU_RUN_EPOCHS = 24  # the cpu profile's eleventh: 2 passes of at most 12 epochs
SYSTEM_METRICS_ORDER = (True, False, False, True)  # monitor on/off, ABBA, after a warm-up run


def _short_run(folder: Path, tmp: Path, name: str, epochs: int, system_metrics: bool):
    """A `harness run` of the cpu-profile eleventh, cut to `epochs` epochs in one pass; returns
    (store, run record, median epoch period in seconds)."""
    from harness.run.launch import run_iteration
    from harness.track.store import Store

    iteration = ledger.load(ROOT / "runs.yaml").resolve("eleventh", "cpu")
    fields = {k: v for k, v in iteration.to_dict().items() if k not in ("name", "extends")}
    fields["passes"] = [{**fields["passes"][0], "epochs": epochs, "early_stopping": None}]
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps({"experiment": "bench-model", "profiles": {"cpu": {}, "smoke": {}},
                                "iterations": {name: fields}}))
    uri = f"sqlite:///{tmp}/mlflow.db"
    run_iteration(ledger.load(path), name, profile="full", data_dir=str(folder), tracking_uri=uri,
                  work_dir=str(tmp / "work"), system_metrics=system_metrics, log=lambda *_: None)
    store = Store(uri)
    run = store.runs("bench-model", name)[0]
    ends = [point.timestamp / 1000 for point in store.metric_history(run.run_id, metrics.LOSS)]
    return store, run, statistics.median(b - a for a, b in zip(ends, ends[1:]))


def measure_logging(store, run, tmp: Path, repeat: int = 3) -> list[float]:
    """Seconds of RunTracker.log_model for the run's checkpoint, each into a new run."""
    from harness.serve.model import output_types
    from harness.serve.predict import ModelCard, input_frame
    from harness.core.records import NEW, Decision

    book_iteration = ledger.load(ROOT / "runs.yaml").resolve("eleventh", "cpu")
    checkpoint = next(Path(store.download(run.run_id, "checkpoint", tmp / "ckpt")).glob("*.keras"))
    example = next(Path(DEFAULT_DATA, "resized").glob("*.jpg")).read_bytes()
    seconds = []
    for _ in range(repeat):
        tracker = store.start(Decision(NEW), "bench-model-log", book_iteration, {})
        card = ModelCard.of(book_iteration, tracker.run_id, "cpu", run.data_fingerprint, 1)
        start = time.perf_counter()
        tracker.log_model(checkpoint, card, input_frame([example]), output_types(card), step=1)
        seconds.append(time.perf_counter() - start)
        tracker.fail("benchmark run")
    return seconds


def measure_monitor_cost(tmp: Path, interval: float = 0.1, seconds: float = 6.0) -> dict:
    """CPU seconds one system-metrics sample costs (psutil reads, the run-status check, the
    logging), measured while nothing else runs in the process: a run tracked with the monitor
    sampling every `interval` s while the main thread sleeps. Unlike an epoch-time ratio, this
    does not drown in the noise of a shared machine."""
    from harness.core.records import NEW, Decision
    from harness.track.store import Store

    iteration = ledger.load(ROOT / "runs.yaml").resolve("eleventh", "cpu")
    store = Store(f"sqlite:///{tmp}/monitor.db")
    previous = os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = str(interval)
    try:
        tracker = store.start(Decision(NEW), "bench-monitor", iteration, {}, system_metrics=True)
        cpu = time.process_time()
        time.sleep(seconds)
        tracker.fail("benchmark run")
        cpu = time.process_time() - cpu
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", None)
        else:
            os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = previous
    samples = len(store.metric_history(tracker.run_id, metrics.SYSTEM_PREFIX + "cpu_utilization_percentage"))
    per_sample = cpu / max(1, samples)
    return {"monitor_cpu_s_per_sample": per_sample, "monitor_samples": samples,
            "monitor_share_at_10s": per_sample / 10.0}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure_serving(store, run, image: bytes, calls: int = 20) -> dict:
    """Per-call seconds of one real image over REST, and in-process through pyfunc."""
    import pandas as pd

    from harness.track.models import load_predictor, model_uri

    uri = model_uri(store, run.run_id)
    predictor = load_predictor(store, uri)
    predictor.predict_images([image])  # warm-up
    local = []
    for _ in range(calls):
        start = time.perf_counter()
        predictor.predict_frame(pd.DataFrame({"image": [image]}))
        local.append(time.perf_counter() - start)
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(image).decode()]]}}).encode()
    try:
        started = time.perf_counter()
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > 300:
                    raise RuntimeError("mlflow models serve did not come up")
                time.sleep(0.5)
        startup = time.perf_counter() - started
        remote = []
        for index in range(calls + 1):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            start = time.perf_counter()
            urllib.request.urlopen(request, timeout=60).read()
            if index:  # the first call warms the server up
                remote.append(time.perf_counter() - start)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    return {"rest_s": statistics.median(remote), "rest_p90_s": sorted(remote)[int(0.9 * len(remote))],
            "pyfunc_s": statistics.median(local), "server_start_s": startup}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each short run (default 4)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    folder = Path(args.data)
    if missing_real_data(folder):
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        tmp = Path(tmp)
        # A warm-up run first (its period not counted: the process's first training pays for
        # tracing and the image cache), then on/off in ABBA order, so a drift of the machine's
        # speed over the row weighs on both sides alike.
        store, run, _ = _short_run(folder, tmp, "warmup", args.epochs, False)
        periods = {True: [], False: []}
        for index, monitored in enumerate(SYSTEM_METRICS_ORDER):
            periods[monitored].append(_short_run(folder, tmp, f"r{index}", args.epochs, monitored)[2])
        logging = measure_logging(store, run, tmp)
        monitor = measure_monitor_cost(tmp)
        serving = measure_serving(store, run, next((folder / "resized").glob("*.jpg")).read_bytes())
    on, off = statistics.median(periods[True]), statistics.median(periods[False])
    log_s = statistics.median(logging)
    result = {"epoch_s": off, "cpu_run_s": off * CPU_RUN_EPOCHS, "log_model_s": log_s, "log_model_runs": logging,
              "log_ratio": log_s / (off * CPU_RUN_EPOCHS), "sysmetrics_on_epoch_s": on, "sysmetrics_off_epoch_s": off,
              "sysmetrics_ratio": on / off, **monitor, **serving}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"| log_model, cpu eleventh | {log_s:.2f} s | run ~{result['cpu_run_s']:.0f} s | {result['log_ratio']:.1%} |\n"
              f"| REST, one image | {serving['rest_s'] * 1000:.0f} ms | pyfunc {serving['pyfunc_s'] * 1000:.0f} ms | |\n"
              f"| epoch, system metrics on/off | {on:.2f} s | {off:.2f} s | {on / off:.3f} |\n"
              f"| system metrics, CPU per sample | {monitor['monitor_cpu_s_per_sample'] * 1000:.1f} ms | every 10 s | "
              f"{monitor['monitor_share_at_10s']:.3%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
