"""What harness.tracking hands out, without MLflow: run records, resume decisions, tag names.

harness.tracking is the only module that imports mlflow, and it never returns an MLflow object:
runs come back as `RunRecord`s, and `Store.begin` answers "new, resume or skip" as a `Decision`.
This module is their vocabulary, importable without MLflow (harness.report reads records; the
table must not pay for importing MLflow before it needs to read the store).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

# Tags the harness writes on its runs; MLflow's own (mlflow.parentRunId, mlflow.source.*) are
# written by harness.tracking.
TAG_KIND = "harness.kind"  # KIND_ITERATION (a parent run), KIND_PASS (its child) or KIND_LR_FIND
TAG_ITERATION = "harness.iteration"  # the ledger's iteration name
TAG_EXTENDS = "harness.extends"  # its parent iteration ("" for a root)
TAG_CONFIG_SHA = "harness.config_sha"  # Iteration.config_sha(): what was trained
TAG_LEDGER = "harness.ledger"  # the ledger file
TAG_PROFILE = "harness.profile"  # full, cpu, smoke
TAG_DATA = "harness.data"  # the data fingerprint
TAG_DATA_DIR = "harness.data_dir"  # the data folder (or source)
TAG_PASS = "harness.pass"  # a child run's 0-based pass index
TAG_FAILURE_REASON = "harness.failure_reason"
TAG_GIT_DIRTY = "harness.git_dirty"
TAG_LEASE = "harness.lease"  # a running run's holder: host, pid, expiry (harness.lease; renewed every epoch)
# Reference runs (`harness reference`): which reference, and the split every run that can be
# compared with it shares (iteration runs carry TAG_SPLIT too).
TAG_REFERENCE = "harness.reference"  # REFERENCE_MAJORITY or REFERENCE_LINEAR_PROBE
TAG_SPLIT = "harness.split"  # data fingerprint + split settings; equal value = same validation images

KIND_ITERATION = "iteration"
KIND_PASS = "pass"
KIND_LR_FIND = "lr-find"
KIND_REFERENCE = "reference"

REFERENCE_MAJORITY = "majority"
REFERENCE_LINEAR_PROBE = "linear-probe"

FINISHED = "FINISHED"
FAILED = "FAILED"
KILLED = "KILLED"
RUNNING = "RUNNING"
UNFINISHED = (RUNNING, KILLED, "SCHEDULED")

# Decision kinds.
NEW, RESUME, SKIP = "new", "resume", "skip"


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run as plain data. `metrics` holds each metric's latest value."""

    run_id: str
    name: str
    status: str
    start_time: Optional[int] = None  # ms since the epoch
    end_time: Optional[int] = None
    tags: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    @property
    def iteration(self) -> Optional[str]:
        return self.tags.get(TAG_ITERATION)

    @property
    def config_sha(self) -> Optional[str]:
        return self.tags.get(TAG_CONFIG_SHA)

    @property
    def profile(self) -> str:
        """The profile the run trained under ("full" when untagged)."""
        return self.tags.get(TAG_PROFILE) or "full"

    @property
    def data_dir(self) -> str:
        return self.tags.get(TAG_DATA_DIR, "")

    @property
    def data_fingerprint(self) -> str:
        return self.tags.get(TAG_DATA, "")

    @property
    def pass_index(self) -> Optional[int]:
        """A pass run's 0-based index (None for other runs)."""
        value = self.tags.get(TAG_PASS)
        return int(value) if value is not None else None


@dataclass(frozen=True)
class MetricPoint:
    step: int
    value: float
    timestamp: int  # ms since the epoch


@dataclass(frozen=True)
class Decision:
    """The answer to "what does `harness run` do with this iteration": NEW (start a run),
    RESUME (`run`, unfinished, with the same config) or SKIP (`run` already finished it).
    `message` is a line for the log, or None."""

    kind: str
    run: Optional[RunRecord] = None
    message: Optional[str] = None
