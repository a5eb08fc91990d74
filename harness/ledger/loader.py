"""Reading a ledger file: YAML with the line of every key, duplicate keys refused, bounds on size.

Every error names the place in the file (`file:line`), because a researcher fixing a ledger wants
to jump straight to the line. Duplicate keys are errors (YAML's default is a silent last-wins,
which hides copy-paste mistakes).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Union

import yaml

from harness.ledger.schema import LedgerError


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


# --------------------------------------------------------------------------- loading

_TOP_LEVEL = ("experiment", "defaults", "profiles", "iterations")
SWEEP_KEY = "sweep"  # an iteration's search space (harness.ledger.space)
# Bounds that no real ledger comes near (runs.yaml: ~10 kB, ~600 values, depth 6) and that keep
# a hostile or mistaken file from costing more than a fraction of a second.
MAX_LEDGER_BYTES = 1_000_000
MAX_LEDGER_NODES = 200_000
MAX_LEDGER_DEPTH = 50
PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in
                       ("map", "seq", "str", "int", "float", "bool", "null", "timestamp", "binary"))


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
