"""Reading a local SQLite MLflow store directly, for the commands that only read (`table`, `runs`,
`compare`), so they answer in well under a second instead of paying ~2 s to import MLflow and
start its SQLAlchemy store.

Only a store whose schema this module knows is read this way: its alembic revision (table
`alembic_version`) must be one MLflow 3.17.2 writes (SUPPORTED_REVISIONS; tests/test_fast_store.py
checks the pin against a store MLflow itself creates, and that both readers agree run for run).
A server (http://, https://) is read over REST by harness.track.rest_reader (no MLflow either);
any other store, or a database MLflow reaches through SQLAlchemy (postgresql://, ...), goes
through harness.track.reader.MlflowReader, the MLflow client, instead: `open_reader` chooses. The database is opened read-only; nothing here writes, and a store file
that does not exist reads as empty without being created. No MLflow, no TensorFlow.

Both readers answer the same questions with harness.core.records.RunRecord:
    latest_finished(iteration, config_sha=None)  newest FINISHED parent run of an iteration
    runs(iteration=None)                         parent runs of the experiment, newest first
    references()                                 finished reference runs, newest first
    known(run_ids)                               which of these run ids the store holds
    run(run_id_or_prefix)                        one run with its params (None if unknown)
    predictions(run_id)                          its per-example predictions (None if not logged)
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Iterable, Optional

from harness.core.records import (FINISHED, KIND_ITERATION, KIND_REFERENCE, KIND_VARIANT, TAG_CONFIG_SHA, TAG_ITERATION,
                                  TAG_KIND, RunRecord)
from harness.track.uris import SQLITE_PREFIX, chosen_uri, is_server, local_artifact_root, sqlite_path

# Alembic head revision of the tracking schema MLflow 3.17.2 creates and reads.
SUPPORTED_REVISIONS = frozenset({"dc11669786a5"})

# Runs read per query when a whole experiment is loaded (SQLite's variable limit is 32766).
_CHUNK = 900

class UnsupportedStore(Exception):
    """The file is not a tracking store of a schema this module knows: use the MLflow client."""


class SqliteReader:
    """Read-only look-ups in one experiment of a SQLite tracking store of a known schema.

    The experiment's parent and reference runs (tags and latest metrics, without params) are
    loaded once, on first use: 500 runs cost one pass over three tables."""

    def __init__(self, path: Path, experiment: str, uri: Optional[str] = None):
        self.path, self.experiment = Path(path), experiment
        self.uri = uri or f"{SQLITE_PREFIX}{self.path}"
        self._loaded: Optional[list[RunRecord]] = None
        self._db = None
        if not self.path.exists():
            self._experiment_id = None
            return
        self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            revision = self._db.execute("SELECT version_num FROM alembic_version").fetchall()
            if [r[0] for r in revision] == [] or not {r[0] for r in revision} <= SUPPORTED_REVISIONS:
                raise UnsupportedStore(f"{self.path}: schema revision {[r[0] for r in revision]} is not one of "
                                       f"{sorted(SUPPORTED_REVISIONS)}")
            found = self._db.execute(
                "SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'",
                (experiment,)).fetchall()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise UnsupportedStore(f"{self.path}: {exc}") from None
        except UnsupportedStore:
            self.close()
            raise
        if len(found) > 1:  # one name in several workspaces: let MLflow decide which is meant
            self.close()
            raise UnsupportedStore(f"{self.path}: {len(found)} experiments named {experiment}")
        self._experiment_id = found[0][0] if found else None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # ---- loading

    def _records(self, where: str, args: tuple, with_params: bool = False) -> list[RunRecord]:
        """Active runs of the experiment matching `where` (on table `runs`), newest first."""
        if self._db is None or self._experiment_id is None:
            return []
        rows = self._db.execute(
            "SELECT run_uuid, name, status, start_time, end_time FROM runs "
            f"WHERE experiment_id = ? AND lifecycle_stage = 'active' AND ({where}) "
            "ORDER BY start_time DESC, run_uuid", (self._experiment_id, *args)).fetchall()
        ids = [row[0] for row in rows]
        tags = self._by_run("SELECT run_uuid, key, value FROM tags", ids)
        latest = self._by_run("SELECT run_uuid, key, value, is_nan, step FROM latest_metrics", ids)
        params = self._by_run("SELECT run_uuid, key, value FROM params", ids) if with_params else {}
        records = []
        for run_id, name, status, start, end in rows:
            metrics, steps = {}, {}
            for key, (value, is_nan, step) in latest.get(run_id, {}).items():
                metrics[key], steps[key] = math.nan if is_nan else value, step
            records.append(RunRecord(run_id=run_id, name=name, status=status, start_time=start, end_time=end,
                                     tags=tags.get(run_id, {}), metrics=metrics, params=params.get(run_id, {}),
                                     steps=steps))
        return records

    def _by_run(self, select: str, ids: list[str]) -> dict[str, dict]:
        """run id -> {key: value}, or {key: (the other columns)} when the query selects more."""
        out: dict[str, dict] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for run_id, key, *values in self._db.execute(f"{select} WHERE run_uuid IN ({marks})", chunk):
                out.setdefault(run_id, {})[key] = values[0] if len(values) == 1 else tuple(values)
        return out

    def _all(self) -> list[RunRecord]:
        """Parent and reference runs of the experiment, newest first (loaded once)."""
        if self._loaded is None:
            self._loaded = self._records(
                "run_uuid IN (SELECT run_uuid FROM tags WHERE key = ? AND value IN (?, ?, ?))",
                (TAG_KIND, KIND_ITERATION, KIND_REFERENCE, KIND_VARIANT))
        return self._loaded

    # ---- the reader's questions

    def runs(self, iteration: Optional[str] = None, variants: bool = False) -> list[RunRecord]:
        """Parent runs, newest first (with `variants`, the `--set` runs too: never a table row)."""
        kinds = (KIND_ITERATION, KIND_VARIANT) if variants else (KIND_ITERATION,)
        return [r for r in self._all() if r.tags.get(TAG_KIND) in kinds
                and (iteration is None or r.tags.get(TAG_ITERATION) == iteration)]

    def latest_finished(self, iteration: str, config_sha: Optional[str] = None) -> Optional[RunRecord]:
        for record in self.runs(iteration):
            if record.status == FINISHED and (config_sha is None or record.tags.get(TAG_CONFIG_SHA) == config_sha):
                return record
        return None

    def references(self) -> list[RunRecord]:
        return [r for r in self._all() if r.tags.get(TAG_KIND) == KIND_REFERENCE and r.status == FINISHED]

    def known(self, run_ids: Iterable[str]) -> set[str]:
        """The ids among `run_ids` of runs this store holds (any experiment, deleted ones not)."""
        ids = [i for i in dict.fromkeys(run_ids) if i]
        if self._db is None or not ids:
            return set()
        found = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found |= {row[0] for row in self._db.execute(
                f"SELECT run_uuid FROM runs WHERE lifecycle_stage = 'active' AND run_uuid IN ({marks})", chunk)}
        return found

    def run(self, run_id: str) -> Optional[RunRecord]:
        """The run with this id, or the only one of the experiment whose id starts with it."""
        if not run_id:
            return None
        found = self._records("run_uuid = ? OR run_uuid LIKE ?", (run_id, run_id.replace("%", "") + "%"),
                              with_params=True)
        exact = [r for r in found if r.run_id == run_id]
        return exact[0] if exact else found[0] if len(found) == 1 else None

    def predictions(self, run_id: str):
        """The run's predictions/val.json (harness.core.predictions.Predictions), read straight from
        a local artifact folder; artifacts kept elsewhere (a server's) through the MLflow client.
        None when the run logged none (runs from before it was logged)."""
        from harness.core import predictions
        from harness.core.guards import check_inside

        if self._db is None or not run_id:
            return None
        found = self._db.execute("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
        if not found or not found[0]:
            return None
        root = local_artifact_root(found[0])
        if root is None:
            from harness.track.reader import MlflowReader

            return MlflowReader(self.uri, self.experiment).predictions(run_id)
        file = root / predictions.ARTIFACT
        if not file.is_file():
            return None
        check_inside(file, root, f"run {run_id} artifact '{predictions.ARTIFACT}'")
        return predictions.loads(file.read_text())


def open_reader(uri: Optional[str], experiment: str):
    """The fastest reader that can answer for this store: SqliteReader for a local SQLite store
    of a known schema; for a server (probed first: one line when it does not answer),
    harness.track.rest_reader.ServerReader, REST without MLflow and MLflow's client as its
    fallback; else harness.track.reader.MlflowReader (MLflow's client)."""
    chosen = chosen_uri(uri)
    if is_server(chosen):
        from harness.track import remote
        from harness.track.rest_reader import ServerReader

        remote.configure_http_client(chosen)
        remote.check_reachable(chosen)
        return ServerReader(chosen, experiment)
    path = sqlite_path(chosen)
    if path is not None:
        from harness.track.store_check import check

        check(path)  # damaged or locked: one line (StoreUnusable), whichever reader would read it
        try:
            return SqliteReader(path.resolve(), experiment, f"{SQLITE_PREFIX}{path.resolve()}")
        except UnsupportedStore:
            pass
    from harness.track.reader import MlflowReader

    return MlflowReader(chosen, experiment)
