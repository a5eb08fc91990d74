"""The table's rows: each ledger iteration's run (current, stale or not run), the reference runs,
and the values read off a run (score, balanced accuracy, lifts over the references).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from harness import ledger as ledger_mod
from harness.core import metrics as contract
from harness.core.labels import majority_rates
from harness.core.records import (REFERENCE_LINEAR_PROBE, REFERENCE_MAJORITY, TAG_REFERENCE, TAG_SPLIT,
                                  TAG_SYNTHETIC, RunRecord)


CURRENT, STALE, NOT_RUN = "current", "stale", "not run"

REFERENCE_LABELS = {REFERENCE_MAJORITY: "majority", REFERENCE_LINEAR_PROBE: "linear probe"}


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


@dataclass(frozen=True)
class RunScore:
    """A head's validation accuracy as the table shows it, and where it came from."""

    value: Optional[float]
    epoch: Optional[int]
    selected: bool  # the selected checkpoint's (else an older run's best epoch)


def score(record: Optional[RunRecord], dataset: str, head: Optional[str] = None) -> RunScore:
    """The selected checkpoint's accuracy of `head` (default: the primary head) and its epoch;
    for runs logged before the selected checkpoint existed, the best epoch's."""
    if record is None:
        return RunScore(None, None, False)
    head = head or contract.primary_head(dataset)
    found = record.metrics
    selected = found.get(contract.selected_name(dataset, head, contract.ACC.short))
    if selected is not None:
        epoch = found.get(contract.SELECTED_EPOCH)
        return RunScore(selected, int(epoch) if epoch is not None else None, True)
    best = found.get(contract.best_val_acc(dataset, head))
    epoch = found.get(contract.BEST_EPOCH) if head == contract.primary_head(dataset) else None
    return RunScore(best, int(epoch) if best is not None and epoch is not None else None, False)


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
