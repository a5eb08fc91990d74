"""The ledger's schema: every key an iteration may hold, as frozen pydantic models, and its bounds.

A ledger file is the single source of truth for an experiment; the models below are what it
resolves into (`Iteration`, `Profile`), so nothing downstream can drift from what the file says.
Pure Python (pydantic).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from harness.core.errors import InputError
from harness.core import metrics
from harness.core.labels import DATASETS
from harness.models import catalog
from harness.ledger.suggest import _suggest


# Keys that describe an iteration rather than configure training: they are left out of the
# config sha (editing a remark must not force a fresh run) and of "changes vs parent".
# `repeats` (how many runs over seeds, harness.run.repeats) says how often, not what one run trains.
DESCRIPTIVE_KEYS = ("title", "remark", "reported", "extends", "repeats")

REQUIRED_PROFILES = ("cpu", "smoke")

# Switches added after runs were already logged, with the value every older run had: at that
# value they stay out of the config sha, so finished runs are neither redone by `--all` nor marked
# stale in the table for a key they never knew; any other value changes the sha as usual.
SHA_NEUTRAL_DEFAULTS = {("compute", "distribute"): "none",
                        ("data", "pixels"): {"range": 1, "channels": "rgb", "mean": "none"}}


# Absurd numbers are typos, refused where they are written rather than met as an out-of-memory
# error or a ruined run: no backbone here wants images above 4096 px, no optimizer an LR above
# 10 (a schedule's values are not capped: the divergence stop is tested with one), no pass a
# million epochs.
MAX_IMAGE_SIZE = 4096
MAX_LR = 10.0
MAX_EPOCHS = 100_000

class LedgerError(InputError):
    """One or more problems in a ledger, each already formatted as one line."""


# --------------------------------------------------------------------------- schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class PixelConfig(_Strict):
    """How pixels reach a backbone trained from scratch (harness.data.pixels): the notes fed
    `cv2.imread` as it is (range 255, bgr, no mean); keras.io's cifar10_resnet fed x/255 minus
    the training set's per-pixel mean (range 1, rgb, per_pixel). Pretrained weights ignore it
    and keep their own preprocessing."""

    range: Literal[1, 255] = 1
    channels: Literal["rgb", "bgr"] = "rgb"
    mean: Literal["none", "per_pixel"] = "none"


class DataConfig(_Strict):
    """Which dataset and how it is split and sized."""

    name: str = "hvc"
    image_size: int = Field(224, gt=0, le=MAX_IMAGE_SIZE)
    val_fraction: float = Field(0.15, gt=0, lt=1)
    split_seed: int = 1
    # The notes' defect: `valid_gen` built from `train_df`, so "validation" is training data.
    validate_on_train: bool = False
    # Cap on the number of rows used (profiles shrink data with it); None = all rows.
    limit: Optional[int] = Field(None, gt=0)
    cache: Literal["none", "memory", "disk"] = "none"
    pixels: PixelConfig = PixelConfig()

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in DATASETS:
            raise ValueError(f"unknown dataset '{value}'{_suggest(value, DATASETS)}; known: {', '.join(DATASETS)}")
        return value


class FreezeRule(_Strict):
    """One entry of an ordered freeze policy: layers whose name matches `pattern` (a regular
    expression, searched) get `trainable`; the first matching rule wins."""

    pattern: str
    trainable: bool

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"pattern '{value}' is not a regular expression: {exc}") from None
        return value


Freeze = Union[Literal["none", "backbone"], tuple[FreezeRule, ...]]


class BackboneConfig(_Strict):
    """A backbone of harness.models.catalog: its name, weights and options are checked there."""

    name: str = "vgg16"
    weights: Optional[Literal["imagenet"]] = None
    freeze: Freeze = "none"
    # ResNet v1 depth (6n+2); only resnet20v1 takes it.
    depth: Optional[int] = Field(None, gt=1)

    @field_validator("name")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        known = catalog.names()
        if value not in known:
            raise ValueError(f"unknown backbone '{value}'{_suggest(value, known)}; known: {', '.join(known)}")
        return value

    @field_validator("weights")
    @classmethod
    def _pretrained_available(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        name = info.data.get("name")
        problem = catalog.weights_problem(name, value) if name in catalog.CATALOG else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("depth")
    @classmethod
    def _option_taken(cls, value: Optional[int], info: ValidationInfo) -> Optional[int]:
        name = info.data.get("name")
        if value is not None and name in catalog.CATALOG:
            for _, problem in catalog.option_problems(name, {"depth": value}):
                raise ValueError(problem)
        return value

    def options(self) -> dict:
        """The catalog options this backbone config sets."""
        return {"depth": self.depth} if self.depth is not None else {}


class HeadConfig(_Strict):
    """The neck shared by all heads and the tower each head gets.

    The original tower is Dropout(0.2) -> Dense(128) -> Dropout(0.3) -> Dense(128);
    `tower_dropouts[i]` is the dropout before `tower_units[i]`.
    """

    neck: Literal["flatten", "gap"] = "flatten"
    neck_units: Optional[int] = Field(512, gt=0)
    tower_units: tuple[int, ...] = (128, 128)
    tower_dropouts: tuple[float, ...] = (0.2, 0.3)
    batch_norm: bool = False
    last_activation: Literal["relu", "linear"] = "relu"
    # The notes' defect: the second Dropout is applied to the tower input, so the first
    # Dense(128) is dead and drops out of the graph.
    tower_defect: bool = False

    @model_validator(mode="after")
    def _dropouts_match_units(self):
        if len(self.tower_dropouts) != len(self.tower_units):
            raise ValueError(
                f"tower_dropouts has {len(self.tower_dropouts)} entries but tower_units has {len(self.tower_units)}"
            )
        if any(not 0 <= d < 1 for d in self.tower_dropouts):
            raise ValueError("tower_dropouts must lie in [0, 1)")
        if any(u <= 0 for u in self.tower_units):
            raise ValueError("tower_units must be positive")
        if self.tower_defect and len(self.tower_units) < 2:
            raise ValueError("tower_defect needs at least two tower layers (it kills the first)")
        return self


class LossConfig(_Strict):
    # Weight each head's classes by inverse frequency in the training split.
    class_weighting: bool = False


class OptimizerConfig(_Strict):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.001, gt=0, le=MAX_LR)
    momentum: float = Field(0.9, ge=0, lt=1)


class BatchSize(_Strict):
    train: int = Field(32, gt=0)
    eval: int = Field(64, gt=0)


class StepSchedule(_Strict):
    """Piecewise-constant LR by epoch within a pass: `values[i]` applies from boundary i-1 up
    to (not including) boundary i, epochs counted from 0 within the pass."""

    boundaries: tuple[int, ...]
    values: tuple[float, ...]

    @model_validator(mode="after")
    def _consistent(self):
        if any(b <= 0 for b in self.boundaries):
            raise ValueError("schedule boundaries must be positive epochs")
        if any(b2 <= b1 for b1, b2 in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"schedule boundaries {list(self.boundaries)} do not increase")
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(
                f"schedule has {len(self.boundaries)} boundaries, so it needs {len(self.boundaries) + 1} values, "
                f"not {len(self.values)}"
            )
        if any(v <= 0 for v in self.values):
            raise ValueError("schedule values must be positive learning rates")
        return self

    def lr_at(self, epoch: int) -> float:
        """LR for a 0-based epoch within the pass."""
        for boundary, value in zip(self.boundaries, self.values):
            if epoch < boundary:
                return value
        return self.values[-1]


class EarlyStopping(_Strict):
    patience: int = Field(gt=0)
    monitor: str = metrics.VAL_LOSS
    restore_best: bool = True


class PassConfig(_Strict):
    """One `model.fit`: the notes' "load the best checkpoint, set the LR, fit again"."""

    epochs: int = Field(gt=0, le=MAX_EPOCHS)
    # A constant LR, or a step schedule; with neither the optimizer's lr applies.
    lr: Optional[float] = Field(None, gt=0, le=MAX_LR)
    schedule: Optional[StepSchedule] = None
    # best: the previous pass's best checkpoint; last: the weights it ended with; none: fresh
    # weights. Unset means "none" for the first pass and "last" for every later one.
    resume_from: Literal["best", "last", "none"] = "none"
    # What "best checkpoint" means for this pass.
    monitor: str = metrics.VAL_LOSS
    early_stopping: Optional[EarlyStopping] = None
    # Overrides the backbone's freeze policy for this pass.
    freeze: Optional[Freeze] = None
    # A cap by measured cost, not by epoch count (profiles set it on passes that train on
    # cached backbone features): the pass ends after the epoch whose measured time leaves
    # less than one more epoch inside this many seconds. None: no cap.
    max_seconds: Optional[int] = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_lr_source(self):
        if self.lr is not None and self.schedule is not None:
            raise ValueError("give either lr or schedule, not both")
        if self.schedule is not None and self.schedule.boundaries and self.schedule.boundaries[-1] >= self.epochs:
            raise ValueError(
                f"schedule boundary {self.schedule.boundaries[-1]} is not inside the pass's {self.epochs} epochs"
            )
        return self

    def describe_lr(self, default_lr: float) -> str:
        if self.schedule is not None:
            parts = [f"{self.schedule.values[0]:g}"]
            for boundary, value in zip(self.schedule.boundaries, self.schedule.values[1:]):
                parts.append(f"@{boundary} {value:g}")
            return "schedule " + " -> ".join(parts)
        return f"lr {self.lr if self.lr is not None else default_lr:g}"


class Cutout(_Strict):
    size: int = Field(gt=0)
    count: int = Field(1, gt=0)


class Augmentation(_Strict):
    flip: bool = False
    cutout: Optional[Cutout] = None


class ComputeConfig(_Strict):
    """How to compute, not what: speed switches. They stay in the config sha because they can
    change the numbers (mixed precision) or at least the path taken (feature cache)."""

    # Train neck and heads on backbone features computed once, when the pass's backbone is
    # frozen and no augmentation changes pixels between epochs.
    feature_cache: bool = True
    mixed_precision: Literal["none", "bfloat16", "float16"] = "none"
    jit_compile: bool = False
    # Several devices on one host (harness.train.distribute); the batch size stays global.
    distribute: Literal["none", "mirrored", "multi_worker"] = "none"

    @field_validator("distribute")
    @classmethod
    def _single_host_only(cls, value: str) -> str:
        if value == "multi_worker":
            raise ValueError("multi_worker is not supported: Keras 3's fit does not support "
                             "MultiWorkerMirroredStrategy (keras-team/keras#20585); train one iteration per GPU "
                             "through Ray instead (harness run --all --ray), or use mirrored on one host")
        return value


class ReportedPass(_Strict):
    """What the original notes reported for one pass, kept beside the reproduced numbers."""

    # Head -> validation accuracy (single-head ledgers use `acc`).
    val_acc: dict[str, float] = Field(default_factory=dict)
    epoch: Optional[int] = None
    seconds_per_epoch: Optional[float] = None
    params: Optional[int] = None
    source: Optional[str] = None


class Iteration(_Strict):
    """A fully resolved iteration: everything needed to train it, nothing inherited implicitly."""

    name: str
    title: str = ""
    extends: Optional[str] = None
    seed: int = 1
    data: DataConfig = DataConfig()
    backbone: BackboneConfig = BackboneConfig()
    head: HeadConfig = HeadConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    batch_size: BatchSize = BatchSize()
    passes: tuple[PassConfig, ...] = Field(min_length=1)
    augmentation: Augmentation = Augmentation()
    compute: ComputeConfig = ComputeConfig()
    reported: tuple[ReportedPass, ...] = ()
    remark: str = ""
    # `harness run ITER` trains it this many times, seeds seed, seed+1, ... on one split (--repeats N overrides)
    repeats: int = Field(1, ge=1, le=100)

    @model_validator(mode="after")
    def _first_pass_starts_somewhere(self):
        if self.passes[0].resume_from != "none":
            raise ValueError("passes.0.resume_from: the first pass has no previous pass to resume from")
        return self

    @model_validator(mode="after")
    def _monitors_are_logged_metrics(self):
        known = metrics.epoch_metric_names(self.data.name)
        for index, pass_ in enumerate(self.passes):
            watched = [("monitor", pass_.monitor)]
            if pass_.early_stopping:
                watched.append(("early_stopping.monitor", pass_.early_stopping.monitor))
            for where, metric in watched:
                if metric not in known:
                    raise ValueError(
                        f"passes.{index}.{where}: '{metric}' is not a logged metric{_suggest(metric, known)}"
                    )
        return self

    def on_cached_features(self, index: int) -> bool:
        """Whether pass `index` trains on cached backbone features (harness.train.feature_cache):
        the backbone is frozen for the whole pass (its own `freeze`, else the backbone's) and no
        augmentation changes the pixels between epochs."""
        override = self.passes[index].freeze
        policy = self.backbone.freeze if override is None else override
        aug = self.augmentation
        return self.compute.feature_cache and policy == "backbone" and not aug.flip and aug.cutout is None

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def training_dict(self) -> dict:
        """The part of the config that decides what gets trained (no descriptive keys)."""
        return {k: v for k, v in self.to_dict().items() if k not in DESCRIPTIVE_KEYS + ("name",)}

    def config_sha(self) -> str:
        """Identity of what this iteration trains: a run is resumed or skipped only when its
        recorded sha equals this one."""
        trained = self.training_dict()
        for (section, key), neutral in SHA_NEUTRAL_DEFAULTS.items():
            if trained[section].get(key) == neutral:
                trained[section] = {k: v for k, v in trained[section].items() if k != key}
        # The same for a pass's cost cap when unset (added after runs were logged).
        trained["passes"] = [{k: v for k, v in p.items() if not (k == "max_seconds" and v is None)}
                             for p in trained["passes"]]
        canonical = json.dumps(trained, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.passes)

    def epochs_label(self) -> str:
        return "+".join(str(p.epochs) for p in self.passes)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)
