"""The metric contract: every metric name the harness logs or shows, written once.

Every other module asks this one; none spells a metric name itself. No TensorFlow, no MLflow.

Per epoch (step = epoch counted across passes; on the parent run and on the pass's child run):
    loss, val_loss, lr, epoch_seconds, and for every head and every kind in KINDS
    {head}_{kind} and val_{head}_{kind}: gender_acc, val_gender_loss, ...
    A single-head dataset (cifar10) drops the head: acc, val_acc.
Per pass (child run): eval.json, the pass's evaluate dict in the epoch names without `val_`
    (loss, gender_acc, gender_loss, ...), and the summary metric best_epoch.
Summary (parent run, step 0): best_val_{primary}_acc and best_epoch (the epoch that reached it),
    best_val_{head}_acc for every head, mean_epoch_seconds; model facts total_params and
    trainable_params.
Selected checkpoint (names reserved for the selected-checkpoint summary): selected_val_{head}_acc,
    selected_val_{head}_bacc (balanced accuracy), selected_val_mean_bacc, selected_epoch.
LR range test (the ITER/lr-find run): lr_find_lr, lr_find_loss, lr_find_smoothed_loss per batch;
    suggested_lr and max_lr.
Sweep (the ITER/sweep-NAME run): sweep_trial_value, sweep_best_value, sweep_trials_complete,
    sweep_trials_pruned, sweep_trials_failed; its trial runs log the per-epoch metrics above.

The primary head is the one iterations are compared on: gender for hvc, the only head of a
single-head dataset.

Adding a per-head metric: a Kind in KINDS here (its contract name, the name Keras logs it under,
which way is better, whether the summary and the table carry its best value), and, unless Keras
knows the metric by name, its Keras object in harness.train.compile.KERAS_METRICS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from harness.core.labels import heads_for, output_name

VAL = "val_"
LOSS = "loss"
VAL_LOSS = VAL + LOSS
LR = "lr"
EPOCH_SECONDS = "epoch_seconds"

BEST = "best_"
BEST_EPOCH = "best_epoch"
MEAN_EPOCH_SECONDS = "mean_epoch_seconds"
TOTAL_PARAMS = "total_params"
TRAINABLE_PARAMS = "trainable_params"

SELECTED = "selected_"
SELECTED_EPOCH = "selected_epoch"
MEAN = "mean"

LR_FIND_LR = "lr_find_lr"
LR_FIND_LOSS = "lr_find_loss"
LR_FIND_SMOOTHED_LOSS = "lr_find_smoothed_loss"
SUGGESTED_LR = "suggested_lr"
# MLflow's system metrics (harness run logs them unless --no-system-metrics) all start with this.
SYSTEM_PREFIX = "system/"
MAX_LR = "max_lr"

# A sweep's parent run: each trial's objective value (step = trial number), the best value once
# each trial ends (step = trials ended so far), and how the study's trials ended.
SWEEP_TRIAL_VALUE = "sweep_trial_value"
SWEEP_BEST_VALUE = "sweep_best_value"
SWEEP_TRIALS = {"complete": "sweep_trials_complete", "pruned": "sweep_trials_pruned",
                "failed": "sweep_trials_failed"}

# The head iterations are compared on, where a dataset has several; otherwise its first head.
PRIMARY_HEADS = {"hvc": "gender"}


@dataclass(frozen=True)
class Kind:
    """A per-head metric.

    short:     its contract name (`acc` in `val_gender_acc`)
    keras:     the name Keras logs it under (`accuracy` in `gender_output_accuracy`)
    mode:      "max" when more is better, else "min"
    compiled:  a metric passed to `model.compile` (False for the loss, which Keras logs anyway)
    summarized: the summary logs its best validation value per head, and the table shows it
    """

    short: str
    keras: str
    mode: str
    compiled: bool = True
    summarized: bool = False


ACC = Kind("acc", "accuracy", "max", summarized=True)
HEAD_LOSS = Kind("loss", "loss", "min", compiled=False)
# Per-head kinds logged every epoch, in logging order.
KINDS = (ACC, HEAD_LOSS)

# Short name of balanced accuracy (mean per-class recall), a selected-checkpoint summary.
BALANCED_ACC = "bacc"


@dataclass(frozen=True)
class Score:
    """A per-head score of the selected checkpoint, computed from its validation predictions by
    a scikit-learn function (`sklearn.metrics.<function>(y_true, y_pred)`).

    short:  its contract name (`bacc` in `selected_val_gender_bacc`)
    label:  how the table and the closing line call it
    """

    short: str
    function: str
    label: str


# Scores of the selected checkpoint, per head and as a mean over heads. Adding one is a line
# here for the summary and the closing line; the results table's per-score tables (accuracy,
# balanced accuracy) are written out in harness.report.tables and need a table of their own there.
SCORES = (
    Score(ACC.short, "accuracy_score", "acc"),
    Score(BALANCED_ACC, "balanced_accuracy_score", "balanced acc"),
)


class UnknownMetric(ValueError):
    """Keras logged a name the contract has no name for (add its Kind to KINDS)."""


# --------------------------------------------------------------------------- heads


def heads_of(dataset: str) -> list[str]:
    return list(heads_for(dataset))


def single_head(dataset: str) -> bool:
    return len(heads_for(dataset)) == 1


def primary_head(dataset: str) -> str:
    """The head iterations are compared on: gender for hvc, the only head of a single-head set."""
    heads = heads_of(dataset)
    preferred = PRIMARY_HEADS.get(dataset)
    return preferred if preferred in heads else heads[0]


# --------------------------------------------------------------------------- names


def head_metric(dataset: str, head: str, kind: str, val: bool = False) -> str:
    """`{head}_{kind}`, `val_`-prefixed for validation; a single-head dataset drops the head."""
    name = kind if single_head(dataset) else f"{head}_{kind}"
    return VAL + name if val else name


def val_acc(dataset: str, head: Optional[str] = None) -> str:
    """`val_{head}_acc` of `head` (default: the primary head); `val_acc` for a single head."""
    return head_metric(dataset, head or primary_head(dataset), ACC.short, val=True)


def best_name(name: str) -> str:
    return BEST + name


def best_val_acc(dataset: str, head: Optional[str] = None) -> str:
    """The summary metric `best_val_{head}_acc` (default: the primary head's)."""
    return best_name(val_acc(dataset, head))


def selected_name(dataset: str, head: str, kind: str) -> str:
    """The selected checkpoint's validation value of one head: `selected_val_gender_bacc`."""
    return SELECTED + head_metric(dataset, head, kind, val=True)


def selected_mean_name(kind: str) -> str:
    """The selected checkpoint's mean over heads: `selected_val_mean_bacc`."""
    return f"{SELECTED}{VAL}{MEAN}_{kind}"


def epoch_metric_names(dataset: str) -> list[str]:
    """Per-epoch metric names a dataset logs, besides lr and epoch_seconds (what a pass may
    monitor): loss, val_loss, then per head every kind, training then validation."""
    names = [LOSS, VAL_LOSS]
    if single_head(dataset):
        kinds = [kind.short for kind in KINDS if kind is not HEAD_LOSS]
        return names + kinds + [VAL + kind for kind in kinds]
    for head in heads_of(dataset):
        for val in (False, True):
            names += [head_metric(dataset, head, kind.short, val) for kind in KINDS]
    return names


def reported_key(dataset: str) -> str:
    """The key of the primary head in a ledger's `reported.val_acc`: the head, or `acc`."""
    return ACC.short if single_head(dataset) else primary_head(dataset)


def compiled_kinds() -> list[Kind]:
    """The kinds `model.compile` must be asked for, per output."""
    return [kind for kind in KINDS if kind.compiled]


def monitor_mode(name: str) -> str:
    """"max" for a metric where more is better (accuracies), "min" otherwise (losses)."""
    for kind in KINDS:
        if name == kind.short or name.endswith("_" + kind.short):
            return kind.mode
    return HEAD_LOSS.mode


def improves(value: float, best: Optional[float], name: str) -> bool:
    """Whether `value` beats `best` (None: nothing yet) for the metric `name`."""
    if best is None:
        return True
    return value > best if monitor_mode(name) == "max" else value < best


# --------------------------------------------------------------------------- Keras logs


def from_keras_logs(logs: dict, dataset: str) -> dict:
    """Keras log names -> contract names: `gender_output_accuracy` -> `gender_acc`,
    `val_gender_output_loss` -> `val_gender_loss`; a single-head model's `accuracy` -> `acc`.
    A name that maps to nothing raises UnknownMetric instead of being dropped."""
    heads = heads_of(dataset)
    by_keras = {kind.keras: kind for kind in KINDS}
    out = {}
    for key, value in logs.items():
        val = key.startswith(VAL)
        name = key[len(VAL):] if val else key
        if name == LOSS:
            out[VAL_LOSS if val else LOSS] = float(value)
            continue
        head = next((h for h in heads if name.startswith(output_name(h) + "_")), None)
        if head is None and len(heads) == 1:
            head, kind_name = heads[0], name
        else:
            kind_name = name[len(output_name(head)) + 1:] if head else name
        kind = by_keras.get(kind_name)
        if head is None or kind is None:
            raise UnknownMetric(f"Keras logged '{key}', which has no name in the metric contract: "
                                f"add its kind to harness.core.metrics.KINDS")
        out[head_metric(dataset, head, kind.short, val)] = float(value)
    return out


# --------------------------------------------------------------------------- summaries


def summarize(history: list[dict], dataset: str) -> dict:
    """The summary metrics of a run from its per-epoch history ([{"step", "pass", "metrics"}]):
    best_val_{primary}_acc with best_epoch (the earliest epoch that reached it), the best
    validation value of every summarized kind per head, mean_epoch_seconds."""
    key = val_acc(dataset)
    scored = [(h["metrics"][key], h["step"]) for h in history if key in h["metrics"]]
    summary = {}
    if scored:
        best_value, best_step = max(scored, key=lambda pair: (pair[0], -pair[1]))
        summary[best_name(key)] = best_value
        summary[BEST_EPOCH] = best_step
    if not single_head(dataset):
        for head in heads_of(dataset):
            for kind in KINDS:
                if not kind.summarized:
                    continue
                head_key = head_metric(dataset, head, kind.short, val=True)
                values = [h["metrics"][head_key] for h in history if head_key in h["metrics"]]
                if values:
                    summary[best_name(head_key)] = max(values) if kind.mode == "max" else min(values)
    seconds = [h["metrics"][EPOCH_SECONDS] for h in history if EPOCH_SECONDS in h["metrics"]]
    if seconds:
        summary[MEAN_EPOCH_SECONDS] = sum(seconds) / len(seconds)
    return summary


def pass_summary(best_epoch: Optional[int]) -> dict:
    """A pass's summary metrics (its child run): the global step of its best epoch, if any."""
    return {BEST_EPOCH: best_epoch} if best_epoch else {}


def table_columns(dataset: str) -> list[tuple[str, str]]:
    """(header, summary metric) of the results table's per-head columns beside the primary
    head's: the best validation value of every summarized kind of every other head."""
    if single_head(dataset):
        return []
    main = primary_head(dataset)
    columns = []
    for head in heads_of(dataset):
        for kind in KINDS:
            if kind.summarized and head != main:
                suffix = "" if kind is ACC else f" {kind.short}"
                columns.append((f"val {head}{suffix}", best_name(head_metric(dataset, head, kind.short, val=True))))
    return columns


def selected_summary(labels: dict, predictions: dict, dataset: str, epoch: Optional[int]) -> dict:
    """The selected checkpoint's summary metrics from its validation predictions (head -> true
    and predicted class per example): every Score per head, its mean over heads, and
    selected_epoch (the global step the checkpoint was taken at)."""
    import warnings

    from sklearn import metrics as sk

    summary = {}
    for score in SCORES:
        function = getattr(sk, score.function)
        values = []
        for head in heads_of(dataset):
            with warnings.catch_warnings():  # a class absent from a small validation split
                warnings.simplefilter("ignore")
                value = float(function(labels[head], predictions[head]))
            summary[selected_name(dataset, head, score.short)] = value
            values.append(value)
        if not single_head(dataset):
            summary[selected_mean_name(score.short)] = sum(values) / len(values)
    if epoch is not None:
        summary[SELECTED_EPOCH] = epoch
    return summary


def selected_value(record_metrics: dict, dataset: str, head: Optional[str] = None, short: str = ACC.short):
    """A head's selected-checkpoint value from a run's metrics (None when the run predates the
    selected checkpoint or lacks the head)."""
    return record_metrics.get(selected_name(dataset, head or primary_head(dataset), short))



def curve_panels(dataset: str) -> list[tuple[str, str, str]]:
    """(training metric, validation metric, title) of each training-curves panel: the loss,
    then each head's accuracy."""
    panels = [(LOSS, VAL_LOSS, LOSS)]
    for head in heads_of(dataset):
        title = "accuracy" if single_head(dataset) else head
        panels.append((head_metric(dataset, head, ACC.short), head_metric(dataset, head, ACC.short, True), title))
    return panels


# --------------------------------------------------------------------------- console lines


def epoch_line(epoch: int, epochs: int, step: int, metrics: dict, dataset: str) -> str:
    """One line an epoch: what Keras's verbose=2 shows, narrowed to what a person reads."""
    nan = math.nan
    if single_head(dataset):
        acc = ACC.short
        accs = f"{acc} {metrics.get(acc, nan):.4f}  {VAL + acc} {metrics.get(VAL + acc, nan):.4f}"
    else:
        accs = "val acc " + " ".join(f"{h} {metrics.get(val_acc(dataset, h), nan):.3f}" for h in heads_of(dataset))
    return (f"  epoch {epoch + 1}/{epochs} (step {step}) {metrics[EPOCH_SECONDS]:.1f}s  "
            f"{LOSS} {metrics.get(LOSS, nan):.4f}  {VAL_LOSS} {metrics.get(VAL_LOSS, nan):.4f}  "
            f"{accs}  {LR} {metrics[LR]:.3g}")


def eval_line(index: int, evaluated: dict) -> str:
    """The line after a pass: its evaluate dict's loss and accuracies."""
    accs = ", ".join(f"{k} {v:.4f}" for k, v in evaluated.items() if monitor_mode(k) == "max")
    return f"   pass {index + 1} eval: {LOSS} {evaluated.get(LOSS, math.nan):.4f}; {accs}"


def selected_phrase(summary: dict, dataset: str) -> str:
    """How a run's closing line states the selected checkpoint: its epoch, the primary head's
    accuracy and balanced accuracy, the mean balanced accuracy over heads."""
    main = primary_head(dataset)
    acc = summary.get(selected_name(dataset, main, ACC.short))
    if acc is None:
        return best_phrase(summary, dataset)
    balanced = summary.get(selected_name(dataset, main, BALANCED_ACC), math.nan)
    epoch = summary.get(SELECTED_EPOCH)
    where = f" (epoch {int(epoch)})" if epoch is not None else ""
    text = f"selected checkpoint{where}: {val_acc(dataset)} {acc:.4f}, balanced {balanced:.4f}"
    mean = summary.get(selected_mean_name(BALANCED_ACC))
    if mean is not None:
        text += f"; mean balanced acc over {len(heads_of(dataset))} heads {mean:.4f}"
    return text


def best_phrase(summary: dict, dataset: str) -> str:
    """How a run's closing line states its result: "best val_gender_acc 0.6120 at epoch 3"."""
    key = best_val_acc(dataset)
    if key not in summary:
        return "no val accuracy"
    return f"best {key[len(BEST):]} {summary[key]:.4f} at epoch {int(summary[BEST_EPOCH])}"
