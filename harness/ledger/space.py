"""A sweep's search space: ranges over ledger fields, written in dotted form.

    iterations:
      second:
        extends: first
        sweep:
          optimizer.lr: {log_uniform: [1.0e-5, 1.0e-1]}
          batch_size.train: {choice: [32, 64, 128]}
          passes.0.epochs: {int: [5, 20], step: 5}

The same block may live in its own file (`harness sweep ITER --space FILE`, a file holding a
`sweep:` mapping). Ranges: `uniform` and `log_uniform` (floats), `int` and `log_int`, each
`[low, high]` with an optional `step` (not on log ranges), and `choice: [...]` (any values, lists
and maps too). A path must name a training field of the iteration (`passes.N` an existing pass);
every range is checked against the field by validating the iteration with the range's ends (and a
value inside it) applied, so a range the field cannot take fails here, with file:line, exactly
as the ledger's own errors do, and never in the middle of a sweep.

Pure Python: `harness validate` checks sweep blocks without importing Optuna. A trial only needs
`suggest(trial)`, which calls the trial's suggest_* methods (duck-typed).
"""

from __future__ import annotations

import hashlib
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from pydantic import BaseModel

from harness.ledger.schema import DESCRIPTIVE_KEYS, Iteration, LedgerError
from harness.ledger.loader import SWEEP_KEY, load_yaml
from harness.ledger.suggest import suggest_name
from harness.ledger.resolve import with_changes

if TYPE_CHECKING:  # the Ledger calls space_errors: at run time this module never imports it
    from harness.ledger.book import Ledger

FLOAT_KINDS = ("uniform", "log_uniform")
INT_KINDS = ("int", "log_int")
CHOICE = "choice"
KINDS = FLOAT_KINDS + INT_KINDS + (CHOICE,)
STEP = "step"
# What Optuna stores as a categorical value; other choices (lists, maps) travel as JSON text.
_PLAIN = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class Range:
    """One swept field: `path` (dotted), `kind` (KINDS), `bounds` ((low, high) or the choices)."""

    path: str
    kind: str
    bounds: tuple
    step: Optional[float] = None

    @property
    def log(self) -> bool:
        return self.kind.startswith("log_")

    @property
    def encoded(self) -> bool:
        """Whether the choices travel through Optuna as JSON text (some are lists or maps)."""
        return self.kind == CHOICE and not all(isinstance(c, _PLAIN) for c in self.bounds)

    def suggest(self, trial) -> Any:
        """This range's value for an Optuna trial (a retried trial gets its stored value back)."""
        if self.kind in FLOAT_KINDS:
            return trial.suggest_float(self.path, self.bounds[0], self.bounds[1], log=self.log, step=self.step)
        if self.kind in INT_KINDS:
            return trial.suggest_int(self.path, self.bounds[0], self.bounds[1], log=self.log, step=int(self.step or 1))
        if self.encoded:
            return json.loads(trial.suggest_categorical(self.path, [json.dumps(c) for c in self.bounds]))
        return trial.suggest_categorical(self.path, list(self.bounds))

    def decode(self, stored: Any) -> Any:
        """A value as Optuna stored it (a trial's params) -> the field's value."""
        return json.loads(stored) if self.encoded else stored

    def spec(self) -> dict:
        """As written in the ledger: {kind: [...], step: s}."""
        return {self.kind: list(self.bounds), **({STEP: self.step} if self.step is not None else {})}

    def describe(self) -> str:
        step = f" step {self.step:g}" if self.step is not None else ""
        return f"{self.path} {self.kind} {json.dumps(list(self.bounds))}{step}"

    def probes(self) -> list:
        """Values the field must accept: both ends and a fractional value inside a float range
        (an integer field refuses it), every choice."""
        if self.kind == CHOICE:
            return list(self.bounds)
        low, high = self.bounds
        inside = low + 0.37 * (high - low) if self.kind in FLOAT_KINDS else None
        return [low, high] + ([inside] if inside is not None else [])


@dataclass(frozen=True)
class Space:
    """The ranges of one iteration's sweep, and where they were written (for messages)."""

    iteration: str
    ranges: tuple[Range, ...]
    source: str

    def suggest(self, trial) -> dict:
        """dotted path -> value for an Optuna trial."""
        return {r.path: r.suggest(trial) for r in self.ranges}

    def values_of(self, params: dict) -> dict:
        """An Optuna trial's params -> dotted path -> field value."""
        return {r.path: r.decode(params[r.path]) for r in self.ranges if r.path in params}

    def as_dict(self) -> dict:
        return {r.path: r.spec() for r in self.ranges}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- applying values


def _parts(path: str) -> list:
    return [int(p) if p.isdigit() else p for p in path.split(".")]


def _set(target: dict, parts: list, value: Any) -> None:
    for part in parts[:-1]:
        if not isinstance(target.get(part), dict):
            target[part] = {}  # a field that is null in the iteration (early_stopping, say)
        target = target[part]
    target[parts[-1]] = value


def changes_for(iteration: Iteration, values: dict) -> dict:
    """dotted path -> value as the nested changes `ledger.with_changes` merges into `iteration`.
    A path into `passes` carries the iteration's whole pass list with the value set, because
    lists replace whole when merged."""
    changes: dict = {}
    passes = None
    for path, value in values.items():
        parts = _parts(path)
        if parts[0] == "passes" and len(parts) > 1:
            passes = passes or [dict(p) for p in iteration.to_dict()["passes"]]
            if len(parts) == 2:
                passes[parts[1]] = value
            else:
                _set(passes[parts[1]], parts[2:], value)
        else:
            _set(changes, parts, value)
    if passes is not None:
        changes["passes"] = passes
    return changes


def value_at(iteration: Iteration, path: str) -> Any:
    """The iteration's value at a dotted path (None where a field is unset)."""
    value: Any = iteration.to_dict()
    for part in _parts(path):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and isinstance(part, int) and part < len(value):
            value = value[part]
        else:
            return None
    return value


# --------------------------------------------------------------------------- checking


def _submodel(annotation: Any) -> tuple[Optional[type], bool]:
    """(model, indexed): a field holding a model (optional or not) or a tuple of models; else
    (None, False), a leaf that is swept whole."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    args = [a for a in typing.get_args(annotation) if a is not type(None) and a is not Ellipsis]
    origin = typing.get_origin(annotation)
    if origin is tuple and len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], True
    if origin is Union and len(args) == 1:
        return _submodel(args[0])
    return None, False


def field_problem(iteration: Iteration, path: str, scales_pass_lrs: bool = False) -> Optional[str]:
    """Why a dotted path names no training field of `iteration` (None: it names one).
    `scales_pass_lrs`: the caller turns `optimizer.lr` into each pass's own LR (pass_lrs_scaled,
    `--set`), so an LR every pass sets for itself is no reason to refuse it."""
    parts = _parts(path)
    if parts[0] in DESCRIPTIVE_KEYS + ("name",):
        return f"'{parts[0]}' describes the iteration; only training fields can be swept"
    model: Optional[type] = Iteration
    indexed, done = False, []
    for part in parts:
        where = ".".join(str(p) for p in done) or "an iteration"
        if indexed:
            count = len(iteration.passes) if done == ["passes"] else 0
            if not isinstance(part, int) or part >= count:
                entries = "entry" if count == 1 else "entries"
                return f"{where} has {count} {entries}: '{part}' is not one of 0..{count - 1}"
            indexed = False
        elif model is None:
            return f"{where} is a value swept whole (a choice of lists or maps); it has no field '{part}'"
        elif not isinstance(part, str) or part not in model.model_fields:
            known = sorted(model.model_fields)
            return f"no field '{part}' in {where}{suggest_name(str(part), known)}; known: {', '.join(known)}"
        else:
            model, indexed = _submodel(model.model_fields[part].annotation)
        done.append(part)
    return None if scales_pass_lrs else _shadowed(iteration, parts)


def every_pass_sets_lr(iteration: Iteration) -> bool:
    """Whether each pass has its own lr or schedule, so that the optimizer's lr trains nothing."""
    return all(p.lr is not None or p.schedule is not None for p in iteration.passes)


def first_pass_lr(iteration: Iteration) -> float:
    """The LR the first pass starts at, where it sets its own (every_pass_sets_lr)."""
    first = iteration.passes[0]
    return first.schedule.values[0] if first.schedule is not None else first.lr


def pass_lrs_scaled(iteration: Iteration, lr: float) -> dict:
    """What `--set optimizer.lr=LR` means on an iteration whose every pass sets its own LR:
    dotted path -> value for each pass's lr (or schedule values), all multiplied by one factor so
    that the first pass starts at `lr`; the ratios between passes and steps are kept (eleventh's
    1e-3 then 1e-4 becomes 3e-4 then 3e-5). Rounded to 12 significant digits, so that 1e-4 * 0.3
    reads 3e-05 in the config and the ledger."""
    factor = lr / first_pass_lr(iteration)
    scaled = lambda value: float(f"{value * factor:.12g}")  # noqa: E731
    values = {}
    for index, one in enumerate(iteration.passes):
        if one.schedule is not None:
            values[f"passes.{index}.schedule.values"] = [scaled(v) for v in one.schedule.values]
        else:
            values[f"passes.{index}.lr"] = scaled(one.lr)
    return values


def _shadowed(iteration: Iteration, parts: list) -> Optional[str]:
    """Why a training field changes nothing the iteration trains (None: it does). The one field
    that can be shadowed is the optimizer's lr: a pass with its own lr or schedule ignores it, so
    a sweep over it would train the same weights under another name. (`--set optimizer.lr` scales
    the passes' own LRs instead: harness.ledger.overrides.)"""
    if parts != ["optimizer", "lr"] or not every_pass_sets_lr(iteration):
        return None
    own = ", ".join(f"passes.{i} {p.describe_lr(iteration.optimizer.lr)}" for i, p in enumerate(iteration.passes))
    return (f"changes nothing {iteration.name} trains: every pass sets its own LR ({own}); "
            f"change one pass's instead, e.g. passes.0.lr")


def _range_problem(kind: str, bounds: Any, step: Any) -> Optional[str]:
    """Why a range is not a valid range of its kind, whatever the field."""
    if kind == CHOICE:
        if not isinstance(bounds, list) or not bounds:
            return "choice takes a non-empty list of values"
        texts = [json.dumps(b, sort_keys=True) for b in bounds]
        if len(set(texts)) != len(texts):
            return f"choice lists a value twice: {json.dumps(bounds)}"
        return "a choice takes no step" if step is not None else None
    numbers = (int,) if kind in INT_KINDS else (int, float)
    if (not isinstance(bounds, list) or len(bounds) != 2
            or not all(isinstance(b, numbers) and not isinstance(b, bool) for b in bounds)):
        return f"{kind} takes [low, high], two {'integers' if kind in INT_KINDS else 'numbers'} (got {bounds!r})"
    low, high = bounds
    if not low < high:
        return f"{kind} needs low < high (got {low}, {high})"
    if kind.startswith("log_") and low <= 0:
        return f"{kind} needs low > 0 (got {low})"
    if step is not None:
        if kind.startswith("log_"):
            return f"{kind} takes no step (a log range has no even spacing)"
        if not isinstance(step, numbers) or isinstance(step, bool) or step <= 0:
            return f"step must be a positive {'integer' if kind in INT_KINDS else 'number'} (got {step!r})"
    return None


def _parse_range(path: str, spec: Any) -> tuple[Optional[Range], Optional[str]]:
    if not isinstance(spec, dict):
        return None, f"a range is a mapping such as {{log_uniform: [1.0e-5, 1.0e-1]}} (got {spec!r})"
    kinds = [k for k in spec if k != STEP]
    if len(kinds) != 1 or kinds[0] not in KINDS:
        unknown = next((k for k in kinds if k not in KINDS), None)
        hint = suggest_name(str(unknown), KINDS) if unknown is not None else ""
        what = f"unknown range '{unknown}'{hint}" if unknown is not None else "give exactly one range"
        return None, f"{what}; one of: {', '.join(KINDS)}"
    kind = kinds[0]
    problem = _range_problem(kind, spec[kind], spec.get(STEP))
    if problem:
        return None, problem
    return Range(path, kind, tuple(spec[kind]), spec.get(STEP)), None


def _check(iteration: Iteration, block: Any, where: Callable[[Optional[str]], str]) -> tuple[list[Range], list[str]]:
    """The ranges of a sweep block and one line per problem (`where(path)` -> "file:line")."""
    prefix = f"{iteration.name}.{SWEEP_KEY}"
    if not isinstance(block, dict) or not block:
        return [], [f"{where(None)}: {prefix}: a mapping of dotted field -> range, e.g. "
                    f"optimizer.lr: {{log_uniform: [1.0e-5, 1.0e-1]}}"]
    ranges, errors = [], []
    for path, spec in block.items():
        path = str(path)
        problem = field_problem(iteration, path)
        found = None
        if problem is None:
            found, problem = _parse_range(path, spec)
        if problem is None:
            problem = _probe(iteration, found)
        if problem:
            errors.append(f"{where(path)}: {prefix}.{path}: {problem}")
        else:
            ranges.append(found)
    return ranges, errors


def _probe(iteration: Iteration, found: Range) -> Optional[str]:
    """Why the field refuses a value of the range (None: it takes them all)."""
    for value in found.probes():
        try:
            with_changes(iteration, changes_for(iteration, {found.path: value}))
        except LedgerError as exc:
            reason = exc.lines[0].split(": ", 1)[-1].replace("Value error, ", "")
            return f"{found.kind} value {json.dumps(value)} does not fit the field: {reason}"
    return None


def space_errors(book: Ledger, name: str) -> list[str]:
    """`harness validate`'s lines for an iteration's `sweep:` block (none when it is fine, or
    when the iteration itself does not resolve: that has its own lines)."""
    try:
        iteration = book.resolve(name)
    except LedgerError:
        return []
    return _check(iteration, book.sweeps[name], _ledger_where(book, name))[1]


def _ledger_where(book: Ledger, name: str) -> Callable[[Optional[str]], str]:
    base = ("iterations", name, SWEEP_KEY)
    return lambda path: f"{book.path}:{book.lines.get(base + ((path,) if path else ()), book.lines.get(base, 1))}"


def load_space(book: Ledger, name: str, space_file: Optional[Union[str, Path]] = None) -> Space:
    """The space of `harness sweep ITER [--space FILE]`; LedgerError (exit 2) when there is none
    or it is invalid."""
    iteration = book.resolve(name)
    if space_file is not None:
        data, lines = load_yaml(space_file)
        if not isinstance(data, dict) or SWEEP_KEY not in data:
            raise LedgerError([f"{space_file}:1: a space file holds a `{SWEEP_KEY}:` mapping of dotted field -> range"])
        block, source = data[SWEEP_KEY], str(space_file)
        where = lambda path: f"{space_file}:{lines.get((SWEEP_KEY,) + ((path,) if path else ()), 1)}"  # noqa: E731
    elif name in book.sweeps:
        block, where = book.sweeps[name], _ledger_where(book, name)
        source = where(None)
    else:
        line = book.lines.get(("iterations", name), 1)
        raise LedgerError([f"{book.path}:{line}: {name}: no `{SWEEP_KEY}:` block; write one under the iteration "
                           f"(e.g. optimizer.lr: {{log_uniform: [1.0e-5, 1.0e-1]}}) or give --space FILE"])
    ranges, errors = _check(iteration, block, where)
    if errors:
        raise LedgerError(errors)
    return Space(name, tuple(ranges), source)


def space_from_dict(name: str, block: dict) -> Space:
    """A space as a study stored it (Space.as_dict), for reading a study's trials back."""
    ranges = []
    for path, spec in block.items():
        found, problem = _parse_range(path, spec)
        if problem:
            raise LedgerError([f"{name}.{SWEEP_KEY}.{path}: {problem} (as stored in the study)"])
        ranges.append(found)
    return Space(name, tuple(ranges), "the study")
