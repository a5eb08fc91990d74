"""The three RESULTS tables built from the rows (main, per metric with a column per head,
references), and committed rows the store does not know merged back in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional

from harness.report import committed
from harness import ledger as ledger_mod
from harness.core import metrics as contract
from harness.core.records import (TAG_REFERENCE, TAG_SPLIT,
                                  RunRecord)
from harness.report.cells import BEST_MARK, RATE_MARK, SYNTHETIC_MARK, _own, _reported, acc_text, architecture, changes, freeze, params_text, signed
from harness.report.rows import NOT_RUN, REFERENCE_LABELS, STALE, Row, balanced, data_label, is_synthetic, lifts, score


# --------------------------------------------------------------------------- tables


MAIN_HEADING, ACC_HEADING, BACC_HEADING = "Iterations", "Validation accuracy per head", "Balanced accuracy per head"
TRUST_HEADING = "Against the parent: paired 95% intervals"


@dataclass(frozen=True)
class Layout:
    """The column names of a ledger's tables (they depend on its dataset's heads)."""

    dataset: str

    @property
    def main(self) -> str:
        return contract.primary_head(self.dataset)

    @property
    def heads(self) -> list[str]:
        return contract.heads_of(self.dataset)

    @property
    def value(self) -> str:
        return "Val acc (epoch)" if contract.single_head(self.dataset) else f"Val {self.main} (epoch)"

    @property
    def reported(self) -> str:
        return f"Reported {contract.reported_key(self.dataset)}"

    def readme_columns(self) -> list[str]:
        """The notes' columns: what the README block shows."""
        return ["#", "Iteration", "Architecture", "Total/trainable", "Freeze", "Batch", "Epochs", self.value,
                "vs majority", "vs probe", "vs parent", "s/epoch", "Changes vs parent", "Remark"]

    def main_columns(self) -> list[str]:
        return self.readme_columns() + [self.reported, "vs reported", "Run", "Started (UTC)", "Profile", "Data",
                                        "Split"]

    def head_columns(self) -> list[str]:
        return ["#", "Iteration"] + self.heads + (["mean"] if len(self.heads) > 1 else [])

    def trust_columns(self) -> list[str]:
        return ["#", "Iteration", "Parent"] + self.heads + ["Notes vs measured"]


RIGHT = {"#", "Total/trainable", "s/epoch", "vs majority", "vs probe", "vs reported"}


def iteration_cells(book: ledger_mod.Ledger, row: Row, refs: dict, layout: Layout,
                    trust: Optional[dict] = None) -> tuple[dict, dict, dict]:
    """(main, accuracy, balanced accuracy) cells of one iteration's row; `trust` its entry of
    harness.report.trust.table_trust (repeat group, comparison with the parent), if any."""
    from harness.report.trust import group_value, vs_parent_cell

    it, run, dataset = row.shown, row.run, layout.dataset
    trust = trust or {}
    found = run.metrics if run else {}
    headline = score(run, dataset)
    if row.state == NOT_RUN:
        value = NOT_RUN
    else:
        value = acc_text(headline.value) + (f" @ {headline.epoch}" if headline.epoch is not None else "")
        value += ("" if headline.selected else BEST_MARK) + (SYNTHETIC_MARK if is_synthetic(run) else "")
        grouped = group_value(trust.get("runs", []), lambda r: score(r, dataset).value)
        if grouped is not None:  # repeats over seeds: mean ± sd (n=N) instead of one run's value
            value = grouped + (SYNTHETIC_MARK if is_synthetic(run) else "")
    lift = lifts(run, refs, dataset)
    seconds = found.get(contract.MEAN_EPOCH_SECONDS)
    reported, reported_text = _reported(_own(book, row, "reported", ()), contract.reported_key(dataset))
    main = {
        "#": str(row.number), "Iteration": row.name, "Architecture": architecture(it),
        "Total/trainable": params_text(found), "Freeze": freeze(it),
        "Batch": f"{it.batch_size.train}/{it.batch_size.eval}", "Epochs": it.epochs_label(), layout.value: value,
        "vs majority": signed(lift.majority) + (RATE_MARK if lift.majority is not None and lift.from_rate else ""),
        "vs probe": signed(lift.probe), "vs parent": vs_parent_cell(trust.get("vs_parent"), layout.main),
        "s/epoch": "" if seconds is None else f"{seconds:.1f}",
        "Changes vs parent": changes(row), "Remark": _own(book, row, "remark", ""),
        layout.reported: reported_text,
        "vs reported": signed(headline.value - reported) if headline.value is not None and reported is not None else "",
        "Run": (run.run_id + (" stale" if row.state == STALE else "")) if run else "",
        "Started (UTC)": committed.started_text(run.start_time) if run else "",
        "Profile": run.profile if run else "", "Data": data_label(run) if run else "",
        "Split": run.tags.get(TAG_SPLIT, "") if run else "",
    }
    return main, *head_cells(row.number, row.name, run, layout)


def head_cells(number, name: str, run: Optional[RunRecord], layout: Layout) -> tuple[dict, dict]:
    """The per-head accuracy and balanced-accuracy cells of one row."""
    dataset = layout.dataset
    accs = {"#": str(number), "Iteration": name}
    baccs = dict(accs)
    for head in layout.heads:
        accs[head] = acc_text(score(run, dataset, head).value)
        baccs[head] = acc_text(balanced(run, dataset, head))
    if len(layout.heads) > 1:
        values = [score(run, dataset, h).value for h in layout.heads]
        accs["mean"] = acc_text(sum(values) / len(values)) if run and None not in values else ""
        baccs["mean"] = acc_text(balanced(run, dataset))
    return accs, baccs


def reference_split_text(split: str) -> str:
    """Which validation images a reference row was scored on, short enough for the README
    (several splits, say seed 1 and seed 42, each get their reference rows)."""
    seed = re.search(r"seed (\d+)", split)
    if "own split" in split:
        return "reference, dataset's split"
    return f"reference, split seed {seed.group(1)}" if seed else "reference run"


def reference_cells(record: RunRecord, layout: Layout) -> tuple[dict, dict, dict]:
    """A reference run as a row under the iterations."""
    kind = record.tags.get(TAG_REFERENCE, "")
    name = REFERENCE_LABELS.get(kind, kind)
    value = acc_text(score(record, layout.dataset).value) + (SYNTHETIC_MARK if is_synthetic(record) else "")
    main = {column: "" for column in layout.main_columns()}
    main.update({"#": "ref", "Iteration": name, "Architecture": reference_split_text(record.tags.get(TAG_SPLIT, "")),
                 layout.value: value,
                 "Remark": "`harness reference`", "Run": record.run_id,
                 "Started (UTC)": committed.started_text(record.start_time), "Profile": record.profile,
                 "Data": data_label(record), "Split": record.tags.get(TAG_SPLIT, "")})
    return (main, *head_cells("ref", name, record, layout))


@dataclass
class Tables:
    """The rows of the three RESULTS tables (column -> cell), iterations then references, and
    how many iteration rows were kept from the committed file."""

    layout: Layout
    main: list[dict]
    accs: list[dict]
    baccs: list[dict]
    kept: set = field(default_factory=set)  # iterations whose committed row was kept
    kept_references: int = 0
    trust: list[dict] = field(default_factory=list)  # TRUST_HEADING's rows


def build(book: ledger_mod.Ledger, rows: list[Row], refs: dict, trust: Optional[dict] = None) -> Tables:
    """The tables; `trust` (harness.report.trust.table_trust) adds the vs-parent cells, the
    repeat groups' mean ± sd and the trust table."""
    layout = Layout(book.resolve(book.names[0]).data.name)
    tables = Tables(layout, [], [], [])
    trust = trust or {}
    for row in rows:
        for target, cells in zip((tables.main, tables.accs, tables.baccs),
                                 iteration_cells(book, row, refs, layout, trust.get(row.name))):
            target.append(cells)
        tables.trust.append(trust_cells(book, row, layout, trust.get(row.name)))
    for key in sorted(refs):
        for target, cells in zip((tables.main, tables.accs, tables.baccs), reference_cells(refs[key], layout)):
            target.append(cells)
        tables.trust.append(reference_trust_cells(refs[key], layout, trust.get(("ref", key))))
    return tables


def trust_cells(book: ledger_mod.Ledger, row: Row, layout: Layout, trust: Optional[dict]) -> dict:
    """An iteration against its parent, per head: difference, 95% CI, McNemar p, verdict; and the
    notes' remark beside the measured verdict of the primary head."""
    from harness.report.trust import head_trust_cell

    versus = (trust or {}).get("vs_parent")
    cells = {"#": str(row.number), "Iteration": row.name, "Parent": row.written.extends or ""}
    for head in layout.heads:
        cells[head] = head_trust_cell(versus, head)
    if versus is not None and versus.get("note"):
        cells[layout.heads[0]] = versus["note"].removeprefix("no paired interval: ")
    measured = (versus or {}).get("heads", {}).get(layout.main, {}).get("acc", {}).get("verdict")
    remark = str(_own(book, row, "remark", "") or "").strip().rstrip(".")
    parts = ([f"notes: {remark}"] if remark else []) + ([f"measured: {measured}"] if measured else [])
    cells["Notes vs measured"] = " ; ".join(parts)
    return cells


def reference_trust_cells(record: RunRecord, layout: Layout, intervals: Optional[dict]) -> dict:
    """A reference run's accuracy per head with its 95% interval over the validation images."""
    kind = record.tags.get(TAG_REFERENCE, "")
    cells = {"#": "ref", "Iteration": REFERENCE_LABELS.get(kind, kind), "Parent": "", "Notes vs measured": ""}
    for head in layout.heads:
        found = (intervals or {}).get(head)
        cells[head] = "" if found is None else f"{found[0]:.3f} [{found[1]:.3f}, {found[2]:.3f}]"
    return cells


# Cells that come from the ledger, not from a run: a committed row written before a column
# existed gets the ledger's cell for it.
LEDGER_COLUMNS = {"Iteration", "Architecture", "Freeze", "Batch", "Epochs", "Changes vs parent", "Remark"}
# Cells that describe the ledger as written, not the run: always today's (the short changes).
WRITTEN_COLUMNS = {"Iteration", "Changes vs parent", "Remark"}


def from_legacy(cells: dict, layout: Layout) -> tuple[dict, dict]:
    """A committed row of the one wide table written before this layout (`Best val gender acc
    (epoch)`, `Total params`, `val age`, ...): its cells under today's names, and its per-head
    accuracies, so a fresh clone keeps its numbers. A row in today's layout comes back as it is."""
    main, accs = dict(cells), {}
    old_value = next((c for c in cells if c.startswith("Best val") and c.endswith("(epoch)")), None)
    if old_value is None:
        return main, accs
    main.setdefault(layout.value, cells[old_value])
    if cells.get("Total params"):
        main.setdefault("Total/trainable", f"{cells['Total params']}/{cells.get('Trainable params', '')}")
    old_lift = next((c for c in cells if "lift vs majority" in c.lower()), None)
    if old_lift and cells[old_lift]:
        main.setdefault("vs majority", cells[old_lift] + RATE_MARK)  # it was taken against the catalog's rate
    accs = {head: cells[f"val {head}"] for head in layout.heads if cells.get(f"val {head}")}
    value = cells[old_value].split(" ")[0]
    if value and value != NOT_RUN.split(" ")[0]:
        accs[layout.main] = value
    return main, accs


def merge_committed(tables: Tables, previous: list[committed.Table], rows: list[Row], known: Callable) -> Tables:
    """Keep each committed row whose run this store does not know: an iteration's unless the
    store has a newer finished run of it, a reference run's unless the store has one of the same
    reference on the same split. `known(ids)` answers which run ids the store holds. The kept
    rows keep their cells in every table (the trust table's too: its intervals need the runs'
    predictions, which a fresh clone's store does not have)."""
    found = {table.heading: table for table in previous}
    main_table = found.get(MAIN_HEADING) or next((t for t in previous if "Run" in t.columns), None)
    if main_table is None:
        return tables
    by_table = [t.rows if t else [] for t in (main_table, found.get(ACC_HEADING), found.get(BACC_HEADING),
                                              found.get(TRUST_HEADING))]
    legacy = [from_legacy(r, tables.layout) for r in by_table[0]]
    by_table[0] = [main for main, _ in legacy]
    if not by_table[1]:  # the wide table held the per-head accuracies itself
        by_table[1] = [accs | {"#": r.get("#", ""), "Iteration": r.get("Iteration", "")}
                       for r, (_, accs) in zip(by_table[0], legacy)]
    old = [{r.get("Iteration"): r for r in rows_ if r.get("#") != "ref"} for rows_ in by_table]
    old_refs = [[r for r in rows_ if r.get("#") == "ref"] for rows_ in by_table]
    run_of = lambda cells: cells.get("Run", "").split(" ")[0]  # noqa: E731  ("id stale" -> id)
    holds = known([run_of(r) for r in by_table[0] if run_of(r)])
    targets = (tables.main, tables.accs, tables.baccs, tables.trust)
    for index, row in enumerate(rows):
        before = old[0].get(row.name)
        if before is None or not committed.keeps(run_of(before), before.get("Started (UTC)", ""),
                                                 row.run.start_time if row.run else None, run_of(before) in holds):
            continue
        tables.kept.add(row.name)
        for target, cells in zip(targets, (before, *(old[k].get(row.name, {}) for k in (1, 2, 3)))):
            if index >= len(target):
                continue
            fresh = target[index]
            target[index] = {column: fresh[column] if column in WRITTEN_COLUMNS else
                             cells.get(column, fresh[column] if column in LEDGER_COLUMNS else "")
                             for column in fresh} | {"#": str(row.number)}
        _mark_synthetic(tables.main[index], tables.layout.value)
    shown = {(r["Iteration"], r.get("Split", "")) for r in tables.main if r["#"] == "ref"}
    for i, cells in enumerate(old_refs[0]):
        if (cells.get("Iteration"), cells.get("Split", "")) in shown or not run_of(cells) or run_of(cells) in holds:
            continue
        tables.kept_references += 1
        for target, rows_, columns in zip(targets, old_refs, _columns(tables)):
            before = rows_[i] if i < len(rows_) else {}
            target.append({column: before.get(column, "") for column in columns})
    return tables


def _columns(tables: Tables) -> tuple:
    layout = tables.layout
    return layout.main_columns(), layout.head_columns(), layout.head_columns(), layout.trust_columns()


def _mark_synthetic(cells: dict, value_column: str) -> None:
    """A committed row written before synthetic rows were marked: its Data names the generated
    set ('hvc-synth'), so its number gets the mark too and never passes for a real one."""
    value = cells.get(value_column, "")
    if "synth" in cells.get("Data", "").lower() and value and value != NOT_RUN and SYNTHETIC_MARK not in value:
        cells[value_column] = value + SYNTHETIC_MARK
