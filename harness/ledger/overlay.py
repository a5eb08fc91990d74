"""A profile's schema: an overlay on a resolved iteration that changes how much is computed
(image size, number of images, epochs a pass, patience, batch size, compute switches), never what
is modelled. `Ledger.apply_profile` applies one (harness.ledger.resolve); harness.ledger.profiles
says in words what it changed. Pure Python (pydantic).
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import Field, field_validator

from harness.ledger.diffing import deep_merge
from harness.ledger.schema import _Strict


class CachedFeaturePasses(_Strict):
    """A profile's rule for passes that train on cached backbone features, where an epoch costs
    a second or two: they keep the ledger's epochs (no epoch cap, no patience cap), each capped
    by its measured cost at `max_seconds` instead; when every pass of an iteration is such a
    pass, it also keeps the ledger's image size and training batch, and takes `set` (compute
    switches only: the cpu profile computes those features in bfloat16, 1.8x faster on 2 cores)."""

    max_seconds: int = Field(gt=0)
    set: dict[str, Any] = Field(default_factory=dict)

    @field_validator("set")
    @classmethod
    def _compute_only(cls, value: dict) -> dict:
        others = sorted(set(value) - {"compute"})
        if others:
            raise ValueError(f"passes on cached features keep the ledger's data and batch; `set` takes compute "
                             f"switches only (got {', '.join(others)})")
        return value


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
