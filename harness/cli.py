"""`harness`: the command-line front of the ledger harness.

Argparse only; each command imports what it needs when it runs, so the commands that only read
the ledger (list, show, validate, --help) never import TensorFlow and answer in about a second.
Exit codes: 0 ok, 2 bad input (ledger, data, arguments), 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import sys

from harness.settings import DEFAULT_LEDGER, DEFAULT_TRACKING_URI, DEFAULT_WORK_DIR, TRACKING_URI_ENV, WORK_DIR_ENV

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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


def cmd_run(args) -> int:
    from harness.launch import run_iteration

    book = _ledger(args)
    if args.all and args.iterations:
        raise _usage("give iteration names or --all, not both")
    if not args.all and not args.iterations:
        raise _usage("name at least one iteration (see `harness list`) or give --all")
    names = book.names if args.all else args.iterations
    for name in names:
        book.resolve(name)  # every name checked before anything trains
    code = 0
    for name in names:
        code = run_iteration(
            book, name, profile=args.profile, data_dir=args.data, fresh=args.fresh, tracking_uri=args.tracking_uri,
            work_dir=args.work_dir, skip_bad_rows=args.skip_bad_rows, skip_finished=args.all, limit=args.limit,
        ) or code
    return code


def cmd_eval(args) -> int:
    import json

    from harness.launch import evaluate_iteration

    book = _ledger(args)
    result = evaluate_iteration(book, args.iteration, data_dir=args.data, tracking_uri=args.tracking_uri,
                                work_dir=args.work_dir, log_to_run=args.log)
    scored = f"{args.iteration}: run {result['run_id'][:8]} (profile {result['profile']}), selected checkpoint, " \
             f"{result['images']:,} images scored: {result['scored']}"
    if args.json:
        print(scored, file=sys.stderr)  # stdout stays pure JSON for tools
        print(json.dumps(result["eval"], indent=1))
    else:
        print(scored)
        for key, value in result["eval"].items():
            print(f"  {key:<22} {value:.4f}")
    if result["warning"]:
        print(result["warning"], file=sys.stderr)
    return 0


def cmd_params(args) -> int:
    from harness.models import build_model, count_params

    book = _ledger(args)
    iteration = book.resolve(args.iteration, args.profile)
    total, trainable, frozen = count_params(build_model(iteration))
    print(f"{iteration.name} ({iteration.backbone.name}, {iteration.data.image_size} px, "
          f"profile {args.profile or 'full'})")
    print(f"total         {total:>12,}")
    print(f"trainable     {trainable:>12,}")
    print(f"non-trainable {frozen:>12,}")
    return 0


def cmd_data_synth(args) -> int:
    from harness.data.synth import generate
    from harness.errors import InputError

    if args.n <= 0:
        raise InputError(f"harness data synth: --n must be a positive number of images (got {args.n})")

    generate(args.out, args.n, args.seed)
    print(f"wrote {args.n} synthetic images and hvc_annotations.csv to {args.out}")
    return 0


def cmd_table(args) -> int:
    from harness.report import run_table

    book = _ledger(args)
    return run_table(book, args.ledger, out=args.out, readme=args.readme, no_readme=args.no_readme,
                     plot_path=args.plot, tracking_uri=args.tracking_uri)


def cmd_ui(args) -> int:
    from harness.ui import serve

    return serve(args.tracking_uri, host=args.host, port=args.port)


def cmd_lr_find(args) -> int:
    from harness.launch import lr_find_iteration

    lr_find_iteration(_ledger(args), args.iteration, profile=args.profile, data_dir=args.data,
                      tracking_uri=args.tracking_uri, work_dir=args.work_dir, min_lr=args.min, max_lr=args.max,
                      steps=args.steps, out=args.out, limit=args.limit)
    return 0


def cmd_reference(args) -> int:
    from harness.reference import run_references

    run_references(_ledger(args), data_dir=args.data, profile=args.profile, tracking_uri=args.tracking_uri,
                   skip_bad_rows=args.skip_bad_rows)
    return 0


def _usage(message: str):
    from harness.errors import InputError

    return InputError(f"harness run: {message}")


# --------------------------------------------------------------------------- parser


def _add_ledger(parser):
    parser.add_argument("--ledger", default=DEFAULT_LEDGER, metavar="PATH",
                        help=f"ledger file (default {DEFAULT_LEDGER})")


def _add_tracking(parser):
    parser.add_argument("--tracking-uri", default=None, metavar="URI",
                        help=f"MLflow store (default: ${TRACKING_URI_ENV}, else {DEFAULT_TRACKING_URI})")


def _add_work_dir(parser):
    parser.add_argument("--work-dir", default=None, metavar="DIR",
                        help=f"checkpoints, run state and image caches (default: ${WORK_DIR_ENV}, else ./{DEFAULT_WORK_DIR})")


def _add_training_inputs(parser):
    """What `run` and `lr-find` train on: ledger, profile, data."""
    _add_ledger(parser)
    parser.add_argument("--profile", default=None, metavar="NAME",
                        help="full, cpu or smoke (default: full with a GPU, cpu without)")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="dataset folder (default: $HARNESS_DATA, else a synthetic set in data/)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="train on the first N images only (default: all the profile allows)")


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

    p = sub.add_parser("run", help="train iterations and log them to MLflow (a killed run resumes)")
    p.add_argument("iterations", nargs="*", metavar="ITER")
    p.add_argument("--all", action="store_true", help="every iteration in ledger order, skipping finished ones")
    _add_training_inputs(p)
    p.add_argument("--fresh", action="store_true", help="start a new run instead of resuming an unfinished one")
    p.add_argument("--skip-bad-rows", action="store_true", help="drop bad CSV rows (and say which) instead of stopping")
    _add_tracking(p)
    _add_work_dir(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="evaluate the latest finished run's best checkpoint on a data folder")
    p.add_argument("iteration")
    _add_ledger(p)
    p.add_argument("--data", default=None, metavar="DIR", help="folder in the hvc format (default: the run's data)")
    p.add_argument("--json", action="store_true", help="print the eval dict as JSON")
    p.add_argument("--log", action="store_true", help="also attach the result to the run in MLflow")
    _add_tracking(p)
    _add_work_dir(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("lr-find", help="LR range test: loss against an exponentially rising LR, a suggested LR")
    p.add_argument("iteration")
    p.add_argument("--min", type=float, default=1e-7, help="first LR (default 1e-7)")
    p.add_argument("--max", type=float, default=10.0, help="last LR (default 10)")
    p.add_argument("--steps", type=int, default=100, help="batches, at most (default 100)")
    _add_training_inputs(p)
    p.add_argument("--out", default=None, metavar="FILE.png", help="also write the plot here")
    _add_tracking(p)
    _add_work_dir(p)
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("reference", help="fit the majority and linear-probe references on each split of the "
                                         "ledger and log them (reference/majority, reference/linear-probe)")
    _add_ledger(p)
    p.add_argument("--data", default=None, metavar="DIR",
                   help="dataset folder (default: $HARNESS_DATA, else the synthetic set in data/)")
    p.add_argument("--profile", default=None, metavar="NAME",
                   help="the profile whose data rows to use (default: as written, all images)")
    p.add_argument("--skip-bad-rows", action="store_true", help="drop bad CSV rows (and say which) instead of stopping")
    _add_tracking(p)
    p.set_defaults(func=cmd_reference)

    p = sub.add_parser("params", help="build the iteration's model (no training) and count its parameters")
    p.add_argument("iteration")
    _add_ledger(p)
    p.add_argument("--profile", default=None, metavar="NAME", help="count for a profile (default: as written)")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = data_sub.add_parser("synth", help="write a synthetic dataset in the real hvc format")
    q.add_argument("--out", required=True, metavar="DIR")
    q.add_argument("--n", type=int, default=2000, help="number of images (default 2000)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_data_synth)

    p = sub.add_parser("table", help="regenerate the markdown results table from MLflow (no TensorFlow)")
    _add_ledger(p)
    p.add_argument("--out", default=None, metavar="FILE",
                   help="results file (default experiments/RESULTS.md for runs.yaml, "
                        "else experiments/RESULTS-<experiment>.md)")
    p.add_argument("--readme", default=None, metavar="FILE",
                   help="README whose results block to refresh (default README.md, for runs.yaml only)")
    p.add_argument("--no-readme", action="store_true", help="leave the README alone")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw best val accuracy per head for each iteration, with majority rates")
    _add_tracking(p)
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("ui", help="the MLflow UI over the project's store (prints the URL to open)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    _add_tracking(p)
    p.set_defaults(func=cmd_ui)

    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from harness import signals
    from harness.errors import InputError

    signals.install()  # SIGTERM and SIGHUP stop a command the way Ctrl-C does
    try:
        return args.func(args)
    except InputError as exc:
        for line in exc.lines:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if not signals.reported(exc):
            print("interrupted", file=sys.stderr)
        return signals.exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
