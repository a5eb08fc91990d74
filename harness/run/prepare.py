"""Before anything is written: the profile chosen, the ledger resolved, the data opened and split,
the model's facts counted. Bad input stops here: nothing is written and MLflow is not opened.
"""

from __future__ import annotations

import io

from pathlib import Path
from typing import Optional

from harness import ledger
from harness.core.errors import InputError
from harness.ledger.profiles import announcement
from harness.core.records import (TAG_DATA, TAG_DATA_DIR, TAG_LEDGER, TAG_PROFILE,
                                  TAG_SPLIT, TAG_SYNTHETIC)


TRAINING_IMAGES = "data/training_images.json"  # the run's training rows (harness.data.overlap)


def gpu_visible() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def choose_profile(requested: Optional[str]) -> tuple[str, str]:
    """(profile, why): an explicit --profile wins; otherwise `full` with a GPU, `cpu` without."""
    if requested:
        return requested, "as asked"
    if gpu_visible():
        return "full", "a GPU is visible"
    return "cpu", "no GPU visible"


def _model_summary(model) -> str:
    buffer = io.StringIO()
    model.summary(print_fn=lambda line, *a, **k: buffer.write(line + "\n"), expand_nested=True)
    return buffer.getvalue()


def model_facts(iteration) -> tuple[int, int, str]:
    """(total, trainable parameters, the model summary) of the model an iteration builds."""
    from harness.models import build_model, count_params

    model = build_model(iteration)
    total, trainable, _ = count_params(model)
    return total, trainable, _model_summary(model)


class Prepared:
    """An iteration resolved under its profile, its data validated and split, seeds set."""

    def __init__(self, book, iteration, profile, table, parts, data_dir):
        from harness.data.split import split_key
        from harness.data.synth import is_synthetic

        self.iteration, self.profile, self.table, self.parts = iteration, profile, table, parts
        self.data_dir = data_dir
        data = iteration.data
        self.split_key = split_key(table, data.val_fraction, data.split_seed, data.validate_on_train)
        self.tags = {
            TAG_LEDGER: str(book.path),
            TAG_PROFILE: profile,
            TAG_DATA: str(getattr(table, "fingerprint", "")),
            TAG_DATA_DIR: str(getattr(table, "folder", data_dir or "")),
            TAG_SYNTHETIC: str(is_synthetic(table)).lower(),  # the table marks such runs' numbers
            TAG_SPLIT: self.split_key,
        }

    def datasets(self, cache_dir: Optional[Path] = None):
        from harness.data.pipeline import make_datasets

        return make_datasets(self.iteration, self.table, self.parts.train, self.parts.val, cache_dir=cache_dir)

    def features(self, folder: Optional[Path] = None):
        """What the feature cache needs (harness.train.FeatureInputs): features persisted in
        `folder`, by default the work dir's features/ (settings.WorkDir.features)."""
        from harness.core.settings import work_dir
        from harness.train import FeatureInputs

        folder = folder if folder is not None else work_dir().features
        return FeatureInputs.of(self.iteration, self.table, self.parts.train, self.parts.val, folder=folder)

    def lineage(self):
        """The data as the run's MLflow dataset input records it (harness.core.records.DataLineage)."""
        from harness.data.source import lineage

        return lineage(self.table, self.parts.train, self.parts.val)

    def data_label(self, bundle) -> str:
        """The data as a pass header names it: folder, split sizes, image size."""
        from harness.data.pixels import describe

        folder = Path(str(getattr(self.table, "folder", self.data_dir or self.iteration.data.name))).name
        backbone = self.iteration.backbone
        encoding = describe(self.iteration.data.pixels, backbone.weights)
        return (f"{folder} ({bundle.n_train} train / {bundle.n_val} val, {self.iteration.data.image_size} px, "
                f"{encoding})")


def prepare(book, name, profile, data_dir, skip_bad_rows, log, limit: Optional[int] = None,
            changes: Optional[dict] = None, resolved=None) -> Prepared:
    """Everything before tracking: bad input fails here, before MLflow or a file is touched.
    `changes` (a sweep trial's values, --set) apply to the iteration before the profile;
    `resolved` (a reproduction's recorded config) is trained as it is, under `profile`'s name."""
    from harness.data.source import open_dataset
    from harness.data.split import split

    if limit is not None and limit <= 0:
        raise InputError(f"--limit: a number of images must be positive (got {limit})")
    if resolved is not None:
        written = iteration = resolved
        profile, reason = profile or "full", "as recorded"
    else:
        written = book.resolve(name, changes=changes)  # a bad name or field fails before TensorFlow is even imported
        profile, reason = choose_profile(profile)
        iteration = book.resolve(name, profile, changes)
    if limit is not None:
        iteration = ledger.with_changes(iteration, {"data": {"limit": limit}})
    log(announcement(name, profile, reason, written, iteration, book.path))
    table, messages = open_dataset(iteration, data_dir, skip_bad_rows=skip_bad_rows)
    for message in messages:
        log(message)
    from harness.train import set_seeds

    set_seeds(iteration.seed)
    parts = split(table, iteration.data.val_fraction, iteration.data.split_seed,
                  validate_on_train=iteration.data.validate_on_train)
    if parts.message:
        log(parts.message)
    return Prepared(book, iteration, profile, table, parts, data_dir)
