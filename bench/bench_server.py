"""The team server: what `harness run` and `harness table` cost against a PostgreSQL-backed MLflow
server, and the per-run figures docs/scaling.md builds its estimate on.

    HARNESS_HVC_REAL=../shared/data/hvc .venv/bin/python bench/bench_server.py [--json]

A throwaway server is started through harness.services.server, as `make server` starts one (PostgreSQL
from Debian's binaries with its durable defaults, `mlflow server` with 2 workers, both on
127.0.0.1), in a temporary folder, and stopped by PID at the end.

  overhead  bench_training.measure_overhead with the server as the store: a bare `model.fit`
            against `harness run` logging every epoch to the server (alternated, medians).
  figures   what those harness runs cost the server: HTTP requests per run (the server's access
            log), database rows per epoch (counted in PostgreSQL), and the latency of one epoch's
            logging (RunTracker.epoch_finished: the parent's and the pass's log_batch).
  table     `harness table`, `harness runs` and `harness compare first second` over 500 runs on
            the server, fresh processes, median of 3 each.

Prints markdown, or one JSON object with --json (bench/run_all.py collects it).
Not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_training import DEFAULT_DATA, measure_overhead, missing_real_data  # noqa: E402
from harness.core.process import free_port
from harness.services.folder import PG_BIN_GLOB, ServerFolder
from harness.services.postgres import postgres_bin
from harness.core import metrics
from harness.services import server  # noqa: E402

TABLE_RUNS = 500
EPOCHS = 8  # per harness run of the overhead row
LATENCY_EPOCHS = 100

ROW_COUNTS = """
SELECT (SELECT count(*) FROM metrics m JOIN runs r USING (run_uuid) WHERE r.experiment_id = ANY(%(ids)s)),
       (SELECT count(*) FROM latest_metrics m JOIN runs r USING (run_uuid) WHERE r.experiment_id = ANY(%(ids)s)),
       (SELECT count(*) FROM params p JOIN runs r USING (run_uuid) WHERE r.experiment_id = ANY(%(ids)s)),
       (SELECT count(*) FROM tags t JOIN runs r USING (run_uuid) WHERE r.experiment_id = ANY(%(ids)s)),
       (SELECT count(*) FROM runs r WHERE r.experiment_id = ANY(%(ids)s))
"""


def requests_logged(log: Path) -> list[str]:
    """The request lines of the server's access log so far."""
    return [line for line in log.read_text(errors="replace").splitlines() if '"POST /api/' in line or '"GET /api/' in line]


def database_rows(db_uri: str, experiment_prefix: str) -> dict:
    """Rows the bench's harness runs left in MLflow's tables."""
    import psycopg2

    with psycopg2.connect(db_uri.replace("+psycopg2", "")) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT experiment_id FROM experiments WHERE name LIKE %s", (experiment_prefix + "%",))
        ids = [row[0] for row in cursor.fetchall()]
        cursor.execute(ROW_COUNTS, {"ids": ids})
        counts = cursor.fetchone()
    return dict(zip(("metrics", "latest_metrics", "params", "tags", "runs"), counts))


def epoch_logging_latency(url: str) -> float:
    """Seconds one epoch's logging takes (parent and pass log_batch, lease renewal included)."""
    from harness import ledger
    from harness.track.store import Store

    iteration = ledger.load(ROOT / "runs.yaml").resolve("eleventh", "cpu")
    store = Store(url)
    tracker = store.start(store.begin("bench-latency", iteration), "bench-latency", iteration, {})
    tracker.pass_started(0, iteration)
    values = {name: 0.5 for name in metrics.epoch_metric_names("hvc")}
    started = time.perf_counter()
    for step in range(1, LATENCY_EPOCHS + 1):
        tracker.epoch_finished(0, step, values)
    seconds = (time.perf_counter() - started) / LATENCY_EPOCHS
    tracker.fail("benchmark", status="KILLED")
    return seconds


def time_table(url: str, tmp: Path) -> dict:
    """Populate TABLE_RUNS runs on the server, then time `harness table`, `runs` and `compare`
    (the commands that only read) in fresh processes."""
    from bench.bench_table import populate
    from bench.run_all import run_measured

    started = time.perf_counter()
    populate(url, TABLE_RUNS)
    result = {"table_runs": TABLE_RUNS, "populate_s": time.perf_counter() - started}
    cli = [sys.executable, "-m", "harness.cli"]
    for name, argv in (("table", ["table", "--no-readme", "--out", str(tmp / "R.md")]), ("runs", ["runs"]),
                       ("compare", ["compare", "first", "second"])):
        measured = [run_measured(cli + argv + ["--tracking-uri", url]) for _ in range(3)]
        result |= {f"{name}_s": statistics.median(m[1] for m in measured),
                   f"{name}_peak_mib": max(m[2] for m in measured)}
    return result


def measure(data: Path, n: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-server-"))
    root.chmod(0o755)  # as root, PostgreSQL runs as `postgres`, who must enter the folder
    folder = ServerFolder(root)
    try:
        team = server.start(folder, port=free_port(), db_port=free_port(), workers=2,
                            log=lambda *_: None)
        before = len(requests_logged(folder.mlflow_log))
        result = measure_overhead(data, n, 64, epochs=EPOCHS, tracking_uri=team.url)
        requests = requests_logged(folder.mlflow_log)[before:]
        runs = len(result["harness_runs"])
        epochs = runs * EPOCHS
        rows = database_rows(team.db_uri, "bench-")
        result |= {
            "requests_per_run": len(requests) / runs,
            "log_batch_per_epoch": sum("log-batch" in line for line in requests) / epochs,
            "metric_rows_per_epoch": rows["metrics"] / epochs,
            "rows_per_run": {k: v / runs for k, v in rows.items()},
            "epoch_logging_s": epoch_logging_latency(team.url),
        }
        result |= time_table(team.url, root)
        return result
    finally:
        server.stop(folder, log=lambda *_: None)
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=1500, help="images for the overhead runs (default 1500)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if missing_real_data(args.data):
        return 2
    if postgres_bin() is None:
        print(f"no PostgreSQL under {PG_BIN_GLOB}: apt-get install postgresql", file=sys.stderr)
        return 2
    result = measure(Path(args.data), args.n)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"| epoch against the server | bare fit {result['bare_epoch_s']:.2f} s | harness run "
          f"{result['harness_epoch_s']:.2f} s | {result['ratio']:.3f} |")
    print(f"| `harness table`, {TABLE_RUNS} runs on the server | {result['table_s']:.2f} s |")
    print(json.dumps({k: v for k, v in result.items() if k not in ("bare_runs", "harness_runs")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
