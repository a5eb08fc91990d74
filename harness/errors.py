"""The exception types that mean "refused before anything was written": the CLI turns them into
exit code 2 (bad input, an unreachable tracking server, an iteration another process holds).

Each message is a single line that says where (file:line, iteration.field or CSV row) and what.
Anything else that escapes is a bug or an environment failure and exits 1.
"""


class InputError(Exception):
    """Bad input (ledger, data, arguments). `lines` holds one formatted line per problem."""

    def __init__(self, lines):
        if isinstance(lines, str):
            lines = [lines]
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


class TrackingUnreachable(InputError):
    """The tracking server named by --tracking-uri / MLFLOW_TRACKING_URI did not answer its
    health check in time (harness.remote). Nothing was written; the line names the URI."""


class IterationHeld(InputError):
    """Another process is training this iteration against the same store (harness.lease): the
    line names it (host, pid, run id). Refused before anything is written, so exit 2."""


class CorruptState(InputError):
    """A run's saved state in its work folder (state.json, or the epoch snapshot it names)
    cannot be read, so the run cannot resume from it. Found before anything is written; the line
    names the file and the ways out (--fresh, or moving the folder away). Nothing is removed:
    the files may be all that is left of days of training, and the user decides."""


class StoreUnusable(InputError):
    """The SQLite file of the MLflow store cannot be used: damaged (not a database) or locked by
    another process for longer than MLflow's own wait. Refused before anything is written; the
    line names the file and what to do (restore or move it aside; wait for the holder)."""
