"""Train/validation split, the guard against overlap, and the class weights the split implies.

The split is a pure function of (table, val_fraction, seed): scikit-learn's
`train_test_split` stratified on the primary head (gender for hvc, the head the ledger compares
iterations on), so two iterations with the same split seed validate on exactly the same images. The notes' baseline
validated on its own training split; here that only happens when the ledger asks for it
(`data.validate_on_train`), and the returned message says so in plain words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from sklearn.model_selection import train_test_split

from harness.core.errors import InputError
from harness.core.metrics import primary_head

VALIDATE_ON_TRAIN_WARNING = (
    "WARNING validate_on_train: validation uses the training images (the notes' valid_gen "
    "defect); val metrics are training metrics"
)


@dataclass(frozen=True)
class Split:
    """Row indices into the table. Unpacks as `train_idx, val_idx = split(...)`; `message` is
    None or one line the caller prints before training (the validate_on_train warning, or how a
    dataset's own split was used)."""

    train: np.ndarray
    val: np.ndarray
    message: Optional[str] = None

    def __iter__(self):
        return iter((self.train, self.val))


def stratify_head(table) -> str:
    """The dataset's primary head (the one the ledger compares iterations on)."""
    return primary_head(table.name)


def split_key(table, val_fraction: float, seed: int, validate_on_train: bool = False) -> str:
    """The identity of a split's validation images, as a tag value: runs (iterations and the
    reference runs of `harness reference`) whose keys are equal were scored on the same images,
    so their numbers can be set side by side. Names the data (fingerprint), the rows used and
    the split settings."""
    where = f"{table.name} {table.fingerprint[:12]} {len(table)} rows"
    if validate_on_train:
        return f"{where}, validated on the training split (seed {seed}, val {val_fraction:g})"
    if table.predefined_split is not None:
        train, test = (len(part) for part in table.predefined_split)
        return f"{where}, the dataset's own split ({train} train / {test} test)"
    return f"{where}, val {val_fraction:g} seed {seed}"


def split(table, val_fraction: float, seed: int, validate_on_train: bool = False) -> Split:
    """Deterministic stratified split; raises InputError if train and val would overlap."""
    if table.predefined_split is not None:
        train, val = (np.asarray(part, dtype=np.int64) for part in table.predefined_split)
        message = (
            f"{table.name}: validating on the dataset's own test split ({len(val)} images); "
            f"data.val_fraction and data.split_seed are not used"
        )
    else:
        train, val = _random_split(table, val_fraction, seed)
        message = None
    if validate_on_train:
        return Split(train, train.copy(), VALIDATE_ON_TRAIN_WARNING)
    check_disjoint(table, train, val)
    return Split(train, val, message)


def _random_split(table, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(table)
    if n < 2:
        raise InputError([f"{_where(table)}: {n} usable row{'s' if n != 1 else ''}; a split needs at least 2"])
    indices = np.arange(n, dtype=np.int64)
    strata = table.labels[stratify_head(table)]
    try:
        train, val = train_test_split(indices, test_size=val_fraction, random_state=seed, stratify=strata)
    except ValueError:
        # Too few rows of some class to stratify (tiny profiles): a plain seeded split is
        # still deterministic, and a tiny run cannot promise balanced splits anyway.
        train, val = train_test_split(indices, test_size=val_fraction, random_state=seed)
    # Sorted, so the validation order (and so val_labels and confusion matrices) follows the file.
    return np.sort(train), np.sort(val)


def check_disjoint(table, train_idx: np.ndarray, val_idx: np.ndarray) -> None:
    """Stop the run if any row, or any image file (two CSV rows naming one file), is in both."""
    both = np.intersect1d(train_idx, val_idx)
    if len(both):
        raise InputError([f"{_where(table)}: training and validation overlap in {len(both)} rows "
                          f"(first: row index {both[0]}); refusing to validate on training data"])
    paths = getattr(table, "paths", None)
    if paths is None:
        return
    shared = np.intersect1d(paths[train_idx], paths[val_idx])
    if len(shared):
        rows = np.flatnonzero(paths == shared[0])
        lines = table.frame["csv_line"].to_numpy()[rows]
        image = table.frame["image_path"].iloc[rows[0]]
        raise InputError([f"{table.csv_path}:{lines[0]}: image_path '{image}' is in both training and "
                          f"validation (CSV lines {', '.join(map(str, lines))}); {len(shared)} shared "
                          f"image{'s' if len(shared) != 1 else ''} in all"])


def _where(table) -> str:
    return str(getattr(table, "csv_path", None) or getattr(table, "source", table.name))


def class_weights(labels_int: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights, as sklearn's compute_class_weight('balanced'):
    n_samples / (n_present_classes * count[c]).

    A class absent from `labels_int` gets 1.0 (neutral), not 0 and not infinity: it contributes
    nothing to a training loss anyway, and a validation example of that class still counts in a
    weighted loss instead of silently vanishing from it.
    """
    labels_int = np.asarray(labels_int, dtype=np.int64)
    counts = np.bincount(labels_int, minlength=n_classes).astype(np.float64)
    weights = np.ones(n_classes, dtype=np.float64)
    present = counts > 0
    if present.any():
        weights[present] = len(labels_int) / (present.sum() * counts[present])
    return weights
