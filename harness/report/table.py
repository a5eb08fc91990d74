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
column per head. Committed rows whose runs this store does not know are kept (harness.report.committed).

Runs are read by harness.track.fast_store.open_reader: straight from a SQLite store of a known schema,
else through harness.track.reader.MlflowReader (MLflow's client). No TensorFlow; pandas only through
statsmodels' McNemar test, when rows have predictions. The output holds no timestamps but the runs'
own start times, so running it twice yields identical bytes (the bootstrap's generator is seeded).

Trust statistics (harness.report.trust, harness.report.stats): each row's gender difference to its
parent iteration's run and its verdict (`vs parent`), a repeat group's mean ± sd (n=N) as the value,
and a last table with every head's paired interval, McNemar p and the notes' remark beside the
measured verdict; reference rows get their accuracy's 95% interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from harness.report import committed
from harness import ledger as ledger_mod
from harness.core.errors import InputError
from harness.core.settings import DEFAULT_LEDGER
from harness.report.render import RESULTS_END, RESULTS_START, export, records_for_tools, render
from harness.report.rows import collect, latest_references, score
from harness.report.tables import build, merge_committed


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
    from harness.track.fast_store import open_reader

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
    from harness.report.trust import table_trust

    tables = build(book, rows, refs, table_trust(reader, rows, refs, book.resolve(book.names[0]).data.name))
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
        from harness.report.plot import plot

        log(f"{plot(book, rows, Path(plot_path), lambda run, head: score(run, tables.layout.dataset, head).value)}: "
            "chart written")
    return 0
