""""Changes vs parent" in the short form the notes wrote by hand: `lr 1e-1+1e-2→1e-1+1e-4; epochs 30+20→10+40`.

`harness show ITER` prints the full diff (one dotted key per line, harness.ledger.diff); the
results table has room for one short phrase, so here the same diff is folded the way a person
reads it: the passes as their epochs and effective learning rates ("+" between passes), the
batch as train/eval, a pass-level switch once when every pass changed it alike, and every other
key by its last name (`backbone vgg16→densenet121`, `tower_defect on→off`). Pure Python.
"""

from __future__ import annotations

from typing import Any

from harness.ledger.schema import Iteration, PassConfig
from harness.ledger.diffing import config_value, diff

ARROW = "→"

# Keys folded into the epochs / lr / batch / freeze phrases, or implied by them.
_FOLDED = ("passes", "batch_size.", "optimizer.lr", "backbone.freeze")

# Keys whose last name alone would be unclear.
_LABELS = {"backbone.name": "backbone", "backbone.freeze": "freeze", "optimizer.name": "optimizer"}


def number(value: float) -> str:
    """An LR the way the notes write it: 1e-1, 3e-3, 1.5e-4 (values of 1 and more as they are)."""
    if value == 0 or abs(value) >= 1:
        return f"{value:g}"
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def value_text(value: Any) -> str:
    """A config value in few characters: on/off, none, 1e-4, compact JSON."""
    return config_value(value, compact=True)


def describe_freeze(policy) -> str:
    """A freeze policy in words: `backbone`, `none`, or its rules (`^conv frozen, .* trains`)."""
    if isinstance(policy, str):
        return policy
    return ", ".join(f"{rule.pattern} {'trains' if rule.trainable else 'frozen'}" for rule in policy)


def pass_lr(pass_: PassConfig, default_lr: float) -> str:
    if pass_.schedule is not None:
        return "(" + ",".join(number(v) for v in pass_.schedule.values) + ")"
    return number(pass_.lr if pass_.lr is not None else default_lr)


def lrs(iteration: Iteration) -> str:
    return "+".join(pass_lr(p, iteration.optimizer.lr) for p in iteration.passes)


def _pass_keys(found: list[tuple[str, Any, Any]], passes: int) -> list[str]:
    """Pass-level changes other than epochs and LR, each once when every pass that has it
    changed alike (`monitor val_loss→val_gender_acc`), else per pass (`p2 resume_from last→best`)."""
    by_key: dict[str, list[tuple[int, Any, Any]]] = {}
    for key, old, new in found:
        parts = key.split(".")
        if len(parts) < 3 or parts[0] != "passes":
            continue  # a whole pass added or removed shows in epochs and lr
        field = ".".join(parts[2:])
        if field in ("epochs", "lr") or field.startswith(("schedule", "freeze")):
            continue
        by_key.setdefault(field, []).append((int(parts[1]), old, new))
    phrases = []
    stopping = {f: c for f, c in by_key.items() if f.startswith("early_stopping.")}
    if stopping and all(old is None for changes in stopping.values() for _, old, _ in changes):
        # early stopping switched on: one phrase, not one per sub-key
        patience = {i: new for i, _, new in stopping.get("early_stopping.patience", [])}
        by_key = {f: c for f, c in by_key.items() if f not in stopping}
        by_key["early stop"] = [(i, None, f"patience {p}") for i, p in patience.items()]
    for field, changes in by_key.items():
        label = field.replace("early_stopping.", "early stop ")
        if len({(old, new) for _, old, new in changes}) == 1 and (len(changes) == passes or passes == 1):
            _, old, new = changes[0]
            phrases.append(f"{label} {value_text(old)}{ARROW}{value_text(new)}")
        else:
            phrases += [f"p{i + 1} {label} {value_text(old)}{ARROW}{value_text(new)}" for i, old, new in changes]
    return phrases


def short_changes(parent: Iteration, child: Iteration) -> str:
    """The changes from `parent` to `child` as one short phrase ("none" when nothing trains
    differently)."""
    found = diff(parent, child)
    phrases = []
    for key, old, new in found:
        if key.startswith(_FOLDED):
            continue
        label = _LABELS.get(key, key.rsplit(".", 1)[-1])
        phrases.append(f"{label} {value_text(old)}{ARROW}{value_text(new)}")
    old_freeze, new_freeze = describe_freeze(parent.backbone.freeze), describe_freeze(child.backbone.freeze)
    if old_freeze != new_freeze:
        phrases.append(f"freeze {old_freeze}{ARROW}{new_freeze}")
    old_batch = f"{parent.batch_size.train}/{parent.batch_size.eval}"
    new_batch = f"{child.batch_size.train}/{child.batch_size.eval}"
    if old_batch != new_batch:
        phrases.append(f"batch {old_batch}{ARROW}{new_batch}")
    if parent.epochs_label() != child.epochs_label():
        phrases.append(f"epochs {parent.epochs_label()}{ARROW}{child.epochs_label()}")
    if lrs(parent) != lrs(child):
        phrases.append(f"lr {lrs(parent)}{ARROW}{lrs(child)}")
    phrases += _pass_keys(found, len(child.passes))
    for index, (old, new) in enumerate(zip(parent.passes, child.passes)):
        if old.freeze != new.freeze:
            before, after = (describe_freeze(p.freeze) if p.freeze is not None else "as backbone" for p in (old, new))
            phrases.append(f"p{index + 1} freeze {before}{ARROW}{after}")
    return "; ".join(phrases) or "none"
