"""The two shapes a loaded dataset takes before it becomes a tf.data pipeline.

`HvcTable` points at JPEG files on disk (hvc); `ArrayTable` holds decoded images in memory
(CIFAR-10, real or synthetic). They share the fields the rest of the harness reads (`name`,
`heads`, `labels`, `fingerprint`, `skipped`, `len()`), so `split`, `class_weights` and
`pipeline.make_datasets` take either without asking which one it is; only the pipeline looks at
`paths` vs `images`. Labels are always int class indices per head in the fixed class order of
`labels.py`, never re-derived from the data, so a subset that lacks a class keeps its one-hot width.
No TensorFlow here: loading and validating data must not pay for importing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class SkippedRow:
    """A CSV row dropped by `skip_bad_rows`: its line in the file (header = line 1) and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line} ({self.reason})"


def skipped_summary(skipped: list[SkippedRow], shown: int = 10) -> Optional[str]:
    """One line for the run output: "skipped 3 bad rows: line 5 (...), ..."; None if none."""
    if not skipped:
        return None
    listed = ", ".join(str(row) for row in skipped[:shown])
    more = f", and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"skipped {len(skipped)} bad row{'s' if len(skipped) != 1 else ''}: {listed}{more}"


@dataclass(frozen=True, eq=False)
class HvcTable:
    """The validated hvc CSV: one entry per usable row, in file order.

    `sizes` ((N, 2) height, width, read from each JPEG header during validation) lets the
    pipeline pick a JPEG DCT downscale and skip resizing when every image already has the
    target size.
    """

    folder: Path
    csv_path: Path
    paths: np.ndarray  # absolute image paths, str
    labels: dict[str, np.ndarray]  # head -> int class index per row
    frame: pd.DataFrame  # the kept rows as read (strings), plus `csv_line`
    sizes: np.ndarray  # (N, 2) int: height, width
    fingerprint: str
    heads: dict[str, tuple[str, ...]]
    skipped: list[SkippedRow] = field(default_factory=list)
    name: str = "hvc"
    # A split fixed by the dataset itself; hvc has none (the ledger's val_fraction decides).
    predefined_split: Optional[tuple[np.ndarray, np.ndarray]] = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def skipped_message(self) -> Optional[str]:
        return skipped_summary(self.skipped)


@dataclass(frozen=True, eq=False)
class ArrayTable:
    """Decoded images held in memory: (N, H, W, 3) uint8, labels per head as int indices.

    CIFAR-10 comes with its own train/test split; `predefined_split` carries it as
    (train indices, validation indices) and `split()` uses it instead of a random split, so
    the accuracy on validation means the standard 10,000-image test batch the notes' numbers were measured on.
    """

    images: np.ndarray
    labels: dict[str, np.ndarray]
    heads: dict[str, tuple[str, ...]]
    fingerprint: str
    source: str  # where the arrays came from, for messages and tracking
    name: str = "cifar10"
    skipped: list[SkippedRow] = field(default_factory=list)
    predefined_split: Optional[tuple[np.ndarray, np.ndarray]] = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def skipped_message(self) -> Optional[str]:
        return None

    def head(self, n: int) -> "ArrayTable":
        """The first `n` examples (a profile's row cap). With a predefined split both parts
        shrink in proportion, so a capped run still validates on held-out images."""
        if n >= len(self):
            return self
        if self.predefined_split is None:
            keep = np.arange(n)
            split = None
        else:
            train, val = self.predefined_split
            n_val = max(1, round(n * len(val) / len(self)))
            n_train = max(1, n - n_val)
            keep = np.concatenate([train[:n_train], val[:n_val]])
            split = (np.arange(n_train), np.arange(n_train, n_train + n_val))
        return ArrayTable(
            images=self.images[keep],
            labels={h: v[keep] for h, v in self.labels.items()},
            heads=self.heads,
            fingerprint=self.fingerprint,
            source=f"{self.source}, first {n}",
            name=self.name,
            predefined_split=split,
        )
