"""harness.track.fast_store reads a SQLite store directly: it must agree with MLflow's own client run
for run, accept the schema MLflow 3.17.2 writes, and hand any other store to the client."""

import math
import shutil
import sqlite3

import pytest

from harness.track import fast_store
from harness.track.uris import sqlite_path
from harness.track.reader import MlflowReader


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def test_the_pinned_revision_is_the_one_mlflow_writes(records_store):
    path = sqlite_path(records_store["uri"])
    with sqlite3.connect(path) as db:
        (revision,), = db.execute("SELECT version_num FROM alembic_version").fetchall()
    assert revision in fast_store.SUPPORTED_REVISIONS, (
        f"MLflow wrote schema {revision}: check fast_store's queries against it, then add it to SUPPORTED_REVISIONS")
    assert isinstance(fast_store.open_reader(records_store["uri"], records_store["experiment"]),
                      fast_store.SqliteReader)


def test_the_direct_reader_agrees_with_mlflows_client(records_store):
    uri, experiment = records_store["uri"], records_store["experiment"]
    fast, client = fast_store.open_reader(uri, experiment), MlflowReader(uri, experiment)
    for name in ("runs", "references"):
        ours, theirs = getattr(fast, name)(), getattr(client, name)()
        assert [r.run_id for r in ours] == [r.run_id for r in theirs], name
        for a, b in zip(ours, theirs):
            assert (a.name, a.status, a.start_time, a.end_time, a.tags) == (b.name, b.status, b.start_time, b.end_time,
                                                                          b.tags)
            assert a.metrics.keys() == b.metrics.keys() and all(same(a.metrics[k], b.metrics[k]) for k in a.metrics)
            assert a.steps == b.steps
    for iteration in ("base", "first", "second"):
        ours, theirs = fast.latest_finished(iteration), client.latest_finished(iteration)
        assert (ours and ours.run_id) == (theirs and theirs.run_id)
    base = records_store["runs"]["base"]
    assert fast.run(base[:8]).params == client.run(base).params != {}
    assert fast.known([base, "0" * 32]) == client.known([base, "0" * 32]) == {base}
    assert fast.run("f") is None or fast.run("f").run_id.startswith("f")  # a prefix more than one run has


def test_an_unknown_schema_goes_through_mlflow(records_store, tmp_path, monkeypatch):
    copy = tmp_path / "mlflow.db"
    shutil.copy(sqlite_path(records_store["uri"]), copy)
    monkeypatch.setattr(fast_store, "SUPPORTED_REVISIONS", frozenset({"000000000000"}))
    reader = fast_store.open_reader(f"sqlite:///{copy}", records_store["experiment"])
    assert isinstance(reader, MlflowReader)
    assert reader.latest_finished("base").run_id == records_store["runs"]["base"]
    with sqlite3.connect(copy) as db:
        db.execute("DROP TABLE alembic_version")
    with pytest.raises(fast_store.UnsupportedStore):
        fast_store.SqliteReader(copy, records_store["experiment"])


def test_a_missing_store_reads_empty_and_is_not_created(tmp_path):
    reader = fast_store.open_reader(f"sqlite:///{tmp_path}/no/mlflow.db", "x")
    assert reader.runs() == [] and reader.references() == [] and reader.latest_finished("a") is None
    assert reader.known(["abc"]) == set() and reader.run("abc") is None
    assert not (tmp_path / "no").exists()


def test_servers_go_through_the_rest_client():
    """A server URI is read by MLflow's REST client, never as a SQLite file: the client's
    reader probes the server first, so a closed port answers with the one-line refusal."""
    from harness.core.errors import TrackingUnreachable

    with pytest.raises(TrackingUnreachable, match="127.0.0.1:9"):
        fast_store.open_reader("http://127.0.0.1:9/", "x")
