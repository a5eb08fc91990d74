"""Input throughput: the harness's tf.data pipeline vs the notes' per-item loader, same run.

    HARNESS_HVC_REAL=../shared/data/hvc .venv/bin/python bench/bench_pipeline.py [--n 1500] [--size 224]

The per-item loader is written like the notes' `PersonDataGenerator` (a keras.utils.Sequence):
a Python loop over `df.iloc[...].iterrows()`, one imread per image (PIL here, cv2 there),
`np.stack`, one-hot targets from `pd.get_dummies` columns, reshuffled each epoch. It yields
uint8 images, as the notes' did; the pipeline does more (float32 in [0, 1], one-hot dict).
Both read the same first N rows of the real subset, whose files are read once beforehand so
neither side pays for a cold disk. Rows: first epoch (the pipeline decoding every JPEG; the
per-item loader's only mode), and a cached epoch (pipeline cache "memory", built once, then
one epoch; the per-item loader's second epoch, with the OS file cache warm). Prints one
markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from harness.data.hvc import load_hvc
from harness.core.labels import HVC_CSV_COLUMNS
from harness.ledger import Iteration, validate_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_training import DEFAULT_DATA, missing_real_data  # noqa: E402


class PersonDataGenerator:
    """The notes' loader: a keras.utils.Sequence, one Python iteration per image."""

    def __init__(self, df: pd.DataFrame, folder: Path, batch_size: int = 32, shuffle: bool = True):
        self.df = df
        self.folder = folder
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.columns = {head: [c for c in df.columns if c.startswith(column + "_")]
                        for head, column in HVC_CSV_COLUMNS.items()}

    def __len__(self) -> int:
        return int(np.floor(self.df.shape[0] / self.batch_size))

    def __getitem__(self, index: int):
        items = self.df.iloc[index * self.batch_size:(index + 1) * self.batch_size]
        image = np.stack([imread(self.folder / item["image_path"]) for _, item in items.iterrows()])
        target = {f"{head}_output": items[cols].values for head, cols in self.columns.items()}
        return image, target

    def on_epoch_end(self):
        if self.shuffle:
            self.df = self.df.sample(frac=1).reset_index(drop=True)


def imread(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def time_per_item(df: pd.DataFrame, folder: Path, batch: int) -> tuple[float, int]:
    generator = PersonDataGenerator(df, folder, batch)
    start, images = time.perf_counter(), 0
    for index in range(len(generator)):
        x, _ = generator[index]
        images += len(x)
    generator.on_epoch_end()
    return time.perf_counter() - start, images


def time_pipeline(dataset, steps: int) -> tuple[float, int]:
    start, images = time.perf_counter(), 0
    for x, _ in dataset.take(steps).as_numpy_iterator():
        images += len(x)
    return time.perf_counter() - start, images


def median_run(run, repeats: int) -> tuple[float, int]:
    """The run with the median time: the machine may be shared, one slow run says little."""
    runs = sorted(run() for _ in range(repeats))
    return runs[len(runs) // 2]


def measure(folder: Path, n: int, size: int, batch: int, repeats: int = 3) -> list[dict]:
    from harness.data.pipeline import make_datasets

    table = load_hvc(folder, limit=n)
    for path in table.paths:  # warm the OS file cache for both sides
        Path(path).read_bytes()
    indices = np.arange(len(table))

    def iteration(cache: str) -> Iteration:
        return validate_dict({
            "name": "bench", "passes": [{"epochs": 1}], "seed": 1,
            "data": {"image_size": size, "cache": cache}, "batch_size": {"train": batch, "eval": batch},
        })

    def datasets(cache: str):
        return make_datasets(iteration(cache), table, indices, indices[:batch])

    # TensorFlow's one-time start-up (thread pools, kernels) is not the pipeline's cost.
    time_pipeline(datasets("none").train, 4)

    frame = table.frame.drop(columns=["csv_line"])
    df = pd.get_dummies(frame, columns=list(HVC_CSV_COLUMNS.values()), dtype=np.uint8)
    rows = []

    def add(loader, epoch, kind, result):
        rows.append({"loader": loader, "epoch": epoch, "kind": kind, "seconds": result[0], "images": result[1]})

    add("per-item (notes)", "first", "first", median_run(lambda: time_per_item(df, folder, batch), repeats))
    add("per-item (notes)", "later (OS file cache warm)", "cached",
        median_run(lambda: time_per_item(df, folder, batch), repeats))
    plain = datasets("none")
    add("tf.data pipeline", "first (decodes every JPEG)", "first",
        median_run(lambda: time_pipeline(plain.train_epoch(0), plain.steps_per_epoch), repeats))

    def build():
        start = time.perf_counter()
        built = datasets("memory")
        return time.perf_counter() - start, len(table), built

    build_seconds, build_images, cached = build()
    add("tf.data pipeline", "cache build (memory, once per run)", "first", (build_seconds, build_images))
    add("tf.data pipeline", "cached", "cached",
        median_run(lambda: time_pipeline(cached.train_epoch(1), cached.steps_per_epoch), repeats))
    return rows


def markdown(rows: list[dict], n: int, size: int, batch: int) -> str:
    baseline = {row["kind"]: row for row in rows if row["loader"].startswith("per-item")}
    lines = [
        f"Input pipeline on the real hvc subset: first {n} images at {size} px, batch {batch} (epochs drop the "
        f"last partial batch), {os.cpu_count()} CPU cores, median of 3 runs",
        "",
        "| loader | epoch | seconds | images/s | vs per-item, same epoch |",
        "|---|---|---:|---:|---:|",
    ]
    for row in rows:
        rate = row["images"] / row["seconds"]
        ref = baseline[row["kind"]]
        ratio = rate / (ref["images"] / ref["seconds"])
        lines.append(f"| {row['loader']} | {row['epoch']} | {row['seconds']:.2f} | {rate:,.0f} | {ratio:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON (for bench/run_all.py)")
    args = parser.parse_args(argv)
    folder = Path(args.data)
    if missing_real_data(folder):
        return 2
    rows = measure(folder, args.n, args.size, args.batch)
    print(json.dumps(rows) if args.json else markdown(rows, args.n, args.size, args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
