"""`harness table`: MLflow runs -> one row per ledger iteration -> the markdown results table.

    harness table                      # runs.yaml -> experiments/RESULTS.md + README.md's block
    harness table --ledger experiments/cifar10_resnet20.yaml   # -> experiments/RESULTS-cifar10-resnet20.md
    harness table --plot experiments/results.png

Every number comes from MLflow or from the ledger; nothing is typed. Each iteration shows its
latest FINISHED parent run whose config sha equals the ledger's (the ledger resolved with that
run's profile, as `harness run` did); when there is none, the latest finished run is shown marked
"stale"; with no finished run at all the row reads "not run". MLflow is read with search_runs
through harness.tracking, each look-up returning at most one run, so a store of 500 runs costs
what one of 13 does. No TensorFlow here: the table answers in under three seconds.

The output has no timestamps or absolute paths, so running it twice yields identical bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from harness import ledger as ledger_mod
from harness import metrics as contract
from harness.data.labels import majority_rates
from harness.errors import InputError
from harness.records import RunRecord
from harness.settings import DEFAULT_LEDGER

RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"

CURRENT, STALE, NOT_RUN = "current", "stale", "not run"


@dataclass(frozen=True)
class Row:
    number: int
    name: str
    written: ledger_mod.Iteration  # as the ledger writes it (profile full)
    shown: ledger_mod.Iteration  # resolved with the run's profile: what the run trained
    parent: Optional[ledger_mod.Iteration]
    state: str  # CURRENT, STALE or NOT_RUN
    run: Optional[RunRecord] = None  # from harness.tracking.RunReader.latest_finished

    @property
    def profile(self) -> str:
        return self.run.profile if self.run else "full"


# --------------------------------------------------------------------------- rows


def collect(book: ledger_mod.Ledger, find: Callable[..., Optional[RunRecord]]) -> list[Row]:
    """One row per ledger iteration, in ledger order.

    `find(iteration, config_sha=None)` returns the newest FINISHED parent run record (of that
    sha, if given) or None: harness.tracking.RunReader.latest_finished. The common case costs
    one look-up per iteration: the newest finished run, current when its sha equals the ledger's
    under its own profile. Otherwise each profile's sha is looked up for a current run, and
    failing that the newest run is shown stale."""
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


# --------------------------------------------------------------------------- cells


def architecture(it: ledger_mod.Iteration) -> str:
    backbone = it.backbone.name + (f" ({it.backbone.weights})" if it.backbone.weights else "")
    if it.backbone.depth and it.backbone.depth != 20:
        backbone += f" depth {it.backbone.depth}"
    head = it.head
    neck = head.neck + (f"-{head.neck_units}" if head.neck_units else "")
    parts = [backbone, neck]
    if head.tower_units:
        tower = "towers " + "-".join(str(u) for u in head.tower_units)
        extras = [x for x, on in (("BN", head.batch_norm), ("linear last", head.last_activation == "linear"),
                                  ("1st Dense dead", head.tower_defect)) if on]
        parts.append(tower + (f" ({', '.join(extras)})" if extras else ""))
    return " + ".join(parts)


def freeze(it: ledger_mod.Iteration) -> str:
    def describe(policy) -> str:
        if isinstance(policy, str):
            return policy
        return ", ".join(f"{rule.pattern} {'trains' if rule.trainable else 'frozen'}" for rule in policy)

    text = describe(it.backbone.freeze)
    for index, pass_ in enumerate(it.passes):
        if pass_.freeze is not None:
            text += f"; pass {index + 1}: {describe(pass_.freeze)}"
    return text


def changes(row: Row) -> str:
    if row.parent is None:
        return "(root)"
    found = ledger_mod.diff(row.parent, row.written)
    return "; ".join(ledger_mod.format_change(k, old, new) for k, old, new in found) or "none"


def _acc(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4f}"


def _signed(value: Optional[float]) -> str:
    return "" if value is None else f"{value:+.4f}"


def _count(value: Optional[float]) -> str:
    return "" if value is None else f"{int(round(value)):,}"


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
    text = _acc(value) + (f" @ {epoch}" if epoch else "")
    if len(reported) > 1:
        text += f" (pass {index + 1})"
    return value, text


# --------------------------------------------------------------------------- table


def table_frame(book: ledger_mod.Ledger, rows: list[Row]):
    """The results table as a pandas DataFrame of display strings."""
    import pandas as pd

    dataset = book.resolve(book.names[0]).data.name
    single = contract.single_head(dataset)
    main = contract.primary_head(dataset)
    reported_key = contract.reported_key(dataset)
    main_metric = contract.best_val_acc(dataset)
    majority = majority_rates(dataset).get(main)

    records = []
    for row in rows:
        it, metrics = row.shown, row.run.metrics if row.run else {}
        best = metrics.get(main_metric)
        epoch = metrics.get(contract.BEST_EPOCH)
        cells = {
            "#": str(row.number),
            "Iteration": row.name,
            "Architecture": architecture(it),
            "Total params": _count(metrics.get(contract.TOTAL_PARAMS)),
            "Trainable params": _count(metrics.get(contract.TRAINABLE_PARAMS)),
            "Freeze": freeze(it),
            "Batch (train/val)": f"{it.batch_size.train}/{it.batch_size.eval}",
            "Epochs": it.epochs_label(),
        }
        if row.state == NOT_RUN:
            best_text = NOT_RUN
        else:
            best_text = _acc(best) + (f" @ {int(epoch)}" if best is not None and epoch is not None else "")
        cells["Best val acc (epoch)" if single else f"Best val {main} acc (epoch)"] = best_text
        for header, key in contract.table_columns(dataset):
            cells[header] = _acc(metrics.get(key))
        lift_header = f"{main.capitalize() if not single else 'Acc'} lift vs majority"
        lift_header += f" ({majority:.3f})" if majority is not None else ""
        cells[lift_header] = _signed(best - majority) if best is not None and majority is not None else ""
        seconds = metrics.get(contract.MEAN_EPOCH_SECONDS)
        cells["s/epoch"] = "" if seconds is None else f"{seconds:.1f}"
        cells["Changes vs parent"] = changes(row)
        reported, reported_text = _reported(_own(book, row, "reported", ()), reported_key)
        cells[f"Reported {reported_key}"] = reported_text
        cells["vs reported"] = _signed(best - reported) if best is not None and reported is not None else ""
        cells["Remark"] = _own(book, row, "remark", "")
        run_id = row.run.run_id if row.run else ""
        cells["Run"] = run_id[:8] + (" stale" if row.state == STALE else "")
        cells["Profile"] = row.profile if row.run else ""
        cells["Data"] = _data_label(row.run) if row.run else ""
        records.append({k: _cell(v) for k, v in cells.items()})
    return pd.DataFrame.from_records(records)


_RIGHT = ("#", "Total params", "Trainable params", "s/epoch")


def _data_label(record: RunRecord) -> str:
    """The data folder's name (`hvc-synth` is the generated synthetic set), else the fingerprint:
    a number from the synthetic set must never pass for one from the real data."""
    return Path(record.data_dir).name if record.data_dir else record.data_fingerprint


def _cell(text: str) -> str:
    """Markdown-safe: one line, no unescaped pipe."""
    return " ".join(str(text).split()).replace("|", "\\|")


def to_markdown(frame) -> str:
    align = ["right" if c in _RIGHT or c.startswith(("Best val", "val ")) or "lift" in c or c == "vs reported"
             else "left" for c in frame.columns]
    return frame.to_markdown(index=False, tablefmt="pipe", disable_numparse=True, colalign=align)


def notes(book: ledger_mod.Ledger, rows: list[Row]) -> list[str]:
    dataset = book.resolve(book.names[0]).data.name
    single = contract.single_head(dataset)
    key = contract.best_val_acc(dataset)
    counts = {state: sum(r.state == state for r in rows) for state in (CURRENT, STALE, NOT_RUN)}
    lines = [
        f"{len(rows)} iterations: {counts[CURRENT]} with a current run, {counts[STALE]} stale, "
        f"{counts[NOT_RUN]} not run.",
        "",
        f"- Best val {contract.ACC.short if single else contract.primary_head(dataset) + ' acc'} (epoch): MLflow's `{key}` "
        f"of the run and its `{contract.BEST_EPOCH}` (epochs counted across passes)"
        + ("." if single else "; each other head's column is its best over all epochs."),
        "- Lift vs majority: the best accuracy minus the share of the most frequent class; a head at "
        "its majority rate has learned nothing.",
        "- Architecture, Freeze, Batch and Epochs are the ledger's iteration under the run's profile "
        "(`smoke` and `cpu` shrink images, data and epochs: their accuracies are not comparable with "
        "the notes'). Changes vs parent is `harness show ITER`'s diff of the ledger as written.",
        "- Reported: the notes' number (the best over the passes they report), and the run's "
        "difference from it.",
        "- Data: the folder the run trained on; `hvc-synth` is the synthetic set generated when no "
        "data is given, so its numbers say nothing about the real dataset.",
        "- Run `stale`: the latest finished run was trained with an older config of this iteration; "
        "train it again with `make run ITER=name`.",
    ]
    return lines


def render(book: ledger_mod.Ledger, rows: list[Row], ledger_label: str) -> tuple[str, str]:
    """(the RESULTS file's text, the README block's text)."""
    table = to_markdown(table_frame(book, rows))
    out_text = "\n".join([
        f"# Results: {book.experiment}",
        "",
        f"Generated from MLflow by `harness table --ledger {ledger_label}` (`make table`); do not edit "
        "by hand. One row per ledger iteration, in ledger order, from its latest finished run whose "
        "config matches the ledger.",
        "",
        table,
        "",
        *notes(book, rows),
    ]) + "\n"
    return out_text, table


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


# --------------------------------------------------------------------------- plot


def plot(book: ledger_mod.Ledger, rows: list[Row], path: Path) -> Path:
    """Best validation accuracy per head for each iteration (one panel per head), each head's
    majority rate as a dashed reference line; stale runs hatched, iterations not run left empty."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    dataset = book.resolve(book.names[0]).data.name
    single = contract.single_head(dataset)
    heads = contract.heads_of(dataset)
    rates = majority_rates(dataset)
    cols = min(4, len(heads))
    nrows = -(-len(heads) // cols)
    width = max(4.0, 0.42 * len(rows) + 1.5)
    figure = Figure(figsize=(width * cols, 3.4 * nrows), layout="constrained")
    axes = figure.subplots(nrows, cols, squeeze=False)
    x = list(range(len(rows)))
    for ax, head in zip(axes.flat, heads):
        key = contract.best_val_acc(dataset, head)
        for i, row in enumerate(rows):
            value = row.run.metrics.get(key) if row.run else None
            if value is None:
                continue
            stale = row.state == STALE
            ax.bar(i, value, color="lightgrey" if stale else "tab:blue", hatch="//" if stale else None,
                   edgecolor="grey" if stale else "tab:blue")
        if head in rates:
            ax.axhline(rates[head], color="tab:red", linestyle="--", linewidth=1.2)
            ax.text(len(rows) - 0.5, rates[head], f"majority {rates[head]:.3f}", color="tab:red",
                    ha="right", va="bottom", fontsize=8)
        ax.set_title("val acc" if single else head)
        ax.set_ylim(0, 1)
        ax.set_xticks(x, [row.name for row in rows], rotation=60, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(heads):]:
        ax.axis("off")
    figure.legend(handles=[Patch(color="tab:blue", label="current run"),
                           Patch(facecolor="lightgrey", edgecolor="grey", hatch="//", label="stale run"),
                           Line2D([], [], color="tab:red", linestyle="--", label="majority rate")],
                  loc="outside lower center", ncols=3, fontsize=8)
    figure.suptitle(f"{book.experiment}: best validation accuracy per head (empty: not run)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


# --------------------------------------------------------------------------- command


def run_table(book: ledger_mod.Ledger, ledger_label: str, *, out: Optional[str] = None,
              readme: Optional[str] = None, no_readme: bool = False, plot_path: Optional[str] = None,
              tracking_uri: Optional[str] = None, log=print) -> int:
    """`harness table`: print the table, write the RESULTS file, refresh the README block.

    The README (default README.md) is refreshed only for the default ledger runs.yaml, or for
    any ledger when --readme names one; --no-readme skips it."""
    from harness.tracking import RunReader

    reader = RunReader(tracking_uri, book.experiment)
    uri = reader.uri
    rows = collect(book, reader.latest_finished)
    text, block = render(book, rows, ledger_label)
    log(block)
    out_path = Path(out) if out else default_out(ledger_label, book.experiment)
    log(f"{out_path}: {'written' if write_if_changed(out_path, text) else 'unchanged'} "
        f"(experiment {book.experiment} in {uri})")
    if not no_readme and (readme or is_default_ledger(ledger_label)):
        readme_path = Path(readme or "README.md")
        link = f"From `{book.experiment}`; notes and column meanings in [{out_path.as_posix()}]({out_path.as_posix()})."
        changed = refresh_readme(readme_path, block + "\n\n" + link)
        log(f"{readme_path}: results block {'refreshed' if changed else 'unchanged'}")
    if plot_path:
        log(f"{plot(book, rows, Path(plot_path))}: chart written")
    return 0
