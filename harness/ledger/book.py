"""The ledger: YAML -> `extends` resolution -> validated, frozen Iteration; diff vs parent.

`load(path)` reads a ledger file into a `Ledger`, whose `resolve(name, profile, changes)` gives
the validated `Iteration`; `validate_all` checks every iteration, profile and sweep block.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from pydantic import ValidationError

from harness.ledger.loader import MAX_LEDGER_BYTES, Path_, SWEEP_KEY, _TOP_LEVEL, _load_with_lines, _nearest
from harness.ledger.resolve import _error_message, _file_loc, _innermost, _profiled, _written_at, validate_dict, with_changes
from harness.ledger.diffing import deep_merge
from harness.ledger.suggest import _suggest
from harness.ledger.schema import Iteration, LedgerError, REQUIRED_PROFILES
from harness.ledger.overlay import PROFILE_KEYS, Profile, profile_key_problems


@dataclass
class Ledger:
    """A parsed ledger file. `resolve(name)` gives a validated Iteration."""

    path: Path
    experiment: str
    defaults: dict
    profiles: dict[str, Profile]
    raw_iterations: dict[str, dict]
    lines: dict[Path_, int] = field(repr=False, default_factory=dict)
    # Iteration -> its `sweep:` block as written (dotted field -> range; harness.ledger.space
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
            from harness.ledger.space import space_errors  # here: only `validate` needs the sweep blocks

            for name in self.sweeps:
                errors.extend(line for line in space_errors(self, name) if line not in errors)
        if errors:
            raise LedgerError(errors)
        return resolved


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
            rule = profiles[name].cached_feature_passes
            if rule is not None:
                overlays.append((("profiles", name, "cached_feature_passes"), rule.set))
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
                errors.append(f"{path}:{_nearest(lines, loc)}: {field_path}: {err['msg'].removeprefix('Value error, ')}")
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
