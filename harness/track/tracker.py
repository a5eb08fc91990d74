"""The `RunTracker`: the events of one training run (model built, pass started, epoch finished, ...),
written to its MLflow parent run and the pass's child run; its dataset input and system metrics.

An epoch's metrics (and the lease renewal riding with them) go through MLflow's own asynchronous
logging, `MlflowClient.log_batch(..., synchronous=False)`, so the next epoch starts while they
travel: on a PostgreSQL-backed server one epoch's two requests cost tens of milliseconds, on
the epoch's critical path until now (BENCHMARKS.md row (e)). At most one epoch is in flight
(`InFlight`): the next epoch's logging, the end of a pass, replay, finish and fail (Ctrl-C,
SIGTERM, SIGHUP arrive as KeyboardInterrupt and end in `fail`) first wait for it, so leases are
written in order and a lost server surfaces, as MLflow's own exception, one epoch later at worst.
Nothing is lost to a kill: the epoch is in the run's state.json before it is logged, and a
resumed run replays, per run (parent and pass), every step that run does not hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, RunTag
from mlflow.tracking import MlflowClient


from harness.core import faults, metrics
from harness.track.leases import Lease
from harness.ledger.schema import Iteration
from harness.core.records import (FAILED, FINISHED, KILLED, KIND_PASS, KIND_TRIAL, RUNNING, TAG_FAILURE_REASON,
                                  TAG_ITERATION, TAG_KIND, TAG_LEASE, TAG_PASS, TAG_PRUNED, SYNTHETIC_SUFFIX, TAG_SYNTHETIC, DataLineage, RunRecord, display_name)
from harness.track.layout import now_ms, params_of, run_tags
from harness.track.provenance import Provenance
from harness.track.models import log_model
from harness.track.system_metrics import SystemMetrics


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
        self.name = (resumed.name.removesuffix(SYNTHETIC_SUFFIX) if resumed is not None
                     else run_name or iteration.name)
        self.monitor: Optional[SystemMetrics] = None
        self._longest_epoch = 0.0
        self._in_flight = InFlight()
        if resumed is not None:
            self.run_id = resumed.run_id
            self._children, self._logged_steps = _reopen_parent(client, experiment_id, self.run_id)
        else:
            synthetic = data is not None and data.synthetic  # a trial keeps its name; a variant's is marked too
            shown = (run_name if run_name and tags.get(TAG_KIND) == KIND_TRIAL
                     else display_name(run_name or self.name, synthetic))
            self.run_id = _open_parent(client, experiment_id, iteration, shown, tags, data)
            self._children, self._logged_steps = {}, {}

    def model_built(self, total: int, trainable: int, summary_text: str) -> None:
        """The model's parameter counts and summary (a new run, before training)."""
        _log_metrics(self._client, self.run_id, {metrics.TOTAL_PARAMS: total, metrics.TRAINABLE_PARAMS: trainable})
        self._client.log_text(self.run_id, summary_text, "model_summary.txt")

    def replay(self, history: Iterable[dict]) -> int:
        """Log the epochs a killed process finished but never reported, on each run (parent,
        pass) that lacks them: a kill with an epoch in flight may have left it on one run only.
        Returns how many epochs were incomplete."""
        replayed = 0
        for entry in history:
            child = self._children.get(entry["pass"])
            runs = [r for r in (self.run_id, child) if r and entry["step"] not in self._logged_steps.get(r, ())]
            if runs:
                self._log_epoch(entry["pass"], entry["step"], entry["metrics"], runs)
                replayed += 1
        self.flush()
        return replayed

    def pass_started(self, index: int, iteration: Iteration, freeze=None) -> None:
        if index in self._children:
            self._client.update_run(self._children[index], status=RUNNING)
            return
        self._children[index] = self._client.create_run(
            self._experiment_id, run_name=f"{self.name}/pass-{index + 1}",
            tags={"mlflow.parentRunId": self.run_id, TAG_KIND: KIND_PASS, TAG_PASS: str(index),
                  TAG_ITERATION: iteration.name},
        ).info.run_id
        self._client.log_batch(self._children[index], params=params_of(iteration.passes[index].model_dump(mode="json"),
                                                                      "pass."))

    def epoch_finished(self, pass_index: int, step: int, values: dict) -> None:
        """The epoch's metrics on the parent and the pass run, handed to MLflow's asynchronous
        logging once the previous epoch's have landed; the parent's batch also renews the lease
        (no extra request)."""
        self._log_epoch(pass_index, step, values, [self.run_id, self._children.get(pass_index)])
        faults.reach("queue-not-flushed")

    def _log_epoch(self, pass_index: int, step: int, values: dict, runs: list) -> None:
        self.flush()
        self._longest_epoch = max(self._longest_epoch, float(values.get(metrics.EPOCH_SECONDS, 0.0)))
        now = now_ms()
        points = [Metric(k, float(v), now, step) for k, v in values.items()]
        for run_id in filter(None, runs):
            tags, system = [], []
            if run_id == self.run_id:  # the lease and the system-metrics samples ride with the parent's epoch
                tags = [RunTag(TAG_LEASE, Lease.mine(self._longest_epoch).to_tag())]
                system = self.monitor.drain() if self.monitor is not None else []
            self._in_flight.add(self._client.log_batch(run_id, metrics=points + system, tags=tags, synchronous=False))
            self._logged_steps.setdefault(run_id, set()).add(step)

    def flush(self) -> None:
        """Wait until every epoch handed to MLflow has landed (raising what failed, as MLflow
        raised it): at the end of each pass, before replayed or finishing writes, on fail."""
        self._in_flight.wait()

    def pass_finished(self, index: int, result) -> None:
        """The pass's eval.json, best checkpoint, confusion matrices and summary; FINISHED."""
        self.flush()
        child = self._children[index]
        _log_pass_result(self._client, child, self.iteration, index, result)
        self._client.set_terminated(child, FINISHED)

    def finish(self, history: list[dict], results: list, final_checkpoint: Optional[Path],
               selected: Optional[dict] = None) -> dict:
        """Summary metrics (the per-epoch bests, and `selected`: the selected checkpoint's
        scores), curves, the selected checkpoint; status FINISHED. Returns the summary."""
        self.flush()
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
        """The run ends FAILED (or KILLED) with its reason; so does any pass still running.
        The epoch in flight lands first (Ctrl-C, SIGTERM and SIGHUP end here)."""
        self.flush()
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

    def log_model(self, checkpoint: Path, card, example, outputs: dict[str, str], step: int = 0) -> str:
        """The checkpoint as this run's MLflow Model, once, at the end (harness.track.models.log_model);
        `step` is the selected epoch. Returns the models:/ URI."""
        return log_model(self._client, self._experiment_id, self.run_id, self.iteration.name, checkpoint, card,
                         example, outputs, step)


def _open_parent(client: MlflowClient, experiment_id: str, iteration: Iteration, name: str, tags: dict,
                 data: Optional[DataLineage]) -> str:
    """A new parent run holding this process's lease: its tags, the data as a dataset input,
    the training settings as params, config.yaml, and what reproducing it needs (harness.track.
    provenance: requirements.txt, the diff of a dirty tree). Returns its id."""
    synthetic = {TAG_SYNTHETIC: str(data.synthetic).lower()} if data is not None else {}
    found = Provenance.now()
    run_id = client.create_run(experiment_id, run_name=name, tags={
        **run_tags(iteration), **found.tags(), **tags, **synthetic, TAG_LEASE: Lease.mine().to_tag()}).info.run_id
    found.log(client, run_id)
    if data is not None:
        _log_dataset(client, run_id, data)
    params = params_of(iteration.training_dict())
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start:start + 100])
    client.log_text(run_id, iteration.to_yaml(), "config.yaml")
    return run_id


def _reopen_parent(client: MlflowClient, experiment_id: str, run_id: str) -> tuple[dict[int, str], dict[str, set]]:
    """A resumed parent run, RUNNING again under this process's lease; its pass runs (pass
    index -> run id) and the steps each of them (and the parent) already logged: an epoch's
    batch is one transaction, so its loss tells whether the whole epoch landed on that run."""
    client.update_run(run_id, status=RUNNING)
    client.set_tag(run_id, TAG_LEASE, Lease.mine().to_tag())
    children = {}
    for child in client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'"):
        children[int(child.data.tags[TAG_PASS])] = child.info.run_id
    logged = {run: {m.step for m in client.get_metric_history(run, metrics.LOSS)}
              for run in (run_id, *children.values())}
    return children, logged


class InFlight:
    """The asynchronous logging operations (MLflow's RunOperations) not yet waited for."""

    def __init__(self):
        self._operations: list = []

    def add(self, operations) -> None:
        if operations is not None:
            self._operations.append(operations)

    def wait(self) -> None:
        """Block until all have landed; the first failure is raised as MLflow raised it (the
        futures' own exception: RunOperations.wait wraps every failure into one message, which
        would hide a lost server from track.failures.server_lost)."""
        pending, self._operations = self._operations, []
        for operations in pending:
            futures = getattr(operations, "_operation_futures", None)
            if futures is None:
                operations.wait()
                continue
            for future in futures:
                future.result()


def _log_metrics(client: MlflowClient, run_id: str, values: dict, step: int = 0) -> None:
    now = now_ms()
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


# --------------------------------------------------------------------------- data


def _log_dataset(client: MlflowClient, run_id: str, data: DataLineage) -> None:
    """The run's data as an MLflow dataset input (the run page's Datasets): digest = the data
    fingerprint, source = the folder, the split sizes and the synthetic flag in its profile."""
    dataset = Dataset(name=data.name, digest=data.digest, source_type="local",
                      source=json.dumps({"uri": data.source}), profile=json.dumps(data.profile()))
    tags = [InputTag("mlflow.data.context", "training"), InputTag(TAG_SYNTHETIC, str(data.synthetic).lower())]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags)])
