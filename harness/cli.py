"""`harness`: the command-line front of the ledger harness.

Argparse only; each command imports what it needs when it runs, so the commands that only read
the ledger (list, show, validate, --help) never import TensorFlow and answer in about a second.
Exit codes: 0 ok, 2 bad input (ledger, data, arguments; also a store or run state that cannot be
used, refused before anything is written), 1 anything else (a full disk: one line, no traceback).
"""

from __future__ import annotations

import argparse
import os
import sys

from harness.settings import DEFAULT_LEDGER, DEFAULT_TRACKING_URI, DEFAULT_WORK_DIR, TRACKING_URI_ENV, WORK_DIR_ENV

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _ledger(args, name=None):
    """The ledger a command reads: --ledger, else the one holding iteration `name`
    (harness.ledgers.locate: runs.yaml first, then experiments/*.yaml), else runs.yaml."""
    from harness import ledger
    from harness.ledgers import locate

    found = locate(name, args.ledger) if name else None
    if found and found.message:
        print(found.message)
    args.ledger = found.path if found else (args.ledger or DEFAULT_LEDGER)
    return ledger.load(args.ledger)


# --------------------------------------------------------------------------- commands


def cmd_list(args) -> int:
    if args.every:
        from harness.ledgers import all_ledgers

        for index, path in enumerate(all_ledgers()):
            args.ledger = str(path)
            print(("" if index == 0 else "\n") + f"== {path} (experiment {_ledger(args).experiment})")
            _list_one(args)
        return 0
    return _list_one(args)


def _list_one(args) -> int:
    book = _ledger(args)
    width = max(len(n) for n in book.names)
    for name in book.names:
        it = book.resolve(name)
        parent = f"<- {it.extends}" if it.extends else "(root)"
        print(f"{name:<{width}}  {parent:<13} {it.backbone.name:<11} epochs {it.epochs_label():<9} {it.title}")
    return 0


def cmd_show(args) -> int:
    from harness import ledger

    book = _ledger(args, args.iteration)
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

    from harness import ledger
    from harness.ledgers import locate_all

    if args.all and args.iterations:
        raise _usage("give iteration names or --all, not both")
    if not args.all and not args.iterations:
        raise _usage("name at least one iteration (see `harness list`) or give --all")
    if args.all:
        book = _ledger(args)
        plan = [(name, book) for name in book.names]
    else:
        plan = []
        for name, found in locate_all(args.iterations, args.ledger):
            if found.message:
                print(found.message)
            plan.append((name, ledger.load(found.path)))
    for name, book in plan:
        book.resolve(name)  # every name checked before anything trains
    if args.ray is not None:
        from harness.parallel import run_parallel

        books = {id(book) for _, book in plan}
        if len(books) > 1:
            raise _usage("--ray trains iterations of one ledger at a time; give LEDGER= or names from one ledger")
        return run_parallel(plan[0][1], [name for name, _ in plan], args.ray, profile=args.profile, data_dir=args.data, fresh=args.fresh,
                            tracking_uri=args.tracking_uri, work_dir=args.work_dir,
                            skip_bad_rows=args.skip_bad_rows, skip_finished=args.all, limit=args.limit)
    from harness.errors import IterationHeld

    code = 0
    for name, book in plan:
        try:
            code = run_iteration(
                book, name, profile=args.profile, data_dir=args.data, fresh=args.fresh, tracking_uri=args.tracking_uri,
                work_dir=args.work_dir, skip_bad_rows=args.skip_bad_rows, skip_finished=args.all, limit=args.limit,
                system_metrics=args.system_metrics,
            ) or code
        except IterationHeld as held:
            if not args.all:
                raise
            print(f"{held.lines[0]}; skipping it")  # --all on two machines shares the ledger out
    return code


def cmd_eval(args) -> int:
    import json

    from harness.launch import evaluate_iteration

    book = _ledger(args, args.iteration)
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

    book = _ledger(args, args.iteration)
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
    return run_table(book, args.ledger, out=args.out, fmt=args.format, rebuild=args.rebuild, readme=args.readme,
                     no_readme=args.no_readme, plot_path=args.plot, tracking_uri=args.tracking_uri)


def cmd_runs(args) -> int:
    from harness.runs_view import run_list

    book = _ledger(args, args.iteration)
    return run_list(book, args.iteration, tracking_uri=args.tracking_uri, as_json=args.json)


def cmd_compare(args) -> int:
    from harness.compare import compare_runs

    book = _ledger(args)
    return compare_runs(book, args.runs, tracking_uri=args.tracking_uri, as_json=args.json)


def cmd_ui(args) -> int:
    from harness.errors import InputError
    from harness.metrics import val_acc
    from harness.ui import serve

    try:  # the ledger only names the experiment whose runs page to print; the UI works without one
        book = _ledger(args)
        experiment, sort_by = book.experiment, val_acc(book.resolve(book.names[0]).data.name)
    except InputError:
        experiment, sort_by = None, None
    return serve(args.tracking_uri, host=args.host, port=args.port, experiment=experiment, sort_by=sort_by)


def cmd_server(args) -> int:
    from harness import server

    return server.main(args)


def cmd_lr_find(args) -> int:
    from harness.launch import lr_find_iteration

    lr_find_iteration(_ledger(args, args.iteration), args.iteration, profile=args.profile, data_dir=args.data,
                      tracking_uri=args.tracking_uri, work_dir=args.work_dir, min_lr=args.min, max_lr=args.max,
                      steps=args.steps, out=args.out, limit=args.limit)
    return 0


def cmd_reference(args) -> int:
    from harness.reference import run_references

    run_references(_ledger(args), data_dir=args.data, profile=args.profile, tracking_uri=args.tracking_uri,
                   skip_bad_rows=args.skip_bad_rows)
    return 0


def cmd_sweep(args) -> int:
    from harness.sweep import plan_sweep, promote_best, run_sweep

    book = _ledger(args)
    if args.trials is None and args.promote is None:
        from harness.errors import InputError

        raise InputError("harness sweep: give --trials N (run trials), --promote NAME (write the best back), or both")
    code = 0
    if args.trials is not None:
        if args.promote:
            from harness.promote import check_name

            check_name(book, args.promote)  # before hours of training, not after
        plan = plan_sweep(book, args.iteration, trials=args.trials, space_file=args.space, study=args.study,
                          storage=args.storage, metric=args.metric, seed=args.seed, startup_trials=args.startup_trials,
                          warmup_epochs=args.warmup_epochs, timeout=args.timeout, profile=args.profile,
                          data_dir=args.data, tracking_uri=args.tracking_uri, work_dir=args.work_dir)
        code = run_sweep(plan)
        args.study = plan.sweep
    if args.promote and code == 0:
        promote_best(_ledger(args), args.iteration, args.promote, study=args.study, storage=args.storage,
                     tracking_uri=args.tracking_uri)
    return code


def cmd_register(args) -> int:
    from harness.registry import register_iteration

    register_iteration(_ledger(args), args.iteration, alias=args.alias, tracking_uri=args.tracking_uri)
    return 0


def cmd_models(args) -> int:
    from harness.registry import list_models

    return list_models(_ledger(args), tracking_uri=args.tracking_uri, as_json=args.json)


def cmd_predict(args) -> int:
    from harness.registry import predict

    return predict(args.model, args.paths, book_loader=lambda: _ledger(args), tracking_uri=args.tracking_uri,
                   as_json=args.json, out_csv=args.out)


def _usage(message: str):
    from harness.errors import InputError

    return InputError(f"harness run: {message}")


# --------------------------------------------------------------------------- parser


def _add_ledger(parser):
    parser.add_argument("--ledger", default=None, metavar="PATH",
                        help=f"ledger file (default {DEFAULT_LEDGER}; an ITER it lacks is looked up in experiments/*.yaml)")


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


def _add_model_commands(sub) -> None:
    """register, models, predict: a finished run's MLflow Model (harness.registry)."""
    p = sub.add_parser("register", help="register the latest finished run's model (registered model = the experiment)")
    p.add_argument("iteration")
    p.add_argument("--alias", default=None, metavar="A", help="also point this alias at the new version (champion, say)")
    _add_ledger(p)
    _add_tracking(p)
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("models", help="the registered model's versions: alias, iteration, data, val accuracy, run")
    _add_ledger(p)
    p.add_argument("--json", action="store_true", help="print the versions as JSON")
    _add_tracking(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("predict", help="each image's label and probability per head, from an iteration's or a registered model")
    p.add_argument("model", metavar="ITER|models:/NAME@ALIAS", help="an iteration (its latest finished run) or a models:/ URI")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of them")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument("--out", default=None, metavar="FILE.csv", help="write the predictions as CSV (one row per image)")
    _add_ledger(p)
    _add_tracking(p)
    p.set_defaults(func=cmd_predict)


def _add_ledger_commands(sub) -> None:
    """list, show, validate: read the ledger only (no TensorFlow, no MLflow)."""
    p = sub.add_parser("list", help="one line per iteration, in ledger order")
    _add_ledger(p)
    p.add_argument("--all", dest="every", action="store_true", help="every ledger (runs.yaml, experiments/*.yaml), grouped")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="the fully resolved iteration as YAML, then its changes vs its parent")
    p.add_argument("iteration")
    _add_ledger(p)
    p.add_argument("--profile", default=None, metavar="NAME", help="overlay a profile (full, cpu, smoke)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("validate", help="check every iteration; exit 2 with one line per error")
    _add_ledger(p)
    p.set_defaults(func=cmd_validate)


def _add_training_commands(sub) -> None:
    """run, eval, lr-find, reference: the commands that train or score."""
    p = sub.add_parser("run", help="train iterations and log them to MLflow (a killed run resumes)")
    p.add_argument("iterations", nargs="*", metavar="ITER")
    p.add_argument("--all", action="store_true", help="every iteration in ledger order, skipping finished ones")
    _add_training_inputs(p)
    p.add_argument("--fresh", action="store_true", help="start a new run instead of resuming an unfinished one")
    p.add_argument("--skip-bad-rows", action="store_true", help="drop bad CSV rows (and say which) instead of stopping")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="train the iterations at once as Ray tasks (pip install -e .[cluster]): auto (default) "
                        "joins $RAY_ADDRESS or starts a head on 127.0.0.1; or a cluster's HOST:PORT")
    p.add_argument("--no-system-metrics", dest="system_metrics", action="store_false",
                   help="do not log CPU, memory, disk and GPU use (MLflow system metrics, on by default)")
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


def _add_sweep_command(sub) -> None:
    """sweep: an Optuna study over an iteration's `sweep:` ranges."""
    p = sub.add_parser("sweep", help="Optuna search over the iteration's `sweep:` ranges; --promote writes it back")
    p.add_argument("iteration")
    p.add_argument("--trials", type=int, default=None, metavar="N", help="trials in the study, all workers together")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="start no new trial after S seconds")
    p.add_argument("--study", default=None, metavar="NAME",
                   help="sweep name, run ITER/sweep-NAME (default: a hash of space, config, metric and data)")
    p.add_argument("--storage", default=None, metavar="URI",
                   help="Optuna storage, sqlite:///FILE or postgresql://... (default: optuna.db beside the MLflow db)")
    p.add_argument("--space", default=None, metavar="FILE", help="a file with a `sweep:` block (default: ITER's)")
    p.add_argument("--metric", default=None, help="objective (default: the last pass's monitor)")
    p.add_argument("--seed", type=int, default=None, help="TPE seed (default: the iteration's seed)")
    p.add_argument("--startup-trials", type=int, default=None, metavar="K",
                   help="random trials before TPE, and trials before pruning (default: N/3, 2..10)")
    p.add_argument("--warmup-epochs", type=int, default=2, metavar="E",
                   help="no pruning in a trial's first E epochs (default 2)")
    p.add_argument("--promote", default=None, metavar="NAME", help="append the best trial to the ledger as NAME")
    _add_training_inputs(p)
    _add_tracking(p)
    _add_work_dir(p)
    p.set_defaults(func=cmd_sweep)


def _add_tool_commands(sub) -> None:
    """params, data: model and dataset tools."""
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


def _add_reading_commands(sub) -> None:
    """table, runs, compare: read the store (no TensorFlow)."""
    p = sub.add_parser("table", help="regenerate the markdown results table from MLflow (no TensorFlow)")
    _add_ledger(p)
    p.add_argument("--out", default=None, metavar="FILE",
                   help="results file (default experiments/RESULTS.md for runs.yaml, "
                        "else experiments/RESULTS-<experiment>.md)")
    p.add_argument("--readme", default=None, metavar="FILE",
                   help="README whose results block to refresh (default README.md, for runs.yaml only)")
    p.add_argument("--no-readme", action="store_true", help="leave the README alone")
    p.add_argument("--format", default="md", choices=("md", "csv", "json"),
                   help="md (default): the tables; csv, json: the store's rows with raw numbers, to stdout or --out")
    p.add_argument("--rebuild", action="store_true",
                   help="from the store alone (default: committed rows whose runs the store lacks are kept)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw best val accuracy per head for each iteration, with majority rates")
    _add_tracking(p)
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("runs", help="every run of the experiment (or of ITER): status, data, profile, accuracy, time")
    p.add_argument("iteration", nargs="?", metavar="ITER")
    _add_ledger(p)
    p.add_argument("--json", action="store_true", help="one JSON object per run")
    _add_tracking(p)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("compare", help="runs side by side: config diff, per-head accuracy and balanced accuracy")
    p.add_argument("runs", nargs="+", metavar="ITER_OR_RUN", help="iterations (their latest runs) or run ids")
    _add_ledger(p)
    p.add_argument("--json", action="store_true", help="the comparison as one JSON object")
    _add_tracking(p)
    p.set_defaults(func=cmd_compare)


def _add_service_commands(sub) -> None:
    """ui, server: long-running processes, bound to 127.0.0.1 unless told otherwise."""
    p = sub.add_parser("ui", help="the MLflow UI over the project's store (prints the URL to open)")
    _add_ledger(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    _add_tracking(p)
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("server", help="the team's MLflow tracking server on PostgreSQL (--stop stops it)")
    from harness.server import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_server)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Train the iterations of a YAML ledger and track them in MLflow.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the libraries' INFO lines and deprecation warnings (quiet by default)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add_ledger_commands(sub)
    _add_training_commands(sub)
    _add_sweep_command(sub)
    _add_tool_commands(sub)
    _add_reading_commands(sub)
    _add_model_commands(sub)
    _add_service_commands(sub)

    for command in sub.choices.values():  # -v after the command too: `harness run x -v`
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="show the libraries' INFO lines and deprecation warnings")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from harness import quiet, signals
    from harness.errors import InputError, RunHalted, disk_full_line, is_disk_full
    from harness.remote import check_tracking

    quiet.configure(args.verbose)

    signals.install()  # SIGTERM and SIGHUP stop a command the way Ctrl-C does
    try:
        if hasattr(args, "tracking_uri"):
            check_tracking(args.tracking_uri)  # a server that does not answer: one line, before any import
        return args.func(args)
    except InputError as exc:
        for line in exc.lines:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except RunHalted as exc:  # not bad input (exit 1), but a known state: one line, no traceback
        for line in exc.lines:
            print(f"error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        if not signals.reported(exc):
            print("interrupted", file=sys.stderr)
        return signals.exit_code(exc)
    except BrokenPipeError:  # `harness list --all | head`: the reader had enough; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit too
        return 0
    except OSError as exc:  # after BrokenPipeError, one of them
        if not is_disk_full(exc):
            raise
        print(f"error: {disk_full_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
