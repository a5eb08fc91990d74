"""Trust statistics for the commands that read runs (`compare`, `table`): which runs stand for a
side (one run, or the finished repeats of its group, harness.group), their per-example
predictions read through the track reader (no TensorFlow; no MLflow on the SQLite fast path),
and the comparison of harness.report.stats as plain dicts and short texts.

A side without a predictions artifact (a run from before it was logged) or two sides that did
not score the same images (another split, other rows) get a note and no interval: nothing is
paired that is not the same images.
"""

from __future__ import annotations

from typing import Optional

from harness.core.records import FINISHED, TAG_GROUP, TAG_REPEAT, RunRecord
from harness.report import stats


def group_runs(reader, record: RunRecord) -> list[RunRecord]:
    """The runs a record stands for: the finished runs of its repeat group (by repeat number),
    else the record alone."""
    group = record.tags.get(TAG_GROUP)
    if not group:
        return [record]
    members = [r for r in reader.runs(record.iteration) if r.tags.get(TAG_GROUP) == group and r.status == FINISHED]
    if record.run_id not in {r.run_id for r in members}:
        members.append(record)
    return sorted(members, key=lambda r: _repeat_number(r.tags.get(TAG_REPEAT)))


def _repeat_number(text: Optional[str]) -> int:
    try:
        return int(str(text).split("/")[0])
    except ValueError:
        return 0


class Judge:
    """Compares sides read from one reader, reading each run's predictions once."""

    def __init__(self, reader):
        self.reader = reader
        self._read: dict = {}

    def predictions(self, run_id: str):
        if run_id not in self._read:
            self._read[run_id] = self.reader.predictions(run_id)
        return self._read[run_id]

    def compare(self, a: list[RunRecord], b: list[RunRecord], heads: Optional[list[str]] = None,
                metrics: tuple = (stats.ACC, stats.BACC)) -> dict:
        """{"a", "b" (run ids), "note" (why there is no interval, else None), "heads": head ->
        metric -> harness.report.stats.Difference as a dict}; B - A."""
        out = {"a": [r.run_id for r in a], "b": [r.run_id for r in b], "note": None, "heads": {}}
        found_a = [self.predictions(r.run_id) for r in a]
        found_b = [self.predictions(r.run_id) for r in b]
        missing = [r.run_id[:8] for r, p in zip(a + b, found_a + found_b) if p is None]
        if missing:
            out["note"] = (f"no paired interval: run {', '.join(missing)} logged no per-example predictions "
                           f"(runs from before predictions/val.json)")
            return out
        if not stats.same_images(found_a, found_b):
            out["note"] = "no paired interval: the runs did not score the same images (different split or rows)"
            return out
        for difference in stats.compare_groups(found_a, found_b, heads, metrics):
            out["heads"].setdefault(difference.head, {})[difference.metric] = difference.as_dict()
        return out


def signed(value: float, digits: int = 4) -> str:
    return f"{value:+.{digits}f}"


def interval(difference: dict, digits: int = 4) -> str:
    """`[-0.0123, +0.0456]`."""
    return f"[{signed(difference['low'], digits)}, {signed(difference['high'], digits)}]"


def p_text(p: Optional[float]) -> str:
    if p is None:
        return "-"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def value_text(difference: dict, side: str) -> str:
    """A side's value: `0.6500`, or `0.6400 ± 0.0100 (n=3)` for repeats."""
    value, sd, n = difference[side], difference[f"sd_{side}"], difference[f"n_{side}"]
    return f"{value:.4f}" if n <= 1 or sd is None else f"{value:.4f} ± {sd:.4f} (n={n})"


# ---------------------------------------------------------------- the table


def table_trust(reader, rows: list, refs: dict, dataset: str) -> dict:
    """What the table shows beyond one number per row: iteration name -> {"runs": the row's
    repeat group (records), "vs_parent": Judge.compare of the row against its parent iteration's
    row (accuracy of every head) or None}; ("ref", key) -> head -> (accuracy, low, high) of a
    reference run. Rows without predictions get a note, never an error."""
    from harness.report.rows import NOT_RUN

    judge = Judge(reader)
    by_name = {row.name: row for row in rows}
    out: dict = {}
    for row in rows:
        if row.state == NOT_RUN or row.run is None:
            continue
        runs = group_runs(reader, row.run)
        parent = by_name.get(row.written.extends) if row.written.extends else None
        versus = None
        if parent is not None and parent.run is not None and parent.state != NOT_RUN:
            versus = judge.compare(group_runs(reader, parent.run), runs, metrics=(stats.ACC,))
        out[row.name] = {"runs": runs, "vs_parent": versus}
    for key, record in refs.items():
        found = judge.predictions(record.run_id)
        if found is None:
            continue
        out[("ref", key)] = {head: stats.accuracy_interval(
            [t == p for t, p in zip(found.true[head], found.pred[head])])[:3] for head in found.heads}
    return out


def vs_parent_cell(versus: Optional[dict], head: str) -> str:
    """`+0.034 better`: the head's accuracy difference to the parent and its verdict ('' without one)."""
    found = (versus or {}).get("heads", {}).get(head, {}).get(stats.ACC)
    return "" if found is None else f"{signed(found['difference'], 3)} {found['verdict']}"


def head_trust_cell(versus: Optional[dict], head: str) -> str:
    """`+0.034 [+0.001, +0.067] p=0.041 better` for the RESULTS file ('' without a comparison)."""
    found = (versus or {}).get("heads", {}).get(head, {}).get(stats.ACC)
    if found is None:
        return ""
    return f"{signed(found['difference'], 3)} {interval(found, 3)} p={p_text(found['p'])} {found['verdict']}"


def group_value(runs: list, value_of) -> Optional[str]:
    """`0.6400 ± 0.0100 (n=3)` over a repeat group's runs (None for a single run)."""
    values = [v for v in (value_of(r) for r in runs) if v is not None]
    if len(runs) < 2 or len(values) < 2:
        return None
    mean, sd, n = stats.mean_sd(values)
    return f"{mean:.4f} ± {sd:.4f} (n={n})"
