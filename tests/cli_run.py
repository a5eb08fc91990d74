"""`harness ARGS` run in the test process, as the console script runs it (harness.cli.main), for the
tests that look only at a command's output and exit code: a subprocess costs ~7 s of imports."""

import contextlib
import io
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def harness(*args, cwd=REPO, env=None):
    """`harness ARGS` in this process, from `cwd`, with `env` added: returncode, stdout, stderr."""
    from harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.update(env or {})
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse: --help, a bad argument
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["harness", *args], code, out.getvalue(), err.getvalue())
