"""A load test of one tracking store: N real OS processes log per-epoch metric batches through
harness.track for a fixed time, then every value is read back from the store's database.

    .venv/bin/python -m tests.tracking_load URI [--db-uri DB] [--workers 20] [--seconds 60] [--json]

Each worker is a harness run as the trainer drives it, without the training: Store.begin and
Store.start (its own iteration, so its own lease), pass_started, then RunTracker.epoch_finished
as fast as the store answers: per epoch one log_batch on the parent run (36 metrics of the hvc
contract and the lease renewal) and one on the pass run (the same 36), steps 1, 2, 3, ...
Values are chosen from (worker, step, metric), so the read-back checks every one of them.

Why fork: importing harness.track (MLflow) costs seconds of CPU; twenty imports on a small
machine would cost more than the test. The launcher imports once, then forks the workers
before any of them opens a store (no SQLAlchemy engine or HTTP session is shared). The
workers start logging together (a pipe as barrier) after their runs exist; the window counts
from there.

The read-back goes to the database itself (SQLite file or the server's PostgreSQL), one query,
so it reports what landed in the store, not what a client cache says. Retries are MLflow's
HTTP retries (urllib3's "Retrying" warnings, counted per worker); errors are calls that raised.
Used by tests/test_faults_server.py; printed figures are the closing note's measurement.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import select
import statistics
import sys
import time
from pathlib import Path

READY_SECONDS = 300.0  # every worker has its runs by then, or the load starts without it
SECONDS_ENV = "HARNESS_LOAD_SECONDS"
LEDGER_HEAD = """\
experiment: load
defaults:
  data: {name: hvc, image_size: 32}
  backbone: {name: custom, freeze: none}
profiles:
  cpu: {set: {}}
  smoke: {set: {}}
iterations:
  load-0:
    passes: [{epochs: 100000}]
"""


def write_ledger(folder: Path, workers: int) -> Path:
    """One iteration per worker (load-0 ... load-N-1), so each holds its own lease."""
    text = LEDGER_HEAD + "".join(f"  load-{i}:\n    extends: load-0\n" for i in range(1, workers))
    path = folder / "load.yaml"
    path.write_text(text)
    return path


def epoch_values(worker: int, step: int) -> dict:
    """The 36 per-epoch metrics of an hvc run, each value unique to (worker, step, metric)."""
    from harness.core import metrics

    names = metrics.epoch_metric_names("hvc") + [metrics.LR, metrics.EPOCH_SECONDS]
    return {name: worker + step * 1e-3 + k * 1e-7 for k, name in enumerate(names)}


class RetryCount(logging.Handler):
    """Counts urllib3's "Retrying (...)" warnings: MLflow's HTTP client retrying a request."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        if record.getMessage().startswith("Retrying"):
            self.count += 1


def setup(index: int, uri: str, experiment: str, book: Path):
    """A worker's new parent run and its pass run, as `harness run` opens them: the tracker."""
    from harness import ledger
    from harness.track.store import Store

    iteration = ledger.load(book).resolve(f"load-{index}", "cpu")
    store = Store(uri)
    tracker = store.start(store.begin(experiment, iteration), experiment, iteration, {})
    tracker.pass_started(0, iteration)
    return tracker


def load(index: int, tracker, seconds: float) -> dict:
    """Log epochs 1, 2, ... for `seconds`: what was logged, how long each epoch's logging took."""
    started = time.monotonic()
    logged, latencies, errors, first_error, step = [], [], 0, "", 0
    while time.monotonic() - started < seconds:
        step += 1
        before = time.monotonic()
        try:
            tracker.epoch_finished(0, step, epoch_values(index, step))
            tracker.flush()  # logging is asynchronous: the epoch has landed (or failed) here, as the Runner waits
        except Exception as exc:  # counted and reported; the read-back then shows what is missing
            errors += 1
            first_error = first_error or _one_line(exc)
            continue
        latencies.append(time.monotonic() - before)
        logged.append(step)
    elapsed = time.monotonic() - started
    try:
        tracker.fail("load test", status="KILLED")  # as bench_server ends its runs
    except Exception as exc:  # counted like an epoch's failure: the worker still reports what it logged
        errors += 1
        first_error = first_error or _one_line(exc)
    return {"worker": index, "parent": tracker.run_id, "child": tracker._children[0], "logged": logged,
            "elapsed": elapsed, "latencies": latencies, "errors": errors, "first_error": first_error}


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def _forked(index: int, uri: str, experiment: str, book: Path, pipes: tuple, seconds: float, out: Path) -> None:
    """The child's whole life: set up, say so (even when setup failed, so nobody waits for it),
    wait for the start, load; its result (or its setup error) as JSON, then os._exit."""
    ready_r, ready_w, go_r, go_w = pipes
    code = 1
    try:
        os.close(ready_r)
        os.close(go_w)
        retries = RetryCount()
        logging.getLogger("urllib3").addHandler(retries)
        try:
            tracker = setup(index, uri, experiment, book)
        except BaseException as exc:
            os.write(ready_w, b"x")
            out.write_text(json.dumps({"worker": index, "setup_error": _one_line(exc)}))
            return
        os.write(ready_w, b"r")
        os.read(go_r, 1)
        result = load(index, tracker, seconds)
        out.write_text(json.dumps({**result, "retries": retries.count}))
        code = 0
    finally:
        os._exit(code)


def _wait_ready(ready_r: int, workers: int) -> int:
    """How many workers said they are ready (all, or those that did within READY_SECONDS)."""
    got, deadline = 0, time.monotonic() + READY_SECONDS
    while got < workers and time.monotonic() < deadline:
        readable, _, _ = select.select([ready_r], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        chunk = os.read(ready_r, workers - got)
        if not chunk:
            break  # every worker has closed the pipe: some died during setup
        got += len(chunk)
    return got


def generate(uri: str, workers: int, seconds: float, folder: Path, experiment: str = "load") -> dict:
    """Fork the workers, start them together, wait; their results and the setup time."""
    from harness.core import quiet

    quiet.configure()  # MLflow's INFO lines off, as in any harness command (before it is imported)
    importlib.import_module("harness.track.store")  # once, before the fork: the point of forking

    book = write_ledger(folder, workers)
    pipes = os.pipe() + os.pipe()
    ready_r, ready_w, go_r, go_w = pipes
    started = time.monotonic()
    pids = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:
            _forked(index, uri, experiment, book, pipes, seconds, folder / f"worker-{index}.json")
        pids.append(pid)
    os.close(ready_w)
    os.close(go_r)
    ready = _wait_ready(ready_r, workers)
    setup = time.monotonic() - started
    os.write(go_w, b"g" * workers)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    os.close(ready_r)
    os.close(go_w)
    results = []
    for index in range(workers):
        path = folder / f"worker-{index}.json"
        results.append(json.loads(path.read_text()) if path.exists() else {"worker": index, "setup_error":
                                                                            f"exited {codes[index]}, no result"})
    return {"results": results, "ready": ready, "setup_s": setup}


def read_back(db_uri: str, results: list[dict]) -> dict:
    """Every metric row of the workers' runs, checked against what each worker says it logged:
    values read, missing, wrong value, duplicated (run, key, step), extra (never logged)."""
    from sqlalchemy import bindparam, create_engine, text

    expected = {}
    for result in results:
        for step in result.get("logged", []):
            for key, value in epoch_values(result["worker"], step).items():
                for run_id in (result["parent"], result["child"]):
                    expected[(run_id, key, step)] = value
    run_ids = [r[k] for r in results if "parent" in r for k in ("parent", "child")]
    query = text("SELECT run_uuid, key, step, value FROM metrics WHERE run_uuid IN :ids").bindparams(
        bindparam("ids", expanding=True))
    engine = create_engine(db_uri)
    try:
        with engine.connect() as connection:
            rows = connection.execute(query, {"ids": run_ids}).fetchall() if run_ids else []
    finally:
        engine.dispose()
    seen, wrong, extra, duplicates = set(), 0, 0, 0
    for run_id, key, step, value in rows:
        where = (run_id, key, step)
        if where not in expected:
            extra += 1
        elif where in seen:
            duplicates += 1
        elif value != expected[where]:
            wrong += 1
        seen.add(where)
    return {"values": len(rows), "expected": len(expected), "missing": len(set(expected) - seen), "wrong": wrong,
            "duplicates": duplicates, "extra": extra}


def summarize(label: str, run: dict, check: dict, seconds: float) -> dict:
    """The figures FAULTS.md shows: throughput over the window, latency, errors, the read-back."""
    results = run["results"]
    epochs = sum(len(r.get("logged", [])) for r in results)
    window = max([r["elapsed"] for r in results if "elapsed" in r] or [seconds])
    latencies = sorted(x for r in results for x in r.get("latencies", []))
    per_epoch = len(epoch_values(0, 1))
    return {
        "store": label, "processes": len(results), "ready": run["ready"], "seconds": round(window, 1),
        "setup_s": round(run["setup_s"], 1), "epochs": epochs, "log_batch_calls": 2 * epochs,
        "metric_values": 2 * per_epoch * epochs, "values_per_s": round(2 * per_epoch * epochs / window, 1),
        "batches_per_s": round(2 * epochs / window, 1),
        "epoch_ms_median": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "epoch_ms_p95": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1) if latencies else None,
        "errors": sum(r.get("errors", 0) for r in results), "retries": sum(r.get("retries", 0) for r in results),
        "setup_errors": [r["setup_error"] for r in results if "setup_error" in r],
        "first_error": next((r["first_error"] for r in results if r.get("first_error")), ""),
        "read_back": check,
    }


def measure(uri: str, db_uri: str, label: str, folder: Path, workers: int = 20, seconds: float = 20.0) -> dict:
    """generate, read_back, summarize: one store's load-test figures."""
    run = generate(uri, workers, seconds, folder)
    started = time.monotonic()
    check = read_back(db_uri, run["results"])
    check["seconds"] = round(time.monotonic() - started, 2)
    return summarize(label, run, check, seconds)


def default_seconds() -> float:
    """$HARNESS_LOAD_SECONDS, else 20 (the issue's measurement is 60)."""
    return float(os.environ.get(SECONDS_ENV) or 20)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("uri", help="tracking URI: sqlite:///PATH or http://HOST:PORT")
    parser.add_argument("--db-uri", help="the store's database for the read-back (default: URI, for SQLite)")
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=None, help=f"default ${SECONDS_ENV}, else 20")
    parser.add_argument("--label", default=None)
    parser.add_argument("--folder", default=None, help="for the ledger and the workers' results (default: a temp one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not args.db_uri and not args.uri.startswith("sqlite:///"):
        print("tracking_load: --db-uri is needed to read back from a server's database", file=sys.stderr)
        return 2
    import tempfile

    folder = Path(args.folder or tempfile.mkdtemp(prefix="tracking-load-"))
    folder.mkdir(parents=True, exist_ok=True)
    seconds = args.seconds if args.seconds is not None else default_seconds()
    figures = measure(args.uri, args.db_uri or args.uri, args.label or args.uri.split(":", 1)[0], folder,
                      args.workers, seconds)
    print(json.dumps(figures) if args.json else json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
