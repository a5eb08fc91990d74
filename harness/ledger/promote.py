"""Write a sweep's winner back into the ledger: a new iteration appended as a text edit.

The ledger is the researcher's file, comments and layout included, so it is never re-dumped:
the new iteration is inserted as text at the end of the `iterations:` block, and every other byte
of the file stays as it was. The entry says `extends: ITER` and only the keys the winning trial
changed (a pass's key carries the pass list as the ledger wrote it, since lists replace whole),
plus a comment naming the sweep, its MLflow run and the score. Before the file is replaced, the
new text is loaded and validated, and the new iteration must resolve to exactly the config the
trial trained (same config sha); otherwise nothing is written.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import yaml

from harness.core.errors import InputError
from harness.ledger.loader import SWEEP_KEY
from harness.ledger.book import Ledger, load
from harness.ledger.schema import LedgerError
from harness.ledger.space import changes_for, value_at

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def check_name(book: Ledger, new_name: str, flag: str = "--promote") -> None:
    """A new, well-formed iteration name (exit 2 otherwise); `flag` names the option that gave it
    (--promote, or `harness run --save-as`)."""
    if not NAME.match(new_name):
        raise InputError(f"{flag}: '{new_name}' is not an iteration name (a letter, then letters, digits, '_', '-')")
    if new_name in book.names:
        line = book.lines.get(("iterations", new_name), 1)
        raise InputError(f"{book.path}:{line}: {flag}: iteration '{new_name}' already exists; choose another name")


class _Indented(yaml.SafeDumper):
    """Block sequences indented under their key, as the ledgers write them."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def changed_keys(book: Ledger, parent: str, values: dict) -> dict:
    """The body of the new iteration: the trial's values that differ from `parent`, nested as
    the ledger writes them; a value inside `passes` brings the parent's pass list as written."""
    base = book.resolve(parent)
    changed = {path: value for path, value in values.items() if value_at(base, path) != value}
    body: dict = {}
    for path, value in changed.items():
        parts = [int(p) if p.isdigit() else p for p in path.split(".")]
        if parts[0] == "passes" and len(parts) > 1:
            body.setdefault("passes", copy.deepcopy(book.merged_dict(parent)["passes"]))
            target, parts = body["passes"], parts[1:]
        else:
            target = body
        for part in parts[:-1]:
            if not isinstance(target[part] if isinstance(target, list) else target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[parts[-1]] = value
    return body


def insertion_point(text: str, where: str) -> tuple[int, int]:
    """(offset, indent): the end of the `iterations:` block and the indent of its keys."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    block = next((value for key, value in root.value if key.value == "iterations"), None)
    if block is None or not isinstance(block, yaml.MappingNode) or not block.value:
        raise InputError(f"{where}: no `iterations:` mapping to add to")
    if block.flow_style:
        raise InputError(f"{where}:{block.start_mark.line + 1}: iterations is written in flow style; "
                         f"add the iteration by hand")
    offset = block.end_mark.index
    if offset < len(text) and text[:offset].rfind("\n") != offset - 1:  # not at a line start
        offset = text.find("\n", offset) + 1 or len(text)
    while offset > 1 and text[offset - 2:offset] == "\n\n":  # before the blank lines that end the block
        offset -= 1
    return offset, block.value[0][0].start_mark.column


def render(new_name: str, parent: str, body: dict, note: str, title: str, remark: str, indent: int) -> str:
    """The new iteration's lines."""
    pad = " " * indent
    head = {"extends": parent, "title": title, "remark": remark, "reported": []}
    dumped = yaml.dump({**head, **body}, Dumper=_Indented, sort_keys=False, default_flow_style=None, width=100)
    lines = [f"{pad}{new_name}:", f"{pad}  # {note}"] + [f"{pad}  {line}" for line in dumped.splitlines()]
    return "\n".join(lines) + "\n"


def append_iteration(book: Ledger, parent: str, new_name: str, values: dict, note: str, title: str,
                     remark: str = "", flag: str = "--promote") -> int:
    """Append `new_name` (extends `parent`, the changed `values`) to the ledger file; returns
    the line it starts on. The rest of the file is left byte for byte. Used by `sweep --promote`
    (the best trial's values) and `run --set ... --save-as` (flag names which, in errors)."""
    check_name(book, new_name, flag)
    body = changed_keys(book, parent, values)
    if not body:
        what = "the best trial's values" if flag == "--promote" else "the --set values"
        raise InputError(f"{flag} {new_name}: {what} equal {parent}'s own; nothing to write")
    path = Path(book.path)
    text = path.read_text()
    offset, indent = insertion_point(text, str(path))
    before = text[:offset] if text[:offset].endswith("\n") or not offset else text[:offset] + "\n"
    added = "\n" + render(new_name, parent, body, note, title, remark or note, indent)
    _check_before_writing(book, path, before + added + text[offset:], parent, new_name, values)
    return before.count("\n") + 2


def _check_before_writing(book: Ledger, path: Path, new_text: str, parent: str, new_name: str, values: dict) -> None:
    """Load the edited text from a temporary file beside the ledger; replace the ledger only if it
    validates and `new_name` trains exactly the trial's config."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.promote")
    tmp.write_text(new_text)
    try:
        edited = load(tmp)
        edited.validate_all()
        base = book.resolve(parent)
        expected = book.resolve(parent, changes=changes_for(base, values)).config_sha()
        got = edited.resolve(new_name).config_sha()
        if got != expected:
            raise RuntimeError(f"promote: {new_name} would train config {got}, not the trial's {expected}")
        if SWEEP_KEY in (edited.raw_iterations.get(new_name) or {}):
            raise RuntimeError("promote: the new iteration must not carry a sweep block")
        os.replace(tmp, path)
    except LedgerError as exc:
        raise RuntimeError(f"promote: the edited ledger does not validate: {exc.lines[0]}") from None
    finally:
        tmp.unlink(missing_ok=True)
