"""Shared presentation: how a run and an iteration read in a cell (architecture, freeze, changes,
accuracy, parameters) and the table's marks. `harness table`, `runs` and `compare` all use it.
"""

from __future__ import annotations

from typing import Optional

from harness import ledger as ledger_mod
from harness.core import metrics as contract
from harness.ledger.changes import describe_freeze, short_changes
from harness.report.rows import Row



SYNTHETIC_MARK = "†"  # the run trained on a synthetic set
BEST_MARK = "‡"  # an older run without the selected checkpoint: its best epoch is shown
RATE_MARK = "°"  # no majority reference on the run's split: the catalog's majority rate is used
ELLIPSIS = "…"




# --------------------------------------------------------------------------- cells


def architecture(it: ledger_mod.Iteration) -> str:
    backbone = it.backbone.name + (f" ({it.backbone.weights})" if it.backbone.weights else "")
    if it.backbone.depth and it.backbone.depth != 20:
        backbone += f" depth {it.backbone.depth}"
    head = it.head
    parts = [backbone, head.neck + (f"-{head.neck_units}" if head.neck_units else "")]
    if head.tower_units:
        units = head.tower_units
        parts.append(f"{len(units)}x{units[0]}" if len(set(units)) == 1 else "-".join(str(u) for u in units))
        extras = [x for x, on in (("BN", head.batch_norm), ("lin", head.last_activation == "linear"),
                                  ("1st dead", head.tower_defect)) if on]
        parts += [f"[{' '.join(extras)}]"] if extras else []
    return " ".join(parts)


def freeze(it: ledger_mod.Iteration) -> str:
    text = describe_freeze(it.backbone.freeze)
    for index, pass_ in enumerate(it.passes):
        if pass_.freeze is not None:
            text += f"; pass {index + 1}: {describe_freeze(pass_.freeze)}"
    return text


def changes(row: Row) -> str:
    return "(root)" if row.parent is None else short_changes(row.parent, row.written)


def acc_text(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4f}"


def signed(value: Optional[float]) -> str:
    return "" if value is None else f"{value:+.4f}"


def params_text(metrics: dict) -> str:
    total, trainable = metrics.get(contract.TOTAL_PARAMS), metrics.get(contract.TRAINABLE_PARAMS)
    if total is None:
        return ""
    return f"{int(round(total)):,}/{int(round(trainable or 0)):,}"


def compact_params(cell: str) -> str:
    """'28,221,147/13,506,459' -> '28.2M/13.5M' (the README's width)."""
    def one(text: str) -> str:
        try:
            n = int(text.replace(",", ""))
        except ValueError:
            return text
        return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k" if n >= 1e3 else str(n)

    return "/".join(one(part.strip()) for part in cell.split("/")) if cell else ""


def _own(book: ledger_mod.Ledger, row: Row, key: str, empty):
    """A descriptive key as the iteration itself writes it: `extends` passes remarks and the
    notes' numbers down to children, but a child's row must not show its parent's."""
    if key not in (book.raw_iterations.get(row.name) or {}):
        return empty
    return getattr(row.written, key)


def _reported(reported: tuple, key: str) -> tuple[Optional[float], str]:
    """The notes' best number for a head over the reported passes, and how to show it."""
    found = [(p.val_acc[key], index, p.epoch) for index, p in enumerate(reported) if key in p.val_acc]
    if not found:
        return None, ""
    value, index, epoch = max(found, key=lambda f: f[0])
    text = acc_text(value) + (f" @ {epoch}" if epoch else "")
    if len(reported) > 1:
        text += f" (pass {index + 1})"
    return value, text


def cell(text) -> str:
    """One line, pipes kept apart from the table's."""
    return " ".join(str(text).split()).replace("|", "\\|")
