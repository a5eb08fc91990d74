"""Training speed, each pair measured side by side in one run on the same real data.

    HARNESS_HVC_REAL=../shared/data/hvc .venv/bin/python bench/bench_training.py [--which cache|shared|overhead]

cache:    a frozen-VGG16 epoch at 96 px (the `first` iteration's head), through the image path
          (backbone forward on every image, every epoch) against the feature cache (the
          backbone's features computed once, the neck and towers trained on them). Epochs after
          the first, so neither side pays for tracing; the one-off feature computation is
          reported on its own row.
shared:   the frozen-backbone feature cache shared through the work dir (train/feature_cache.py):
          `first` computes the backbone features of the table into a features/ folder, then
          `second` (first with more epochs: the same backbone, seed and images, so the same key)
          asks for them; its feature time on that hit (key hash of the weights, file checks,
          memory-mapped read) against first's computation. Fresh cache objects each time, as
          two runs would have.
overhead: `harness run` against a bare `model.fit` of the same model on the same datasets: the
          cost of checkpoints, state file and MLflow logging. The harness's epoch period is read
          from the timestamps MLflow stored with each epoch's metrics (end of epoch k+1 minus
          end of epoch k, so everything done per epoch counts); the bare fit's from a callback
          at the same point. Median over the epochs after the first.

Prints markdown, or one JSON object with --json (bench/run_all.py collects those).
Not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from harness import ledger
from harness.core import metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA = os.environ.get("HARNESS_HVC_REAL", str(ROOT / ".." / "shared" / "data" / "hvc"))


def missing_real_data(folder) -> bool:
    """True, after saying so on stderr, when `folder` is not an hvc folder: every benchmark
    measures the real subset, never a stand-in."""
    if (Path(folder) / "hvc_annotations.csv").is_file():
        return False
    print(f"{folder}: no hvc_annotations.csv; set HARNESS_HVC_REAL or pass --data DIR", file=sys.stderr)
    return True


def _iteration(base: str, **changes):
    """An iteration of runs.yaml with a few fields changed (validated like any other)."""
    return ledger.with_changes(ledger.load(ROOT / "runs.yaml").resolve(base), changes)


def _epoch_timer():
    import keras

    class EpochEnds(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_epoch_end(self, epoch, logs=None):
            self.ends.append(time.perf_counter())

    return EpochEnds()


def _periods(ends: list[float]) -> list[float]:
    return [b - a for a, b in zip(ends, ends[1:])]


def _timed_fit(model, data, epochs: int, train=None) -> float:
    """Median epoch period of a plain model.fit, the first epoch (tracing) left out."""
    timer = _epoch_timer()
    model.fit(train if train is not None else data.train, steps_per_epoch=data.steps_per_epoch,
              validation_data=data.val, epochs=epochs, callbacks=[timer], verbose=0)
    return statistics.median(_periods(timer.ends))


def measure_cache(folder: Path, n: int, size: int, epochs: int = 3) -> dict:
    from harness.data.hvc import load_hvc
    from harness.data.pipeline import make_datasets
    from harness.data.split import split
    from harness.models import build_model, head_model
    from harness.train import FeatureCache, FeatureInputs, compile_model, set_seeds

    iteration = _iteration("first", data={"image_size": size, "cache": "memory", "limit": n},
                           passes=[{"epochs": epochs}])
    set_seeds(1)
    table = load_hvc(folder, limit=n)
    parts = split(table, 0.15, 1)
    images = make_datasets(iteration, table, parts.train, parts.val)
    cache = FeatureCache(images, FeatureInputs.of(iteration, table, parts.train, parts.val), log=lambda *_: None)

    model = build_model(iteration)
    compile_model(model, iteration, iteration.passes[0])
    uncached = _timed_fit(model, images, epochs)

    model = build_model(iteration)
    started = time.perf_counter()
    cached_data = cache.datasets_for(model)  # the harness's own feature-cache path
    feature_seconds = time.perf_counter() - started
    head = head_model(model)
    compile_model(head, iteration, iteration.passes[0])
    cached = _timed_fit(head, cached_data, epochs)
    return {"n_train": int(len(parts.train)), "n_val": int(len(parts.val)), "size": size,
            "uncached_epoch_s": uncached, "cached_epoch_s": cached, "feature_compute_s": feature_seconds,
            "ratio": uncached / cached}


def measure_shared_cache(folder: Path, n: int, size: int) -> dict:
    from harness.data.hvc import load_hvc
    from harness.data.pipeline import make_datasets
    from harness.data.split import split
    from harness.models import build_model
    from harness.train import FeatureCache, FeatureInputs, set_seeds

    table = load_hvc(folder, limit=n)
    parts = split(table, 0.15, 1)
    seconds, lines = {}, []
    with tempfile.TemporaryDirectory(prefix="bench-features-") as features:
        for name in ("first", "second"):
            iteration = _iteration(name, data={"image_size": size, "cache": "memory", "limit": n})
            set_seeds(iteration.seed)  # what a run does before building its model: the same weights
            images = make_datasets(iteration, table, parts.train, parts.val)
            inputs = FeatureInputs.of(iteration, table, parts.train, parts.val, folder=Path(features))
            cache = FeatureCache(images, inputs, log=lines.append)
            model = build_model(iteration)
            started = time.perf_counter()
            cache.datasets_for(model)
            seconds[name] = time.perf_counter() - started
    hit = lines[-1].startswith("feature cache: hit")
    return {"n_rows": int(len(table)), "size": size, "first_compute_s": seconds["first"],
            "second_hit_s": seconds["second"], "hit": hit, "ratio": seconds["first"] / seconds["second"],
            "lines": lines}


def measure_overhead(folder: Path, n: int, size: int, epochs: int = 8, tracking_uri: Optional[str] = None) -> dict:
    """Bare fit against `harness run` logging to a throwaway SQLite store, or to `tracking_uri`
    (a tracking server: each harness run in an experiment of its own there)."""
    from harness.data.hvc import load_hvc
    from harness.data.pipeline import make_datasets
    from harness.data.split import split
    from harness.run.launch import run_iteration
    from harness.models import build_model
    from harness.track.store import Store
    from harness.train import compile_model, set_seeds, train_stream

    changes = dict(data={"image_size": size, "cache": "memory", "limit": n},
                   passes=[{"epochs": epochs, "lr": 0.001}])
    iteration = _iteration("eleventh", **changes)

    def bare_fit() -> float:
        """The same model and datasets (class weights included), plain model.fit."""
        set_seeds(iteration.seed)
        table = load_hvc(folder, limit=n)
        parts = split(table, iteration.data.val_fraction, iteration.data.split_seed)
        data = make_datasets(iteration, table, parts.train, parts.val)
        model = build_model(iteration)
        compile_model(model, iteration, iteration.passes[0])
        return _timed_fit(model, data, epochs, train=train_stream(iteration, data, 0)), len(parts.train)

    def harness_run() -> float:
        """The full `harness run`, into a throwaway store; epoch ends from MLflow's timestamps."""
        with tempfile.TemporaryDirectory() as tmp:
            experiment = f"bench-{os.getpid()}-{time.time_ns()}" if tracking_uri else "bench"
            ledger_path = Path(tmp) / "bench.yaml"
            ledger_path.write_text(json.dumps({
                "experiment": experiment, "profiles": {"cpu": {}, "smoke": {}},
                "iterations": {"overhead": {k: v for k, v in iteration.to_dict().items()
                                            if k not in ("name", "extends")}},
            }))
            uri = tracking_uri or f"sqlite:///{tmp}/mlflow.db"
            run_iteration(ledger.load(ledger_path), "overhead", profile="full", data_dir=str(folder),
                          tracking_uri=uri, work_dir=str(Path(tmp) / "work"), log=lambda *_: None)
            store = Store(uri)
            run = store.runs(experiment, "overhead")[0]
            history = store.metric_history(run.run_id, metrics.LOSS)
            return statistics.median(_periods([m.timestamp / 1000 for m in history]))

    # bare and harness alternate (B H B H B): drift on a shared machine (other processes,
    # thermal) lands on both sides, and the medians shrug off a single slow run.
    bares, harnesses = [], []
    for round_ in range(5):
        if round_ % 2 == 0:
            seconds, n_train = bare_fit()
            bares.append(seconds)
        else:
            harnesses.append(harness_run())
    bare, harness = statistics.median(bares), statistics.median(harnesses)
    return {"n_train": int(n_train), "size": size, "bare_epoch_s": bare, "bare_runs": bares,
            "harness_epoch_s": harness, "harness_runs": harnesses, "ratio": harness / bare}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=["cache", "shared", "overhead"], required=True)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=None, help="images (default 1200 for cache, 1500 for overhead)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    folder = Path(args.data)
    if missing_real_data(folder):
        return 2
    if args.which == "cache":
        result = measure_cache(folder, args.n or 1200, 96)
        text = (f"| frozen VGG16 epoch, 96 px, {result['n_train']} images | uncached {result['uncached_epoch_s']:.2f} s"
                f" | cached {result['cached_epoch_s']:.3f} s | {result['ratio']:.1f}x |\n"
                f"(feature computation, once: {result['feature_compute_s']:.1f} s)")
    elif args.which == "shared":
        result = measure_shared_cache(folder, args.n or 1200, 96)
        text = (f"| frozen VGG16 features, 96 px, {result['n_rows']} images | first computes {result['first_compute_s']:.2f} s"
                f" | second hits {result['second_hit_s']:.3f} s ({'hit' if result['hit'] else 'MISSED'}) | "
                f"{result['ratio']:.0f}x |\n" + "\n".join(result["lines"]))
    else:
        result = measure_overhead(folder, args.n or 1500, 64)
        text = (f"| epoch, custom CNN 64 px, {result['n_train']} images | bare fit {result['bare_epoch_s']:.2f} s | "
                f"harness run {result['harness_epoch_s']:.2f} s | {result['ratio']:.3f} |")
    print(json.dumps(result) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
