"""The LR range test: raise the LR exponentially per batch and watch the loss.

The notes ran one for VGG16 (1e-10 to 1e+1; flat until about 1e-2, then steeply up; max LR
chosen 1e-2). Here it is a command: the iteration's model with its first pass's freeze policy
and optimizer, trained on its data for at most `steps` batches while the LR climbs from `min_lr`
to `max_lr`, stopping once the smoothed loss passes 4x its best. The weights are thrown away.

The suggestion is the LR where the smoothed loss falls fastest against log(LR), searched only
before the divergence point, which is reported as the largest usable LR.
No MLflow here; harness.track logs the curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from harness.core import metrics
from harness.core.errors import InputError
from harness.run.prepare import prepare

DIVERGE_FACTOR = 4.0
SMOOTHING = 0.9  # exponential moving average of the batch loss (bias-corrected)


@dataclass
class LRCurve:
    lrs: list = field(default_factory=list)
    raw: list = field(default_factory=list)  # batch loss
    smoothed: list = field(default_factory=list)
    diverged_at: float | None = None  # LR at which the smoothed loss passed 4x its best

    def suggestion(self) -> float:
        """LR of the steepest descent of the smoothed loss against log(LR), before divergence.

        The first and last few points are skipped: the average is still warming up at the
        start, and the end is where the loss turns up."""
        lrs, losses = np.asarray(self.lrs), np.asarray(self.smoothed)
        end = len(lrs)
        if self.diverged_at is not None:
            end = int(np.searchsorted(lrs, self.diverged_at))
        start = min(3, max(0, end - 3))
        if end - start < 3:
            return float(lrs[max(0, end - 1) // 2])
        slopes = np.gradient(losses[start:end], np.log(lrs[start:end]))
        return float(lrs[start + int(np.argmin(slopes))])

    @property
    def max_lr(self) -> float:
        """The divergence point, or the last LR tried when the loss never diverged."""
        return self.diverged_at if self.diverged_at is not None else self.lrs[-1]


def lr_at(step: int, steps: int, min_lr: float, max_lr: float) -> float:
    return min_lr * (max_lr / min_lr) ** (step / max(1, steps - 1))


def range_test(iteration, data, min_lr: float, max_lr: float, steps: int, log=print) -> LRCurve:
    """Run the test on `data` (harness.data.pipeline Datasets); returns the curve."""
    from harness.models import build_model, policy_for
    from harness.train.compile import compile_model, train_stream

    # The first pass's freeze policy is applied by build_model; the pixel encoding is the data's.
    model = build_model(iteration, training_mean=getattr(data, "pixel_mean", None))
    compile_model(model, iteration, iteration.passes[0])
    policy = policy_for(iteration, 0)
    log(f"lr-find {iteration.name}: up to {steps} batches of {data.batch_size}, LR {min_lr:g} -> {max_lr:g}, "
        f"freeze {policy if isinstance(policy, str) else 'rules'}")
    curve = LRCurve()
    average, best = 0.0, math.inf
    batches = train_stream(iteration, data, 0)  # the first pass's batches, class weights included
    for step, batch in enumerate(batches.take(steps)):
        lr = lr_at(step, steps, min_lr, max_lr)
        model.optimizer.learning_rate.assign(lr)
        loss = float(model.train_on_batch(*batch, return_dict=True)[metrics.LOSS])
        if not math.isfinite(loss):
            curve.diverged_at = lr
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        curve.lrs.append(lr)
        curve.raw.append(loss)
        curve.smoothed.append(smoothed)
        best = min(best, smoothed)
        if step > 3 and smoothed > DIVERGE_FACTOR * best:
            curve.diverged_at = lr
            break
    if not curve.lrs:
        from harness.core.errors import InputError

        raise InputError(f"lr-find {iteration.name}: the loss was not finite at the first batch (LR {min_lr:g})")
    return curve


def plot(curve: LRCurve, title: str):
    """Smoothed (and raw) loss against LR on a log axis, the suggestion and divergence marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(curve.lrs, curve.raw, color="lightgrey", linewidth=1, label="batch loss")
    ax.plot(curve.lrs, curve.smoothed, color="tab:blue", linewidth=2, label="smoothed loss")
    suggestion = curve.suggestion()
    ax.axvline(suggestion, color="tab:green", linestyle="--", label=f"suggested LR {suggestion:.2g}")
    ax.axvline(curve.max_lr, color="tab:red", linestyle=":",
               label=f"{'divergence' if curve.diverged_at else 'last LR tried'} {curve.max_lr:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(metrics.LOSS)
    top = np.percentile(curve.smoothed, 95) if len(curve.smoothed) > 4 else max(curve.smoothed)
    ax.set_ylim(min(min(curve.raw), min(curve.smoothed)) * 0.95, max(top, min(curve.smoothed)) * 1.3)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title)
    figure.tight_layout()
    return figure


def lr_find_iteration(book, name: str, *, profile: Optional[str] = None, data_dir: Optional[str] = None,
                      tracking_uri: Optional[str] = None, work_dir: Optional[str] = None, min_lr: float = 1e-7,
                      max_lr: float = 10.0, steps: int = 100, out: Optional[str] = None, limit: Optional[int] = None,
                      log=print) -> dict:
    """The LR range test for an iteration's first pass, logged as an `ITER/lr-find` run."""
    from harness.track.plots import close
    from harness.core.settings import work_dir as resolve_work_dir
    from harness.track.store import Store
    from harness.track.finished import log_lr_find

    if steps < 5:
        raise InputError(f"lr-find: --steps must be at least 5 (got {steps})")
    if not 0 < min_lr < max_lr:
        raise InputError(f"lr-find: need 0 < --min < --max (got {min_lr:g}, {max_lr:g})")
    prepared = prepare(book, name, profile, data_dir, False, log, limit=limit)
    store = Store(tracking_uri)
    curve = range_test(prepared.iteration, prepared.datasets(resolve_work_dir(work_dir).cache),
                              min_lr, max_lr, steps, log)
    figure = plot(curve, f"{name}: LR range test ({prepared.profile} profile)")
    if out:
        figure.savefig(out, dpi=110)
    run_id = log_lr_find(store, book.experiment, prepared.iteration, prepared.tags, curve, figure)
    close(figure)
    stop = f"diverged at {curve.diverged_at:.3g}" if curve.diverged_at else f"no divergence up to {curve.max_lr:.3g}"
    log(f"{name}: suggested LR {curve.suggestion():.3g} (steepest loss descent); {stop}; "
        f"{len(curve.lrs)} batches; run {run_id} ({name}/lr-find, open with `make ui`)")
    return {metrics.SUGGESTED_LR: curve.suggestion(), metrics.MAX_LR: curve.max_lr,
            "diverged": curve.diverged_at is not None, "batches": len(curve.lrs), "run_id": run_id}
