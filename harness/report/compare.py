"""`harness compare A B [C...] [--json]`: runs side by side.

    harness compare tenth eleventh            # each iteration's latest finished run
    harness compare eleventh 3f2a9c1d         # an iteration against a run id (or its prefix)

Shows the config keys whose values differ (from the params each run logged: the flattened
resolved config), every head's validation accuracy and balanced accuracy at the selected
checkpoint with the best marked `*` (ties all marked; older runs show their best epoch, marked),
then epochs, seconds per epoch and duration. Then, for each run after the first against the
first (B - A), each head's paired difference with its `95% CI`, McNemar's p and the verdict
(`better`, `worse`, `within noise`; harness.report.stats), from the runs' per-example predictions;
an iteration whose latest run belongs to a repeat group stands for the group's finished repeats
(mean ± sd over seeds). `--json` gives the same as one object. No TensorFlow.
"""

from __future__ import annotations

import json
from typing import Optional

from harness.core import metrics as contract
from harness.core.errors import InputError
from harness.core.records import RunRecord
from harness.report.cells import BEST_MARK
from harness.report.rows import balanced, score
from harness.report.runs import describe, find_runs, label

WINNER = "*"
MISSING = "-"


def config_diff(records: list[RunRecord]) -> dict[str, list[Optional[str]]]:
    """Param key -> each run's value, for the keys where the runs differ (None: not logged)."""
    keys = sorted(set().union(*(r.params for r in records)))
    return {k: [r.params.get(k) for r in records] for k in keys if len({r.params.get(k) for r in records}) > 1}


def winners(values: list[Optional[float]]) -> list[int]:
    """Indices of the highest value (every one on a tie); none when fewer than two runs have one."""
    present = [v for v in values if v is not None]
    if len(present) < 2:
        return []
    best = max(present)
    return [i for i, v in enumerate(values) if v is not None and v == best]


def head_rows(records: list[RunRecord], dataset: str) -> dict[str, dict]:
    """Metric label -> {"values", "winners", "selected"}: every head's accuracy and balanced
    accuracy, then their means over heads."""
    rows: dict[str, dict] = {}
    heads = contract.heads_of(dataset)
    for head in heads:
        scores = [score(r, dataset, head) for r in records]
        values = [s.value for s in scores]
        rows[contract.val_acc(dataset, head)] = {"values": values, "winners": winners(values),
                                                 "selected": [s.selected for s in scores]}
        baccs = [balanced(r, dataset, head) for r in records]
        rows[contract.head_metric(dataset, head, contract.BALANCED_ACC, val=True)] = {
            "values": baccs, "winners": winners(baccs), "selected": [True] * len(records)}
    if len(heads) > 1:
        means = [balanced(r, dataset) for r in records]
        rows[contract.selected_mean_name(contract.BALANCED_ACC)] = {
            "values": means, "winners": winners(means), "selected": [True] * len(records)}
    return rows


def compare_runs(book, wanted: list[str], *, tracking_uri: Optional[str] = None, as_json: bool = False,
                 log=print) -> int:
    from tabulate import tabulate

    from harness.track.fast_store import open_reader

    if len(wanted) < 2:
        raise InputError("compare: give at least two iterations or run ids")
    dataset = book.resolve(book.names[0]).data.name
    reader = open_reader(tracking_uri, book.experiment)
    records = find_runs(book, reader, wanted)
    described = [describe(book, r, dataset) for r in records]
    diff = config_diff(records)
    heads = head_rows(records, dataset)
    judged = trust_rows(reader, records)
    if as_json:
        log(json.dumps({"runs": described, "config_diff": diff, "metrics": heads, "stats": judged}, indent=1))
        return 0
    headers = ["", *(label(r) for r in records)]
    facts = [["status", *(d["status"] for d in described)], ["profile", *(d["profile"] for d in described)],
             ["data", *(d["data"] for d in described)]]
    log(tabulate(facts, headers=headers, tablefmt="simple", disable_numparse=True))
    log("")
    if diff:
        log(f"config: {len(diff)} keys differ")
        log(tabulate([[k, *(MISSING if v is None else v for v in values)] for k, values in diff.items()],
                     headers=headers, tablefmt="simple", disable_numparse=True))
    else:
        log("config: the same in every run")
    log("")
    lines = []
    for name, row in heads.items():
        cells = []
        for i, value in enumerate(row["values"]):
            text = MISSING if value is None else f"{value:.4f}" + ("" if row["selected"][i] else BEST_MARK)
            cells.append(text + (f" {WINNER}" if i in row["winners"] else ""))
        lines.append([name, *cells])
    lines.append(["epochs (selected/done)", *(f"{d['epoch'] if d['epoch'] is not None else MISSING}/{d['epochs_done']}"
                                               for d in described)])
    lines.append(["s/epoch", *(_seconds(r) for r in records)])
    lines.append(["duration", *(d["duration"] for d in described)])
    log(tabulate(lines, headers=headers, tablefmt="simple", disable_numparse=True))
    log(f"{WINNER} best of the runs; {BEST_MARK} best epoch of a run older than the selected checkpoint; "
        f"{MISSING} not logged")
    for found, record in zip(judged, records[1:]):
        log("")
        for line in trust_lines(found, label(records[0]), label(record)):
            log(line)
    return 0


def trust_rows(reader, records: list[RunRecord]) -> list[dict]:
    """Each run after the first against the first (harness.report.trust.Judge.compare), each side
    the run's repeat group when it has one."""
    from harness.report.trust import Judge, group_runs

    judge = Judge(reader)
    first = group_runs(reader, records[0])
    return [judge.compare(first, group_runs(reader, record)) for record in records[1:]]


def trust_lines(found: dict, name_a: str, name_b: str) -> list[str]:
    """The paired statistics of one comparison as a table (or the note saying why there is none)."""
    from tabulate import tabulate

    from harness.report import stats
    from harness.report.trust import interval, p_text, signed, value_text

    title = f"{name_b} vs {name_a} (B - A)"
    if found["note"]:
        return [f"{title}: {found['note']}"]
    rows, methods, images = [], set(), 0
    for head, by_metric in found["heads"].items():
        for metric, d in by_metric.items():
            methods.add(d["method"])
            images = d["images"]
            rows.append([f"{head} {metric}", value_text(d, "a"), value_text(d, "b"), signed(d["difference"]),
                         interval(d), p_text(d["p"]), d["verdict"]])
    lines = [f"{title}, paired on the same {images} validation images:"]
    lines += tabulate(rows, headers=["head", "A", "B", "difference", "95% CI", "McNemar p", "verdict"],
                      tablefmt="simple", disable_numparse=True).splitlines()
    lines.append(f"95% CI: bootstrap over images ({', '.join(sorted(methods))}, {stats.N_RESAMPLES} resamples, "
                 f"fixed seed); verdict {stats.BETTER}/{stats.WORSE} when the CI excludes 0, else {stats.NOISE}; "
                 f"McNemar exact p on accuracy (single runs)")
    return lines


def _seconds(record: RunRecord) -> str:
    value = record.metrics.get(contract.MEAN_EPOCH_SECONDS)
    return MISSING if value is None else f"{value:.1f}"
