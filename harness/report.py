"""`harness table`: MLflow runs -> one row per ledger iteration -> the results tables.

    harness table                      # runs.yaml -> experiments/RESULTS.md + README.md's block
    harness table --ledger experiments/cifar10_resnet20.yaml   # -> experiments/RESULTS-cifar10-resnet20.md
    harness table --out /tmp/r.md      # that file only; README.md and RESULTS.md untouched
    harness table --format csv         # the store's rows with raw numbers, for tools (stdout or --out)
    harness table --rebuild            # from the store alone, dropping committed rows it does not know

Every number comes from MLflow or from the ledger; nothing is typed. Each iteration shows its
latest FINISHED parent run whose config sha equals the ledger's (the ledger resolved with that
run's profile, as `harness run` did); when there is none, the latest finished run is shown marked
"stale"; with no finished run at all the row reads "not run". The value shown is the run's
selected checkpoint (`selected_val_{head}_acc` at `selected_epoch`, the best by the last pass's
monitor); runs older than that summary show their best epoch instead (marked). Reference runs
(`harness reference`: majority class, linear probe) are rows under the iterations, and each
iteration's lift over them is taken on the same validation split (tag harness.split).

Three outputs, one source: the README block holds the notes' columns only, no line over
README_WIDTH bytes (long text cells are cut, the full text is in RESULTS.md); RESULTS.md holds the
full main table (run id, start, profile, data, reported numbers) and one table per metric with a
column per head. Committed rows whose runs this store does not know are kept (harness.committed).

Runs are read by harness.fast_store.open_reader: straight from a SQLite store of a known schema,
else through harness.tracking.RunReader (MLflow's client). No TensorFlow, no pandas. The output
holds no timestamps but the runs' own start times, so running it twice yields identical bytes.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from harness import committed
from harness import ledger as ledger_mod
from harness import metrics as contract
from harness.changes import describe_freeze, short_changes
from harness.data.labels import majority_rates
from harness.errors import InputError
from harness.records import (REFERENCE_LINEAR_PROBE, REFERENCE_MAJORITY, TAG_REFERENCE, TAG_SPLIT, TAG_SYNTHETIC,
                             RunRecord)
from harness.settings import DEFAULT_LEDGER

RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"
README_WIDTH = 220  # bytes per line of the README block (a hook checks it)

CURRENT, STALE, NOT_RUN = "current", "stale", "not run"

SYNTHETIC_MARK = "†"  # the run trained on a synthetic set
BEST_MARK = "‡"  # an older run without the selected checkpoint: its best epoch is shown
RATE_MARK = "°"  # no majority reference on the run's split: the catalog's majority rate is used
ELLIPSIS = "…"

REFERENCE_LABELS = {REFERENCE_MAJORITY: "majority", REFERENCE_LINEAR_PROBE: "linear probe"}

MAIN_HEADING, ACC_HEADING, BACC_HEADING = "Iterations", "Validation accuracy per head", "Balanced accuracy per head"


@dataclass(frozen=True)
class Row:
    number: int
    name: str
    written: ledger_mod.Iteration  # as the ledger writes it (profile full)
    shown: ledger_mod.Iteration  # resolved with the run's profile: what the run trained
    parent: Optional[ledger_mod.Iteration]
    state: str  # CURRENT, STALE or NOT_RUN
    run: Optional[RunRecord] = None  # from the reader's latest_finished

    @property
    def profile(self) -> str:
        return self.run.profile if self.run else "full"


# --------------------------------------------------------------------------- rows


def collect(book: ledger_mod.Ledger, find: Callable[..., Optional[RunRecord]]) -> list[Row]:
    """One row per ledger iteration, in ledger order.

    `find(iteration, config_sha=None)` returns the newest FINISHED parent run record (of that
    sha, if given) or None: a reader's latest_finished. The common case costs one look-up per
    iteration: the newest finished run, current when its sha equals the ledger's under its own
    profile. Otherwise each profile's sha is looked up for a current run, and failing that the
    newest run is shown stale."""
    cache: dict[tuple[str, str], Optional[ledger_mod.Iteration]] = {}

    def resolve(name: str, profile: str) -> Optional[ledger_mod.Iteration]:
        if (name, profile) not in cache:
            try:
                cache[(name, profile)] = book.resolve(name, profile)
            except ledger_mod.LedgerError:  # a profile the ledger no longer has
                cache[(name, profile)] = None
        return cache[(name, profile)]

    def current(name: str, record: RunRecord) -> Optional[ledger_mod.Iteration]:
        resolved = resolve(name, record.profile)
        if resolved is not None and resolved.config_sha() == record.config_sha:
            return resolved
        return None

    rows = []
    for number, name in enumerate(book.names, start=1):
        written = resolve(name, "full")
        parent = resolve(written.extends, "full") if written.extends else None
        latest = find(name)
        if latest is None:
            rows.append(Row(number, name, written, written, parent, NOT_RUN))
            continue
        shown = current(name, latest)
        if shown is not None:
            rows.append(Row(number, name, written, shown, parent, CURRENT, latest))
            continue
        matches = []
        shas = {latest.config_sha}
        for profile in ("full", *book.profiles):
            resolved = resolve(name, profile)
            if resolved is None or resolved.config_sha() in shas:
                continue
            shas.add(resolved.config_sha())
            record = find(name, resolved.config_sha())
            if record is not None and current(name, record) is not None:
                matches.append(record)
        if matches:
            record = max(matches, key=lambda r: r.start_time or 0)
            rows.append(Row(number, name, written, current(name, record), parent, CURRENT, record))
        else:
            shown = resolve(name, latest.profile) or written
            rows.append(Row(number, name, written, shown, parent, STALE, latest))
    return rows


def latest_references(records: list[RunRecord]) -> dict[tuple[str, str], RunRecord]:
    """(reference, split) -> the newest finished reference run of it (records come newest first)."""
    found: dict[tuple[str, str], RunRecord] = {}
    for record in records:
        key = (record.tags.get(TAG_REFERENCE, ""), record.tags.get(TAG_SPLIT, ""))
        if key[0] in REFERENCE_LABELS:
            found.setdefault(key, record)
    return found


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Score:
    """A head's validation accuracy as the table shows it, and where it came from."""

    value: Optional[float]
    epoch: Optional[int]
    selected: bool  # the selected checkpoint's (else an older run's best epoch)


def score(record: Optional[RunRecord], dataset: str, head: Optional[str] = None) -> Score:
    """The selected checkpoint's accuracy of `head` (default: the primary head) and its epoch;
    for runs logged before the selected checkpoint existed, the best epoch's."""
    if record is None:
        return Score(None, None, False)
    head = head or contract.primary_head(dataset)
    found = record.metrics
    selected = found.get(contract.selected_name(dataset, head, contract.ACC.short))
    if selected is not None:
        epoch = found.get(contract.SELECTED_EPOCH)
        return Score(selected, int(epoch) if epoch is not None else None, True)
    best = found.get(contract.best_val_acc(dataset, head))
    epoch = found.get(contract.BEST_EPOCH) if head == contract.primary_head(dataset) else None
    return Score(best, int(epoch) if best is not None and epoch is not None else None, False)


def balanced(record: Optional[RunRecord], dataset: str, head: Optional[str] = None) -> Optional[float]:
    """The selected checkpoint's balanced accuracy of `head`, or their mean over heads (None)."""
    if record is None:
        return None
    name = contract.selected_name(dataset, head, contract.BALANCED_ACC) if head else \
        contract.selected_mean_name(contract.BALANCED_ACC)
    return record.metrics.get(name)


def is_synthetic(record: RunRecord) -> bool:
    """A run on generated data (hvc-synth, `harness data synth`, the synthetic CIFAR stand-in):
    its numbers say nothing about the real dataset and must never pass for real ones."""
    tagged = record.tags.get(TAG_SYNTHETIC)
    if tagged is not None:
        return tagged == "true"
    return "synth" in f"{Path(record.data_dir).name} {record.name or ''}".lower()  # runs from before the tag


# How the table names a dataset when it names its split too.
DATASET_NAMES = {"cifar10": "CIFAR-10"}


def data_label(record: RunRecord) -> str:
    """What the run trained and validated on, so a synthetic number never passes for a real one:
    'hvc real (6,000 images)', 'hvc synthetic (64 images)', 'CIFAR-10 real (5,085 train / 500 test)'.
    The dataset and its image count come
    from the split tag ('hvc 1a2b3c4d5e6f 6000 rows, val 0.15 seed 1'); runs without one show the
    data folder's name (else the fingerprint)."""
    split = record.tags.get(TAG_SPLIT, "")
    found = re.match(r"(\S+) \S+ (\d+) rows", split)
    kind = "synthetic" if is_synthetic(record) else "real"
    own = re.search(r"own split \((\d+) train / (\d+) test\)", split)
    if found and own:  # CIFAR-10's own train and test batches
        name = DATASET_NAMES.get(found.group(1), found.group(1))
        return f"{name} {kind} ({int(own.group(1)):,} train / {int(own.group(2)):,} test)"
    if found:
        return f"{found.group(1)} {kind} ({int(found.group(2)):,} images)"
    return f"{Path(record.data_dir).name if record.data_dir else record.data_fingerprint} {kind}"


@dataclass(frozen=True)
class Lifts:
    majority: Optional[float]
    from_rate: bool  # the catalog's majority rate stood in for a reference run
    probe: Optional[float]


def lifts(record: Optional[RunRecord], refs: dict, dataset: str) -> Lifts:
    """The primary head's value minus each reference's on the run's own split."""
    value = score(record, dataset).value
    if value is None:
        return Lifts(None, False, None)
    split = record.tags.get(TAG_SPLIT, "")
    majority, probe = refs.get((REFERENCE_MAJORITY, split)), refs.get((REFERENCE_LINEAR_PROBE, split))
    majority_value = score(majority, dataset).value if majority else None
    from_rate = majority_value is None
    if from_rate:
        majority_value = majority_rates(dataset).get(contract.primary_head(dataset))
    probe_value = score(probe, dataset).value if probe else None
    return Lifts(None if majority_value is None else value - majority_value, from_rate,
                 None if probe_value is None else value - probe_value)


# --------------------------------------------------------------------------- cells


def architecture(it: ledger_mod.Iteration) -> str:
    backbone = it.backbone.name + (f" ({it.backbone.weights})" if it.backbone.weights else "")
    if it.backbone.depth and it.backbone.depth != 20:
        backbone += f" depth {it.backbone.depth}"
    head = it.head
    parts = [backbone, head.neck + (f"-{head.neck_units}" if head.neck_units else "")]
    if head.tower_units:
        units = head.tower_units
        parts.append(f"{len(units)}x{units[0]}" if len(set(units)) == 1 else "-".join(str(u) for u in units))
        extras = [x for x, on in (("BN", head.batch_norm), ("lin", head.last_activation == "linear"),
                                  ("1st dead", head.tower_defect)) if on]
        parts += [f"[{' '.join(extras)}]"] if extras else []
    return " ".join(parts)


def freeze(it: ledger_mod.Iteration) -> str:
    text = describe_freeze(it.backbone.freeze)
    for index, pass_ in enumerate(it.passes):
        if pass_.freeze is not None:
            text += f"; pass {index + 1}: {describe_freeze(pass_.freeze)}"
    return text


def changes(row: Row) -> str:
    return "(root)" if row.parent is None else short_changes(row.parent, row.written)


def acc_text(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4f}"


def signed(value: Optional[float]) -> str:
    return "" if value is None else f"{value:+.4f}"


def params_text(metrics: dict) -> str:
    total, trainable = metrics.get(contract.TOTAL_PARAMS), metrics.get(contract.TRAINABLE_PARAMS)
    if total is None:
        return ""
    return f"{int(round(total)):,}/{int(round(trainable or 0)):,}"


def compact_params(cell: str) -> str:
    """'28,221,147/13,506,459' -> '28.2M/13.5M' (the README's width)."""
    def one(text: str) -> str:
        try:
            n = int(text.replace(",", ""))
        except ValueError:
            return text
        return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k" if n >= 1e3 else str(n)

    return "/".join(one(part.strip()) for part in cell.split("/")) if cell else ""


def _own(book: ledger_mod.Ledger, row: Row, key: str, empty):
    """A descriptive key as the iteration itself writes it: `extends` passes remarks and the
    notes' numbers down to children, but a child's row must not show its parent's."""
    if key not in (book.raw_iterations.get(row.name) or {}):
        return empty
    return getattr(row.written, key)


def _reported(reported: tuple, key: str) -> tuple[Optional[float], str]:
    """The notes' best number for a head over the reported passes, and how to show it."""
    found = [(p.val_acc[key], index, p.epoch) for index, p in enumerate(reported) if key in p.val_acc]
    if not found:
        return None, ""
    value, index, epoch = max(found, key=lambda f: f[0])
    text = acc_text(value) + (f" @ {epoch}" if epoch else "")
    if len(reported) > 1:
        text += f" (pass {index + 1})"
    return value, text


def cell(text) -> str:
    """One line, pipes kept apart from the table's."""
    return " ".join(str(text).split()).replace("|", "\\|")


# --------------------------------------------------------------------------- tables


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
                "vs majority", "vs probe", "s/epoch", "Changes vs parent", "Remark"]

    def main_columns(self) -> list[str]:
        return self.readme_columns() + [self.reported, "vs reported", "Run", "Started (UTC)", "Profile", "Data",
                                        "Split"]

    def head_columns(self) -> list[str]:
        return ["#", "Iteration"] + self.heads + (["mean"] if len(self.heads) > 1 else [])


RIGHT = {"#", "Total/trainable", "s/epoch", "vs majority", "vs probe", "vs reported"}


def iteration_cells(book: ledger_mod.Ledger, row: Row, refs: dict, layout: Layout) -> tuple[dict, dict, dict]:
    """(main, accuracy, balanced accuracy) cells of one iteration's row."""
    it, run, dataset = row.shown, row.run, layout.dataset
    found = run.metrics if run else {}
    headline = score(run, dataset)
    if row.state == NOT_RUN:
        value = NOT_RUN
    else:
        value = acc_text(headline.value) + (f" @ {headline.epoch}" if headline.epoch is not None else "")
        value += ("" if headline.selected else BEST_MARK) + (SYNTHETIC_MARK if is_synthetic(run) else "")
    lift = lifts(run, refs, dataset)
    seconds = found.get(contract.MEAN_EPOCH_SECONDS)
    reported, reported_text = _reported(_own(book, row, "reported", ()), contract.reported_key(dataset))
    main = {
        "#": str(row.number), "Iteration": row.name, "Architecture": architecture(it),
        "Total/trainable": params_text(found), "Freeze": freeze(it),
        "Batch": f"{it.batch_size.train}/{it.batch_size.eval}", "Epochs": it.epochs_label(), layout.value: value,
        "vs majority": signed(lift.majority) + (RATE_MARK if lift.majority is not None and lift.from_rate else ""),
        "vs probe": signed(lift.probe), "s/epoch": "" if seconds is None else f"{seconds:.1f}",
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


def build(book: ledger_mod.Ledger, rows: list[Row], refs: dict) -> Tables:
    layout = Layout(book.resolve(book.names[0]).data.name)
    tables = Tables(layout, [], [], [])
    for row in rows:
        for target, cells in zip((tables.main, tables.accs, tables.baccs), iteration_cells(book, row, refs, layout)):
            target.append(cells)
    for key in sorted(refs):
        for target, cells in zip((tables.main, tables.accs, tables.baccs), reference_cells(refs[key], layout)):
            target.append(cells)
    return tables


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
    reference on the same split. `known(ids)` answers which run ids the store holds."""
    found = {table.heading: table for table in previous}
    main_table = found.get(MAIN_HEADING) or next((t for t in previous if "Run" in t.columns), None)
    if main_table is None:
        return tables
    by_table = [t.rows if t else [] for t in (main_table, found.get(ACC_HEADING), found.get(BACC_HEADING))]
    legacy = [from_legacy(r, tables.layout) for r in by_table[0]]
    by_table[0] = [main for main, _ in legacy]
    if not by_table[1]:  # the wide table held the per-head accuracies itself
        by_table[1] = [accs | {"#": r.get("#", ""), "Iteration": r.get("Iteration", "")}
                       for r, (_, accs) in zip(by_table[0], legacy)]
    old = [{r.get("Iteration"): r for r in rows_ if r.get("#") != "ref"} for rows_ in by_table]
    old_refs = [[r for r in rows_ if r.get("#") == "ref"] for rows_ in by_table]
    run_of = lambda cells: cells.get("Run", "").split(" ")[0]  # noqa: E731  ("id stale" -> id)
    holds = known([run_of(r) for r in by_table[0] if run_of(r)])
    targets = (tables.main, tables.accs, tables.baccs)
    for index, row in enumerate(rows):
        before = old[0].get(row.name)
        if before is None or not committed.keeps(run_of(before), before.get("Started (UTC)", ""),
                                                 row.run.start_time if row.run else None, run_of(before) in holds):
            continue
        tables.kept.add(row.name)
        for target, cells in zip(targets, (before, old[1].get(row.name, {}), old[2].get(row.name, {}))):
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
        for target, rows_ in zip(targets, old_refs):
            before = rows_[i] if i < len(rows_) else {}
            target.append({column: before.get(column, "") for column in target[0]})
    return tables


def _mark_synthetic(cells: dict, value_column: str) -> None:
    """A committed row written before synthetic rows were marked: its Data names the generated
    set ('hvc-synth'), so its number gets the mark too and never passes for a real one."""
    value = cells.get(value_column, "")
    if "synth" in cells.get("Data", "").lower() and value and value != NOT_RUN and SYNTHETIC_MARK not in value:
        cells[value_column] = value + SYNTHETIC_MARK


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
        "Balanced accuracy (mean recall over a head's classes) exists for runs with a selected checkpoint only.",
    ]) + "\n"
    return results, readme_table(tables) + "\n\n" + "\n".join(note_lines)


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


# --------------------------------------------------------------------------- files


def default_out(ledger_path: str, experiment: str) -> Path:
    """experiments/RESULTS.md for runs.yaml, experiments/RESULTS-<experiment>.md otherwise."""
    if Path(ledger_path).name == DEFAULT_LEDGER:
        return Path("experiments") / "RESULTS.md"
    return Path("experiments") / f"RESULTS-{experiment}.md"


def is_default_ledger(ledger_path: str) -> bool:
    return Path(ledger_path).resolve() == Path(DEFAULT_LEDGER).resolve()


def replace_block(text: str, block: str, where: str) -> str:
    start = text.find(RESULTS_START)
    end = text.find(RESULTS_END, start + len(RESULTS_START)) if start >= 0 else -1
    if start < 0 or end < 0:
        raise InputError(f"{where}: no '{RESULTS_START}' ... '{RESULTS_END}' block to refresh")
    return text[:start + len(RESULTS_START)] + "\n" + block.strip("\n") + "\n" + text[end:]


def refresh_readme(path: Path, block: str) -> bool:
    """Rewrite the results block of a README; True when the file changed. The rest of the file
    is left byte for byte; the same block twice changes nothing."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: README not found") from None
    new = replace_block(text, block, str(path))
    if new == text:
        return False
    path.write_text(new)
    return True


def write_if_changed(path: Path, text: str) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


# --------------------------------------------------------------------------- command


def run_table(book: ledger_mod.Ledger, ledger_label: str, *, out: Optional[str] = None, fmt: str = "md",
              rebuild: bool = False, readme: Optional[str] = None, no_readme: bool = False,
              plot_path: Optional[str] = None, tracking_uri: Optional[str] = None, log=print) -> int:
    """`harness table`: print the README block, write the RESULTS file, refresh the README block.

    With --out FILE only that file is written (and --readme FILE, when given too). Without it:
    the default RESULTS file, and README.md's block for the default ledger runs.yaml (or the
    --readme FILE for any ledger) unless --no-readme. csv and json go to stdout or --out only."""
    from harness.fast_store import open_reader

    reader = open_reader(tracking_uri, book.experiment)
    rows = collect(book, reader.latest_finished)
    refs = latest_references(reader.references())
    if fmt in ("csv", "json"):
        text = export(records_for_tools(rows, refs, book.resolve(book.names[0]).data.name), fmt)
        if out:
            write_if_changed(Path(out), text)
            log(f"{out}: {len(rows)} iterations, {len(refs)} references as {fmt}")
        else:
            log(text.rstrip("\n"))
        return 0
    out_path = Path(out) if out else default_out(ledger_label, book.experiment)
    tables = build(book, rows, refs)
    if not rebuild:
        tables = merge_committed(tables, committed.read_tables(out_path), rows, reader.known)
    text, block = render(book, tables, rows, refs, ledger_label)
    log(block)
    if tables.kept or tables.kept_references:
        log(f"kept {len(tables.kept) + tables.kept_references} committed row(s) whose runs this store does not know "
            f"(--rebuild drops them)")
    log(f"{out_path}: {'written' if write_if_changed(out_path, text) else 'unchanged'} "
        f"(experiment {book.experiment} in {reader.uri})")
    if not no_readme and (readme or (not out and is_default_ledger(ledger_label))):
        readme_path = Path(readme or "README.md")
        link = f"Full tables, run ids and notes: [{out_path.as_posix()}]({out_path.as_posix()})."
        changed = refresh_readme(readme_path, block + "\n\n" + link)
        log(f"{readme_path}: results block {'refreshed' if changed else 'unchanged'}")
    if plot_path:
        from harness.report_plot import plot

        log(f"{plot(book, rows, Path(plot_path), lambda run, head: score(run, tables.layout.dataset, head).value)}: "
            "chart written")
    return 0
