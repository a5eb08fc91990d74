"""`harness`: the command-line front of the ledger harness.

Argparse only; each command imports what it needs when it runs, so the commands that only read
the ledger (list, show, validate, --help) never import TensorFlow and answer in about a second.
Exit codes: 0 ok, 2 bad input (ledger, data, arguments), 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_LEDGER = "runs.yaml"


def _ledger(args):
    from harness import ledger

    return ledger.load(args.ledger)


# --------------------------------------------------------------------------- commands


def cmd_list(args) -> int:
    book = _ledger(args)
    width = max(len(n) for n in book.names)
    for name in book.names:
        it = book.resolve(name)
        parent = f"<- {it.extends}" if it.extends else "(root)"
        print(f"{name:<{width}}  {parent:<13} {it.backbone.name:<11} epochs {it.epochs_label():<9} {it.title}")
    return 0


def cmd_show(args) -> int:
    from harness import ledger

    book = _ledger(args)
    iteration = book.resolve(args.iteration, args.profile)
    print(iteration.to_yaml(), end="")
    if iteration.extends is None:
        print("changes vs (none): root iteration")
        return 0
    parent = book.resolve(iteration.extends, args.profile)
    changes = ledger.diff(parent, iteration)
    print(f"changes vs {parent.name}:" + ("" if changes else " none"))
    for key, old, new in changes:
        print("  " + ledger.format_change(key, old, new))
    return 0


def cmd_validate(args) -> int:
    book = _ledger(args)
    resolved = book.validate_all()
    print(f"{args.ledger}: {len(resolved)} iterations valid "
          f"(experiment {book.experiment}; profiles: full, {', '.join(book.profiles)})")
    return 0


# --------------------------------------------------------------------------- parser


def _add_ledger(parser):
    parser.add_argument("--ledger", default=DEFAULT_LEDGER, metavar="PATH",
                        help=f"ledger file (default {DEFAULT_LEDGER})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Train the iterations of a YAML ledger and track them in MLflow.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", help="one line per iteration, in ledger order")
    _add_ledger(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="the fully resolved iteration as YAML, then its changes vs its parent")
    p.add_argument("iteration")
    _add_ledger(p)
    p.add_argument("--profile", default=None, metavar="NAME", help="overlay a profile (full, cpu, smoke)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("validate", help="check every iteration; exit 2 with one line per error")
    _add_ledger(p)
    p.set_defaults(func=cmd_validate)

    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from harness.errors import InputError

    try:
        return args.func(args)
    except InputError as exc:
        for line in exc.lines:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
