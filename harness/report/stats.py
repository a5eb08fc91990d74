"""Is a difference between two runs real? Paired statistics over the validation images both
runs scored (their predictions/val.json, harness.core.predictions), per head.

Two runs (one a side):
- the difference of accuracy and of balanced accuracy, second minus first (B - A);
- its paired 95% bootstrap interval: `scipy.stats.bootstrap` over images, `paired=True`, BCa, a
  fixed generator (RNG_SEED), so the same two runs always print the same interval. BCa needs a
  bootstrap distribution with spread: where the per-image differences are all equal (a run
  against itself, two runs that agree on every image) it is undefined (scipy returns nan and
  warns), and the percentile interval is used instead (`method` says which);
- McNemar's exact p on accuracy (`statsmodels`), from the 2x2 table of per-image right/wrong;
- the verdict: `better` when the interval lies above 0, `worse` below, else `within noise`.

Repeats (N runs of one iteration over seeds on the same split, harness.group) on either side:
each side's mean and sd over its seeds, and an interval for the difference of the means from a
two-level bootstrap: each resample draws the images (one draw for both sides: they are paired
on images) and, independently per side, the seeds. A one-level bootstrap over images only
would treat the seed as fixed and give too narrow an interval when seeds disagree (eleventh's
val gender moves 0.015 between seeds); over seeds only, with 3 seeds, it would ignore that 900
images are a sample too. The interval is the percentile one (BCa's jackknife has no meaning
across two levels). McNemar's test pairs two single runs, so groups get no p.

Pure numpy, scipy and statsmodels: no TensorFlow, no MLflow.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

RNG_SEED = 20260  # fixed: the same runs always give the same interval
CONFIDENCE = 0.95
N_RESAMPLES = 2000  # images x resamples stay small enough for `table` to answer in about a second
BETTER, WORSE, NOISE = "better", "worse", "within noise"
ACC, BACC = "acc", "bacc"


@dataclass(frozen=True)
class Difference:
    """One head's one score, B - A, with its interval and verdict."""

    head: str
    metric: str  # ACC or BACC
    a: float  # A's value (a group's mean over seeds)
    b: float
    difference: float
    low: float
    high: float
    method: str  # "BCa", "percentile" (BCa degenerate), "two-level percentile" (repeats)
    p: Optional[float]  # McNemar's exact p (accuracy of two single runs), else None
    verdict: str
    sd_a: Optional[float] = None  # over seeds, groups only
    sd_b: Optional[float] = None
    n_a: int = 1
    n_b: int = 1
    images: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def verdict(low: float, high: float) -> str:
    """`better` / `worse` when the interval excludes 0, else `within noise`."""
    if low > 0:
        return BETTER
    if high < 0:
        return WORSE
    return NOISE


def rng() -> np.random.Generator:
    return np.random.default_rng(RNG_SEED)


# ---------------------------------------------------------------- statistics (vectorized over resamples)


def accuracy_difference(correct_b, correct_a, axis=-1):
    """mean(correct_b) - mean(correct_a): the accuracy difference from per-image right (1) / wrong (0)."""
    return np.mean(correct_b, axis=axis) - np.mean(correct_a, axis=axis)


def balanced_accuracy(true, pred, axis=-1):
    """Mean recall over the classes present in `true` (sklearn's balanced_accuracy_score), along
    `axis`, so scipy's bootstrap can hand it every resample at once."""
    true, pred = np.moveaxis(np.asarray(true), axis, -1), np.moveaxis(np.asarray(pred), axis, -1)
    recalls = []
    # Codes are 0..K-1 (encode); a class absent from a resample has no recall (nan, skipped), as
    # sklearn skips classes absent from y_true. range() instead of np.unique: no sort of every resample.
    for label in range(int(true.max()) + 1 if true.size else 0):
        members = true == label
        count = members.sum(axis=-1)
        hits = (members & (pred == label)).sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(count > 0, hits / np.maximum(count, 1), np.nan))
    return np.nanmean(np.stack(recalls), axis=0)


def balanced_difference(true, pred_b, pred_a, axis=-1):
    """balanced accuracy of B minus that of A on the same images."""
    return balanced_accuracy(true, pred_b, axis) - balanced_accuracy(true, pred_a, axis)


def bootstrap_interval(data: tuple, statistic, same: bool = False) -> tuple[float, float, str]:
    """(low, high, method): the paired 95% interval of `statistic` over the images of `data`;
    BCa, or percentile where BCa is undefined (no spread in the resamples). `same`: the two runs
    answered every image alike, so BCa is known to be undefined and is not tried (it would cost
    a bootstrap to learn that)."""
    from scipy.stats import bootstrap

    for method in (("percentile",) if same else ("BCa", "percentile")):
        with warnings.catch_warnings():  # scipy's DegenerateDataWarning: handled by the fallback
            warnings.simplefilter("ignore")
            result = bootstrap(data, statistic, paired=True, vectorized=True, confidence_level=CONFIDENCE,
                               n_resamples=N_RESAMPLES, method=method, rng=rng())
        low, high = (float(v) for v in result.confidence_interval)
        if np.isfinite(low) and np.isfinite(high):
            return low, high, method
    value = float(statistic(*data))
    return value, value, "none (no spread)"


def mcnemar_p(correct_a, correct_b) -> float:
    """McNemar's exact p from the 2x2 table of the two runs' per-image right/wrong."""
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    return float(mcnemar(table, exact=True).pvalue)


def accuracy_interval(correct) -> tuple[float, float, float, str]:
    """(accuracy, low, high, method): one run's accuracy with its 95% bootstrap interval over
    images (the reference rows of the table: what a predictor scores give or take the split)."""
    from scipy.stats import bootstrap

    correct = np.asarray(correct, float)
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = bootstrap((correct,), np.mean, vectorized=True, confidence_level=CONFIDENCE,
                               n_resamples=N_RESAMPLES, method=method, rng=rng())
        low, high = (float(v) for v in result.confidence_interval)
        if np.isfinite(low) and np.isfinite(high):
            return float(correct.mean()), low, high, method
    return float(correct.mean()), float(correct.mean()), float(correct.mean()), "none (no spread)"


# ---------------------------------------------------------------- two runs


def encode(*columns: Sequence) -> list[np.ndarray]:
    """Class names as shared integer codes (the same name, the same code in every column)."""
    names = {name: i for i, name in enumerate(sorted({str(v) for c in columns for v in c}))}
    return [np.array([names[str(v)] for v in column], dtype=np.int64) for column in columns]


def head_arrays(a, b, head: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true, A's predicted, B's predicted) class codes of `head` for two Predictions."""
    return tuple(encode(a.true[head], a.pred[head], b.pred[head]))


def _heads(a, b, heads: Optional[Sequence[str]]) -> list[str]:
    return [h for h in a.heads if h in b.true and (heads is None or h in heads)]


def compare_pair(a, b, heads: Optional[Sequence[str]] = None, metrics: Sequence[str] = (ACC, BACC)) -> list[Difference]:
    """Each head's accuracy and balanced-accuracy difference B - A of two single runs'
    Predictions that scored the same images (check `a.same_images(b)` first); `heads` and
    `metrics` narrow it (the table needs accuracy only: each interval is a bootstrap)."""
    out = []
    for head in _heads(a, b, heads):
        true, pred_a, pred_b = head_arrays(a, b, head)
        right_a, right_b = (pred_a == true).astype(float), (pred_b == true).astype(float)
        if ACC in metrics:
            low, high, method = bootstrap_interval((right_b, right_a), accuracy_difference,
                                                   same=bool(np.array_equal(right_a, right_b)))
            acc_a, acc_b = float(right_a.mean()), float(right_b.mean())
            out.append(Difference(head, ACC, acc_a, acc_b, acc_b - acc_a, low, high, method,
                                  mcnemar_p(right_a, right_b), verdict(low, high), images=len(true)))
        if BACC not in metrics:
            continue
        low, high, method = bootstrap_interval((true, pred_b, pred_a), balanced_difference,
                                               same=bool(np.array_equal(pred_a, pred_b)))
        bacc_a, bacc_b = float(balanced_accuracy(true, pred_a)), float(balanced_accuracy(true, pred_b))
        out.append(Difference(head, BACC, bacc_a, bacc_b, bacc_b - bacc_a, low, high, method, None,
                              verdict(low, high), images=len(true)))
    return out


# ---------------------------------------------------------------- repeats


def mean_sd(values: Sequence[float]) -> tuple[float, Optional[float], int]:
    """(mean, sample sd (ddof=1; None for one value), n) over seeds."""
    array = np.asarray(values, float)
    return float(array.mean()), (float(array.std(ddof=1)) if len(array) > 1 else None), len(array)


def _side(group: list, head: str, names: dict) -> tuple[np.ndarray, np.ndarray]:
    """(true codes (n,), predicted codes (n, seeds)) of one side's runs."""
    true = np.array([names[str(v)] for v in group[0].true[head]])
    pred = np.stack([[names[str(v)] for v in run.pred[head]] for run in group], axis=1)
    return true, pred


def _scores(weights: np.ndarray, true: np.ndarray, pred: np.ndarray, metric: str) -> np.ndarray:
    """(resamples, seeds) accuracy or balanced accuracy with per-image resample counts `weights`."""
    right = (pred == true[:, None]).astype(float)
    if metric == ACC:
        return weights @ right / weights.sum(axis=1, keepdims=True)
    recalls = []
    for label in np.unique(true):
        members = (true == label).astype(float)
        count = weights @ members
        hits = weights @ (right * members[:, None])
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(count[:, None] > 0, hits / np.maximum(count, 1)[:, None], np.nan))
    return np.nanmean(np.stack(recalls), axis=0)


def two_level_interval(true, pred_a, pred_b, metric: str) -> tuple[float, float]:
    """Percentile 95% interval of mean_B - mean_A: images resampled once for both sides (paired),
    seeds resampled within each side (see the module docstring)."""
    generator = rng()
    n = len(true)
    weights = generator.multinomial(n, np.full(n, 1.0 / n), size=N_RESAMPLES).astype(float)
    sides = []
    for pred in (pred_a, pred_b):
        scores = _scores(weights, true, pred, metric)  # (resamples, seeds)
        seeds = generator.integers(0, pred.shape[1], size=scores.shape)
        sides.append(np.take_along_axis(scores, seeds, axis=1).mean(axis=1))
    spread = sides[1] - sides[0]
    alpha = (1 - CONFIDENCE) / 2
    return float(np.quantile(spread, alpha)), float(np.quantile(spread, 1 - alpha))


def compare_groups(group_a: list, group_b: list, heads: Optional[Sequence[str]] = None,
                   metrics: Sequence[str] = (ACC, BACC)) -> list[Difference]:
    """As compare_pair for two sides of repeats (lists of Predictions on the same images); one
    run a side is compare_pair itself."""
    if len(group_a) == 1 and len(group_b) == 1:
        return compare_pair(group_a[0], group_b[0], heads, metrics)
    out = []
    for head in _heads(group_a[0], group_b[0], heads):
        columns = [group_a[0].true[head]] + [r.pred[head] for r in group_a + group_b]
        names = {name: i for i, name in enumerate(sorted({str(v) for c in columns for v in c}))}
        true, pred_a = _side(group_a, head, names)
        _, pred_b = _side(group_b, head, names)
        for metric in metrics:
            score = (lambda p: (p == true[:, None]).mean(axis=0)) if metric == ACC else (
                lambda p: np.array([balanced_accuracy(true, p[:, k]) for k in range(p.shape[1])]))
            mean_a, sd_a, n_a = mean_sd(score(pred_a))
            mean_b, sd_b, n_b = mean_sd(score(pred_b))
            low, high = two_level_interval(true, pred_a, pred_b, metric)
            out.append(Difference(head, metric, mean_a, mean_b, mean_b - mean_a, low, high, "two-level percentile",
                                  None, verdict(low, high), sd_a, sd_b, n_a, n_b, images=len(true)))
    return out


def same_images(group_a: list, group_b: list) -> bool:
    """Whether every run of both sides scored the same images in the same order."""
    first = group_a[0]
    return all(first.same_images(other) for other in [*group_a[1:], *group_b])
