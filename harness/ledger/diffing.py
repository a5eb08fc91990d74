"""Dotted paths, the deep merge of two mappings, and the diff of two iterations (`harness show`'s "changes vs PARENT").
"""

from __future__ import annotations

import copy
import json
from typing import Any


from harness.ledger.schema import Iteration


# --------------------------------------------------------------------------- diff


def deep_merge(base: Any, overlay: Any) -> Any:
    """Maps merge key by key; anything else (lists included) is replaced by the overlay."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(overlay)


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


def config_value(value: Any, compact: bool = False) -> str:
    """The one config-value formatter. As `show` and the diffs print a value: null, true, 0.001,
    {"epochs": 20}; `compact` (the table's "changes vs parent"): none, on, 1e-4, {"epochs":20}.
    Unset (None) keys of a map are left out either way."""
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if v is not None}
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":") if compact else (", ", ": "))
    if value is None:
        return "none" if compact else "null"
    if isinstance(value, bool):
        return ("on" if value else "off") if compact else str(value).lower()
    if compact and isinstance(value, float):
        return f"{value:g}"
    return str(value)


def short_value(value: Any) -> str:
    """A config value as `show` and the diffs print it: null, true, 0.001, {"epochs": 20}."""
    return config_value(value)
