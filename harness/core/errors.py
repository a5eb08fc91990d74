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
    health check in time (harness.track.remote). Nothing was written; the line names the URI."""


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


class RunHalted(Exception):
    """A run stopped by its surroundings (a full disk, a tracking server gone for good), not by
    bad input or a bug. Not bad input, so exit 1, but one line and no traceback: the line names
    what happened, the run's state in MLflow and what was kept in its work folder, so fixing the
    surroundings and giving the same command again resumes it. `lines` as in InputError."""

    def __init__(self, lines):
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        super().__init__("\n".join(self.lines))


class DiskFull(RunHalted):
    """A run stopped because its disk is full (ENOSPC)."""


class TrackingLost(RunHalted):
    """A run stopped because its tracking server stopped answering for longer than MLflow's
    retries: the run is left RUNNING there (marking it would wait out the retries again), its
    work folder holds every finished epoch, and the rerun sends the epochs not yet logged."""


class StoreLocked(RunHalted):
    """A run stopped because another process kept its SQLite store locked past MLflow's busy
    timeout: as with a lost server, the run is left RUNNING (marking it needs the store), its
    work folder holds every finished epoch, and the rerun sends the epochs not yet logged."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` is a full disk: OSError ENOSPC, also as libraries that lose the errno word
    it (h5py: "errno = 28", SQLite: "database or disk is full")."""
    import errno

    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    text = str(exc)
    return "No space left on device" in text or "database or disk is full" in text


def disk_full_line(exc: BaseException) -> str:
    """The one line for a full disk met outside a run's training (no run to name)."""
    return f"the disk is full ({exc}); free space, then run the same command again (an unfinished run resumes)"
