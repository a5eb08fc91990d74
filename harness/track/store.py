"""MLflow, and only here: the layout of runs, metrics, tags and artifacts (docs/architecture.md).

One experiment per ledger; one parent run per `harness run` of an iteration, named after it;
one nested child run per pass (`eleventh/pass-2`). Per-epoch metrics go to both the parent and
the pass's child with step = epoch counted across passes, so the parent's `val_gender_acc` chart
runs through every pass. Each epoch is one `log_batch` call per run, never one call per metric.
Metric names come from harness.metrics, tag names from harness.records.

The boundary: nothing MLflow leaves this module. Runs come back as `RunRecord`s; `Store.begin`
answers once, at the start, whether a run is new, resumed or skipped (a `Decision`); after that
the caller only hands events to the `RunTracker` that `Store.start` returns.

The client API (explicit run ids) is used instead of mlflow's global active-run stack, because a
resumed run must reopen a specific parent and child, and tests open several stores in one process.

Many processes, one store (docs/scaling.md). A server URI is probed before use (harness.remote:
one line naming it when it does not answer, MLflow's HTTP retries bounded). On SQLite, MLflow
3.17 already gives every session a 20 s busy timeout, so concurrent writers wait for each other
instead of failing; what does fail is two processes creating a new store at once (both run the
schema migrations: "table ... already exists", "database is locked"), so a new store is opened
under a file lock beside it. Two processes creating the same experiment: the loser reads the
winner's. A running iteration carries a lease (harness.lease), renewed with each epoch's metrics
in the same call, so a second `harness run` of it, on any machine, refuses.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Optional
from urllib.parse import urlparse
from urllib.request import url2pathname

from filelock import FileLock
import mlflow
import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.model import PythonModel
from mlflow.tracking import MlflowClient

from sqlalchemy.exc import DBAPIError, OperationalError

from harness.core import faults, guards, metrics
from harness.track import remote, store_check
from harness.core.errors import InputError, StoreUnusable
from harness.track.leases import Lease, check_running, lines
from harness.ledger.schema import Iteration
from harness.ledger.diffing import flatten
from harness.core.records import (EXPERIMENT_KIND_TRAINING, FAILED, FINISHED, KILLED, KIND_ITERATION, KIND_LR_FIND,
                                  KIND_PASS, KIND_REFERENCE, NEW, RESUME, RUNNING, SKIP, TAG_CONFIG_SHA, TAG_DATA,
                                  TAG_DATA_DIR, TAG_EXPERIMENT_KIND, TAG_EXTENDS, TAG_FAILURE_REASON,
                                  TAG_GIT_DIRTY, TAG_ITERATION, TAG_KIND, TAG_LEASE, TAG_PASS, TAG_PROFILE,
                                  TAG_PRUNED, TAG_REFERENCE, TAG_SPLIT, SYNTHETIC_MARK, TAG_SYNTHETIC, UNFINISHED,
                                  DataLineage, Decision, MetricPoint, ModelVersionRecord, RunRecord, display_name)
from harness.core.settings import TRACKING_URI_ENV


def resolve_uri(explicit: Optional[str] = None, create: bool = False) -> str:
    """The tracking URI: --tracking-uri, else $MLFLOW_TRACKING_URI, else the project's SQLite
    store. A relative SQLite path is made absolute (a server started elsewhere, or a later
    chdir, finds the same file); with `create`, the SQLite file's folder is made."""
    uri = remote.chosen_uri(explicit)
    db = _sqlite_path(uri)
    if db is None:
        return uri
    if create:
        db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db.resolve()}"


def _sqlite_path(uri: str) -> Optional[Path]:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def store_exists(uri: Optional[str] = None) -> bool:
    """False for a SQLite store whose file does not exist yet (reading must not create one)."""
    db = _sqlite_path(resolve_uri(uri))
    return db is None or db.exists()


def artifact_root(uri: str) -> Optional[Path]:
    """Where new experiments keep their artifacts: `artifacts/` beside a SQLite file; None for a
    server, which decides itself."""
    db = _sqlite_path(resolve_uri(uri))
    return db.parent / "artifacts" if db is not None else None


def server_command(uri: str, host: str, port: int, workers: int = 1) -> list[str]:
    """`mlflow server` over a SQLite store, its artifact root served (new experiments land beside
    the SQLite file, as Store puts them; existing ones keep their recorded file locations)."""
    uri = resolve_uri(uri)
    artifacts = artifact_root(uri).as_uri()
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri, "--registry-store-uri", uri,  # the same store (and no notice saying so)
        "--default-artifact-root", artifacts,
        "--artifacts-destination", artifacts,
        "--serve-artifacts",
        "--host", host, "--port", str(port), "--workers", str(workers),
    ]


def open_client(uri: str) -> MlflowClient:
    """A client for a resolved URI: a server is probed first (TrackingUnreachable, one line,
    when it does not answer); a SQLite store is checked (harness.store_check: StoreUnusable, one
    line, when damaged or locked), then created and migrated by one process at a time."""
    db = _sqlite_path(uri)
    if db is None:
        if remote.is_server(uri):
            remote.configure_http_client(uri)
            remote.check_reachable(uri)
        return MlflowClient(tracking_uri=uri)
    store_check.check(db)  # damaged or locked: one line now, not MLflow's retries and a traceback
    _quiet_store_errors()
    try:
        with FileLock(f"{db}.lock"):
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # creates and migrates the tables, if new
    except DBAPIError as exc:  # the same, met by MLflow itself (locked since the check, say)
        raise StoreUnusable(store_check.problem(db, exc)) from None
    return client


def create_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """A new experiment (artifacts beside a SQLite store); when another process created it a
    moment ago, that one."""
    root = artifact_root(uri)
    try:
        return client.create_experiment(name, artifact_location=(root / name).as_uri() if root else None,
                                        tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING})
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def git_tags(cwd: Optional[Path] = None) -> dict:
    """Commit and dirty flag of the code that ran (empty outside a git checkout)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if head.returncode != 0:
        return {}
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
    return {"mlflow.source.git.commit": head.stdout.strip(), TAG_GIT_DIRTY: str(dirty).lower()}


def server_lost(exc: BaseException) -> bool:
    """Whether `exc` is MLflow giving up on a tracking server that does not answer (refused or
    timed out connections, after its HTTP retries), anywhere in the exception's chain: such a
    run is stopped with its state kept, not failed, since failing it would need the server."""
    import requests

    for seen in _chain(exc):
        if isinstance(seen, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return True
        if isinstance(seen, MlflowException) and re.match(r"API request to \S+ failed with (timeout )?exception",
                                                          str(seen.message)):
            return True
    return False


def _chain(exc: BaseException, limit: int = 10):
    """`exc`, then what it was raised from or during (MLflow wraps SQLAlchemy, which wraps
    sqlite3 or requests), at most `limit` deep."""
    seen = exc
    for _ in range(limit):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


# SQLite's words for the two ways a local store stops a run that is not the run's fault.
LOCKED, FULL = "database is locked", "database or disk is full"


def _sqlite_error(exc: BaseException) -> Optional[str]:
    """LOCKED or FULL when SQLite said so anywhere in the exception's chain (MLflow wraps
    SQLAlchemy's OperationalError, which wraps sqlite3's), else None."""
    for seen in _chain(exc):
        if isinstance(seen, (sqlite3.OperationalError, OperationalError)):
            text = store_check.first_line(seen)
            for known in (LOCKED, FULL):
                if known in text:
                    return known
    return None


def store_locked(exc: BaseException, uri: str) -> Optional[str]:
    """How to say that the SQLite store at `uri` stayed locked by another process past MLflow's
    20 s busy timeout (`exc` anywhere in its chain is "database is locked"), or None. Such a run
    is stopped with its state kept, not failed: failing it would wait on the same lock."""
    db = _sqlite_path(resolve_uri(uri))
    if db is None or _sqlite_error(exc) != LOCKED:
        return None
    return f"the MLflow store {db} {store_check.locked_phrase(LOCKED)}"


def store_full(exc: BaseException, uri: str) -> Optional[str]:
    """How to say that the disk under the SQLite store at `uri` is full (SQLite's "database or
    disk is full" anywhere in `exc`'s chain), or None: the line then names the store's file, since
    that disk need not be the work folder's."""
    db = _sqlite_path(resolve_uri(uri))
    if db is None or _sqlite_error(exc) != FULL:
        return None
    return f"the disk under the MLflow store {db} is full ({FULL})"


def unmarkable(exc: BaseException) -> bool:
    """Whether marking the run after `exc` would only wait again in vain: its tracking server is
    gone past MLflow's retries (server_lost), or its SQLite store is locked (store_locked)."""
    return server_lost(exc) or _sqlite_error(exc) == LOCKED


class _StoreErrorLines(logging.Filter):
    """MLflow logs a SQLite error with its SQL statement and a traceback before it raises it
    (mlflow.store.db.utils), and its system-metrics thread logs one with the statement as a
    warning. A locked or full store would print dozens of lines before the harness's own one
    line: records whose error the harness words itself are dropped, and any other message is cut
    to its first line when what follows is SQLAlchemy's statement."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and _sqlite_error(record.exc_info[1]):
            return False
        message = record.getMessage()
        if "\n[SQL: " in message:
            record.msg, record.args = message.split("\n", 1)[0], ()
        return True


_STORE_ERROR_LOGGERS = ("mlflow.store.db.utils", "mlflow.system_metrics.system_metrics_monitor")


def _quiet_store_errors() -> None:
    """_StoreErrorLines on the MLflow loggers that report SQLite's errors (once per process)."""
    for name in _STORE_ERROR_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _StoreErrorLines) for f in logger.filters):
            logger.addFilter(_StoreErrorLines())


def _local_artifact_root(artifact_uri: str) -> Optional[Path]:
    """The folder of a run's artifacts when the store keeps them on this machine (file: or a
    bare path), else None (a server serves them, and the copy is checked after download)."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme not in ("", "file"):
        return None
    return Path(url2pathname(parsed.path)).resolve()


def _record(run) -> RunRecord:
    return RunRecord(run_id=run.info.run_id, name=run.info.run_name, status=run.info.status,
                     start_time=run.info.start_time, end_time=run.info.end_time, tags=dict(run.data.tags),
                     metrics=dict(run.data.metrics), params=dict(run.data.params),
                     steps={m.key: m.step for m in run.data.to_proto().metrics})


def _quoted(value: str) -> str:
    """A value inside a single-quoted search_runs filter string."""
    return value.replace("'", "\\'")


def _now() -> int:
    return int(time.time() * 1000)


def _param_value(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def _params(values: dict, prefix: str = "") -> list:
    return [Param(k, _param_value(v)) for k, v in flatten(values, prefix).items()]


def _run_tags(iteration: Iteration) -> dict:
    """An iteration's parent-run tags, before git's and the caller's (ledger, profile, data)."""
    return {TAG_KIND: KIND_ITERATION, TAG_ITERATION: iteration.name, TAG_EXTENDS: iteration.extends or "",
            TAG_CONFIG_SHA: iteration.config_sha(), "mlflow.source.name": "harness run",
            "mlflow.source.type": "LOCAL"}


def _parent_query(iteration: Optional[str] = None, status: Optional[str] = None) -> str:
    """The search filter for parent runs: of one iteration, in one status, if given."""
    query = f"tags.`{TAG_KIND}` = '{KIND_ITERATION}'"
    if iteration:
        query += f" and tags.`{TAG_ITERATION}` = '{iteration}'"
    return query + (f" and attributes.status = '{status}'" if status else "")


def _search(store: "Store", experiment: str, query: str, max_results: int = 5000) -> list:
    """Active runs of an experiment matching `query`, newest first ([] if it does not exist)."""
    exp_id = store.experiment_id(experiment, create=False)
    if exp_id is None:
        return []
    return store._client.search_runs([exp_id], query, run_view_type=ViewType.ACTIVE_ONLY,
                                     max_results=max_results, order_by=["attributes.start_time DESC"])


class Store:
    """A tracking store: what `harness run` should do with an iteration, the runs it holds (as
    RunRecords), and trackers for new or resumed runs."""

    def __init__(self, uri: Optional[str] = None):
        self.uri = resolve_uri(uri, create=True)
        self._client = open_client(self.uri)
        self._experiments: dict[str, str] = {}

    def experiment_id(self, name: str, create: bool = True) -> Optional[str]:
        """The id of experiment `name`, created (artifacts beside a SQLite store) if asked."""
        if name not in self._experiments:
            found = self._client.get_experiment_by_name(name)
            if found is None and not create:
                return None
            self._experiments[name] = (found.experiment_id if found is not None
                                       else create_experiment(self._client, self.uri, name))
            if found is not None and TAG_EXPERIMENT_KIND not in found.tags:
                _mark_training(self._client, found.experiment_id)
        return self._experiments[name]

    # ---- reading

    def runs(self, experiment: str, iteration: Optional[str] = None) -> list[RunRecord]:
        """Parent runs of an experiment, newest first, optionally of one iteration."""
        return [_record(run) for run in _search(self, experiment, _parent_query(iteration))]

    def run(self, run_id: str) -> RunRecord:
        return _record(self._client.get_run(run_id))

    def children(self, run_id: str) -> list[RunRecord]:
        """A parent run's pass runs, oldest first."""
        parent = self._client.get_run(run_id)
        return [_record(run) for run in self._client.search_runs(
            [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'",
            order_by=["attributes.start_time ASC"])]

    def latest_finished(self, experiment: str, iteration: str, config_sha: Optional[str] = None) -> Optional[RunRecord]:
        """The newest FINISHED parent run of an iteration (with that config sha, if given): one
        search that returns at most one run, so its cost does not grow with the store."""
        query = _parent_query(iteration, FINISHED)
        if config_sha:
            query += f" and tags.`{TAG_CONFIG_SHA}` = '{config_sha}'"
        found = _search(self, experiment, query, max_results=1)
        return _record(found[0]) if found else None

    def references(self, experiment: str, split: str) -> dict[str, RunRecord]:
        """reference name -> its newest finished run on the validation images `split` names."""
        query = (f"tags.`{TAG_KIND}` = '{KIND_REFERENCE}' and tags.`{TAG_SPLIT}` = '{_quoted(split)}' "
                 f"and attributes.status = '{FINISHED}'")
        found = {}
        for run in _search(self, experiment, query):
            found.setdefault(run.data.tags.get(TAG_REFERENCE), _record(run))
        return found

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        """Every logged value of a metric, by step."""
        history = self._client.get_metric_history(run_id, key)
        return sorted((MetricPoint(m.step, m.value, m.timestamp) for m in history), key=lambda p: p.step)

    def download(self, run_id: str, path: str, dest: Path) -> Path:
        """One artifact (file or folder) of a run, copied under `dest`, reading nothing outside the
        run's artifacts (harness.guards: the path, a local store's links before the copy follows
        them, and the copy)."""
        guards.check_artifact_path(path, run_id)
        root = _local_artifact_root(self._client.get_run(run_id).info.artifact_uri)
        if root is not None and (root / path).exists():
            guards.check_inside(root / path, root, f"run {run_id} artifact '{path}'")
        local = Path(self._client.download_artifacts(run_id, path, str(dest)))
        guards.check_inside(local, Path(dest), f"run {run_id} artifact '{path}'")
        return local

    def attach(self, run_id: str, data: dict, artifact_file: str) -> None:
        """A JSON artifact added to a run (an evaluation on another folder, say)."""
        self._client.log_dict(run_id, data, artifact_file)

    # ---- writing

    def begin(self, experiment: str, iteration: Iteration, *, fresh: bool = False, skip_finished: bool = False,
              resumable: Callable[[str], bool] = lambda run_id: True) -> Decision:
        """What `harness run` does with `iteration`: SKIP when `skip_finished` and a finished run
        has its config; RESUME the newest unfinished run (one that `resumable(run_id)` says left
        local state) when its config is the same, unless `fresh`; else NEW."""
        name, sha = iteration.name, iteration.config_sha()
        if skip_finished:
            done = self.latest_finished(experiment, name, sha)
            if done is not None:
                return Decision(SKIP, done, f"{name}: already finished with this config (run {done.run_id[:8]}), skipping")
        taken_over = self.check_leases(experiment, name)
        previous = None if fresh else _newest_unfinished(self.runs(experiment, name), resumable)
        if previous is None:
            return Decision(NEW, None, taken_over)
        if previous.config_sha == sha:
            return Decision(RESUME, previous, lines(taken_over, f"{name}: resuming unfinished run "
                                                                 f"{previous.run_id[:8]} (use --fresh to start over)"))
        return Decision(NEW, None, lines(taken_over, f"{name}: not resuming run {previous.run_id[:8]}: its config "
                                                      f"sha {previous.config_sha} differs from the ledger's {sha}; "
                                                      f"starting fresh"))

    def check_leases(self, experiment: str, iteration: str) -> Optional[str]:
        """harness.lease.check_running over the iteration's running runs: IterationHeld when one
        holds a live lease of another process, else a line per lease taken over (or None)."""
        running = _search(self, experiment, _parent_query(iteration, RUNNING))
        return check_running(iteration, [_record(run) for run in running])

    def start(self, decision: Decision, experiment: str, iteration: Iteration, tags: dict,
              run_name: Optional[str] = None, data: Optional[DataLineage] = None,
              system_metrics: bool = False) -> "RunTracker":
        """The tracker of the run `decision` names: a new parent run (params, config.yaml, the
        data as a dataset input, a synthetic run's marked name) or the resumed one. `run_name`
        replaces the iteration's name (a sweep trial's run); with `system_metrics`, MLflow's
        monitor samples CPU, memory, disk (and GPU) until it ends."""
        if decision.kind == SKIP:
            raise ValueError(f"{iteration.name}: a skipped iteration has no run to start")
        self.check_leases(experiment, iteration.name)  # again: another machine may have started since `begin`
        resumed = decision.run if decision.kind == RESUME else None
        tracker = RunTracker(self._client, self.experiment_id(experiment), iteration, tags, resumed, run_name, data)
        if system_metrics:
            tracker.monitor = SystemMetrics(self.uri, tracker.run_id, resumed is not None)
        return tracker


def _mark_training(client: MlflowClient, experiment_id: str) -> None:
    """Tag an experiment as model training, so MLflow's UI opens it on the runs table rather
    than on its GenAI overview (an experiment made before the harness tagged its own)."""
    client.set_experiment_tag(experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND_TRAINING)


def mark_harness_experiments(store: Store) -> list[str]:
    """Tag every experiment holding harness runs that has no experiment kind yet; their names."""
    marked = []
    for experiment in store._client.search_experiments():
        if TAG_EXPERIMENT_KIND in experiment.tags:
            continue
        if store._client.search_runs([experiment.experiment_id], f"tags.`{TAG_KIND}` LIKE '%'", max_results=1):
            _mark_training(store._client, experiment.experiment_id)
            marked.append(experiment.name)
    return marked


def _newest_unfinished(runs: list[RunRecord], resumable: Callable[[str], bool]) -> Optional[RunRecord]:
    """Of an iteration's parent runs (newest first), the newest unfinished one with local state,
    unless a finished one is newer (a killed process leaves its run RUNNING)."""
    for run in runs:
        if run.status in UNFINISHED and resumable(run.run_id):
            return run
        if run.status == FINISHED:
            return None
    return None


def end_run(store: Store, run_id: str, status: str, reason: str) -> None:
    """Close a run some other process left open (a killed sweep worker's trial), with the
    reason; its pass runs still open end the same way."""
    store._client.set_tag(run_id, TAG_FAILURE_REASON, reason[:5000])
    for child in store.children(run_id):
        if child.status == RUNNING:
            store._client.set_terminated(child.run_id, status)
    store._client.set_terminated(run_id, status)


def log_lr_find(store: Store, experiment: str, iteration: Iteration, tags: dict, curve, figure) -> str:
    """An `ITER/lr-find` run: the curve as metrics (step = batch), the plot, the suggestion."""
    client = MlflowClient(tracking_uri=store.uri)
    run_id = client.create_run(
        store.experiment_id(experiment), run_name=f"{iteration.name}/lr-find",
        tags={TAG_KIND: KIND_LR_FIND, TAG_ITERATION: iteration.name,
              TAG_CONFIG_SHA: iteration.config_sha(), **git_tags(), **tags},
    ).info.run_id
    now = _now()
    points = []
    for step, (lr, raw, smoothed) in enumerate(zip(curve.lrs, curve.raw, curve.smoothed), start=1):
        points += [Metric(metrics.LR_FIND_LR, lr, now, step), Metric(metrics.LR_FIND_LOSS, raw, now, step),
                   Metric(metrics.LR_FIND_SMOOTHED_LOSS, smoothed, now, step)]
    points += [Metric(metrics.SUGGESTED_LR, curve.suggestion(), now, 0), Metric(metrics.MAX_LR, curve.max_lr, now, 0)]
    for start in range(0, len(points), 1000):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=points[start:start + 1000])
    client.log_figure(run_id, figure, "lr_find.png")
    client.set_terminated(run_id, FINISHED)
    return run_id


def log_reference(store: Store, experiment: str, reference: str, dataset: str, tags: dict, summary: dict,
                  params: dict) -> str:
    """A `reference/<name>` run (harness.reference): its settings as params, its scores under the
    selected-checkpoint names, and each head's val accuracy at step 0 so the UI's comparison of
    `val_gender_acc` shows it beside the iterations."""
    client = MlflowClient(tracking_uri=store.uri)
    run_id = client.create_run(store.experiment_id(experiment), run_name=f"reference/{reference}",
                               tags={TAG_KIND: KIND_REFERENCE, TAG_REFERENCE: reference, **git_tags(), **tags}
                               ).info.run_id
    now = _now()
    client.log_batch(run_id, params=[Param(k, _param_value(v)) for k, v in params.items()])
    values = {**summary, **{metrics.val_acc(dataset, head): metrics.selected_value(summary, dataset, head)
                            for head in metrics.heads_of(dataset)}}
    points = [Metric(k, float(v), now, 0) for k, v in values.items() if v is not None]
    client.log_batch(run_id, metrics=points)
    client.set_terminated(run_id, FINISHED)
    return run_id


def record_finished_run(store: Store, experiment: str, iteration: Iteration, tags: dict, history: list[dict],
                        summary: dict, status: str = FINISHED, start_time: Optional[int] = None) -> str:
    """A parent run written in one go, laid out as a RunTracker logs one (tags, params, per-epoch
    metrics, summary; no artifacts, no pass runs): for runs trained elsewhere and for benchmark
    stores. `tags` override the iteration's own (a stale config sha, say)."""
    client = MlflowClient(tracking_uri=store.uri)
    run_id = client.create_run(store.experiment_id(experiment), run_name=iteration.name, start_time=start_time,
                               tags={**_run_tags(iteration), **tags}).info.run_id
    now = _now()
    params = _params(iteration.training_dict())
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start:start + 100])
    points = [Metric(k, float(v), now, h["step"]) for h in history for k, v in h["metrics"].items()]
    points += [Metric(k, float(v), now, 0) for k, v in summary.items()]
    for start in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[start:start + 1000])
    client.set_terminated(run_id, status)
    return run_id


class RunTracker:
    """One iteration's run, told what happens: implements harness.train.Reporter (pass_started,
    epoch_finished, pass_finished), plus model_built, replay, finish and fail."""

    def __init__(self, client: MlflowClient, experiment_id: str, iteration: Iteration, tags: dict,
                 resumed: Optional[RunRecord] = None, run_name: Optional[str] = None,
                 data: Optional[DataLineage] = None):
        self._client, self._experiment_id, self.iteration = client, experiment_id, iteration
        self._children: dict[int, str] = {}
        # The pass runs are named after the iteration (or trial); only the parent's shown name
        # carries the synthetic-data mark.
        self.name = (resumed.name.removesuffix(SYNTHETIC_MARK) if resumed is not None
                     else run_name or iteration.name)
        self.monitor: Optional[SystemMetrics] = None
        self._longest_epoch = 0.0
        if resumed is not None:
            self.run_id = resumed.run_id
            self._children, self._logged_steps = _reopen_parent(client, experiment_id, self.run_id)
        else:
            shown = run_name or display_name(self.name, data is not None and data.synthetic)  # a trial keeps its name
            self.run_id = _open_parent(client, experiment_id, iteration, shown, tags, data)
            self._children, self._logged_steps = {}, set()

    def model_built(self, total: int, trainable: int, summary_text: str) -> None:
        """The model's parameter counts and summary (a new run, before training)."""
        _log_metrics(self._client, self.run_id, {metrics.TOTAL_PARAMS: total, metrics.TRAINABLE_PARAMS: trainable})
        self._client.log_text(self.run_id, summary_text, "model_summary.txt")

    def replay(self, history: Iterable[dict]) -> int:
        """Log the epochs a killed process finished but never reported; returns how many."""
        missing = [h for h in history if h["step"] not in self._logged_steps]
        for entry in missing:
            self.epoch_finished(entry["pass"], entry["step"], entry["metrics"])
        return len(missing)

    def pass_started(self, index: int, iteration: Iteration, freeze=None) -> None:
        if index in self._children:
            self._client.update_run(self._children[index], status=RUNNING)
            return
        self._children[index] = self._client.create_run(
            self._experiment_id, run_name=f"{self.name}/pass-{index + 1}",
            tags={"mlflow.parentRunId": self.run_id, TAG_KIND: KIND_PASS, TAG_PASS: str(index),
                  TAG_ITERATION: iteration.name},
        ).info.run_id
        self._client.log_batch(self._children[index], params=_params(iteration.passes[index].model_dump(mode="json"),
                                                                      "pass."))

    def epoch_finished(self, pass_index: int, step: int, values: dict) -> None:
        """The epoch's metrics on the parent and the pass run; the parent's call also renews
        the lease (no extra request)."""
        self._longest_epoch = max(self._longest_epoch, float(values.get(metrics.EPOCH_SECONDS, 0.0)))
        lease = RunTag(TAG_LEASE, Lease.mine(self._longest_epoch).to_tag())
        self._client.log_batch(self.run_id, metrics=[Metric(k, float(v), _now(), step) for k, v in values.items()],
                               tags=[lease])
        if pass_index in self._children:
            _log_metrics(self._client, self._children[pass_index], values, step)
        self._logged_steps.add(step)

    def pass_finished(self, index: int, result) -> None:
        """The pass's eval.json, best checkpoint, confusion matrices and summary; FINISHED."""
        child = self._children[index]
        _log_pass_result(self._client, child, self.iteration, index, result)
        self._client.set_terminated(child, FINISHED)

    def finish(self, history: list[dict], results: list, final_checkpoint: Optional[Path],
               selected: Optional[dict] = None) -> dict:
        """Summary metrics (the per-epoch bests, and `selected`: the selected checkpoint's
        scores), curves, the selected checkpoint; status FINISHED. Returns the summary."""
        summary = {**metrics.summarize(history, self.iteration.data.name), **(selected or {})}
        _log_metrics(self._client, self.run_id, summary)
        _log_curves(self._client, self.run_id, history, self.iteration.data.name, self.iteration.name)
        faults.reach("final-upload")
        if final_checkpoint is not None and Path(final_checkpoint).exists():
            self._client.log_artifact(self.run_id, str(final_checkpoint), "checkpoint")
        if results:
            self._client.log_dict(self.run_id, {f"pass-{r.index + 1}": r.eval for r in results}, "eval.json")
        self._stop_monitor()
        self._client.set_terminated(self.run_id, FINISHED)
        return summary

    def retag(self, tags: dict) -> None:
        """Tags set after the start (a resumed sweep trial's new trial number)."""
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, value)

    def pruned(self, history: list[dict], reason: str) -> dict:
        """A run stopped on purpose before its end (a sweep's pruner): per-epoch metrics stay,
        the summary and curves are logged so it compares with the others, tag harness.pruned,
        the reason, status KILLED (never FINISHED: nothing that reads finished runs must take
        a half-trained one). Returns the summary."""
        summary = metrics.summarize(history, self.iteration.data.name)
        if summary:
            _log_metrics(self._client, self.run_id, summary)
        if history:
            _log_curves(self._client, self.run_id, history, self.iteration.data.name, self.name)
        self._client.set_tag(self.run_id, TAG_PRUNED, "true")
        self.fail(reason, status=KILLED)
        return summary

    def fail(self, reason: str, status: str = FAILED) -> None:
        """The run ends FAILED (or KILLED) with its reason; so does any pass still running."""
        self._stop_monitor()
        self._client.set_tag(self.run_id, TAG_FAILURE_REASON, reason[:5000])
        for child in self._children.values():
            if self._client.get_run(child).info.status == RUNNING:
                self._client.set_terminated(child, status)
        self._client.set_terminated(self.run_id, status)

    def _stop_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None

    def log_model(self, checkpoint: Path, card, example: bytes, step: int = 0) -> str:
        """The checkpoint as this run's MLflow Model, once, at the end (see log_model below);
        `step` is the selected epoch. Returns the models:/ URI."""
        return log_model(self._client, self._experiment_id, self.run_id, self.iteration.name, checkpoint, card,
                         example, step)


def _open_parent(client: MlflowClient, experiment_id: str, iteration: Iteration, name: str, tags: dict,
                 data: Optional[DataLineage]) -> str:
    """A new parent run holding this process's lease: its tags, the data as a dataset input,
    the training settings as params, config.yaml. Returns its id."""
    synthetic = {TAG_SYNTHETIC: str(data.synthetic).lower()} if data is not None else {}
    run_id = client.create_run(experiment_id, run_name=name, tags={
        **_run_tags(iteration), **git_tags(), **tags, **synthetic, TAG_LEASE: Lease.mine().to_tag()}).info.run_id
    if data is not None:
        _log_dataset(client, run_id, data)
    params = _params(iteration.training_dict())
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start:start + 100])
    client.log_text(run_id, iteration.to_yaml(), "config.yaml")
    return run_id


def _reopen_parent(client: MlflowClient, experiment_id: str, run_id: str) -> tuple[dict[int, str], set]:
    """A resumed parent run, RUNNING again under this process's lease; its pass runs (pass
    index -> run id) and the steps it already logged."""
    client.update_run(run_id, status=RUNNING)
    client.set_tag(run_id, TAG_LEASE, Lease.mine().to_tag())
    children = {}
    for child in client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'"):
        children[int(child.data.tags[TAG_PASS])] = child.info.run_id
    return children, {m.step for m in client.get_metric_history(run_id, metrics.LOSS)}


def _log_metrics(client: MlflowClient, run_id: str, values: dict, step: int = 0) -> None:
    now = _now()
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])


def _log_pass_result(client: MlflowClient, run_id: str, iteration: Iteration, index: int, result) -> None:
    """A pass run's eval.json, best checkpoint, a confusion matrix per head and its summary."""
    from harness.track import plots
    from harness.core.labels import heads_for

    client.log_dict(run_id, result.eval, "eval.json")
    client.log_artifact(run_id, str(result.best_checkpoint), "checkpoint")
    for head, classes in heads_for(iteration.data.name).items():
        figure = plots.confusion_matrix(result.labels[head], result.predictions[head], classes,
                                        f"{iteration.name} pass {index + 1}: {head}")
        client.log_figure(run_id, figure, f"plots/confusion_{head}.png")
        plots.close(figure)
    summary = metrics.pass_summary(result.best_epoch)
    if summary:
        _log_metrics(client, run_id, summary)


def _log_curves(client: MlflowClient, run_id: str, history: list[dict], dataset: str, title: str) -> None:
    from harness.track import plots

    figure = plots.training_curves(history, dataset, title=title)
    client.log_figure(run_id, figure, "plots/training_curves.png")
    plots.close(figure)


class SweepRun:
    """A sweep's parent run (`ITER/sweep-NAME`, one per study, shared by its workers): each
    trial's value, the best value as trials end, the trial counts, Optuna's plots."""

    def __init__(self, client: MlflowClient, run_id: str):
        self._client, self.run_id = client, run_id

    def trial_ended(self, number: int, value: Optional[float], best: Optional[float], ended: int) -> None:
        """`value` at step = trial number (none for a failed trial); `best` at step = trials ended."""
        now = _now()
        points = [Metric(metrics.SWEEP_TRIAL_VALUE, float(value), now, number)] if value is not None else []
        points += [Metric(metrics.SWEEP_BEST_VALUE, float(best), now, ended)] if best is not None else []
        if points:
            self._client.log_batch(self.run_id, metrics=points)

    def counts(self, counts: dict) -> None:
        """Trials by how they ended: {"complete": n, "pruned": n, "failed": n}."""
        now = _now()
        self._client.log_batch(self.run_id, metrics=[Metric(metrics.SWEEP_TRIALS[k], float(v), now, 0)
                                                     for k, v in counts.items()])

    def figure(self, figure, artifact_file: str) -> None:
        self._client.log_figure(self.run_id, figure, artifact_file)

    def text(self, text: str, artifact_file: str) -> None:
        self._client.log_text(self.run_id, text, artifact_file)

    def tag(self, key: str, value: str) -> None:
        self._client.set_tag(self.run_id, key, value)

    def end(self, status: str = FINISHED) -> None:
        self._client.set_terminated(self.run_id, status)


def open_sweep(store: Store, experiment: str, run_name: str, tags: dict, params: dict, space_yaml: str) -> SweepRun:
    """A new sweep parent run: its tags, the space and settings as params, `space.yaml`."""
    client = store._client
    run_id = client.create_run(store.experiment_id(experiment), run_name=run_name,
                               tags={**git_tags(), **tags}).info.run_id
    client.log_batch(run_id, params=[Param(k, _param_value(v)) for k, v in params.items()])
    client.log_text(run_id, space_yaml, "space.yaml")
    return SweepRun(client, run_id)


def sweep_run(store: Store, run_id: str) -> SweepRun:
    """An existing sweep parent run, RUNNING again (another worker, or a rerun)."""
    store._client.update_run(run_id, status=RUNNING)
    return SweepRun(store._client, run_id)


class RunReader:
    """Read-only look-ups for `harness table`: nothing is created, and a store that does not
    exist yet reads as empty."""

    def __init__(self, uri: Optional[str], experiment: str):
        self.uri = resolve_uri(uri)
        self.experiment = experiment
        self._store = Store(self.uri) if store_exists(self.uri) else None

    def latest_finished(self, iteration: str, config_sha: Optional[str] = None) -> Optional[RunRecord]:
        """Store.latest_finished in this reader's experiment (None without a store)."""
        if self._store is None:
            return None
        return self._store.latest_finished(self.experiment, iteration, config_sha)

    # The rest answers as harness.fast_store.SqliteReader does, through the MLflow client (REST
    # for a server).

    def runs(self, iteration: Optional[str] = None) -> list[RunRecord]:
        """Parent runs of the experiment, newest first."""
        return self._store.runs(self.experiment, iteration) if self._store is not None else []

    def references(self) -> list[RunRecord]:
        """Finished reference runs (`harness reference`), newest first."""
        if self._store is None:
            return []
        query = f"tags.`{TAG_KIND}` = '{KIND_REFERENCE}' and attributes.status = '{FINISHED}'"
        return [_record(run) for run in _search(self._store, self.experiment, query)]

    def known(self, run_ids: Iterable[str]) -> set[str]:
        """The ids among `run_ids` of runs the store holds (deleted ones not)."""
        found = set()
        for run_id in dict.fromkeys(i for i in run_ids if i):
            record = self.run(run_id) if self._store is not None else None
            if record is not None and record.run_id == run_id:
                found.add(run_id)
        return found

    def run(self, run_id: str) -> Optional[RunRecord]:
        """The run with this id, or the only parent run of the experiment whose id starts with it."""
        if self._store is None or not run_id:
            return None
        try:
            run = self._store._client.get_run(run_id)
            if run.info.lifecycle_stage == "active":
                return _record(run)
        except MlflowException:
            pass
        matches = [r for r in self.runs() + self.references() if r.run_id.startswith(run_id)]
        return self._store.run(matches[0].run_id) if len(matches) == 1 else None


# --------------------------------------------------------------------------- data, system metrics


def _log_dataset(client: MlflowClient, run_id: str, data: DataLineage) -> None:
    """The run's data as an MLflow dataset input (the run page's Datasets): digest = the data
    fingerprint, source = the folder, the split sizes and the synthetic flag in its profile."""
    dataset = Dataset(name=data.name, digest=data.digest, source_type="local",
                      source=json.dumps({"uri": data.source}), profile=json.dumps(data.profile()))
    tags = [InputTag("mlflow.data.context", "training"), InputTag(TAG_SYNTHETIC, str(data.synthetic).lower())]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags)])


class SystemMetrics:
    """MLflow's system-metrics monitor on one run: CPU, memory, disk, network, and GPU use and
    memory through nvidia-ml-py when a GPU is visible. It samples on a daemon thread (every 10 s,
    or $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL), so a killed process simply loses the thread,
    and a resumed run continues its steps. `stop` also logs what was sampled since the last
    point, so a run shorter than one interval still gets a point."""

    def __init__(self, uri: str, run_id: str, resumed: bool, interval: float = 10.0):
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, resume_logging=resumed,
                                             tracking_uri=uri)
        self._monitor.start()

    def stop(self) -> None:
        monitor = self._monitor
        monitor.finish()
        leftover = monitor.aggregate_metrics()
        if leftover:
            try:
                monitor.publish_metrics(leftover)
                monitor.mlflow_logger.flush()
            except MlflowException:
                pass  # the run is gone or terminated: nothing left to record


# --------------------------------------------------------------------------- the model as an MLflow Model

MODEL_NAME = "model"  # the logged model's name in its run
KERAS_ARTIFACT = "model.keras"
CARD_ARTIFACT = "card.json"
# Models from code (MLflow's way that pickles nothing): loading the model runs this file, which
# hands MLflow a HarnessModel; the harness package travels with the model as code_paths.
MODEL_CODE_FILE = "harness_model.py"
MODEL_CODE = ('"""The ledger harness\'s pyfunc model: MLflow runs this file to obtain it."""\n'
              "import mlflow\n\nfrom harness.track.store import HarnessModel\n\nmlflow.models.set_model(HarnessModel())\n")


class HarnessModel(PythonModel):
    """The pyfunc face of harness.predict.Predictor: loads the .keras file (safe_mode=True) and
    its card; `predict` takes a DataFrame with an `image` column of encoded image bytes and
    returns one row per image with every head's label and probability (columns documented in
    harness/predict.py). A thin adapter: the logic lives where MLflow is not imported."""

    def load_context(self, context):
        from harness.serve.predict import Predictor

        self.predictor = Predictor.load(context.artifacts[KERAS_ARTIFACT], context.artifacts[CARD_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.predictor.predict_frame(model_input)


def log_model(client: MlflowClient, experiment_id: str, run_id: str, iteration: str, checkpoint: Path, card,
              example: bytes, step: int = 0) -> str:
    """A checkpoint as an MLflow Model `model` of a run: the .keras file and the card
    (harness.predict.ModelCard) as artifacts, loaded by HarnessModel; a signature, one real image
    as input example (MLflow checks at logging that it predicts), explicit pip requirements
    (inferring them loads the model in a subprocess: the slow part of mlflow.keras.log_model).
    `step` links that epoch's metrics to the model page. Returns the models:/ URI."""
    import tempfile

    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        card_file = card.save(Path(tmp) / CARD_ARTIFACT)
        code_file = Path(tmp) / MODEL_CODE_FILE
        code_file.write_text(MODEL_CODE)
        with _tracking_uri(client.tracking_uri, experiment_id):
            info = Model.log(
                artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run_id, step=step,
                python_model=str(code_file), artifacts={KERAS_ARTIFACT: str(checkpoint), CARD_ARTIFACT: str(card_file)},
                code_paths=[str(Path(__file__).resolve().parents[1])], signature=_signature(card),
                input_example=_input_example(example), pip_requirements=_pip_requirements(),
                tags={TAG_ITERATION: iteration},
            )
    return info.model_uri


def _signature(card):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from harness.serve.predict import INPUT_COLUMN, PROB_SUFFIX

    outputs = [ColSpec("double" if column.endswith(PROB_SUFFIX) else "string", column) for column in card.columns()]
    return ModelSignature(inputs=Schema([ColSpec("binary", INPUT_COLUMN)]), outputs=Schema(outputs))


def _input_example(image: bytes):
    from harness.serve.predict import input_frame

    return input_frame([image])


def _pip_requirements() -> list[str]:
    """What the model needs to load, pinned to what trained it (the harness code itself travels
    with the model as code_paths)."""
    from importlib import metadata

    def installed(*names):
        for name in names:
            try:
                return f"{name}=={metadata.version(name)}"
            except metadata.PackageNotFoundError:
                continue
        return None

    wanted = [("mlflow",), ("keras",), ("tensorflow", "tensorflow-cpu"), ("numpy",), ("pandas",), ("pillow",),
              ("pydantic",), ("pyyaml",)]
    return [pin for names in wanted if (pin := installed(*names))]


@contextmanager
def _tracking_uri(uri: str, experiment_id: Optional[str] = None):
    """MLflow's global tracking URI (and, given, its active experiment) set for the calls that
    only read those (model logging, registering, loading models:/ URIs), then put back. Without
    the experiment a logged model would land in experiment 0, under ./mlruns of the current
    folder. MLflow writes $MLFLOW_TRACKING_URI when the global changes: restored too."""
    saved = {name: os.environ.get(name) for name in (TRACKING_URI_ENV, "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
    if experiment_id is not None:
        os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
        os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[TRACKING_URI_ENV])
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _registry(store: "Store") -> MlflowClient:
    """A client whose model registry is this store (SQLite or server alike)."""
    return MlflowClient(tracking_uri=store.uri, registry_uri=store.uri)


def model_uri(store: "Store", run_id: str) -> Optional[str]:
    """The models:/ URI of the MLflow Model a run logged (the newest), or None."""
    outputs = store._client.get_run(run_id).outputs
    models = list(outputs.model_outputs) if outputs is not None else []
    return f"models:/{models[-1].model_id}" if models else None


def register(store: "Store", name: str, run: RunRecord, alias: Optional[str] = None) -> ModelVersionRecord:
    """A new version of registered model `name` (created on first use) from the run's logged
    model, tagged with the run's iteration, data and profile; `alias` (champion, say) moved to it."""
    if alias is not None and alias_problem(alias):
        raise InputError(f"--alias {alias}: {alias_problem(alias)}")
    uri = model_uri(store, run.run_id)
    if uri is None:
        raise InputError(f"{run.iteration}: run {run.run_id} logged no MLflow Model (it finished before models were "
                         f"logged); train it again with --fresh")
    tags = {key: run.tags[key] for key in (TAG_ITERATION, TAG_DATA, TAG_DATA_DIR, TAG_PROFILE, TAG_SYNTHETIC)
            if key in run.tags}
    with _tracking_uri(store.uri):
        version = mlflow.register_model(uri, name, tags=tags)
    client = _registry(store)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return _version_record(client.get_model_version(name, version.version), run)


def alias_problem(alias: str) -> Optional[str]:
    """Why the registry would refuse `alias` (its rules in MLflow 3.17: letters, digits, `_` and
    `-`, at most 255 characters, not `latest` nor a version name like v3), checked before a
    version is written; None if it is fine."""
    if not re.fullmatch(r"[\w\-]{1,255}", alias):
        return "an alias is 1-255 letters, digits, underscores (_) or dashes (-)"
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        return "reserved by the MLflow registry (latest and v<number> name versions)"
    return None


def model_versions(store: "Store", name: str) -> list[ModelVersionRecord]:
    """Every version of registered model `name`, newest first, each with its run ([] if none)."""
    client = _registry(store)
    try:
        aliases = client.get_registered_model(name).aliases or {}
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    records = []
    for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
        try:
            run = store.run(version.run_id) if version.run_id else None
        except MlflowException:
            run = None
        # search_model_versions leaves out aliases on some stores; the registered model has them
        named = tuple(sorted(alias for alias, number in aliases.items() if str(number) == str(version.version)))
        records.append(_version_record(version, run, named))
    return records


def _version_record(version, run: Optional[RunRecord], aliases: Optional[tuple] = None) -> ModelVersionRecord:
    aliases = aliases if aliases is not None else tuple(version.aliases or ())
    return ModelVersionRecord(name=version.name, version=str(version.version), aliases=aliases,
                              run_id=version.run_id or "", created=version.creation_timestamp,
                              tags=dict(version.tags or {}), run=run)


def load_predictor(store: "Store", uri: str):
    """The harness.predict.Predictor inside an MLflow Model (models:/NAME@ALIAS, models:/NAME/3,
    models:/m-..., runs:/...), loaded through pyfunc as any MLflow user would load it."""
    import mlflow.pyfunc

    with _tracking_uri(store.uri):
        try:
            model = mlflow.pyfunc.load_model(uri)
        except MlflowException as exc:
            raise InputError(f"{uri}: no such model in {store.uri} ({exc.message.splitlines()[0]})") from None
    return model.unwrap_python_model().predictor
