"""What harness.track hands out, without MLflow: run records, resume decisions, tag names.

harness.track is the only module that imports mlflow, and it never returns an MLflow object:
runs come back as `RunRecord`s, and `Store.begin` answers "new, resume or skip" as a `Decision`.
This module is their vocabulary, importable without MLflow (harness.report reads records; the
table must not pay for importing MLflow before it needs to read the store).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

# Tags the harness writes on its runs; MLflow's own (mlflow.parentRunId, mlflow.source.*) are
# written by harness.track.
TAG_KIND = "harness.kind"  # KIND_ITERATION (a parent run), KIND_PASS (its child) or KIND_LR_FIND
TAG_ITERATION = "harness.iteration"  # the ledger's iteration name
TAG_EXTENDS = "harness.extends"  # its parent iteration ("" for a root)
TAG_CONFIG_SHA = "harness.config_sha"  # Iteration.config_sha(): what was trained
TAG_LEDGER = "harness.ledger"  # the ledger file
TAG_PROFILE = "harness.profile"  # full, cpu, smoke
TAG_DATA = "harness.data"  # the data fingerprint
TAG_DATA_DIR = "harness.data_dir"  # the data folder (or source)
TAG_PASS = "harness.pass"  # a child run's 0-based pass index
TAG_SYNTHETIC = "harness.synthetic"  # "true" when the run trained on generated data
TAG_FAILURE_REASON = "harness.failure_reason"
TAG_GIT_DIRTY = "harness.git_dirty"
TAG_LEASE = "harness.lease"  # a running run's holder: host, pid, expiry (harness.lease; renewed every epoch)
# Reference runs (`harness reference`): which reference, and the split every run that can be
# compared with it shares (iteration runs carry TAG_SPLIT too).
TAG_REFERENCE = "harness.reference"  # REFERENCE_MAJORITY or REFERENCE_LINEAR_PROBE
TAG_SPLIT = "harness.split"  # data fingerprint + split settings; equal value = same validation images
# Sweeps (`harness sweep`): a KIND_SWEEP parent run per study, a KIND_TRIAL child run per trial.
TAG_SWEEP = "harness.sweep"  # the sweep's name (the run `ITER/sweep-NAME`)
TAG_STUDY = "harness.study"  # the Optuna study name in its storage
TAG_STORAGE = "harness.storage"  # the Optuna storage URL, password removed
TAG_TRIAL = "harness.trial"  # the Optuna trial number a trial run belongs to
TAG_RETRY_OF = "harness.retry_of"  # the trial a killed worker left, which this run resumes
TAG_PRUNED = "harness.pruned"  # "true" on a trial run the pruner stopped (status KILLED)
# Variants (`harness run ITER --set PATH=VALUE`): a KIND_VARIANT parent run, never the iteration's row.
TAG_OVERRIDES = "harness.overrides"  # JSON {dotted path: value} the run changed in its iteration
TAG_REPRODUCES = "harness.reproduces"  # `harness reproduce RUN_ID`: the run id this run trains again
# Repeats (`harness run ITER --repeats N`, `repeats: N`): N ordinary runs over seeds on one split.
TAG_GROUP = "harness.group"  # one id shared by the N runs
TAG_REPEAT = "harness.repeat"  # "k/N", k counted from 1
# What a run needs to be reproduced (harness.track.provenance): artifacts of every parent run.
REQUIREMENTS_ARTIFACT = "environment/requirements.txt"  # name==version of the running interpreter
DIFF_ARTIFACT = "code/diff.patch"  # `git diff HEAD` when the tree had uncommitted changes (TAG_GIT_DIRTY)

# MLflow's own experiment tag: the UI opens an experiment tagged custom_model_development on its
# runs table instead of the GenAI overview (harness.track tags every experiment it creates).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"

KIND_ITERATION = "iteration"
KIND_PASS = "pass"
KIND_LR_FIND = "lr-find"
KIND_REFERENCE = "reference"
KIND_SWEEP = "sweep"
KIND_TRIAL = "trial"
KIND_VARIANT = "variant"

REFERENCE_MAJORITY = "majority"
REFERENCE_LINEAR_PROBE = "linear-probe"

FINISHED = "FINISHED"
FAILED = "FAILED"
KILLED = "KILLED"
RUNNING = "RUNNING"
UNFINISHED = (RUNNING, KILLED, "SCHEDULED")

# A synthetic-data run's displayed name carries this mark (`eleventh · synthetic`); its
# TAG_ITERATION stays the plain iteration name, which is what every look-up uses.
SYNTHETIC_SUFFIX = " · synthetic"


def display_name(iteration: str, synthetic: bool) -> str:
    """The parent run's name as the MLflow UI shows it (a variant's `eleventh +lr=3e-4`)."""
    return iteration + (SYNTHETIC_SUFFIX if synthetic else "")


def quoted(value: str) -> str:
    """A value inside a single-quoted search_runs filter string."""
    return value.replace("'", "\\'")


def parent_query(iteration: Optional[str] = None, status: Optional[str] = None, kind: str = KIND_ITERATION) -> str:
    """The search_runs filter for parent runs (or, with `kind`, variant runs): of one iteration,
    in one status, if given. Here, not in harness.track.layout, because both MLflow's client and
    the REST reader (harness.track.rest_reader, no MLflow) must send the same filter."""
    query = f"tags.`{TAG_KIND}` = '{kind}'"
    if iteration:
        query += f" and tags.`{TAG_ITERATION}` = '{iteration}'"
    return query + (f" and attributes.status = '{status}'" if status else "")


def finished_query(iteration: str, config_sha: Optional[str] = None) -> str:
    """The filter for an iteration's FINISHED parent runs (with that config sha, if given)."""
    query = parent_query(iteration, FINISHED)
    return query + (f" and tags.`{TAG_CONFIG_SHA}` = '{config_sha}'" if config_sha else "")


REFERENCES_QUERY = f"tags.`{TAG_KIND}` = '{KIND_REFERENCE}' and attributes.status = '{FINISHED}'"


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
    steps: dict = field(default_factory=dict)  # metric -> the step of its latest value

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


@dataclass(frozen=True)
class DataLineage:
    """The data a run trained on, as its MLflow dataset input records it: `digest` is the data
    fingerprint (harness.data), `source` the folder, the split sizes, and whether it is the
    generated synthetic set (whose numbers must never pass for real ones)."""

    name: str  # the folder's name (hvc-synth, hvc) or the dataset's source
    digest: str
    source: str
    dataset: str  # hvc, cifar10
    n_train: int
    n_val: int
    synthetic: bool

    def profile(self) -> dict:
        return {"dataset": self.dataset, "train_images": self.n_train, "val_images": self.n_val,
                "synthetic": self.synthetic}


@dataclass(frozen=True)
class ModelVersionRecord:
    """One version of a registered model, as `harness models` lists it; `run` is the run that
    logged it (None when the run is gone)."""

    name: str
    version: str
    aliases: tuple
    run_id: str
    created: int  # ms since the epoch
    tags: dict = field(default_factory=dict)
    run: Optional[RunRecord] = None
