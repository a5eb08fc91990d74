"""`make audit`: pip-audit over the installed, pinned dependency set, summarized for FAULTS.md.

    python -m tests.audit_report [--out mlruns/audit.md]

pip-audit asks PyPI's JSON API (per package and version) for known vulnerabilities. Where that
API cannot answer (an offline mirror, no route to OSV), pip-audit skips the package rather than
failing, and its own exit status says "no known vulnerabilities": that would read as a clean
bill of health. This summary counts what was actually audited, what was skipped and why, and
lists every vulnerability found with its fix versions. Exit status: 0 (a report, not a gate).
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "mlruns" / "audit.md"


def audit() -> tuple[dict, str]:
    """pip-audit's JSON report of this environment (editable installs skipped), and its stderr."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "audit.json"
        done = subprocess.run([sys.executable, "-m", "pip_audit", "--local", "--skip-editable", "--desc", "on",
                               "--format", "json", "--output", str(report)], capture_output=True, text=True)
        data = json.loads(report.read_text()) if report.exists() and report.stat().st_size else {}
    return data, done.stderr.strip()


def summary(data: dict, stderr: str, seconds: float) -> str:
    deps = data.get("dependencies", [])
    skipped = [d for d in deps if "skip_reason" in d]
    audited = [d for d in deps if "skip_reason" not in d]
    vulns = [(d, v) for d in audited for v in d.get("vulns", [])]
    lines = [f"pip-audit on {time.strftime('%Y-%m-%d')} (Python {platform.python_version()}, {seconds:.0f} s): "
             f"{len(deps)} installed packages, {len(audited)} audited, {len(skipped)} skipped, "
             f"{len(vulns)} known vulnerabilities."]
    if not deps:
        lines.append(f"pip-audit produced no report: {stderr.splitlines()[-1] if stderr else 'no output'}")
    if skipped:
        reasons = collections.Counter(d["skip_reason"].split(":")[0] for d in skipped)
        lines.append("Skipped, by reason: " + "; ".join(f"{n} x {why}" for why, n in reasons.most_common()) + ".")
        if not audited:
            lines.append("Nothing could be audited here, so whether any known vulnerability applies is not known. The PyPI "
                         "this machine reaches does not serve the per-version JSON pip-audit reads, and "
                         "OSV is not reachable; run `make audit` where pypi.org is.")
    if vulns:
        lines += ["", "| package | version | id | fix versions | summary |", "|---|---|---|---|---|"]
        lines += [f"| {d['name']} | {d['version']} | {v['id']} | {', '.join(v.get('fix_versions', [])) or 'none'} "
                  f"| {(v.get('description') or '').splitlines()[0][:160] if v.get('description') else ''} |"
                  for d, v in vulns]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data, stderr = audit()
    text = summary(data, stderr, time.perf_counter() - started)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
