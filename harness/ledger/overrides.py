"""`--set PATH=VALUE`: one run's changes to an iteration, in the sweep space's dotted paths.

    harness run second --set optimizer.lr=3e-4 --set passes.0.epochs=5

A path names a training field exactly as a `sweep:` block does (harness.ledger.space:
`optimizer.lr`, `batch_size.train`, `passes.0.epochs`); the value is YAML (`3e-4`, `[32, 64]`,
`{boundaries: [5], values: [0.01, 0.001]}`), a number written without YAML's dot (`3e-4`) taken as
the number it reads as. The changed iteration is validated like a ledger entry before anything
runs; each error names its flag (`--set optimizer.lr: ...`), one line, InputError (exit 2).

`--set optimizer.lr=V` on an iteration whose every pass sets its own LR (eleventh: 1e-3, then
1e-4 from the best epoch) would change nothing it trains; there it scales every pass's LR so the
first pass starts at V, keeping the ratios (3e-4, then 3e-5), and `note` says so before training.

`Overrides` is what the variant run records (tag harness.overrides, JSON) and shows in its name
(`second +lr=3e-4`). Pure Python: no TensorFlow, no MLflow.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from harness.core.errors import InputError
from harness.ledger.schema import Iteration, LedgerError
from harness.ledger.resolve import with_changes
from harness.ledger.space import changes_for, every_pass_sets_lr, field_problem, first_pass_lr, pass_lrs_scaled

LR_PATH = "optimizer.lr"

FLAG = "--set"
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_value(text: str) -> Any:
    """A flag's value as YAML; `3e-4` (a string to YAML 1.1) as the number it reads as."""
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise ValueError(f"not a YAML value ({problem})") from None
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        number = float(value)
        return int(number) if re.match(r"^[+-]?\d+$", value.strip()) else number
    return value


@dataclass(frozen=True)
class Overrides:
    """Ordered dotted path -> value, and the text each value was written as."""

    values: dict
    texts: dict

    def __bool__(self) -> bool:
        return bool(self.values)

    @classmethod
    def parse(cls, items: list[str] | None) -> "Overrides":
        """`--set PATH=VALUE` flags -> Overrides (InputError, naming the flag, when one is malformed)."""
        values, texts = {}, {}
        for item in items or []:
            path, sep, text = item.partition("=")
            path = path.strip()
            if not sep or not path:
                raise InputError(f"{FLAG} {item}: give PATH=VALUE, e.g. {FLAG} optimizer.lr=3e-4")
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$", path):
                raise InputError(f"{FLAG} {path}: a dotted field path such as optimizer.lr or passes.0.epochs")
            if path in values:
                raise InputError(f"{FLAG} {path}: given twice")
            try:
                values[path] = parse_value(text)
            except ValueError as exc:
                raise InputError(f"{FLAG} {path}: {exc}") from None
            texts[path] = text.strip()
        return cls(values, texts)

    @classmethod
    def from_tag(cls, text: str | None) -> "Overrides":
        """The harness.overrides tag a variant run carries back into Overrides."""
        values = json.loads(text) if text else {}
        return cls(dict(values), {k: json.dumps(v) if not isinstance(v, str) else v for k, v in values.items()})

    def tag(self) -> str:
        return json.dumps(self.values, sort_keys=False)

    def flags(self) -> list[str]:
        """The `--set` arguments that give these overrides again."""
        out = []
        for path, value in self.values.items():
            out += [FLAG, f"{path}={json.dumps(value) if not isinstance(value, str) else value}"]
        return out

    def label(self) -> str:
        """`+lr=3e-4 +passes.0.epochs=5`: each change by its last field name, the full path
        where that name is an index or is shared by two changes."""
        lasts = [path.rsplit(".", 1)[-1] for path in self.values]
        shown = []
        for path, last in zip(self.values, lasts):
            short = path if last.isdigit() or lasts.count(last) > 1 or path.startswith("passes.") else last
            shown.append(f"+{short}={self.texts.get(path, json.dumps(self.values[path]))}")
        return " ".join(shown)

    def run_name(self, iteration: str) -> str:
        return f"{iteration} {self.label()}" if self else iteration

    def check(self, iteration: Iteration) -> None:
        """Each path names a training field of `iteration` and its value fits there, like a
        ledger entry (InputError naming the flag, one line per problem)."""
        errors = []
        for path, value in self.values.items():
            problem = field_problem(iteration, path, scales_pass_lrs=True)
            if problem is None:
                try:
                    with_changes(iteration, changes_for(iteration, {path: value}))
                except LedgerError as exc:
                    problem = exc.lines[0].split(": ", 1)[-1].replace("Value error, ", "")
                    problem = f"{json.dumps(value)} does not fit the field: {problem}"
            if problem:
                errors.append(f"{FLAG} {path}: {problem}")
        if not errors:
            try:
                with_changes(iteration, self.changes(iteration))
            except LedgerError as exc:  # each fits alone, not together
                errors.append(f"{FLAG}: the changes together do not validate: {exc.lines[0]}")
        if errors:
            raise InputError(errors)

    def changes(self, iteration: Iteration) -> dict:
        """The nested changes `Ledger.resolve(name, changes=...)` applies before the profile."""
        return changes_for(iteration, self.effective(iteration))

    def _scales_pass_lrs(self, iteration: Iteration) -> bool:
        return isinstance(self.values.get(LR_PATH), (int, float)) and every_pass_sets_lr(iteration)

    def effective(self, iteration: Iteration) -> dict:
        """The dotted values that train the variant (what `--save-as` writes): the flags' own, and
        where optimizer.lr would change nothing, each pass's LR scaled (pass_lrs_scaled); a pass
        path given by a flag too keeps the flag's value."""
        if not self._scales_pass_lrs(iteration):
            return dict(self.values)
        return {**pass_lrs_scaled(iteration, self.values[LR_PATH]), **self.values}

    def note(self, iteration: Iteration) -> str | None:
        """The line said before training when optimizer.lr scales the passes' own LRs (else None)."""
        if not self._scales_pass_lrs(iteration):
            return None
        scaled = with_changes(iteration, self.changes(iteration))
        factor = self.values[LR_PATH] / first_pass_lr(iteration)
        before = ", ".join(p.describe_lr(iteration.optimizer.lr) for p in iteration.passes)
        after = ", ".join(f"passes.{i} {p.describe_lr(scaled.optimizer.lr)}" for i, p in enumerate(scaled.passes))
        return (f"{FLAG} {LR_PATH}={self.texts.get(LR_PATH, self.values[LR_PATH])}: every pass of {iteration.name} "
                f"sets its own LR ({before}); each is scaled by {factor:.6g}, ratios kept: {after}")
