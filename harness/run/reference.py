"""`harness reference`: what an iteration must beat, fitted on the same validation images.

Two references per split, each logged as an MLflow run with the iterations' metric names:
- `reference/majority`: every head predicts its most frequent training class
  (scikit-learn's DummyClassifier). A head at this accuracy has learned nothing.
- `reference/linear-probe`: the 32x32 RGB pixels, standardized, reduced to 200 PCA components,
  one logistic regression per head (C=0.05), all scikit-learn. It takes seconds on a laptop and
  finds the signal a colour histogram of the crop carries (clothes, framing, light); a CNN that
  does not beat it has not learned anything a linear model could not.

Each distinct split among the ledger's iterations (data, rows used, val fraction, split seed) gets
its own pair, tagged `harness.split` like the iteration runs validated on the same images, so the
table sets them side by side. Iterations that validate on their training split have no reference:
their "validation" numbers are training numbers. No TensorFlow here.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
from threadpoolctl import threadpool_limits

from harness.core import metrics
from harness.core.records import (REFERENCE_LINEAR_PROBE, REFERENCE_MAJORITY, TAG_DATA, TAG_DATA_DIR, TAG_LEDGER,
                                  TAG_PROFILE, TAG_SPLIT, TAG_SYNTHETIC)

PROBE_SIZE = 32  # pixels a side
PROBE_COMPONENTS = 200
PROBE_C = 0.05
REFERENCES = (REFERENCE_MAJORITY, REFERENCE_LINEAR_PROBE)


@dataclass(frozen=True)
class ReferenceResult:
    reference: str
    summary: dict  # the selected-checkpoint names (harness.core.metrics), for the references' predictions
    params: dict
    seconds: float
    predictions: Optional[dict] = None  # the per-example artifact (harness.core.predictions)


def pixels(table, rows: np.ndarray, size: int = PROBE_SIZE) -> np.ndarray:
    """(len(rows), size*size*3) float32 in [0, 1]: each image shrunk to size x size RGB. JPEGs are
    decoded at a reduced scale first (PIL's draft: libjpeg's DCT scaling), in threads."""
    from PIL import Image

    if getattr(table, "images", None) is not None:  # arrays in memory (cifar10)
        images = [Image.fromarray(table.images[row]) for row in rows]
        shrunk = [np.asarray(image.resize((size, size), Image.BILINEAR)) for image in images]
        return np.stack(shrunk).reshape(len(rows), -1).astype(np.float32) / 255.0

    def load(path: str) -> np.ndarray:
        with Image.open(path) as image:
            image.draft("RGB", (size * 2, size * 2))
            return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))

    with ThreadPoolExecutor(max_workers=4) as pool:
        shrunk = list(pool.map(load, table.paths[rows]))
    return np.stack(shrunk).reshape(len(rows), -1).astype(np.float32) / 255.0


def estimator(reference: str, n_train: int):
    """The scikit-learn estimator of a reference, one output per head (MultiOutputClassifier)."""
    from sklearn.decomposition import PCA
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.multioutput import MultiOutputClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if reference == REFERENCE_MAJORITY:
        return MultiOutputClassifier(DummyClassifier(strategy="most_frequent"))
    # PCA can keep at most as many components as there are training images (tiny test splits).
    components = min(PROBE_COMPONENTS, n_train - 1)
    return make_pipeline(StandardScaler(), PCA(components, random_state=0),
                         MultiOutputClassifier(LogisticRegression(C=PROBE_C, max_iter=1000)))


def probe_params(reference: str) -> dict:
    if reference == REFERENCE_MAJORITY:
        return {"estimator": "DummyClassifier(most_frequent) per head"}
    return {"estimator": "StandardScaler -> PCA -> LogisticRegression per head", "pixels": PROBE_SIZE,
            "pca_components": PROBE_COMPONENTS, "C": PROBE_C}


def fit(reference: str, table, parts, dataset: str, features: Optional[tuple] = None) -> ReferenceResult:
    """Fit a reference on the training rows of `parts` and score it on its validation rows.
    `features`: (train, val) pixel arrays already computed, shared by the two references."""
    started = time.perf_counter()
    heads = metrics.heads_of(dataset)
    train_x, val_x = features if features is not None else (pixels(table, parts.train), pixels(table, parts.val))
    train_y = np.stack([table.labels[head][parts.train] for head in heads], axis=1)
    # One BLAS thread: these are small matrices, and OpenBLAS's spinning threads slowed the probe
    # from ~10 s to ~10 min on a busy 2-core machine.
    with threadpool_limits(limits=1):
        model = estimator(reference, len(parts.train)).fit(train_x, train_y)
        predicted = model.predict(val_x)
        probability = model.predict_proba(val_x)  # one (n, classes seen) array per head
    predictions = {head: predicted[:, i] for i, head in enumerate(heads)}
    labels = {head: table.labels[head][parts.val] for head in heads}
    summary = metrics.selected_summary(labels, predictions, dataset, None)
    table_json = predictions_table(table, parts.val, labels, predictions,
                                   {head: probability[i].max(axis=1) for i, head in enumerate(heads)})
    return ReferenceResult(reference, summary, probe_params(reference), time.perf_counter() - started, table_json)


def predictions_table(table, rows, labels: dict, predicted: dict, probability: dict) -> dict:
    """A reference's per-example predictions in the iterations' artifact layout, so `compare`
    pairs an iteration with a reference image by image."""
    from harness.core import predictions

    return predictions.build(rows, predictions.image_names(table, rows), dict(table.heads), labels, predicted,
                             probability)


def majority_accuracy(train_labels: dict, val_labels: dict) -> dict:
    """head -> the validation accuracy of always predicting the training split's most frequent
    class: what a head that learned nothing scores."""
    return {head: float(np.mean(val_labels[head] == np.bincount(train_labels[head]).argmax()))
            for head in val_labels}


# --------------------------------------------------------------------------- command


def splits_of(book, profile: Optional[str]) -> dict:
    """(data name, row limit, val fraction, split seed) -> the first iteration with that split,
    over the ledger's iterations under `profile`; validate-on-train iterations have none."""
    found = {}
    for name in book.names:
        data = book.resolve(name, profile).data
        if not data.validate_on_train:
            found.setdefault((data.name, data.limit, data.val_fraction, data.split_seed), name)
    return found


def run_references(book, *, data_dir: Optional[str] = None, profile: Optional[str] = None,
                   tracking_uri: Optional[str] = None, skip_bad_rows: bool = False, log=print) -> list[str]:
    """Fit and log both references for every split of the ledger; returns the run ids."""
    from harness.data.source import open_dataset
    from harness.data.split import split, split_key
    from harness.data.synth import is_synthetic
    from harness.track.store import Store
    from harness.track.finished import log_reference

    tables, work = {}, []
    for (dataset, limit, fraction, seed), name in splits_of(book, profile).items():
        iteration = book.resolve(name, profile)
        if (dataset, limit) not in tables:  # every bad row is reported before anything is logged
            table, messages = open_dataset(iteration, data_dir, skip_bad_rows=skip_bad_rows)
            for message in messages:
                log(message)
            tables[(dataset, limit)] = table
        table = tables[(dataset, limit)]
        work.append((iteration, table, split(table, fraction, seed), split_key(table, fraction, seed)))
    store = Store(tracking_uri)
    run_ids = []
    for iteration, table, parts, key in work:
        dataset = iteration.data.name
        features = (pixels(table, parts.train), pixels(table, parts.val))
        tags = {TAG_LEDGER: str(book.path), TAG_PROFILE: profile or "full", TAG_SPLIT: key,
                TAG_DATA: str(table.fingerprint), TAG_DATA_DIR: str(getattr(table, "folder", "") or table.name),
                TAG_SYNTHETIC: str(is_synthetic(table)).lower()}  # the table marks such runs' numbers
        for reference in REFERENCES:
            result = fit(reference, table, parts, dataset, features)
            params = {**result.params, "val_fraction": iteration.data.val_fraction,
                      "split_seed": iteration.data.split_seed, "train_images": len(parts.train),
                      "val_images": len(parts.val)}
            run_id = log_reference(store, book.experiment, reference, dataset, tags, result.summary, params,
                                   result.predictions)
            run_ids.append(run_id)
            log(f"reference/{reference} ({key}): {describe(result.summary, dataset)}; "
                f"{result.seconds:.1f} s; run {run_id[:8]}")
    if not work:
        log(f"{book.path}: no iteration validates on held-out images, so there is nothing to reference")
    return run_ids


def describe(summary: dict, dataset: str) -> str:
    """val acc of the primary head, and the mean balanced accuracy, of a reference's summary."""
    main = metrics.primary_head(dataset)
    text = f"{metrics.val_acc(dataset)} {summary[metrics.selected_name(dataset, main, metrics.ACC.short)]:.4f}"
    mean = summary.get(metrics.selected_mean_name(metrics.BALANCED_ACC))
    return text + (f", mean balanced acc {mean:.4f}" if mean is not None else "")


def learning_verdict(name: str, summary: dict, dataset: str, majority: dict, probe=None,
                     class_weighted: bool = False) -> str:
    """The line that ends a run: which heads are not above majority accuracy on validation, and
    not above the linear probe's when a probe run (a harness.core.records.RunRecord) exists for the
    same validation images. A run that learned nothing must say so."""
    def not_above(reference: dict, label: str) -> str:
        losing = [f"{head} {value:.4f} ({label} {reference[head]:.4f})"
                  for head in metrics.heads_of(dataset)
                  if head in reference and (value := metrics.selected_value(summary, dataset, head)) is not None
                  and value <= reference[head]]
        return ", ".join(losing)

    parts = []
    below = not_above(majority, "majority")
    parts.append(f"not above majority on validation: {below}" if below else "every head above majority on validation")
    if probe is None:
        parts.append("no linear-probe run on these validation images (`harness reference` fits one)")
    else:
        scores = {head: metrics.selected_value(probe.metrics, dataset, head) for head in metrics.heads_of(dataset)}
        below = not_above({h: v for h, v in scores.items() if v is not None}, "probe")
        parts.append(f"not above the linear probe (run {probe.run_id[:8]}): {below}" if below
                     else f"every head above the linear probe (run {probe.run_id[:8]})")
    if class_weighted and below:
        parts.append("class-weighted losses trade accuracy for balanced accuracy on imbalanced heads "
                     "(selected_val_<head>_bacc)")
    return f"{name}: " + "; ".join(parts)
