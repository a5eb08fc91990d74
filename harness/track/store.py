"""MLflow, and only here: the layout of runs, metrics, tags and artifacts (docs/architecture.md).

One experiment per ledger; one parent run per `harness run` of an iteration, named after it;
one nested child run per pass (`eleventh/pass-2`). Metric names come from harness.core.metrics,
tag names from harness.core.records.

The boundary: nothing MLflow leaves the track package. Runs come back as `RunRecord`s; `Store.begin`
answers once, at the start, whether a run is new, resumed or skipped (a `Decision`); after that
the caller only hands events to the `RunTracker` that `Store.start` returns.

The client API (explicit run ids) is used instead of mlflow's global active-run stack, because a
resumed run must reopen a specific parent and child, and tests open several stores in one process.

Many processes, one store (docs/scaling.md). A server URI is probed before use (harness.track.remote:
one line naming it when it does not answer, MLflow's HTTP retries bounded). On SQLite, MLflow
3.17 already gives every session a 20 s busy timeout, so concurrent writers wait for each other
instead of failing; what does fail is two processes creating a new store at once (both run the
schema migrations: "table ... already exists", "database is locked"), so a new store is opened
under a file lock beside it. Two processes creating the same experiment: the loser reads the
winner's. A running iteration carries a lease (harness.track.leases), renewed with each epoch's
metrics in the same call, so a second `harness run` of it, on any machine, refuses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sqlalchemy.exc import DBAPIError

from harness.core import guards
from harness.track import remote, store_check
from harness.core.errors import StoreUnusable
from harness.track.leases import check_running, lines
from harness.ledger.schema import Iteration
from harness.core.records import (EXPERIMENT_KIND_TRAINING, FINISHED, KIND_ITERATION, KIND_REFERENCE, NEW, RESUME, RUNNING, SKIP, TAG_EXPERIMENT_KIND, TAG_FAILURE_REASON,
                                  TAG_KIND, TAG_REFERENCE, TAG_SPLIT, UNFINISHED,
                                  DataLineage, Decision, MetricPoint, RunRecord, finished_query, parent_query, quoted)
from harness.track.failures import quiet_store_errors
from harness.track.layout import run_record, search
from harness.track.tracker import RunTracker
from harness.track.system_metrics import SystemMetrics
from harness.track.uris import artifact_root, local_artifact_root, resolve_uri, sqlite_path


def open_client(uri: str) -> MlflowClient:
    """A client for a resolved URI: a server is probed first (TrackingUnreachable, one line,
    when it does not answer); a SQLite store is checked (harness.track.store_check: StoreUnusable, one
    line, when damaged or locked), then created and migrated by one process at a time."""
    db = sqlite_path(uri)
    if db is None:
        if remote.is_server(uri):
            remote.configure_http_client(uri)
            remote.check_reachable(uri)
        return MlflowClient(tracking_uri=uri)
    store_check.check(db)  # damaged or locked: one line now, not MLflow's retries and a traceback
    quiet_store_errors()
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

    def runs(self, experiment: str, iteration: Optional[str] = None, kind: str = KIND_ITERATION) -> list[RunRecord]:
        """Parent runs of an experiment, newest first, optionally of one iteration; `kind`
        KIND_VARIANT: the `--set` variants' runs instead (never an iteration's own)."""
        return [run_record(run) for run in search(self, experiment, parent_query(iteration, kind=kind))]

    def run(self, run_id: str) -> RunRecord:
        return run_record(self._client.get_run(run_id))

    def find(self, run_id: str) -> tuple[Optional[RunRecord], Optional[str]]:
        """(record, experiment name) of the run with this id, or of the only active run in any
        experiment whose id starts with it; (None, None) when there is none."""
        try:
            run = self._client.get_run(run_id)
            if run.info.lifecycle_stage == "active":
                return run_record(run), self._client.get_experiment(run.info.experiment_id).name
        except MlflowException:
            pass
        if len(run_id) < 4:
            return None, None
        matches = [(run, experiment.name) for experiment in self._client.search_experiments()
                   for run in self._client.search_runs([experiment.experiment_id], "", max_results=5000)
                   if run.info.run_id.startswith(run_id)]
        return (run_record(matches[0][0]), matches[0][1]) if len(matches) == 1 else (None, None)

    def set_tags(self, run_id: str, tags: dict) -> None:
        """Tags added to a run after it ended (a reproduction trained by another process)."""
        for key, value in tags.items():
            self._client.set_tag(run_id, key, value)

    def children(self, run_id: str) -> list[RunRecord]:
        """A parent run's pass runs, oldest first."""
        parent = self._client.get_run(run_id)
        return [run_record(run) for run in self._client.search_runs(
            [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'",
            order_by=["attributes.start_time ASC"])]

    def latest_finished(self, experiment: str, iteration: str, config_sha: Optional[str] = None) -> Optional[RunRecord]:
        """The newest FINISHED parent run of an iteration (with that config sha, if given): one
        search that returns at most one run, so its cost does not grow with the store."""
        found = search(self, experiment, finished_query(iteration, config_sha), max_results=1)
        return run_record(found[0]) if found else None

    def references(self, experiment: str, split: str) -> dict[str, RunRecord]:
        """reference name -> its newest finished run on the validation images `split` names."""
        query = (f"tags.`{TAG_KIND}` = '{KIND_REFERENCE}' and tags.`{TAG_SPLIT}` = '{quoted(split)}' "
                 f"and attributes.status = '{FINISHED}'")
        found = {}
        for run in search(self, experiment, query):
            found.setdefault(run.data.tags.get(TAG_REFERENCE), run_record(run))
        return found

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        """Every logged value of a metric, by step."""
        history = self._client.get_metric_history(run_id, key)
        return sorted((MetricPoint(m.step, m.value, m.timestamp) for m in history), key=lambda p: p.step)

    def download(self, run_id: str, path: str, dest: Path) -> Path:
        """One artifact (file or folder) of a run, copied under `dest`, reading nothing outside the
        run's artifacts (harness.core.guards: the path, a local store's links before the copy follows
        them, and the copy)."""
        guards.check_artifact_path(path, run_id)
        root = local_artifact_root(self._client.get_run(run_id).info.artifact_uri)
        if root is not None and (root / path).exists():
            guards.check_inside(root / path, root, f"run {run_id} artifact '{path}'")
        local = Path(self._client.download_artifacts(run_id, path, str(dest)))
        guards.check_inside(local, Path(dest), f"run {run_id} artifact '{path}'")
        return local

    def artifact_text(self, run_id: str, path: str) -> Optional[str]:
        """A text artifact of a run (config.yaml, environment/requirements.txt), None when the run
        has none of that name."""
        import tempfile

        parent = Path(path).parent.as_posix()
        if path not in {a.path for a in self._client.list_artifacts(run_id, None if parent == "." else parent)}:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            return self.download(run_id, path, Path(tmp)).read_text()

    def artifact_json(self, run_id: str, path: str) -> Optional[dict]:
        """A JSON artifact of a run (the predictions table), None when the run has none."""
        import json

        text = self.artifact_text(run_id, path)
        return None if text is None else json.loads(text)

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
        running = search(self, experiment, parent_query(iteration, RUNNING))
        return check_running(iteration, [run_record(run) for run in running])

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
