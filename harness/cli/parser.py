"""The `harness` argument parser: one sub-parser per command, each bound to its `cmd_*`.
"""

from __future__ import annotations

import argparse

from harness.core.settings import (DEFAULT_LEDGER, DEFAULT_TRACKING_URI, DEFAULT_WORK_DIR, TRACKING_URI_ENV,
                                   WORK_DIR_ENV)
from harness.cli.commands import cmd_compare, cmd_data_synth, cmd_eval, cmd_list, cmd_lr_find, cmd_models, cmd_params, cmd_predict, cmd_reference, cmd_register, cmd_reproduce, cmd_run, cmd_runs, cmd_server, cmd_show, cmd_sweep, cmd_table, cmd_ui, cmd_validate


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


def _add_set(parser):
    parser.add_argument("--set", dest="overrides", action="append", default=None, metavar="PATH=VALUE",
                        help="change a field for this run only, dotted as a sweep space writes it "
                             "(optimizer.lr=3e-4, passes.0.epochs=5; the value is YAML); repeatable. "
                             "The run is tagged harness.overrides and is never the table's row")


def _add_system_metrics(parser):
    parser.add_argument("--no-system-metrics", dest="system_metrics", action="store_false", default=None,
                        help="do not log CPU, memory, disk and GPU use (MLflow system metrics; on unless "
                             "$HARNESS_SYSTEM_METRICS=0)")


def _add_model_commands(sub) -> None:
    """register, models, predict: a finished run's MLflow Model (harness.serve.registry)."""
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
    _add_set(p)
    p.add_argument("--save-as", default=None, metavar="NAME",
                   help="write the --set variant into the ledger as NAME (extends ITER, only the changed keys), "
                        "then train NAME")
    p.add_argument("--repeats", type=int, default=None, metavar="N",
                   help="train N runs with seeds seed, seed+1, ... on the same split (tags harness.group, "
                        "harness.repeat); finished repeats are skipped on a rerun, a killed one resumes "
                        "(default: the ledger's `repeats`, 1)")
    _add_system_metrics(p)
    _add_tracking(p)
    _add_work_dir(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("reproduce", help="train a past run's recorded config again, say what differs, "
                                         "compare old and new")
    p.add_argument("run_id", metavar="RUN_ID", help="a run id (or an unambiguous prefix), see `harness runs`")
    p.add_argument("--strict", action="store_true",
                   help="refuse (exit 2) when the commit, the diff, the packages or the data differ")
    p.add_argument("--at-commit", action="store_true",
                   help="train in a temporary git worktree of the run's commit with its recorded diff applied")
    p.add_argument("--data", default=None, metavar="DIR", help="dataset folder (default: the run's)")
    _add_system_metrics(p)
    _add_tracking(p)
    _add_work_dir(p)
    p.set_defaults(func=cmd_reproduce)

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
    _add_set(p)
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

    p = sub.add_parser("compare", help="runs side by side: config diff, per-head accuracy and balanced accuracy, "
                                       "then each later run against the first: difference, 95%% CI, McNemar p, "
                                       "verdict (better, worse, within noise)")
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
    from harness.services.server import add_arguments

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
