"""MLflow, and only here: the layout DESIGN.md fixes for runs, metrics, tags and artifacts.

One experiment per ledger; one parent run per `harness run` of an iteration, named after it;
one nested child run per pass (`eleventh/pass-2`). Per-epoch metrics go to both the parent and
the pass's child with step = epoch counted across passes, so the parent's `val_gender_acc` chart
runs through every pass. Each epoch is one `log_batch` call per run, never one call per metric.

The client API (explicit run ids) is used instead of mlflow's global active-run stack, because a
resumed run must reopen a specific parent and child, and tests open several stores in one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Iterable, Optional

from mlflow.entities import Metric, Param, ViewType
from mlflow.tracking import MlflowClient

from harness import metrics
from harness.ledger import Iteration, flatten

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
UNFINISHED = ("RUNNING", "KILLED", "SCHEDULED")


def resolve_uri(explicit: Optional[str] = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the project's SQLite store."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    db = _sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    return uri


def _sqlite_path(uri: str) -> Optional[Path]:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def store_root(uri: str) -> Path:
    """Folder that holds the store's artifacts and run work folders: beside a SQLite file,
    else ./mlruns."""
    db = _sqlite_path(uri)
    return (db.parent if db is not None else Path("mlruns")).resolve()


class Store:
    """A tracking store: finds experiments and runs; opens trackers."""

    def __init__(self, uri: Optional[str] = None):
        self.uri = resolve_uri(uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.root = store_root(self.uri)

    def experiment_id(self, name: str, create: bool = True) -> Optional[str]:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        if not create:
            return None
        location = (self.root / "artifacts" / name).as_uri() if _sqlite_path(self.uri) else None
        return self.client.create_experiment(name, artifact_location=location)

    def workdir(self, run_id: str) -> Path:
        return self.root / "work" / run_id

    def parent_runs(self, experiment: str, iteration: Optional[str] = None, max_results: int = 5000) -> list:
        """Parent runs of an experiment (newest first), optionally of one iteration."""
        exp_id = self.experiment_id(experiment, create=False)
        if exp_id is None:
            return []
        query = "tags.`harness.kind` = 'iteration'"
        if iteration:
            query += f" and tags.`harness.iteration` = '{iteration}'"
        return self.client.search_runs(
            [exp_id], query, run_view_type=ViewType.ACTIVE_ONLY,
            max_results=max_results, order_by=["attributes.start_time DESC"],
        )

    def child_runs(self, parent) -> list:
        return self.client.search_runs(
            [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            order_by=["attributes.start_time ASC"],
        )

    def latest_finished(self, experiment: str, iteration: str, config_sha: Optional[str] = None):
        for run in self.parent_runs(experiment, iteration):
            if run.info.status == "FINISHED" and (config_sha is None or run.data.tags.get("harness.config_sha") == config_sha):
                return run
        return None

    def resumable(self, experiment: str, iteration: str):
        """The newest unfinished parent run of an iteration (a killed process leaves RUNNING)."""
        for run in self.parent_runs(experiment, iteration):
            if run.info.status in UNFINISHED and self.workdir(run.info.run_id).joinpath("state.json").exists():
                return run
            if run.info.status == "FINISHED":
                return None
        return None

    def download(self, run_id: str, path: str, dest: Path) -> Path:
        return Path(self.client.download_artifacts(run_id, path, str(dest)))

    def open_tracker(self, experiment: str, iteration: Iteration, tags: dict, resume_run=None,
                     log=print) -> "RunTracker":
        return RunTracker(self, experiment, iteration, tags, resume_run, log)


def log_lr_find(store: Store, experiment: str, iteration: Iteration, tags: dict, curve, figure) -> str:
    """An `ITER/lr-find` run: the curve as metrics (step = batch), the plot, the suggestion."""
    run = store.client.create_run(
        store.experiment_id(experiment), run_name=f"{iteration.name}/lr-find",
        tags={"harness.kind": "lr-find", "harness.iteration": iteration.name,
              "harness.config_sha": iteration.config_sha(), **git_tags(), **tags},
    )
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    points = []
    for step, (lr, raw, smoothed) in enumerate(zip(curve.lrs, curve.raw, curve.smoothed), start=1):
        points += [Metric(metrics.LR_FIND_LR, lr, now, step), Metric(metrics.LR_FIND_LOSS, raw, now, step),
                   Metric(metrics.LR_FIND_SMOOTHED_LOSS, smoothed, now, step)]
    points += [Metric(metrics.SUGGESTED_LR, curve.suggestion(), now, 0), Metric(metrics.MAX_LR, curve.max_lr, now, 0)]
    for start in range(0, len(points), 1000):  # log_batch takes at most 1000 metrics
        store.client.log_batch(run_id, metrics=points[start:start + 1000])
    store.client.log_figure(run_id, figure, "lr_find.png")
    store.client.set_terminated(run_id, "FINISHED")
    return run_id


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
    return {"mlflow.source.git.commit": head.stdout.strip(), "harness.git_dirty": str(dirty).lower()}


class RunTracker:
    """Implements harness.train.Reporter: logs one iteration's run as DESIGN.md lays it out."""

    def __init__(self, store: Store, experiment: str, iteration: Iteration, tags: dict, resume_run=None, log=print):
        self.store, self.client, self.iteration, self.log = store, store.client, iteration, log
        self.experiment_id = store.experiment_id(experiment)
        self.children: dict[int, str] = {}
        if resume_run is not None:
            self.run_id = resume_run.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            for child in store.child_runs(resume_run):
                self.children[int(child.data.tags["harness.pass"])] = child.info.run_id
            self.logged_steps = {m.step for m in self.client.get_metric_history(self.run_id, metrics.LOSS)}
        else:
            all_tags = {
                "harness.kind": "iteration",
                "harness.iteration": iteration.name,
                "harness.extends": iteration.extends or "",
                "harness.config_sha": iteration.config_sha(),
                "mlflow.source.name": "harness run",
                "mlflow.source.type": "LOCAL",
                **git_tags(),
                **tags,
            }
            run = self.client.create_run(self.experiment_id, run_name=iteration.name, tags=all_tags)
            self.run_id = run.info.run_id
            self.logged_steps = set()
            params = [Param(k, _param_value(v)) for k, v in flatten(iteration.training_dict()).items()]
            for start in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[start:start + 100])
            self.client.log_text(self.run_id, iteration.to_yaml(), "config.yaml")
        self.workdir = store.workdir(self.run_id)

    # ---- Reporter

    def replay(self, history: Iterable[dict]) -> int:
        """Log the epochs a killed process finished but never reported; returns how many."""
        missing = [h for h in history if h["step"] not in self.logged_steps]
        for entry in missing:
            self.epoch_finished(entry["pass"], entry["step"], entry["metrics"])
        return len(missing)

    def pass_started(self, index: int, iteration: Iteration, freeze=None) -> None:
        if index in self.children:
            self.client.update_run(self.children[index], status="RUNNING")
            return
        child = self.client.create_run(
            self.experiment_id,
            run_name=f"{iteration.name}/pass-{index + 1}",
            tags={"mlflow.parentRunId": self.run_id, "harness.kind": "pass", "harness.pass": str(index),
                  "harness.iteration": iteration.name},
        )
        self.children[index] = child.info.run_id
        pass_ = iteration.passes[index]
        params = [Param(k, _param_value(v)) for k, v in flatten(pass_.model_dump(mode="json"), "pass.").items()]
        self.client.log_batch(child.info.run_id, params=params)

    def epoch_finished(self, pass_index: int, step: int, values: dict) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=batch)
        if pass_index in self.children:
            self.client.log_batch(self.children[pass_index], metrics=batch)
        self.logged_steps.add(step)

    def pass_finished(self, index: int, result) -> None:
        from harness import plots

        child = self.children[index]
        self.client.log_dict(child, result.eval, "eval.json")
        self.client.log_artifact(child, str(result.best_checkpoint), "checkpoint")
        for head, classes in self._heads().items():
            figure = plots.confusion_matrix(result.labels[head], result.predictions[head], classes,
                                            f"{self.iteration.name} pass {index + 1}: {head}")
            self.client.log_figure(child, figure, f"plots/confusion_{head}.png")
            plots.close(figure)
        summary = metrics.pass_summary(result.best_epoch)
        if summary:
            self.client.log_batch(child, metrics=[Metric(k, float(v), int(time.time() * 1000), 0) for k, v in summary.items()])
        self.client.set_terminated(child, "FINISHED")

    # ---- run level

    def _heads(self) -> dict:
        from harness.data.labels import heads_for

        return heads_for(self.iteration.data.name)

    def log_model_facts(self, total: int, trainable: int, summary_text: str) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(metrics.TOTAL_PARAMS, float(total), now, 0),
            Metric(metrics.TRAINABLE_PARAMS, float(trainable), now, 0),
        ])
        self.client.log_text(self.run_id, summary_text, "model_summary.txt")

    def finish(self, history: list[dict], results: list, final_checkpoint: Optional[Path]) -> dict:
        """Summary metrics, curves, the final checkpoint; status FINISHED. Returns the summary."""
        from harness import plots

        summary = metrics.summarize(history, self.iteration.data.name)
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])
        figure = plots.training_curves(history, self.iteration.data.name, title=self.iteration.name)
        self.client.log_figure(self.run_id, figure, "plots/training_curves.png")
        plots.close(figure)
        if final_checkpoint is not None and Path(final_checkpoint).exists():
            self.client.log_artifact(self.run_id, str(final_checkpoint), "checkpoint")
        if results:
            self.client.log_dict(self.run_id, {f"pass-{r.index + 1}": r.eval for r in results}, "eval.json")
        self.client.set_terminated(self.run_id, "FINISHED")
        return summary

    def fail(self, reason: str, status: str = "FAILED") -> None:
        self.client.set_tag(self.run_id, "harness.failure_reason", reason[:5000])
        for child in self.children.values():
            if self.client.get_run(child).info.status == "RUNNING":
                self.client.set_terminated(child, status)
        self.client.set_terminated(self.run_id, status)



def _param_value(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


# --------------------------------------------------------------------------- read helpers
# For `harness table` (harness.report) and `harness ui` (harness.ui): plain data out, nothing
# created. Kept apart from the writing side above.


def store_exists(uri: Optional[str] = None) -> bool:
    """False for a SQLite store whose file does not exist yet (reading must not create one)."""
    db = _sqlite_path(explicit_uri(uri))
    return db is None or db.exists()


class RunReader:
    """Read-only look-ups for `harness table`. Each is one search_runs call that returns at most
    one run, so the table's cost grows with the ledger, not with the store (500 runs: ~0.1 s)."""

    def __init__(self, uri: Optional[str], experiment: str):
        self.uri = explicit_uri(uri)
        self.store = Store(self.uri) if store_exists(self.uri) else None
        self.experiment_id = self.store.experiment_id(experiment, create=False) if self.store else None

    def latest_finished(self, iteration: str, config_sha: Optional[str] = None) -> Optional[dict]:
        """The newest FINISHED parent run of an iteration (with that config sha, if given) as a
        plain dict: run_id, status, start_time (ms), tags, metrics (latest values), params."""
        if self.experiment_id is None:
            return None
        query = (f"tags.`harness.kind` = 'iteration' and tags.`harness.iteration` = '{iteration}' "
                 "and attributes.status = 'FINISHED'")
        if config_sha:
            query += f" and tags.`harness.config_sha` = '{config_sha}'"
        found = self.store.client.search_runs([self.experiment_id], query, run_view_type=ViewType.ACTIVE_ONLY,
                                              max_results=1, order_by=["attributes.start_time DESC"])
        return _record(found[0]) if found else None


def _record(run) -> dict:
    return {
        "run_id": run.info.run_id,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "tags": dict(run.data.tags),
        "metrics": dict(run.data.metrics),
        "params": dict(run.data.params),
    }


def explicit_uri(uri: Optional[str]) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the default; no folder is created."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def absolute_uri(uri: str) -> str:
    """A relative SQLite path made absolute (a server started elsewhere finds the same file)."""
    db = _sqlite_path(uri)
    return f"sqlite:///{db.resolve()}" if db is not None and not db.is_absolute() else uri


def server_command(uri: str, host: str, port: int, workers: int = 1) -> list[str]:
    """`mlflow server` over a store, its artifact root served (new experiments land beside the
    SQLite file, as Store puts them; existing ones keep their recorded file locations)."""
    import sys

    uri = absolute_uri(uri)
    artifacts = (store_root(uri) / "artifacts").as_uri()
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        "--default-artifact-root", artifacts,
        "--artifacts-destination", artifacts,
        "--serve-artifacts",
        "--host", host, "--port", str(port), "--workers", str(workers),
    ]
