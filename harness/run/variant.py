"""Runs that train an iteration other than as the ledger writes it, as `run.launch.Variant`s.

- `OverrideRun`: `harness run ITER --set PATH=VALUE ...` (harness.ledger.overrides). Its run is
  kind `variant` (never the iteration's row in the table; `runs` and `compare` show it), tagged
  `harness.overrides` (JSON), named `ITER +lr=3e-4`. A killed variant run resumes when the same
  command (same overrides, same config) is given again, unless --fresh. An object a repeat loop
  or a Ray task can pass on: it holds plain values only (no ledger, no store).
- `Reproduction`: `harness reproduce RUN_ID` (harness.run.reproduce): the recorded, resolved config
  trained again as a new run tagged `harness.reproduces`, of the original's kind and overrides.
"""

from __future__ import annotations

from typing import Optional

from harness.core.records import (FINISHED, KIND_ITERATION, KIND_VARIANT, NEW, RESUME, SYNTHETIC_SUFFIX,
                                  TAG_CONFIG_SHA, TAG_KIND, TAG_OVERRIDES, TAG_REPRODUCES, UNFINISHED, Decision,
                                  RunRecord)
from harness.ledger.overrides import Overrides


class OverrideRun:
    """`--set` changes to one iteration (checked against it, InputError naming the flag)."""

    def __init__(self, book, name: str, overrides: Overrides, fresh: bool = False):
        written = book.resolve(name)
        overrides.check(written)
        self.experiment, self.iteration, self.overrides, self.fresh = book.experiment, name, overrides, fresh
        self.changes = overrides.changes(written)
        self.values = overrides.effective(written)  # what trains, and what --save-as writes
        self.note = overrides.note(written)
        self.run_name = overrides.run_name(name)
        self.tags = {TAG_KIND: KIND_VARIANT, TAG_OVERRIDES: overrides.tag(), "mlflow.source.name": "harness run --set"}
        self.run_id: Optional[str] = None

    def decide(self, store, iteration, resumable) -> Decision:
        """RESUME the newest unfinished run of these overrides and this config (unless --fresh or a
        finished one is newer); else NEW."""
        decision = self._decide(store, iteration, resumable)
        if self.note:
            return Decision(decision.kind, decision.run, "\n".join(filter(None, [self.note, decision.message])))
        return decision

    def _decide(self, store, iteration, resumable) -> Decision:
        if self.fresh:
            return Decision(NEW)
        for run in store.runs(self.experiment, iteration.name, KIND_VARIANT):
            if run.tags.get(TAG_OVERRIDES) != self.tags[TAG_OVERRIDES] or run.config_sha != iteration.config_sha():
                continue
            if run.status == FINISHED:
                break
            if run.status in UNFINISHED and resumable(run.run_id):
                return Decision(RESUME, run, f"{self.run_name}: resuming unfinished run {run.run_id[:8]} "
                                             f"(use --fresh to start over)")
        return Decision(NEW)

    def watch(self, tracker):
        self.run_id = tracker.run_id
        return tracker


def override_run(book, name: str, flags: Optional[list[str]], fresh: bool = False) -> Optional[OverrideRun]:
    """The variant `--set` flags make of `name` (None without flags)."""
    overrides = Overrides.parse(flags)
    return OverrideRun(book, name, overrides, fresh) if overrides else None


class Reproduction:
    """A past run's resolved config (`resolved`, used as is: no ledger, no profile applied again)
    trained as a new run tagged harness.reproduces=RUN_ID."""

    def __init__(self, record: RunRecord, resolved, extra_tags: Optional[dict] = None):
        self.record, self.resolved, self.changes = record, resolved, {}
        base = record.name.removesuffix(SYNTHETIC_SUFFIX)
        self.run_name = f"{base} (reproduces {record.run_id[:8]})"
        self.tags = {TAG_KIND: record.tags.get(TAG_KIND, KIND_ITERATION), TAG_REPRODUCES: record.run_id,
                     "mlflow.source.name": "harness reproduce", **(extra_tags or {})}
        if record.tags.get(TAG_OVERRIDES):
            self.tags[TAG_OVERRIDES] = record.tags[TAG_OVERRIDES]
        self.run_id: Optional[str] = None

    def decide(self, store, iteration, resumable) -> Decision:
        if iteration.config_sha() != self.record.tags.get(TAG_CONFIG_SHA):
            return Decision(NEW, None, f"note: the recorded config resolves to sha {iteration.config_sha()}, the run "
                                       f"was tagged {self.record.tags.get(TAG_CONFIG_SHA)}")
        return Decision(NEW)

    def watch(self, tracker):
        self.run_id = tracker.run_id
        return tracker


def save_variant(book, name: str, variant: OverrideRun, new_name: str) -> int:
    """`--save-as NAME`: the variant written into the ledger as `NAME: extends: ITER` with only
    the changed keys (harness.ledger.promote: a text edit, the rest of the file byte for byte,
    checked to validate and to train the variant's config sha); returns NAME's line."""
    from harness.ledger.promote import append_iteration

    flags = " ".join(f"--set {path}={text}" for path, text in variant.overrides.texts.items())
    return append_iteration(book, name, new_name, variant.values,
                            note=f"saved by `harness run {name} {flags} --save-as {new_name}`",
                            title=f"{name} {variant.overrides.label()}", flag="--save-as")
