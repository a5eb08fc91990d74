"""What an exception from MLflow means for the run: the server gone, a SQLite store locked or full,
a run that can no longer be marked; and MLflow's own one-line store errors kept quiet.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from typing import Optional

from mlflow.exceptions import MlflowException

from sqlalchemy.exc import OperationalError

from harness.track import store_check
from harness.track.uris import sqlite_path, resolve_uri


def server_lost(exc: BaseException) -> bool:
    """Whether `exc` is MLflow giving up on a tracking server that does not answer (refused or
    timed out connections, after its HTTP retries), anywhere in the exception's chain: such a
    run is stopped with its state kept, not failed, since failing it would need the server."""
    import requests

    for seen in _chain(exc):
        if isinstance(seen, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return True
        if isinstance(seen, MlflowException) and re.match(r"API request to \S+ failed with (timeout )?exception",
                                                          str(seen.message)):
            return True
    return False


def _chain(exc: BaseException, limit: int = 10):
    """`exc`, then what it was raised from or during (MLflow wraps SQLAlchemy, which wraps
    sqlite3 or requests), at most `limit` deep."""
    seen = exc
    for _ in range(limit):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


# SQLite's words for the two ways a local store stops a run that is not the run's fault.
LOCKED, FULL = "database is locked", "database or disk is full"


def _sqlite_error(exc: BaseException) -> Optional[str]:
    """LOCKED or FULL when SQLite said so anywhere in the exception's chain (MLflow wraps
    SQLAlchemy's OperationalError, which wraps sqlite3's), else None."""
    for seen in _chain(exc):
        if isinstance(seen, (sqlite3.OperationalError, OperationalError)):
            text = store_check.first_line(seen)
            for known in (LOCKED, FULL):
                if known in text:
                    return known
    return None


def store_locked(exc: BaseException, uri: str) -> Optional[str]:
    """How to say that the SQLite store at `uri` stayed locked by another process past MLflow's
    20 s busy timeout (`exc` anywhere in its chain is "database is locked"), or None. Such a run
    is stopped with its state kept, not failed: failing it would wait on the same lock."""
    db = sqlite_path(resolve_uri(uri))
    if db is None or _sqlite_error(exc) != LOCKED:
        return None
    return f"the MLflow store {db} {store_check.locked_phrase(LOCKED)}"


def store_full(exc: BaseException, uri: str) -> Optional[str]:
    """How to say that the disk under the SQLite store at `uri` is full (SQLite's "database or
    disk is full" anywhere in `exc`'s chain), or None: the line then names the store's file, since
    that disk need not be the work folder's."""
    db = sqlite_path(resolve_uri(uri))
    if db is None or _sqlite_error(exc) != FULL:
        return None
    return f"the disk under the MLflow store {db} is full ({FULL})"


def unmarkable(exc: BaseException) -> bool:
    """Whether marking the run after `exc` would only wait again in vain: its tracking server is
    gone past MLflow's retries (server_lost), or its SQLite store is locked (store_locked)."""
    return server_lost(exc) or _sqlite_error(exc) == LOCKED


class _StoreErrorLines(logging.Filter):
    """MLflow logs a SQLite error with its SQL statement and a traceback before it raises it
    (mlflow.store.db.utils), and its system-metrics thread logs one with the statement as a
    warning. A locked or full store would print dozens of lines before the harness's own one
    line: records whose error the harness words itself are dropped, and any other message is cut
    to its first line when what follows is SQLAlchemy's statement."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and _sqlite_error(record.exc_info[1]):
            return False
        message = record.getMessage()
        if "\n[SQL: " in message:
            record.msg, record.args = message.split("\n", 1)[0], ()
        return True


_STORE_ERROR_LOGGERS = ("mlflow.store.db.utils", "mlflow.system_metrics.system_metrics_monitor")


def quiet_store_errors() -> None:
    """_StoreErrorLines on the MLflow loggers that report SQLite's errors (once per process)."""
    for name in _STORE_ERROR_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _StoreErrorLines) for f in logger.filters):
            logger.addFilter(_StoreErrorLines())
