"""Which data a run trains on: the single entry point the runner calls.

hvc: `--data DIR`, else the `HARNESS_DATA` environment variable, else the synthetic default
set under `data/` (generated on first use). cifar10: `--data DIR`, else Keras's cached copy,
else a synthetic CIFAR-shaped set. Whenever the run is not on the data the user named, a
message says so, for the first lines of the run's output. No TensorFlow here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from harness.data.cifar10 import DOWNLOAD_URL, find_cifar10, keras_cache_dir, load_cifar10, synthetic_cifar10
from harness.data.hvc import load_hvc
from harness.data.synth import ensure_default_data

DATA_ENV = "HARNESS_DATA"
# Size of the synthetic CIFAR stand-in when the iteration sets no row limit.
SYNTHETIC_CIFAR_N = 6000


def open_dataset(iteration, data_dir: Optional[Union[str, Path]] = None, skip_bad_rows: bool = False):
    """(table, messages): the validated table for `iteration.data.name`, capped at
    `iteration.data.limit` rows, and the lines to print before training."""
    limit = iteration.data.limit
    messages: list[str] = []
    if iteration.data.name == "cifar10":
        if data_dir is None and find_cifar10() is None:
            n = limit or SYNTHETIC_CIFAR_N
            messages.append(
                f"no CIFAR-10 given and none in Keras's cache ({keras_cache_dir()}): training on a synthetic "
                f"CIFAR-shaped set of {n:,} images; for the real one download cifar-10-python.tar.gz from "
                f"{DOWNLOAD_URL}, extract it and pass --data DIR"
            )
            return synthetic_cifar10(n, seed=0), messages
        table = load_cifar10(data_dir)
        return (table.head(limit) if limit else table), messages

    if data_dir is None and os.environ.get(DATA_ENV):
        data_dir = os.environ[DATA_ENV]
        messages.append(f"data: {data_dir} (from {DATA_ENV})")
    if data_dir is None:
        data_dir, generated = ensure_default_data()
        messages.append(generated or f"data: {data_dir} (the synthetic default; --data DIR or "
                                      f"{DATA_ENV}=DIR for the real dataset)")
    table = load_hvc(data_dir, skip_bad_rows=skip_bad_rows, limit=limit)
    if table.skipped_message:
        messages.append(table.skipped_message)
    return table, messages


def lineage(table, train_rows, val_rows):
    """What the run's MLflow dataset input records about its data (harness.core.records.DataLineage)."""
    from harness.data.synth import is_synthetic
    from harness.core.records import DataLineage

    folder = getattr(table, "folder", None)
    source = str(folder) if folder is not None else str(getattr(table, "source", table.name))
    return DataLineage(name=Path(folder).name if folder is not None else table.name, digest=str(table.fingerprint),
                       source=source, dataset=table.name, n_train=len(train_rows), n_val=len(val_rows),
                       synthetic=is_synthetic(table))
