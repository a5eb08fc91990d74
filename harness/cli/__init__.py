"""`harness`: the command-line front of the ledger harness (cli/: parser, commands, `main`).

Argparse only; each command imports what it needs when it runs, so the commands that only read
the ledger (list, show, validate, --help) never import TensorFlow and answer in about a second.
Exit codes: 0 ok, 2 bad input (ledger, data, arguments; also a store or run state that cannot be
used, refused before anything is written), 1 anything else (a full disk: one line, no traceback).

Owns: the parser (`parser`), the commands (`commands`), `main` (the console script
`harness = harness.cli:main`). May import every package below it (api, run, sweep, report, serve,
services, track, ledger, data, models, core), but at module level only core: TensorFlow, MLflow
and the rest load inside the command that needs them.
"""

from __future__ import annotations

import os
import sys

from harness.cli.parser import build_parser


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from harness.core import quiet, signals
    from harness.core.errors import InputError, RunHalted, disk_full_line, is_disk_full
    from harness.track.remote import check_tracking

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
