"""The ledger: YAML -> `extends` resolution -> validated, frozen Iteration; diff vs parent.

A ledger file is the single source of truth for an experiment. Each iteration is written as a
change to its parent (`extends`); resolution deep-merges defaults, then every ancestor, then the
iteration itself (maps merge, lists replace). The result is validated into frozen pydantic
objects, so nothing downstream can drift from what the file says.

Every error names the place in the file (`file:line`) and the field (`iteration.field`), because
a researcher fixing a ledger wants to jump straight to the line. Duplicate keys are errors
(YAML's default is a silent last-wins, which hides copy-paste mistakes).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from harness.errors import InputError
from harness import metrics
from harness.data.labels import DATASETS
from harness.models import catalog

# Keys that describe an iteration rather than configure training: they are left out of the
# config sha (editing a remark must not force a fresh run) and of "changes vs parent".
DESCRIPTIVE_KEYS = ("title", "remark", "reported", "extends")

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


class CachedFeaturePasses(_Strict):
    """A profile's rule for passes that train on cached backbone features, where an epoch costs
    a second or two: they keep the ledger's epochs (no epoch cap, no patience cap), each capped
    by its measured cost at `max_seconds` instead; when every pass of an iteration is such a
    pass, it also keeps the ledger's image size and training batch."""

    max_seconds: int = Field(gt=0)


class ProfileAdjustment(_Strict):
    """One iteration's departures from its profile (the profile's `iterations:`), for an
    iteration whose cost is far from the rest's (ninth and tenth train a whole VGG16 or
    DenseNet121): the same fields, each replacing the profile's (`set` merges into its `set`)."""

    set: dict[str, Any] = Field(default_factory=dict)
    max_epochs_per_pass: Optional[int] = Field(None, gt=0)
    patience: Optional[int] = Field(None, gt=0)
    batch_scale: Optional[float] = Field(None, gt=0)


class Profile(_Strict):
    """An overlay on a resolved iteration that changes how much is computed, never what is
    modelled: `set` deep-merges into the iteration (only the keys in PROFILE_KEYS: image size,
    number of images, caching, batch size, compute switches), then every pass is capped at
    `max_epochs_per_pass` epochs (schedule boundaries scale with it), every early stopping at
    `patience` epochs, and every training batch scaled by `batch_scale`; passes on cached
    features follow `cached_feature_passes` instead, when the profile has one."""

    description: str = ""
    set: dict[str, Any] = Field(default_factory=dict)
    max_epochs_per_pass: Optional[int] = Field(None, gt=0)
    patience: Optional[int] = Field(None, gt=0)
    # Every iteration's training batch times this (at least 1): fewer images a step means more
    # optimizer steps an epoch at the ledger's LR, while iterations that differ in batch size
    # keep their ratio (256 vs 32 stays 8x).
    batch_scale: Optional[float] = Field(None, gt=0)
    cached_feature_passes: Optional[CachedFeaturePasses] = None
    iterations: dict[str, ProfileAdjustment] = Field(default_factory=dict)

    def for_iteration(self, name: str) -> "Profile":
        """The profile as it applies to iteration `name`: with that iteration's adjustment."""
        adjustment = self.iterations.get(name)
        if adjustment is None:
            return self
        fields = adjustment.model_dump(exclude_unset=True)
        overlay = deep_merge(self.set, fields.pop("set", {}))
        return self.model_copy(update={**fields, "set": overlay, "iterations": {}})


# What a profile may change: how much is computed, never the model, loss, optimizer, LR or data
# split (the ledger's modelling choices stay as written, so a cpu run is the same experiment,
# smaller). A section name allows every key inside it.
PROFILE_KEYS = ("data.image_size", "data.limit", "data.cache", "batch_size", "compute")


def profile_key_problems(values: dict, prefix: str = "") -> list[str]:
    """Dotted keys of a profile's `set` that change more than compute (see PROFILE_KEYS)."""
    problems = []
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if any(dotted == allowed or dotted.startswith(allowed + ".") for allowed in PROFILE_KEYS):
            continue
        if isinstance(value, dict) and any(allowed.startswith(dotted + ".") for allowed in PROFILE_KEYS):
            problems += profile_key_problems(value, dotted + ".")
        else:
            problems.append(dotted)
    return problems


# --------------------------------------------------------------------------- YAML with lines


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`, a trap in LR lists)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)

Path_ = tuple  # a key path inside the YAML document, e.g. ("iterations", "base", "passes", 0)


def _load_with_lines(text: str, filename: str) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML into plain Python plus a map from key path to 1-based line number.

    Walks the composed node tree instead of using yaml.load, so duplicate keys can be caught
    (anywhere in the document) and every value keeps the line it was written on.
    """
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}" if mark else filename
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LedgerError([f"{where}: YAML syntax error: {problem}"]) from None
    except RecursionError:
        raise LedgerError([f"{filename}:1: nested too deeply to be a ledger"]) from None
    lines: dict[Path_, int] = {}
    errors: list[str] = []
    budget = [MAX_LEDGER_NODES]

    def build(node, path: Path_):
        # Aliases share nodes, so a few lines of anchors can stand for billions of values
        # ("billion laughs"): count what is built, and refuse deep nesting before Python's stack does.
        budget[0] -= 1
        if budget[0] < 0:
            raise LedgerError([f"{filename}:{node.start_mark.line + 1}: more than {MAX_LEDGER_NODES:,} values once "
                               f"aliases are expanded (an alias bomb?); a ledger is far smaller"])
        if len(path) > MAX_LEDGER_DEPTH:
            raise LedgerError([f"{filename}:{node.start_mark.line + 1}: nested deeper than {MAX_LEDGER_DEPTH} levels"])
        lines.setdefault(path, node.start_mark.line + 1)
        if node.tag not in PLAIN_TAGS:  # !!python/object and friends: refused, never constructed
            raise LedgerError([f"{filename}:{node.start_mark.line + 1}: the tag {node.tag} is not allowed; "
                               f"a ledger holds plain YAML values only"])
        if isinstance(node, yaml.MappingNode):
            loader.flatten_mapping(node)
            out: dict = {}
            seen: dict = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    where = ".".join(str(p) for p in path + (key,))
                    errors.append(f"{filename}:{line}: {where}: duplicate key '{key}' (first written on line {seen[key]})")
                    continue
                seen[key] = line
                lines[path + (key,)] = line
                out[key] = build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, path + (i,)) for i, item in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    try:
        data = build(root, ()) if root is not None else None
    except yaml.YAMLError as exc:  # a tag SafeLoader will not construct (!!python/object...)
        mark = getattr(exc, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}" if mark else filename
        problem = (getattr(exc, "problem", None) or str(exc)).splitlines()[0]
        raise LedgerError([f"{where}: {problem}; a ledger holds plain YAML values only"]) from None
    loader.dispose()
    if errors:
        raise LedgerError(errors)
    return data, lines


# --------------------------------------------------------------------------- resolution


def deep_merge(base: Any, overlay: Any) -> Any:
    """Maps merge key by key; anything else (lists included) is replaced by the overlay."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(overlay)


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def suggest_name(word: str, choices) -> str:
    """" (did you mean 'x'?)" for a near miss among `choices`, else "" (for messages elsewhere)."""
    return _suggest(word, choices)


def _model_at(model: type, loc: tuple) -> Optional[type]:
    """The pydantic model class found by following `loc` (field names and list indices)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(part)
        if info is None:
            return None
        current = _inner_model(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    """Unwrap Optional / tuple / Union / dict to the first BaseModel inside, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


@dataclass
class Ledger:
    """A parsed ledger file. `resolve(name)` gives a validated Iteration."""

    path: Path
    experiment: str
    defaults: dict
    profiles: dict[str, Profile]
    raw_iterations: dict[str, dict]
    lines: dict[Path_, int] = field(repr=False, default_factory=dict)
    # Iteration -> its `sweep:` block as written (dotted field -> range; harness.sweep_space
    # reads it). Kept out of raw_iterations: a search space is not trained, nor inherited.
    sweeps: dict[str, dict] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.raw_iterations)

    # ---- locations

    def _line(self, path: Path_) -> int:
        return _nearest(self.lines, path)

    def _chain(self, name: str) -> list[str]:
        """`name`, its parent, grandparent, ... (cycles and missing parents raise)."""
        chain = [name]
        while True:
            parent = self.raw_iterations[chain[-1]].get("extends")
            if parent is None:
                return chain
            if parent not in self.raw_iterations:
                where = f"{self.path}:{self._line(('iterations', chain[-1], 'extends'))}"
                raise LedgerError(
                    [f"{where}: {chain[-1]}.extends: no iteration named '{parent}'{_suggest(parent, self.names)}"]
                )
            if parent in chain:
                cycle = " -> ".join(chain[chain.index(parent):] + [parent])
                where = f"{self.path}:{self._line(('iterations', chain[-1], 'extends'))}"
                raise LedgerError([f"{where}: {chain[-1]}.extends: inheritance cycle {cycle}"])
            chain.append(parent)

    def _origin_line(self, chain: list[str], loc: tuple) -> int:
        return _written_at(self.lines, chain, loc, self._line(("iterations", chain[0])))

    # ---- resolution

    def merged_dict(self, name: str) -> dict:
        """Defaults, then every ancestor from the root down, then the iteration itself."""
        if name not in self.raw_iterations:
            raise LedgerError([f"{self.path}: no iteration named '{name}'{_suggest(name, self.names)}; "
                               f"the ledger has: {', '.join(self.names)}"])
        merged = copy.deepcopy(self.defaults)
        for layer in reversed(self._chain(name)):
            merged = deep_merge(merged, self.raw_iterations[layer])
        merged["extends"] = self.raw_iterations[name].get("extends")
        merged["name"] = name
        return merged

    def resolve(self, name: str, profile: Optional[str] = None, changes: Optional[dict] = None) -> Iteration:
        """The validated iteration; `changes` (a sweep trial's values, see with_changes) apply
        before the profile, so a profile's caps hold for every trial too."""
        merged = self.merged_dict(name)
        iteration = self._validate(name, merged)
        if changes:
            iteration = with_changes(iteration, changes)
        if profile and profile != "full":
            iteration = self.apply_profile(iteration, profile)
        return iteration

    def _validate(self, name: str, merged: dict, chain: Optional[list[str]] = None) -> Iteration:
        chain = chain or self._chain(name)
        try:
            return validate_dict(merged)
        except ValidationError as exc:
            lines = []
            for err in _innermost(exc.errors()):
                loc = _file_loc(err["loc"])
                dotted = ".".join(str(p) for p in (name,) + loc)
                lines.append(f"{self.path}:{self._origin_line(chain, loc)}: {dotted}: {_error_message(err, loc)}")
            raise LedgerError(list(dict.fromkeys(lines))) from None

    def apply_profile(self, iteration: Iteration, profile_name: str) -> Iteration:
        if profile_name not in self.profiles:
            known = ["full"] + list(self.profiles)
            raise LedgerError([f"{self.path}: no profile named '{profile_name}'{_suggest(profile_name, known)}; "
                               f"known: {', '.join(known)}"])
        try:
            return validate_dict(_profiled(iteration, self.profiles[profile_name].for_iteration(iteration.name)))
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                where = f"{self.path}:{self._line(('profiles', profile_name))}"
                lines.append(f"{where}: profiles.{profile_name} on {iteration.name}.{loc}: {err['msg']}")
            raise LedgerError(lines) from None

    def validate_all(self) -> list[Iteration]:
        """Resolve every iteration (and every profile on each); collect all errors."""
        errors: list[str] = []
        resolved = []
        for name in self.names:
            try:
                iteration = self.resolve(name)
                resolved.append(iteration)
                for profile in self.profiles:
                    self.apply_profile(iteration, profile)
            except LedgerError as exc:
                errors.extend(line for line in exc.lines if line not in errors)
        if self.sweeps:
            from harness.sweep_space import space_errors  # here: sweep_space imports this module

            for name in self.sweeps:
                errors.extend(line for line in space_errors(self, name) if line not in errors)
        if errors:
            raise LedgerError(errors)
        return resolved


def _written_at(lines: dict, chain: list[str], loc: tuple, fallback: int) -> int:
    """Where a resolved value was written: the closest layer (iteration, its ancestors, then
    defaults) that spells out the longest prefix of `loc`; else `fallback`."""
    layers = [("iterations", n) for n in chain] + [("defaults",)]
    for depth in range(len(loc), 0, -1):
        prefix = tuple(loc[:depth])
        for layer in layers:
            if layer + prefix in lines:
                return lines[layer + prefix]
    return fallback


def _profiled(iteration: Iteration, profile: Profile) -> dict:
    """The iteration's dict with a profile on top: its `set` values, its caps on every pass's
    epochs and patience, its scale on the training batch."""
    rule = profile.cached_feature_passes
    cached = [bool(rule) and iteration.on_cached_features(i) for i in range(len(iteration.passes))]
    overlay = profile.set
    if all(cached):  # nothing trains the backbone: images at the ledger's size, batch as written
        overlay = {**overlay, "data": {k: v for k, v in overlay.get("data", {}).items() if k != "image_size"}}
        overlay.pop("batch_size", None)
    merged = deep_merge(iteration.to_dict(), overlay)
    merged["passes"] = [dict(p, max_seconds=rule.max_seconds) if on_features else
                        _cap_pass(p, profile.max_epochs_per_pass, profile.patience)
                        for p, on_features in zip(merged["passes"], cached)]
    if profile.batch_scale and not all(cached):
        train = merged["batch_size"]["train"]
        merged["batch_size"] = dict(merged["batch_size"], train=max(1, round(train * profile.batch_scale)))
    return merged


def _file_loc(loc) -> tuple:
    """A pydantic error location as the file spells it: union members add their own names
    ("literal['none','backbone']", "tuple[...]"), which mean nothing in the file."""
    return tuple(p for p in loc if isinstance(p, int) or not any(c in p for c in "[]'"))


def _error_message(err: dict, loc: tuple) -> str:
    """What a pydantic error says, in the ledger's words."""
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(Iteration, loc[:-1])
        known = [k for k in (model.model_fields if model else []) if k != "name"]
        return f"unknown key '{loc[-1]}'{_suggest(loc[-1], known)}"
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if kind == "missing":
        message = "required field is missing"
    elif "input" in err and kind not in ("value_error",) and not isinstance(err["input"], (dict, list)):
        message = f"{message} (got {err['input']!r})"
    return message


def _innermost(errors: list[dict]) -> list[dict]:
    """Drop errors on a container when a field inside it failed too: pydantic adds a follow-on
    "passes: should have at least 1 item" once the only pass was rejected."""
    locs = [tuple(e["loc"]) for e in errors]
    # "passes: required" is a follow-on of "Passes: unknown key (did you mean 'passes'?)" too.
    miscased = {loc[:-1] + (str(loc[-1]).lower(),) for e, loc in zip(errors, locs)
                if e["type"] == "extra_forbidden" and str(loc[-1]) != str(loc[-1]).lower()}
    return [e for e, loc in zip(errors, locs)
            if not any(other != loc and other[:len(loc)] == loc for other in locs)
            and not (e["type"] == "missing" and loc in miscased)]


def validate_dict(merged: dict) -> Iteration:
    """A resolved iteration as a plain dict -> a validated Iteration (pydantic's ValidationError
    if it is not one). Validates through JSON so strict mode takes YAML lists for tuples (JSON
    has only arrays) while still refusing a string where a number belongs; an unset resume_from
    becomes "none" for the first pass and "last" for later ones."""
    passes = merged.get("passes")
    if isinstance(passes, list):  # unset resume_from: "none" for the first pass, "last" later
        merged = dict(merged, passes=[
            dict(p, resume_from="last") if i > 0 and isinstance(p, dict) and p.get("resume_from") is None else p
            for i, p in enumerate(passes)
        ])
    return Iteration.model_validate_json(json.dumps(merged, default=str))


def with_changes(iteration: Iteration, changes: dict) -> Iteration:
    """`iteration` with `changes` deep-merged in (maps merge, lists replace) and validated like a
    ledger entry: a variant to train (a sweep trial, a benchmark). Raises LedgerError."""
    try:
        return validate_dict(deep_merge(iteration.to_dict(), changes))
    except ValidationError as exc:
        raise LedgerError([f"{iteration.name}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                           for err in _innermost(exc.errors())]) from None


def _cap_pass(pass_dict: dict, max_epochs: Optional[int], patience: Optional[int]) -> dict:
    """Shrink a pass to at most `max_epochs` (keeping the shape of its schedule) and its early
    stopping to at most `patience` epochs (never more than the pass has)."""
    epochs = pass_dict["epochs"]
    capped = dict(pass_dict)
    if max_epochs and epochs > max_epochs:
        capped["epochs"] = max_epochs
        schedule = pass_dict.get("schedule")
        if schedule:
            capped["schedule"] = _scale_schedule(schedule, max_epochs / epochs, max_epochs)
    stopping = pass_dict.get("early_stopping")
    if stopping:
        limit = min(capped["epochs"], patience or capped["epochs"])
        capped["early_stopping"] = dict(stopping, patience=min(stopping["patience"], limit))
    return capped


def _scale_schedule(schedule: dict, scale: float, max_epochs: int) -> dict:
    boundaries, values = [], [schedule["values"][0]]
    for boundary, value in zip(schedule["boundaries"], schedule["values"][1:]):
        scaled = max(1, round(boundary * scale))
        if scaled >= max_epochs:
            break
        if boundaries and scaled <= boundaries[-1]:
            values[-1] = value  # two steps collapsed onto one epoch: the later LR wins
            continue
        boundaries.append(scaled)
        values.append(value)
    return {"boundaries": boundaries, "values": values}


# --------------------------------------------------------------------------- loading

_TOP_LEVEL = ("experiment", "defaults", "profiles", "iterations")
SWEEP_KEY = "sweep"  # an iteration's search space (harness.sweep_space)
# Bounds that no real ledger comes near (runs.yaml: ~10 kB, ~600 values, depth 6) and that keep
# a hostile or mistaken file from costing more than a fraction of a second.
MAX_LEDGER_BYTES = 1_000_000
MAX_LEDGER_NODES = 200_000
MAX_LEDGER_DEPTH = 50
PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in
                       ("map", "seq", "str", "int", "float", "bool", "null", "timestamp", "binary"))


def load(path: Union[str, Path]) -> Ledger:
    """Read and structurally check a ledger file; iterations are validated on resolve."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_LEDGER_BYTES:
            raise LedgerError([f"{path}: {size:,} bytes; a ledger is at most {MAX_LEDGER_BYTES:,} (is this the right file?)"])
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise LedgerError([f"{path}: ledger file not found"]) from None
    except IsADirectoryError:
        raise LedgerError([f"{path}: is a folder, not a ledger file"]) from None
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise LedgerError([f"{path}:{line}: not UTF-8 text (byte {exc.start})"]) from None
    data, lines = _load_with_lines(text, str(path))
    if not isinstance(data, dict):
        raise LedgerError([f"{path}:1: a ledger is a mapping with keys {', '.join(_TOP_LEVEL)}"])
    errors = []
    for key in data:
        if key not in _TOP_LEVEL:
            errors.append(f"{path}:{lines[(key,)]}: unknown top-level key '{key}'{_suggest(key, _TOP_LEVEL)}")
    if any(str(key).lower() in _TOP_LEVEL and key not in _TOP_LEVEL for key in data):
        # 'Iterations:' for 'iterations:': one line about the spelling, not a second about what is missing
        raise LedgerError(errors)
    experiment = data.get("experiment")
    if not isinstance(experiment, str) or not experiment:
        errors.append(f"{path}:{lines.get(('experiment',), 1)}: experiment: required, the MLflow experiment name")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        errors.append(f"{path}:{lines[('defaults',)]}: defaults: must be a mapping")
    iterations = data.get("iterations")
    if not isinstance(iterations, dict) or not iterations:
        errors.append(f"{path}:{lines.get(('iterations',), 1)}: iterations: required, a mapping of name -> iteration")
        iterations = {}
    sweeps = {}
    for name, body in iterations.items():
        if not isinstance(body, dict):
            errors.append(f"{path}:{lines[('iterations', name)]}: {name}: an iteration must be a mapping")
        elif SWEEP_KEY in body:
            sweeps[name] = body.pop(SWEEP_KEY)
    profiles: dict[str, Profile] = {}
    raw_profiles = data.get("profiles") or {}
    for name, body in raw_profiles.items() if isinstance(raw_profiles, dict) else []:
        try:
            profiles[name] = Profile.model_validate(body)
            overlays = [(("profiles", name), profiles[name].set)] + [
                (("profiles", name, "iterations", it), adj.set) for it, adj in profiles[name].iterations.items()]
            for where, overlay in overlays:
                for key in profile_key_problems(overlay):
                    loc = (*where, "set", *key.split("."))
                    errors.append(f"{path}:{_nearest(lines, loc)}: {'.'.join(loc[:-len(key.split('.'))])}.{key}: a "
                                  f"profile changes how much is computed, not what is modelled; it may set only "
                                  f"{', '.join(PROFILE_KEYS)}")
            for it in profiles[name].iterations:
                if it not in iterations:
                    errors.append(f"{path}:{_nearest(lines, ('profiles', name, 'iterations', it))}: profiles.{name}."
                                  f"iterations.{it}: no such iteration{_suggest(it, list(iterations))}")
        except ValidationError as exc:
            for err in exc.errors():
                loc = ("profiles", name) + tuple(err["loc"])
                field_path = ".".join(str(p) for p in loc)
                errors.append(f"{path}:{_nearest(lines, loc)}: {field_path}: {err['msg']}")
    for name in REQUIRED_PROFILES:
        if name not in raw_profiles:
            errors.append(f"{path}:{lines.get(('profiles',), 1)}: profiles.{name}: required (used by tests and CPU runs)")
    if errors:
        raise LedgerError(errors)
    return Ledger(
        path=path,
        experiment=experiment,
        defaults=defaults,
        profiles=profiles,
        raw_iterations=iterations,
        lines=lines,
        sweeps=sweeps,
    )


def load_yaml(path: Union[str, Path]) -> tuple[Any, dict[Path_, int]]:
    """A YAML file as plain Python plus key path -> line, duplicate keys refused (a sweep space
    in its own file is read this way)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise LedgerError([f"{path}: file not found"]) from None
    return _load_with_lines(text, str(path))


def _nearest(lines: dict, loc: tuple) -> int:
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return 1


# --------------------------------------------------------------------------- diff


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": leaf}. Lists of maps (passes, reported) flatten by index, so a
    changed LR shows as `passes.1.lr`; other lists stay whole."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}{index}."))
        return out
    return {prefix[:-1]: value}


def diff(parent: Iteration, child: Iteration) -> list[tuple[str, Any, Any]]:
    """Changed training keys as (dotted key, parent value, child value), in schema order.

    A pass that exists on one side only is reported whole (`passes.2: null -> {...}`)."""
    before_dict, after_dict = parent.training_dict(), child.training_dict()
    changes = []
    for section in after_dict:
        old, new = before_dict.get(section), after_dict[section]
        if section == "passes":
            for index in range(max(len(old), len(new))):
                if index >= len(old) or index >= len(new):
                    changes.append((f"passes.{index}", _pick(old, index), _pick(new, index)))
                    continue
                changes += _diff_flat(flatten(old[index], f"passes.{index}."), flatten(new[index], f"passes.{index}."))
        else:
            changes += _diff_flat(flatten(old, f"{section}."), flatten(new, f"{section}."))
    return changes


def _pick(items: list, index: int):
    return items[index] if index < len(items) else None


def _diff_flat(before: dict, after: dict) -> list[tuple[str, Any, Any]]:
    keys = list(after) + [k for k in before if k not in after]
    return [(k, before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)]


def format_change(key: str, old: Any, new: Any) -> str:
    return f"{key}: {short_value(old)} -> {short_value(new)}"


def short_value(value: Any) -> str:
    """A config value as `show` and the diffs print it: null, true, 0.001, {"epochs": 20}."""
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if v is not None}
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(", ", ": "))
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
