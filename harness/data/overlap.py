"""Which images a run trained on, and whether a folder handed to `harness eval` shares any.

A run records its training rows (`training_record`: each image's absolute path and an MD5 of its
bytes) as an artifact; `harness eval --data DIR` compares DIR's images against it, by path and
by content, because a "held-out" score on images the model trained on is the classic way a
results table lies (the notes' first baseline validated on its training split). Content hashes
catch the copy of a training image under another name. No TensorFlow.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


def row_digests(table, rows: np.ndarray) -> list[str]:
    """MD5 of each row's image: the file's bytes (hvc), or the decoded array's (cifar10)."""
    if getattr(table, "images", None) is not None:
        return [hashlib.md5(np.ascontiguousarray(table.images[row]).tobytes()).hexdigest() for row in rows]

    def digest(path: str) -> str:
        with open(path, "rb") as handle:
            return hashlib.md5(handle.read()).hexdigest()

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(digest, table.paths[rows]))


def row_paths(table, rows: np.ndarray) -> list[str]:
    """Absolute image paths of the rows ([] for data held in memory)."""
    paths = getattr(table, "paths", None)
    return [] if paths is None else [str(p) for p in paths[rows]]


def training_record(table, rows: np.ndarray) -> dict:
    """What a run keeps of its training rows: {"paths": [...], "md5": [...]}."""
    rows = np.asarray(rows)
    return {"paths": row_paths(table, rows), "md5": row_digests(table, rows)}


@dataclass(frozen=True)
class Overlap:
    by_path: int  # images whose path is a training image's
    by_content: int  # images whose bytes equal a training image's (whatever their path)
    shared: int  # images in either group
    example: str  # one shared image, for the message


def overlap(record: dict, table, rows: np.ndarray) -> Overlap:
    """How many of `table`'s `rows` are among the images `record` (training_record) names."""
    rows = np.asarray(rows)
    paths = row_paths(table, rows)
    digests = row_digests(table, rows)
    train_paths, train_digests = set(record.get("paths", [])), set(record.get("md5", []))
    path_hit = [p in train_paths for p in paths] if paths else [False] * len(rows)
    content_hit = [d in train_digests for d in digests]
    either = [a or b for a, b in zip(path_hit, content_hit)]
    names = paths or [f"row {row}" for row in rows]
    example = next((name for name, hit in zip(names, either) if hit), "")
    return Overlap(sum(path_hit), sum(content_hit), sum(either), example)
