"""Runs written whole, in one go: an lr-find curve, a reference (majority, linear probe), a finished
run rebuilt from its history (tests and benchmarks build stores with it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient


from harness.core import metrics
from harness.ledger.schema import Iteration
from harness.core.records import (FINISHED, KIND_LR_FIND,
                                  KIND_REFERENCE, TAG_CONFIG_SHA, TAG_ITERATION, TAG_KIND, TAG_REFERENCE)
from harness.track.layout import now_ms, param_value, params_of, run_tags, git_tags

if TYPE_CHECKING:  # an annotation only: the store imports this module
    from harness.track.store import Store


def log_lr_find(store: Store, experiment: str, iteration: Iteration, tags: dict, curve, figure) -> str:
    """An `ITER/lr-find` run: the curve as metrics (step = batch), the plot, the suggestion."""
    client = MlflowClient(tracking_uri=store.uri)
    run_id = client.create_run(
        store.experiment_id(experiment), run_name=f"{iteration.name}/lr-find",
        tags={TAG_KIND: KIND_LR_FIND, TAG_ITERATION: iteration.name,
              TAG_CONFIG_SHA: iteration.config_sha(), **git_tags(), **tags},
    ).info.run_id
    now = now_ms()
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
                  params: dict, predictions: Optional[dict] = None) -> str:
    """A `reference/<name>` run (harness.reference): its settings as params, its scores under the
    selected-checkpoint names, and each head's val accuracy at step 0 so the UI's comparison of
    `val_gender_acc` shows it beside the iterations; `predictions`, its per-example table
    (harness.core.predictions), so compare pairs it with an iteration image by image."""
    client = MlflowClient(tracking_uri=store.uri)
    run_id = client.create_run(store.experiment_id(experiment), run_name=f"reference/{reference}",
                               tags={TAG_KIND: KIND_REFERENCE, TAG_REFERENCE: reference, **git_tags(), **tags}
                               ).info.run_id
    now = now_ms()
    client.log_batch(run_id, params=[Param(k, param_value(v)) for k, v in params.items()])
    values = {**summary, **{metrics.val_acc(dataset, head): metrics.selected_value(summary, dataset, head)
                            for head in metrics.heads_of(dataset)}}
    points = [Metric(k, float(v), now, 0) for k, v in values.items() if v is not None]
    client.log_batch(run_id, metrics=points)
    if predictions is not None:
        from harness.core.predictions import ARTIFACT

        client.log_dict(run_id, predictions, ARTIFACT)
    client.set_terminated(run_id, FINISHED)
    return run_id


def record_finished_run(store: Store, experiment: str, iteration: Iteration, tags: dict, history: list[dict],
                        summary: dict, status: str = FINISHED, start_time: Optional[int] = None) -> str:
    """A parent run written in one go, laid out as a RunTracker logs one (tags, params, per-epoch
    metrics, summary; no artifacts, no pass runs): for runs trained elsewhere and for benchmark
    stores. `tags` override the iteration's own (a stale config sha, say)."""
    client = MlflowClient(tracking_uri=store.uri)
    run_id = client.create_run(store.experiment_id(experiment), run_name=iteration.name, start_time=start_time,
                               tags={**run_tags(iteration), **tags}).info.run_id
    now = now_ms()
    params = params_of(iteration.training_dict())
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start:start + 100])
    points = [Metric(k, float(v), now, h["step"]) for h in history for k, v in h["metrics"].items()]
    points += [Metric(k, float(v), now, 0) for k, v in summary.items()]
    for start in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[start:start + 1000])
    client.set_terminated(run_id, status)
    return run_id
