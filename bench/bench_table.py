"""Wall time of `harness table` and `harness runs` over a store of 500 runs (bound: under 1.5 s each).

    .venv/bin/python bench/bench_table.py [--runs 500] [--repeat 3]

Builds a throwaway SQLite store holding RUNS finished parent runs of runs.yaml's iterations
(the same tags, params and per-epoch metrics `harness run` logs: 10 epochs of every head's
metrics plus the summary metrics; a few runs stale, a few failed), then times the command as a
researcher types it, in a fresh process each time (imports included). Prints one markdown table.
Not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.core import metrics

REPO = Path(__file__).resolve().parents[1]

EPOCHS = 10


def epoch_values(step: int, run: int) -> dict:
    """One epoch's metrics under the contract's names: accuracies rising, losses falling."""
    values = {metrics.LR: 1e-3, metrics.EPOCH_SECONDS: 40.0 + step % 3}
    for n, name in enumerate(metrics.epoch_metric_names("hvc")):
        if metrics.monitor_mode(name) == "max":
            values[name] = 0.4 + 0.03 * step + 0.001 * (n % 10) + 0.001 * (run % 7)
        else:
            values[name] = (2.0 + 0.1 * (n % 3)) / step
    return values


def populate(uri: str, n_runs: int) -> None:
    """Finished (and some failed) parent runs laid out as `harness run` logs them, each written
    in one go by harness.track.record_finished_run."""
    from harness import ledger
    from harness.core import records
    from harness.track.store import Store
    from harness.track.finished import record_finished_run

    book = ledger.load(REPO / "runs.yaml")
    store = Store(uri)
    profiles = ("smoke", "cpu", "full")
    resolved = {}
    now = int(time.time() * 1000)
    for i in range(n_runs):
        name = book.names[i % len(book.names)]
        profile = profiles[(i // len(book.names)) % len(profiles)]
        if (name, profile) not in resolved:
            resolved[(name, profile)] = book.resolve(name, profile)
        tags = {records.TAG_PROFILE: profile, records.TAG_LEDGER: "runs.yaml", records.TAG_DATA: "bench"}
        if i % 17 == 0:
            tags[records.TAG_CONFIG_SHA] = "0ld5ha0ld5ha"  # every 17th run: an older config
        history = [{"step": step, "pass": 0, "metrics": epoch_values(step, i)} for step in range(1, EPOCHS + 1)]
        summary = metrics.summarize(history, "hvc")
        summary |= {metrics.TOTAL_PARAMS: 28221147, metrics.TRAINABLE_PARAMS: 13506459}
        record_finished_run(store, book.experiment, resolved[(name, profile)], tags, history, summary,
                            status=records.FAILED if i % 23 == 0 else records.FINISHED, start_time=now + i)


def time_command(argv: list[str], repeat: int, cwd: Path) -> list[float]:
    times = []
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-table-") as tmp:
        tmp = Path(tmp)
        uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
        start = time.perf_counter()
        populate(uri, args.runs)
        built = time.perf_counter() - start
        base = [sys.executable, "-m", "harness.cli", "table", "--ledger", str(REPO / "runs.yaml"),
                "--out", str(tmp / "RESULTS.md"), "--no-readme", "--tracking-uri", uri]
        cases = [  # (label, command, the bound in seconds or None)
            ("`harness table`", base, 1.5),
            ("`harness runs`", [sys.executable, "-m", "harness.cli", "runs", "--ledger", str(REPO / "runs.yaml"),
                                "--tracking-uri", uri], 1.5),
            ("`harness table --plot FILE.png`", base + ["--plot", str(tmp / "results.png")], None),
            ("`python -c 'import harness.track.store'` (the MLflow import floor)",
             [sys.executable, "-c", "import harness.track.store"], None),
        ]
        print(f"store: {args.runs} finished/failed parent runs of runs.yaml, {EPOCHS} epochs each "
              f"(built in {built:.0f} s); {args.repeat} fresh processes per case, imports included\n")
        print("| case | median s | min s | max s | bound |")
        print("|:--|--:|--:|--:|:--|")
        for label, argv, bound in cases:
            times = time_command(argv, args.repeat, tmp)
            median = statistics.median(times)
            verdict = "" if bound is None else f"< {bound:g} s: {'yes' if median < bound else 'NO'}"
            print(f"| {label} | {median:.2f} | {min(times):.2f} | {max(times):.2f} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
