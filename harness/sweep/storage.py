"""Where a sweep's Optuna study lives, and the locks that let many workers share it.

Storage: `--storage URI`, else `optuna.db` beside the MLflow SQLite store (`sqlite:///mlruns/optuna.db`
by default). A PostgreSQL URL (`postgresql://user:pass@host/db`) lets workers on several machines
share a study; give it a database of its own, because Optuna and MLflow both keep an
`alembic_version` table. SQLite serves the workers of one machine.

Three mechanisms keep a shared study exact:
- `StudyLock`: one worker at a time counts the study's trials and takes the next one, so N trials
  are N, never N+1 when two workers finish together. A file lock beside a SQLite file, a
  PostgreSQL advisory lock on a server; both are released by the OS or the server when the
  holder dies.
- `TrialLease`: a lock file per running trial in this machine's work dir, held while the trial
  trains. A trial left RUNNING whose lease nobody holds belonged to a killed worker on this
  machine: it is failed and retried at once.
- `Heartbeat`: Optuna's heartbeat, recorded by a thread while a trial trains; a trial whose
  worker (on any machine) went silent for GRACE_S is failed and retried by Optuna's
  `fail_stale_trials`.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit, urlunsplit

from harness.core.errors import InputError
from harness.track.uris import sqlite_path

HEARTBEAT_S = 20  # how often a training trial tells the storage it is alive
GRACE_S = 90  # silence after which another worker fails (and retries) a trial
SQLITE_TIMEOUT_S = 60  # a worker waits this long for another's SQLite write


def default_storage(tracking_artifact_root: Optional[Path]) -> str:
    """`optuna.db` beside the MLflow SQLite store (its artifact root's parent), else under mlruns/."""
    folder = tracking_artifact_root.parent if tracking_artifact_root is not None else Path("mlruns")
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


def redact(url: str) -> str:
    """The URL with its password removed (it goes into tags and output)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_url(url: str) -> None:
    """SQLite or PostgreSQL, the two the study lock supports; anything else is exit 2."""
    if sqlite_path(url) is None and not url.startswith(("postgresql://", "postgresql+")):
        raise InputError(f"--storage: '{redact(url)}' is neither sqlite:///PATH nor postgresql://...; "
                         f"those are the storages whose workers can share a study")


def open_storage(url: str, on_stale: Callable):
    """Optuna's RDB storage with heartbeats; `on_stale(study, trial)` runs for each trial it
    fails for silence (it retries it). A storage that cannot be reached is exit 2."""
    import optuna
    import sqlalchemy

    check_url(url)
    db = sqlite_path(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if db is not None else {"pool_pre_ping": True}
    if url.startswith("postgresql://"):  # SQLAlchemy 2.1 would pick psycopg 3; the harness ships psycopg2
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                              grace_period=GRACE_S, heartbeat_stale_trial_callback=on_stale)
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ArgumentError, ImportError) as exc:
        raise InputError(f"--storage {redact(url)}: cannot open it: {str(exc).splitlines()[0]}") from None


def _key(study_name: str) -> int:
    """A signed 64-bit number naming the study (PostgreSQL advisory locks take one)."""
    return int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def study_lock(storage, url: str, study_name: str):
    """Held while a worker counts trials and takes one; see the module docstring."""
    db = sqlite_path(url)
    if db is not None:
        from filelock import FileLock

        with FileLock(str(db) + f".{_key(study_name) & 0xFFFFFFFF:08x}.lock"):
            yield
        return
    import sqlalchemy

    with storage.engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _key(study_name)})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _key(study_name)})


class TrialLease:
    """Lock files `<folder>/trial-N.lock`, one per trial this machine is training."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._held = None

    def _path(self, number: int) -> Path:
        return self.folder / f"trial-{number}.lock"

    def take(self, number: int) -> None:
        from filelock import FileLock

        self.folder.mkdir(parents=True, exist_ok=True)
        self._held = FileLock(str(self._path(number)), timeout=0, preserve_lock_file=True)
        self._held.acquire()

    def drop(self) -> None:
        if self._held is not None:
            self._held.release()
            Path(self._held.lock_file).unlink(missing_ok=True)
            self._held = None

    def abandoned(self, number: int) -> bool:
        """True when trial `number` was trained here by a process that is gone: its lease file
        is left and nobody holds it."""
        from filelock import FileLock, Timeout

        path = self._path(number)
        if not path.exists():
            return False
        probe = FileLock(str(path), timeout=0, preserve_lock_file=True)
        try:
            probe.acquire()
        except Timeout:
            return False
        probe.release()
        return True

    def forget(self, number: int) -> None:
        self._path(number).unlink(missing_ok=True)


class Heartbeat:
    """Records the trial's heartbeat now and every HEARTBEAT_S seconds until stopped."""

    def __init__(self, storage, study_name: str, number: int):
        self._storage = storage
        self._trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study_name), number)
        storage.record_heartbeat(self._trial_id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-trial-{number}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception:  # a busy database skips one beat; the grace period covers several
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
