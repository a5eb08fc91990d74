"""The tables as text: markdown, the README block (no line over README_WIDTH bytes), the notes
under the tables, and the csv/json rows for tools.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Optional

from harness import ledger as ledger_mod
from harness.core import metrics as contract
from harness.core.records import (TAG_SPLIT,
                                  RunRecord)
from harness.report.cells import BEST_MARK, ELLIPSIS, RATE_MARK, SYNTHETIC_MARK, cell, compact_params
from harness.report.rows import CURRENT, NOT_RUN, STALE, Row, balanced, data_label, is_synthetic, lifts, score
from harness.report.tables import ACC_HEADING, BACC_HEADING, MAIN_HEADING, RIGHT, TRUST_HEADING, Tables


RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"
README_WIDTH = 220  # bytes per line of the README block (a hook checks it)


# --------------------------------------------------------------------------- markdown


def markdown(columns: list[str], rows: list[dict]) -> str:
    import tabulate

    align = ["right" if c in RIGHT or c.startswith("Val ") else "left" for c in columns]
    body = [[cell(r.get(c, "")) for c in columns] for r in rows]
    padding, tabulate.MIN_PADDING = tabulate.MIN_PADDING, 0  # headers as wide as they are: the README is narrow
    try:
        return tabulate.tabulate(body, headers=columns, tablefmt="pipe", disable_numparse=True, colalign=align)
    finally:
        tabulate.MIN_PADDING = padding


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(1, width - 1)].rstrip() + ELLIPSIS


def readme_table(tables: Tables, width: int = README_WIDTH) -> str:
    """The README block's table: the notes' columns, params in M/k, and the long text columns
    (remark first, then changes, then architecture) cut until no line is over `width` bytes."""
    columns = tables.layout.readme_columns()
    rows = [{c: cell(r.get(c, "")) for c in columns} | {"Total/trainable": compact_params(
        r.get("Total/trainable", ""))} for r in tables.main]
    # Cut in this order, each down to its first floor; then all of them down to their last.
    floors = [{"Remark": 20, "Architecture": 26, "Changes vs parent": 34},
              {"Remark": 6, "Architecture": 12, "Changes vs parent": 17}]
    caps = {c: max([len(r[c]) for r in rows] + [len(c)]) for c in floors[0]}
    while True:
        text = markdown(columns, [r | {c: _cut(r[c], caps[c]) for c in caps} for r in rows])
        over = max(len(line.encode()) for line in text.splitlines()) - width
        if over <= 0:
            return text
        column = next(((c, f[c]) for f in floors for c in f if caps[c] > max(f[c], len(c))), None)
        if column is None:
            return text  # nothing left to cut: the fixed columns alone are too wide
        name, floor = column
        caps[name] = max(floor, len(name), caps[name] - over)


def notes(tables: Tables, rows: list[Row], refs: dict, limit: int = 200) -> list[str]:
    """What the markers mean, where values come from and what data the rows trained on, in lines
    short enough for the README block."""
    import textwrap

    layout = tables.layout
    iterations = [r for r in tables.main if r["#"] != "ref"]  # as shown: committed rows kept count as theirs
    stale = sum(r.get("Run", "").endswith(" stale") for r in iterations)
    not_run = sum(r.get(layout.value) == NOT_RUN for r in iterations)
    counts = {CURRENT: len(iterations) - stale - not_run, STALE: stale, NOT_RUN: not_run}
    shown = [r for r in tables.main if r.get("Data")]
    synthetic = sorted({r["Data"] for r in shown if SYNTHETIC_MARK in r.get(layout.value, "")})
    real = sorted({r["Data"] for r in shown if SYNTHETIC_MARK not in r.get(layout.value, "")})
    selected = contract.selected_name(layout.dataset, layout.main, contract.ACC.short)
    best = contract.best_val_acc(layout.dataset)
    references = len(refs) + tables.kept_references
    text = [
        f"{len(rows)} iterations: {counts[CURRENT]} with a current run, {counts[STALE]} stale, "
        f"{counts[NOT_RUN]} not run; {references} reference runs.",
        f"Data: {', '.join(real) or 'no row on real data'}; {SYNTHETIC_MARK} = trained on {', '.join(synthetic)}: "
        "such numbers say nothing about the real dataset." if synthetic else
        f"Data: {', '.join(real) + ' for every row shown' if real else 'no run yet'}; none on synthetic data.",
        f"{layout.value}: the selected checkpoint (`{selected}` at `{contract.SELECTED_EPOCH}`, best by the last "
        f"pass's monitor); {BEST_MARK} = a run older than that summary: `{best}` at `{contract.BEST_EPOCH}`.",
        f"vs majority, vs probe: the lift over the majority-class and linear-probe reference runs on the same split "
        f"(`harness reference`); {RATE_MARK} = no majority run on it, the catalog's majority rate is used instead.",
        "Params, Freeze, Batch, Epochs: under the run's profile (`cpu`, `smoke` shrink data and epochs). "
        "Changes vs parent: short form; `harness show ITER` has the full diff.",
    ]
    lines = []
    for paragraph in text:
        lines += ["- " + line if i == 0 else "  " + line
                  for i, line in enumerate(textwrap.wrap(paragraph, limit - 2))]
    return lines


def render(book: ledger_mod.Ledger, tables: Tables, rows: list[Row], refs: dict, ledger_label: str) -> tuple[str, str]:
    """(the RESULTS file's text, the README block's text)."""
    layout = tables.layout
    note_lines = notes(tables, rows, refs)
    results = "\n".join([
        f"# Results: {book.experiment}", "",
        f"Generated from MLflow by `harness table --ledger {ledger_label}` (`make table`); do not edit by hand. "
        "One row per ledger iteration, in ledger order, from its latest finished run whose config matches the "
        "ledger; rows whose runs the store does not know are kept as committed (`--rebuild` drops them).", "",
        f"## {MAIN_HEADING}", "", markdown(layout.main_columns(), tables.main), "", *note_lines, "",
        "- Run `stale`: the latest finished run was trained with an older config of this iteration; train it "
        "again with `make run ITER=name`. Reported: the notes' number (best over the passes they report).", "",
        f"## {ACC_HEADING}", "", markdown(layout.head_columns(), tables.accs), "",
        f"## {BACC_HEADING}", "", markdown(layout.head_columns(), tables.baccs), "",
        "Balanced accuracy (mean recall over a head's classes) exists for runs with a selected checkpoint only.", "",
        f"## {TRUST_HEADING}", "", markdown(layout.trust_columns(), tables.trust), "",
        *trust_notes(),
    ]) + "\n"
    return results, readme_table(tables) + "\n\n" + "\n".join(note_lines)


def trust_notes() -> list[str]:
    """What the trust table's cells mean (harness.report.stats)."""
    from harness.report import stats

    return [f"- Each head: accuracy of the row minus its parent's on the same validation images, its 95% interval "
            f"(paired bootstrap over images, BCa, {stats.N_RESAMPLES} resamples, fixed seed; two-level over images "
            f"and seeds for repeats), McNemar's exact p (single runs), and `{stats.BETTER}` / `{stats.WORSE}` when "
            f"the interval excludes 0, else `{stats.NOISE}`. Empty: a run without per-example predictions (older "
            f"runs) or no parent; reference rows: their own accuracy and its 95% interval.",
            "- Notes vs measured: the ledger's remark (the notes' judgement) beside the measured verdict on "
            "the primary head. `vs parent` in the main table is the same verdict on the primary head."]


# --------------------------------------------------------------------------- for tools


def records_for_tools(rows: list[Row], refs: dict, dataset: str) -> list[dict]:
    """The store's rows with raw numbers (`--format csv|json`): one dict per iteration, then
    per reference run."""
    out = []
    for row in rows:
        out.append(_tool_record(row.name, row.state, row.run, refs, dataset) | {"#": row.number})
    for (kind, _split), record in sorted(refs.items()):
        out.append(_tool_record(f"reference/{kind}", "reference", record, {}, dataset) | {"#": None})
    return out


def _tool_record(name: str, state: str, run: Optional[RunRecord], refs: dict, dataset: str) -> dict:
    headline, lift = score(run, dataset), lifts(run, refs, dataset)
    record = {"iteration": name, "state": state, "run_id": run.run_id if run else None,
              "started_ms": run.start_time if run else None, "profile": run.profile if run else None,
              "data": data_label(run) if run else None, "synthetic": is_synthetic(run) if run else None,
              "split": run.tags.get(TAG_SPLIT) if run else None, "selected_checkpoint": headline.selected,
              "epoch": headline.epoch, "lift_vs_majority": lift.majority, "lift_vs_majority_from_rate": lift.from_rate,
              "lift_vs_linear_probe": lift.probe}
    for head in contract.heads_of(dataset):
        record[contract.val_acc(dataset, head)] = score(run, dataset, head).value
        record[contract.head_metric(dataset, head, contract.BALANCED_ACC, val=True)] = balanced(run, dataset, head)
    found = run.metrics if run else {}
    for key in (contract.MEAN_EPOCH_SECONDS, contract.TOTAL_PARAMS, contract.TRAINABLE_PARAMS):
        record[key] = found.get(key)
    return record


def export(records: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(records, indent=1) + "\n"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]) if records else ["iteration"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()
