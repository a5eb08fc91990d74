"""`make faults`: run the fault suite (pytest marker `faults`) and write FAULTS.md, one row per
case with what was tried, what was expected, the result and the time, like BENCHMARKS.md.

    python -m tests.faults_report [--out FAULTS.md] [extra pytest args]

The rows come from pytest itself (a plugin that sees every test's report, its `expectation`
property and its duration), so the table is what ran, never a hand-kept list. Exit status:
pytest's. FAULTS.md is written only when asked for (`--out`), so `make test` changes no
tracked file.
"""

from __future__ import annotations

import argparse
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
    if NOTES.exists():
        lines += ["", NOTES.read_text().strip()]
    lines += ["", "## pip-audit (`make audit`)", ""]
    lines += [AUDIT.read_text().strip() if AUDIT.exists() else
              "`make audit` has not run in this checkout (it writes mlruns/audit.md); CI runs it after `make test`."]
    return "\n".join(lines) + "\n"


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
