"""Whether a local SQLite MLflow store can be used, asked with sqlite3 before MLflow opens it.

Why not let MLflow find out: on a file that is not a database its engine retries for about 100 s
before a SQLAlchemy traceback, and a store another process keeps locked ends the same way after
its busy timeout. One read of the schema, here, tells the two apart and words each as one line:
which file, what is wrong, what to do. Nothing is written and nothing is removed: a damaged
store may be the only record of months of runs, so what happens to it is the user's choice.
The file is opened read-write (a hot journal a killed writer left is rolled back, as MLflow
would) but only read. No MLflow, no TensorFlow.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from harness.core.errors import StoreUnusable

# MLflow 3.17 gives every SQLite session `PRAGMA busy_timeout = 20000`: a store locked for longer
# than that fails MLflow's own calls too, so waiting longer here would only delay the same end.
WAIT_SECONDS = 20.0


def check(db: Path, wait: float = WAIT_SECONDS) -> None:
    """StoreUnusable (one line) when the SQLite file `db` is damaged or stays locked for `wait`
    seconds; a file that does not exist yet is fine (MLflow creates it)."""
    db = Path(db)
    if not db.exists():
        return
    try:
        connection = sqlite3.connect(str(db), timeout=wait)
        try:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise StoreUnusable(problem(db, exc, wait)) from None


def problem(db: Path, exc: BaseException, wait: float = WAIT_SECONDS) -> str:
    """The line for a store file SQLite refused: locked (wait for the holder) or damaged (restore
    or move it aside); `exc` is sqlite3's error or SQLAlchemy's wrapper of it."""
    text = first_line(exc)
    if "locked" in text or getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return (f"{db}: the MLflow store {locked_phrase(text, wait)}; "
                f"nothing was written. Wait for that process to finish or stop it, then run the same command again")
    return (f"{db}: the MLflow store is damaged ({text}); nothing was written or removed. Restore it from a backup, "
            f"or move it aside (mv {db} {db}.damaged) and run again to start an empty store")


def first_line(exc: BaseException) -> str:
    """SQLite's own words ("database is locked"), without SQLAlchemy's statement and parameters:
    `exc` is sqlite3's error or SQLAlchemy's wrapper of it."""
    return (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0]


def locked_phrase(text: str, wait: float = WAIT_SECONDS) -> str:
    """How a locked store is worded, at start-up here and mid-run (harness.track.store_locked),
    so that both read alike: 'is locked by another process (still locked after 20 s: TEXT)'."""
    return f"is locked by another process (still locked after {wait:.0f} s: {text})"
