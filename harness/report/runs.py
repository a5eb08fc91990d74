"""`harness runs [ITER]`: every run of the ledger's experiment, newest first, with its state.

    harness runs                 # every iteration run and reference run
    harness runs eleventh        # the runs of one iteration
    harness runs --json

One line per run: run id, iteration, status (running, finished, failed, killed), profile, data
(synthetic sets marked), the primary head's validation accuracy with its epoch (the selected
checkpoint's; older runs their best epoch, marked), epochs done out of the iteration's total,
duration and start time (UTC). The table keeps only the latest run per iteration; this shows all
of them. Read through harness.track.fast_store.open_reader: no TensorFlow, and no MLflow import for a
local SQLite store.
"""

from __future__ import annotations

import json
import time
from typing import Optional

from harness.core import metrics as contract
from harness.report.committed import started_text
from harness.core.errors import InputError
from harness.core.records import (FINISHED, SYNTHETIC_SUFFIX, TAG_ITERATION, TAG_OVERRIDES, TAG_REFERENCE,
                                  TAG_REPRODUCES, RunRecord)
from harness.report.cells import BEST_MARK, SYNTHETIC_MARK
from harness.report.rows import data_label, is_synthetic, score


def duration(record: RunRecord, now_ms: Optional[int] = None) -> str:
    """How long the run took (or has been going, while RUNNING): 45s, 3m05s, 1h02m."""
    if not record.start_time:
        return ""
    end = record.end_time or (now_ms or int(time.time() * 1000))
    seconds = max(0, (end - record.start_time) // 1000)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def total_epochs(book, record: RunRecord, known: Optional[dict] = None) -> Optional[int]:
    """The epochs the run's iteration has under the run's profile (None when the ledger no
    longer resolves it so). `known` keeps the answers by (iteration, profile) across one
    listing: 500 runs are a dozen iterations, and resolving one costs about a millisecond."""
    from harness.ledger.schema import LedgerError

    key = (record.iteration, record.profile)
    if known is not None and key in known:
        return known[key]
    try:
        total = book.resolve(record.iteration, record.profile).total_epochs
    except (LedgerError, KeyError, TypeError):
        total = None
    if known is not None:
        known[key] = total
    return total


def describe(book, record: RunRecord, dataset: str, known: Optional[dict] = None) -> dict:
    """A run as `harness runs` shows it (and --json gives it); `known`: total_epochs's answers."""
    headline = score(record, dataset)
    done = int(record.steps.get(contract.LOSS, 0) or 0)
    total = total_epochs(book, record, known) if record.iteration else None
    reference = record.tags.get(TAG_REFERENCE)
    shown = record.iteration or (f"reference/{reference}" if reference else record.name)
    overrides = json.loads(record.tags[TAG_OVERRIDES]) if record.tags.get(TAG_OVERRIDES) else None
    if overrides:  # a --set variant: its name shows the change (`eleventh +lr=3e-4`)
        shown = record.name.removesuffix(SYNTHETIC_SUFFIX)
    return {
        "run_id": record.run_id, "iteration": shown, "overrides": overrides,
        "reproduces": record.tags.get(TAG_REPRODUCES),
        "status": record.status.lower(), "profile": record.profile, "data": data_label(record),
        "synthetic": is_synthetic(record), "value": headline.value, "epoch": headline.epoch,
        "selected_checkpoint": headline.selected, "epochs_done": done, "epochs_total": total,
        "duration": duration(record), "started": started_text(record.start_time),
    }


def line_cells(shown: dict) -> list[str]:
    value = "" if shown["value"] is None else f"{shown['value']:.4f}"
    if value and shown["epoch"] is not None:
        value += f" @ {shown['epoch']}"
    if value and not shown["selected_checkpoint"]:
        value += BEST_MARK
    epochs = f"{shown['epochs_done']}/{shown['epochs_total']}" if shown["epochs_total"] else str(shown["epochs_done"] or "")
    data = shown["data"] + (SYNTHETIC_MARK if shown["synthetic"] else "")
    return [shown["run_id"][:8], shown["iteration"], shown["status"], shown["profile"], data, value, epochs,
            shown["duration"], shown["started"]]


def run_list(book, iteration: Optional[str] = None, *, tracking_uri: Optional[str] = None, as_json: bool = False,
             log=print) -> int:
    """Print the runs; exit code 0 (2 for an iteration neither the ledger nor the store knows)."""
    from tabulate import tabulate

    from harness.track.fast_store import open_reader

    dataset = book.resolve(book.names[0]).data.name
    reader = open_reader(tracking_uri, book.experiment)
    records = reader.runs(iteration, variants=True) if iteration else sorted(
        reader.runs(variants=True) + reader.references(), key=lambda r: r.start_time or 0, reverse=True)
    if iteration and not records and iteration not in book.names:
        book.resolve(iteration)  # the ledger's "no iteration named ..." with its did-you-mean
    known: dict = {}
    shown = [describe(book, record, dataset, known) for record in records]
    if as_json:
        log(json.dumps(shown, indent=1))
        return 0
    if not shown:
        which = f"iteration {iteration}" if iteration else "any iteration"
        log(f"no runs of {which} in experiment {book.experiment} ({reader.uri}); train one with `make run ITER=name`")
        return 0
    main = "acc" if contract.single_head(dataset) else contract.primary_head(dataset)
    headers = ["run", "iteration", "status", "profile", "data", f"val {main} (epoch)", "epochs", "duration",
               "started (UTC)"]
    log(tabulate([line_cells(s) for s in shown], headers=headers, tablefmt="simple", disable_numparse=True))
    finished = sum(r.status == FINISHED for r in records)
    marks = []
    if any(s["synthetic"] for s in shown):
        marks.append(f"{SYNTHETIC_MARK} synthetic data")
    if any(s["value"] is not None and not s["selected_checkpoint"] for s in shown):
        marks.append(f"{BEST_MARK} best epoch (run older than the selected checkpoint)")
    log(f"{len(shown)} runs ({finished} finished) in experiment {book.experiment}, {reader.uri}"
        + (f"; {'; '.join(marks)}" if marks else ""))
    return 0


def find_runs(book, reader, wanted: list[str]) -> list[RunRecord]:
    """Each of `wanted` (an iteration: its latest finished run, else its latest run; or a run id
    or an unambiguous prefix of one) as a record with params. InputError names what is unknown."""
    found = []
    for key in wanted:
        record = None
        if key in book.names or reader.runs(key):
            record = reader.latest_finished(key) or next(iter(reader.runs(key)), None)
            if record is None:
                raise InputError(f"compare: iteration {key} has no run in experiment {book.experiment} "
                                 f"({reader.uri}); train it with `make run ITER={key}`")
        record = reader.run(record.run_id if record else key)
        if record is None:
            raise InputError(f"compare: '{key}' is neither an iteration of {book.path} with runs nor a run id "
                             f"(or unambiguous prefix) in {reader.uri}")
        found.append(record)
    return found


def label(record: RunRecord) -> str:
    """A run's column header in `compare`: its iteration (a variant's name with its change) and id."""
    name = record.tags.get(TAG_ITERATION) or record.name
    if record.tags.get(TAG_OVERRIDES):
        name = record.name.removesuffix(SYNTHETIC_SUFFIX)
    return f"{name} ({record.run_id[:8]})"
