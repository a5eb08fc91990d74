"""The committed results table, read back, so a fresh clone never damages it.

A clone's MLflow store is empty or holds other runs than the ones the committed
experiments/RESULTS.md was generated from. `harness table` therefore starts from the committed
file: a row whose run the store does not know is kept as it is, and is replaced only by a newer
finished run of the same iteration (`Started (UTC)` says how old the committed one is). `--rebuild`
starts from the store alone. The committed tables are markdown pipe tables, each under a
`## ` heading; the main table's `Run` column holds the full run id.
Pure Python: no MLflow, no pandas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

_PIPE = re.compile(r"(?<!\\)\|")

STARTED_FORMAT = "%Y-%m-%d %H:%M"


def split_row(line: str) -> list[str]:
    """The cells of one markdown table line, unescaped."""
    return [cell.strip().replace("\\|", "|") for cell in _PIPE.split(line.strip())[1:-1]]


def is_rule(cells: list[str]) -> bool:
    return bool(cells) and all(cell and set(cell) <= set("-: ") for cell in cells)


@dataclass
class Table:
    """One pipe table of a results file: its heading (the `## ` line above it, "" for none),
    its columns and its rows as column -> cell."""

    heading: str
    columns: list[str]
    rows: list[dict] = field(default_factory=list)

    def by_iteration(self, column: str = "Iteration") -> dict[str, dict]:
        return {row.get(column, ""): row for row in self.rows if row.get(column)}


def parse_tables(text: str) -> list[Table]:
    """Every pipe table in a markdown text, in order."""
    tables: list[Table] = []
    heading, current = "", None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("## "):
            heading, current = stripped[3:].strip(), None
            continue
        if not stripped.startswith("|"):
            current = None
            continue
        cells = split_row(stripped)
        if current is None:
            current = Table(heading, cells)
            tables.append(current)
        elif not is_rule(cells):
            current.rows.append(dict(zip(current.columns, cells)))
    return tables


def read_tables(path: Path) -> list[Table]:
    """The tables of a committed results file ([] when there is none)."""
    try:
        return parse_tables(Path(path).read_text())
    except FileNotFoundError:
        return []


def started_text(start_ms: Optional[int]) -> str:
    """A run's start as the committed table writes it (UTC, to the minute)."""
    if not start_ms:
        return ""
    return datetime.fromtimestamp(start_ms / 1000, tz=timezone.utc).strftime(STARTED_FORMAT)


def started_ms(text: str) -> Optional[int]:
    """The committed `Started (UTC)` cell back in ms (None when empty or unreadable)."""
    try:
        moment = datetime.strptime(text.strip(), STARTED_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return int(moment.timestamp() * 1000)


def keeps(committed_run: str, committed_started: str, store_start: Optional[int], known: bool) -> bool:
    """Whether a committed row stays instead of the store's row for the same iteration.

    It stays when the store does not know its run, unless the store has a finished run of the
    iteration that started later (a committed row written before start times were recorded
    gives way to any finished run). A row whose run the store knows is the store's to decide."""
    if not committed_run or known:
        return False
    if store_start is None:
        return True
    started = started_ms(committed_started)
    # Minutes are all the committed cell keeps: a run in the same minute is not "newer".
    return started is not None and store_start < started + 60_000
