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
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

from mlflow.entities import Metric, Param, ViewType
from mlflow.tracking import MlflowClient

from harness import faults, metrics
from harness.ledger import Iteration, flatten
from harness.records import (
    FAILED, FINISHED, KIND_ITERATION, KIND_LR_FIND, KIND_PASS, KIND_REFERENCE, NEW, RESUME, RUNNING, SKIP,
    TAG_CONFIG_SHA, TAG_EXTENDS, TAG_FAILURE_REASON, TAG_GIT_DIRTY, TAG_ITERATION, TAG_KIND, TAG_PASS, TAG_REFERENCE,
    TAG_SPLIT, UNFINISHED, Decision, MetricPoint, RunRecord,
)
from harness.settings import DEFAULT_TRACKING_URI, TRACKING_URI_ENV


def resolve_uri(explicit: Optional[str] = None, create: bool = False) -> str:
    """The tracking URI: --tracking-uri, else $MLFLOW_TRACKING_URI, else the project's SQLite
    store. A relative SQLite path is made absolute (a server started elsewhere, or a later
    chdir, finds the same file); with `create`, the SQLite file's folder is made."""
    uri = explicit or os.environ.get(TRACKING_URI_ENV) or DEFAULT_TRACKING_URI
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
        "--backend-store-uri", uri,
        "--default-artifact-root", artifacts,
        "--artifacts-destination", artifacts,
        "--serve-artifacts",
        "--host", host, "--port", str(port), "--workers", str(workers),
    ]


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


def _record(run) -> RunRecord:
    return RunRecord(run_id=run.info.run_id, name=run.info.run_name, status=run.info.status,
                     start_time=run.info.start_time, end_time=run.info.end_time, tags=dict(run.data.tags),
                     metrics=dict(run.data.metrics), params=dict(run.data.params))


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


class Store:
    """A tracking store: what `harness run` should do with an iteration, the runs it holds (as
    RunRecords), and trackers for new or resumed runs."""

    def __init__(self, uri: Optional[str] = None):
        self.uri = resolve_uri(uri, create=True)
        self._client = MlflowClient(tracking_uri=self.uri)
        self._experiments: dict[str, str] = {}

    def experiment_id(self, name: str, create: bool = True) -> Optional[str]:
        """The id of experiment `name`, created (artifacts beside a SQLite store) if asked."""
        if name not in self._experiments:
            found = self._client.get_experiment_by_name(name)
            if found is None and not create:
                return None
            root = artifact_root(self.uri)
            self._experiments[name] = found.experiment_id if found is not None else self._client.create_experiment(
                name, artifact_location=(root / name).as_uri() if root else None)
        return self._experiments[name]

    # ---- reading

    def _search(self, experiment: str, query: str, max_results: int = 5000) -> list:
        exp_id = self.experiment_id(experiment, create=False)
        if exp_id is None:
            return []
        return self._client.search_runs([exp_id], query, run_view_type=ViewType.ACTIVE_ONLY,
                                        max_results=max_results, order_by=["attributes.start_time DESC"])

    def runs(self, experiment: str, iteration: Optional[str] = None) -> list[RunRecord]:
        """Parent runs of an experiment, newest first, optionally of one iteration."""
        query = f"tags.`{TAG_KIND}` = '{KIND_ITERATION}'"
        if iteration:
            query += f" and tags.`{TAG_ITERATION}` = '{iteration}'"
        return [_record(run) for run in self._search(experiment, query)]

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
        query = (f"tags.`{TAG_KIND}` = '{KIND_ITERATION}' and tags.`{TAG_ITERATION}` = '{iteration}' "
                 f"and attributes.status = '{FINISHED}'")
        if config_sha:
            query += f" and tags.`{TAG_CONFIG_SHA}` = '{config_sha}'"
        found = self._search(experiment, query, max_results=1)
        return _record(found[0]) if found else None

    def references(self, experiment: str, split: str) -> dict[str, RunRecord]:
        """reference name -> its newest finished run on the validation images `split` names."""
        query = (f"tags.`{TAG_KIND}` = '{KIND_REFERENCE}' and tags.`{TAG_SPLIT}` = '{_quoted(split)}' "
                 f"and attributes.status = '{FINISHED}'")
        found = {}
        for run in self._search(experiment, query):
            found.setdefault(run.data.tags.get(TAG_REFERENCE), _record(run))
        return found

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        """Every logged value of a metric, by step."""
        history = self._client.get_metric_history(run_id, key)
        return sorted((MetricPoint(m.step, m.value, m.timestamp) for m in history), key=lambda p: p.step)

    def download(self, run_id: str, path: str, dest: Path) -> Path:
        return Path(self._client.download_artifacts(run_id, path, str(dest)))

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
        previous = None if fresh else self._unfinished(experiment, name, resumable)
        if previous is None:
            return Decision(NEW)
        if previous.config_sha == sha:
            return Decision(RESUME, previous, f"{name}: resuming unfinished run {previous.run_id[:8]} "
                                              f"(use --fresh to start over)")
        return Decision(NEW, None, f"{name}: not resuming run {previous.run_id[:8]}: its config sha "
                                   f"{previous.config_sha} differs from the ledger's {sha}; starting fresh")

    def _unfinished(self, experiment: str, iteration: str, resumable: Callable[[str], bool]) -> Optional[RunRecord]:
        """The newest unfinished parent run with local state, unless a finished one is newer (a
        killed process leaves its run RUNNING)."""
        for run in self.runs(experiment, iteration):
            if run.status in UNFINISHED and resumable(run.run_id):
                return run
            if run.status == FINISHED:
                return None
        return None

    def start(self, decision: Decision, experiment: str, iteration: Iteration, tags: dict) -> "RunTracker":
        """The tracker of the run `decision` names: a new parent run (params, config.yaml) or the
        resumed one."""
        if decision.kind == SKIP:
            raise ValueError(f"{iteration.name}: a skipped iteration has no run to start")
        resumed = decision.run if decision.kind == RESUME else None
        return RunTracker(self._client, self.experiment_id(experiment), iteration, tags, resumed)


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
                 resumed: Optional[RunRecord] = None):
        self._client, self._experiment_id, self.iteration = client, experiment_id, iteration
        self._children: dict[int, str] = {}
        if resumed is not None:
            self.run_id = resumed.run_id
            self._client.update_run(self.run_id, status=RUNNING)
            for child in self._client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{self.run_id}'"):
                self._children[int(child.data.tags[TAG_PASS])] = child.info.run_id
            self._logged_steps = {m.step for m in self._client.get_metric_history(self.run_id, metrics.LOSS)}
            return
        self.run_id = self._client.create_run(experiment_id, run_name=iteration.name,
                                              tags={**_run_tags(iteration), **git_tags(), **tags}).info.run_id
        self._logged_steps: set = set()
        params = _params(iteration.training_dict())
        for start in range(0, len(params), 100):
            self._client.log_batch(self.run_id, params=params[start:start + 100])
        self._client.log_text(self.run_id, iteration.to_yaml(), "config.yaml")

    def _log_metrics(self, run_id: str, values: dict, step: int = 0) -> None:
        now = _now()
        self._client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def model_built(self, total: int, trainable: int, summary_text: str) -> None:
        """The model's parameter counts and summary (a new run, before training)."""
        self._log_metrics(self.run_id, {metrics.TOTAL_PARAMS: total, metrics.TRAINABLE_PARAMS: trainable})
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
            self._experiment_id, run_name=f"{iteration.name}/pass-{index + 1}",
            tags={"mlflow.parentRunId": self.run_id, TAG_KIND: KIND_PASS, TAG_PASS: str(index),
                  TAG_ITERATION: iteration.name},
        ).info.run_id
        self._client.log_batch(self._children[index], params=_params(iteration.passes[index].model_dump(mode="json"),
                                                                      "pass."))

    def epoch_finished(self, pass_index: int, step: int, values: dict) -> None:
        self._log_metrics(self.run_id, values, step)
        if pass_index in self._children:
            self._log_metrics(self._children[pass_index], values, step)
        self._logged_steps.add(step)

    def pass_finished(self, index: int, result) -> None:
        """The pass's eval.json, best checkpoint, confusion matrices and summary; FINISHED."""
        from harness import plots
        from harness.data.labels import heads_for

        child = self._children[index]
        self._client.log_dict(child, result.eval, "eval.json")
        self._client.log_artifact(child, str(result.best_checkpoint), "checkpoint")
        for head, classes in heads_for(self.iteration.data.name).items():
            figure = plots.confusion_matrix(result.labels[head], result.predictions[head], classes,
                                            f"{self.iteration.name} pass {index + 1}: {head}")
            self._client.log_figure(child, figure, f"plots/confusion_{head}.png")
            plots.close(figure)
        summary = metrics.pass_summary(result.best_epoch)
        if summary:
            self._log_metrics(child, summary)
        self._client.set_terminated(child, FINISHED)

    def finish(self, history: list[dict], results: list, final_checkpoint: Optional[Path],
               selected: Optional[dict] = None) -> dict:
        """Summary metrics (the per-epoch bests, and `selected`: the selected checkpoint's
        scores), curves, the selected checkpoint; status FINISHED. Returns the summary."""
        from harness import plots

        summary = {**metrics.summarize(history, self.iteration.data.name), **(selected or {})}
        self._log_metrics(self.run_id, summary)
        figure = plots.training_curves(history, self.iteration.data.name, title=self.iteration.name)
        self._client.log_figure(self.run_id, figure, "plots/training_curves.png")
        plots.close(figure)
        faults.reach("final-upload")
        if final_checkpoint is not None and Path(final_checkpoint).exists():
            self._client.log_artifact(self.run_id, str(final_checkpoint), "checkpoint")
        if results:
            self._client.log_dict(self.run_id, {f"pass-{r.index + 1}": r.eval for r in results}, "eval.json")
        self._client.set_terminated(self.run_id, FINISHED)
        return summary

    def fail(self, reason: str, status: str = FAILED) -> None:
        """The run ends FAILED (or KILLED) with its reason; so does any pass still running."""
        self._client.set_tag(self.run_id, TAG_FAILURE_REASON, reason[:5000])
        for child in self._children.values():
            if self._client.get_run(child).info.status == RUNNING:
                self._client.set_terminated(child, status)
        self._client.set_terminated(self.run_id, status)


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
