"""`make faults`: run the fault suite (pytest marker `faults`) and write FAULTS.md, one row per
case with what was tried, what was expected, the result and the time, like BENCHMARKS.md.

    python -m tests.faults_report [--out FAULTS.md] [extra pytest args]

The rows come from pytest itself (a plugin that sees every test's report, its `expectation`
property and its duration), so the table is what ran, never a hand-kept list. A test that
records a `load_test` property (a JSON object of throughput figures, tests/tracking_load.py)
also gets a row in the "Load test" section. Exit status:
pytest's. FAULTS.md is written only when asked for (`--out`), so `make test` changes no
tracked file.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import pytest

NOTES = Path(__file__).with_name("faults_notes.md")
AUDIT = Path(__file__).resolve().parents[1] / "mlruns" / "audit.md"  # `make audit` writes it


class Collect:
    """A pytest plugin: one row per test call (setup/teardown failures count too)."""

    def __init__(self):
        self.rows: list[dict] = []

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and not report.passed):
            props = dict(report.user_properties)
            self.rows.append({
                "case": report.nodeid.split("::", 1)[1],
                "file": report.nodeid.split("::")[0].rsplit("/", 1)[-1],
                "expectation": props.get("expectation", (report.head_line or "").replace("_", " ")),
                "result": report.outcome + (f": {props['result_detail']}" if "result_detail" in props else ""),
                "seconds": report.duration,
                "load": json.loads(props["load_test"]) if "load_test" in props else None,
            })


def markdown(rows: list[dict], code: int, seconds: float) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    failed = [r for r in rows if not r["result"].startswith("passed")]
    lines = [
        "# Fault suite",
        "",
        f"`make faults` (pytest -m faults) on {platform.python_version()}, {platform.machine()}: "
        f"{len(rows)} cases, {len(rows) - len(failed)} passed, {len(failed)} not passed; "
        f"{seconds:.0f} s wall; pytest exit {code}.",
        "",
        "| file | case | expectation | result | time (s) |",
        "|---|---|---|---|---:|",
    ]
    lines += [f"| {r['file']} | {cell(r['case'])} | {cell(r['expectation'])} | {cell(r['result'])} | {r['seconds']:.2f} |"
              for r in rows]
    lines += load_section([r["load"] for r in rows if r.get("load")])
    if NOTES.exists():
        lines += ["", NOTES.read_text().strip()]
    lines += ["", "## pip-audit (`make audit`)", ""]
    lines += [AUDIT.read_text().strip() if AUDIT.exists() else
              "`make audit` has not run in this checkout (it writes mlruns/audit.md); CI runs it after `make test`."]
    return "\n".join(lines) + "\n"


def load_section(figures: list[dict]) -> list[str]:
    """The load tests' throughput, one row per store (empty when none ran)."""
    if not figures:
        return []
    lines = ["", "## Load test", "",
             "Each process is a run without the training: `RunTracker.epoch_finished` in a loop, one `log_batch` "
             "on the parent run and one on the pass run per epoch, 36 metrics each (tests/tracking_load.py); the "
             "window is `$HARNESS_LOAD_SECONDS`. Read back: rows found in the store's database, of those logged.", "",
             "| store | processes | window (s) | epochs | log_batch calls | metric values | values/s "
             "| log_batch/s | epoch logging median / p95 (ms) | errors | HTTP retries | read back |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for f in figures:
        back = f["read_back"]
        bad = back["missing"] + back["wrong"] + back["duplicates"] + back["extra"]
        lines.append(f"| {f['store']} | {f['processes']} | {f['seconds']:.0f} | {f['epochs']:,} "
                     f"| {f['log_batch_calls']:,} | {f['metric_values']:,} | {f['values_per_s']:,.0f} "
                     f"| {f['batches_per_s']:.1f} "
                     f"| {f['epoch_ms_median']} / {f['epoch_ms_p95']} | {f['errors']} | {f['retries']} "
                     f"| {back['values']:,} of {back['expected']:,}, {bad} missing, wrong or duplicated |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the table here (FAULTS.md)")
    args, rest = parser.parse_known_args(argv)
    collect = Collect()
    started = time.perf_counter()
    code = int(pytest.main(["-m", "faults", "-q", *rest], plugins=[collect]))
    text = markdown(collect.rows, code, time.perf_counter() - started)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
