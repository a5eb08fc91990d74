"""The frozen-backbone feature cache: backbone features computed once, the neck and heads
trained on them.

When a pass's backbone is frozen and no augmentation changes pixels between epochs, every epoch
would push the same images through the same backbone. Instead its features are computed once for
every train and val row (`harness.models.feature_model`: preprocessing and backbone), and the
pass fits `harness.models.head_model` (the full model's own neck and towers) on datasets of
those features that follow the image stream's order step for step. Checkpoints stay whole
models. No YAML, no MLflow.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from harness.ledger.schema import Iteration


@dataclass
class FeatureInputs:
    """What the cache needs from the data: the table rows to compute features for, the table's
    length, and how to turn a row-indexed feature array into datasets
    (harness.data.pipeline.make_datasets with `features=`)."""

    rows: np.ndarray
    n_rows: int
    build: Callable
    # What the features depend on besides the backbone's weights (the data, the rows, the image
    # size, the backbone's config); empty: never reused by another run.
    identity: tuple = ()

    @classmethod
    def of(cls, iteration, table, train_idx, val_idx) -> "FeatureInputs":
        """For a split of a table: features for every train and val row, turned into datasets
        that follow the image stream's order."""
        from harness.data.pipeline import make_datasets

        rows = np.union1d(train_idx, val_idx)
        fingerprint = getattr(table, "fingerprint", None)
        identity = () if not fingerprint else (
            fingerprint, iteration.data.image_size, iteration.backbone.model_dump_json(),
            hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest())
        return cls(rows=rows, n_rows=len(table), identity=identity,
                   build=lambda array: make_datasets(iteration, table, train_idx, val_idx, features=array))


def applies(iteration: Iteration, pass_index: int) -> bool:
    """Features can stand in for images only when the backbone cannot change (frozen for the
    whole pass) and the images cannot either (no flip or cutout between epochs)."""
    from harness.models import policy_for

    aug = iteration.augmentation
    return (iteration.compute.feature_cache and policy_for(iteration, pass_index) == "backbone"
            and not aug.flip and aug.cutout is None)


# Feature arrays outlive one run in the same process: a sweep's trials (harness.sweep) train
# on the same images through the same seeded, frozen backbone, and would each spend most of a
# CPU trial recomputing them. The last few, by weights and FeatureInputs.identity.
_RECENT: dict = {}
_KEEP = 2


class FeatureCache:
    """Datasets of backbone features per set of backbone weights: passes that reload the same
    frozen backbone reuse them, and so do later runs in this process on the same inputs."""

    def __init__(self, images, inputs: FeatureInputs, log=print):
        self.images, self.inputs, self.log = images, inputs, log
        self._computed: dict = {}

    def datasets_for(self, model):
        """Feature datasets (harness.data.pipeline.Datasets) for `model`'s current backbone."""
        from harness.models import feature_model

        backbone = model.get_layer("backbone")
        key = float(sum(np.abs(w).sum(dtype=np.float64) for w in backbone.get_weights()))
        if key not in self._computed:
            inputs = self.inputs
            shared = (key, inputs.identity) if inputs.identity else None
            if shared in _RECENT:
                self._computed[key] = inputs.build(_RECENT[shared])
                self.log(f"feature cache: the backbone features of {len(inputs.rows)} images, computed by an "
                         f"earlier run in this process on the same images and backbone, reused")
                return self._computed[key]
            started = time.perf_counter()
            images = self.images.rows(inputs.rows).map(lambda x, y: x)
            computed = feature_model(model).predict(images, verbose=0).astype(np.float32)
            features = np.zeros((inputs.n_rows, *computed.shape[1:]), np.float32)
            features[inputs.rows] = computed
            self._computed[key] = inputs.build(features)
            if shared is not None:
                _RECENT[shared] = features
                while len(_RECENT) > _KEEP:
                    _RECENT.pop(next(iter(_RECENT)))
            self.log(f"feature cache: backbone features of {len(inputs.rows)} images computed once "
                     f"({time.perf_counter() - started:.1f} s, {features.nbytes / 2**20:.0f} MiB in memory); "
                     f"the neck and heads train on them (compute.feature_cache: false turns this off)")
        return self._computed[key]
