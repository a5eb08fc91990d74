"""Resolution: deep merge of defaults and ancestors, profiles applied, validation into an Iteration.

Each iteration is written as a change to its parent (`extends`); resolution deep-merges defaults,
then every ancestor, then the iteration itself (maps merge, lists replace). Errors name the file
line and the dotted field.
"""

from __future__ import annotations

import json
import typing
from typing import Any, Optional

from pydantic import BaseModel, ValidationError

from harness.ledger.suggest import _suggest
from harness.ledger.diffing import deep_merge
from harness.ledger.schema import Iteration, LedgerError
from harness.ledger.overlay import Profile


# --------------------------------------------------------------------------- resolution


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
        overlay = deep_merge(overlay, rule.set)
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
