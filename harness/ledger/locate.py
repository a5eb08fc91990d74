"""Which ledger an iteration name belongs to, when the user did not say.

    make run ITER=thirteenth     # not in runs.yaml, only in experiments/cifar10_resnet20.yaml: runs from there

runs.yaml (the default ledger) answers first: `make run ITER=eleventh` means the person-attributes
eleventh even though the CIFAR-10 ledger has an eleventh too. A name runs.yaml lacks is looked up
in experiments/*.yaml; found in exactly one, that ledger is used and a line names it; found in
several, the user is asked for LEDGER= (--ledger) with the candidates listed. An explicit
--ledger is never second-guessed. Pure Python (the ledger commands stay free of TensorFlow).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from harness import ledger as ledger_mod
from harness.core.errors import InputError
from harness.core.settings import DEFAULT_LEDGER

EXPERIMENTS_DIR = Path("experiments")


def all_ledgers(root: Path = Path(".")) -> list[Path]:
    """runs.yaml, then experiments/*.yaml in name order (those that exist), relative to `root`."""
    found = [Path(DEFAULT_LEDGER)] if (root / DEFAULT_LEDGER).is_file() else []
    return found + sorted(p.relative_to(root) for p in (root / EXPERIMENTS_DIR).glob("*.yaml"))


def iteration_names(path: Path) -> list[str]:
    """The iteration names a ledger file declares; [] for a file that does not parse (its own
    command reports that)."""
    try:
        return ledger_mod.load(path).names
    except InputError:
        return []


@dataclass(frozen=True)
class Found:
    """The ledger to use for a name, and the line to print about the choice (None: nothing to say)."""

    path: str
    message: Optional[str] = None


def locate(name: str, explicit: Optional[str] = None, root: Path = Path(".")) -> Found:
    """The ledger holding iteration `name`: `explicit` when given; else runs.yaml when it has the
    name; else the one experiments/*.yaml that has it. Raises InputError when several do (asking
    for LEDGER=) and leaves "no such name" to the default ledger's own error (with its
    did-you-mean) when none does."""
    if explicit:
        return Found(explicit)
    default = root / DEFAULT_LEDGER
    if name in iteration_names(default):
        return Found(DEFAULT_LEDGER)
    holders = [path for path in all_ledgers(root)[1:] if name in iteration_names(root / path)]
    if len(holders) == 1:
        path = holders[0].as_posix()
        return Found(path, f"{name}: not in {DEFAULT_LEDGER}; using {path}, the only ledger that has it")
    if len(holders) > 1:
        listed = ", ".join(p.as_posix() for p in holders)
        raise InputError(f"{name}: in several ledgers ({listed}); say which with LEDGER=FILE "
                         f"(make) or --ledger FILE (harness)")
    return Found(DEFAULT_LEDGER)


def locate_all(names: list[str], explicit: Optional[str] = None, root: Path = Path(".")) -> list[tuple[str, Found]]:
    """`locate` for each name, every name checked before any is used."""
    return [(name, locate(name, explicit, root)) for name in names]
