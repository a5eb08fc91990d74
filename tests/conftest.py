"""Shared test settings."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def isolated_work_dir(tmp_path_factory):
    """Runs keep their checkpoints and state in a temporary work dir, never in the repository's
    mlruns/work (subprocesses inherit it through HARNESS_WORK_DIR)."""
    folder = tmp_path_factory.mktemp("work")
    previous = os.environ.get("HARNESS_WORK_DIR")
    os.environ["HARNESS_WORK_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("HARNESS_WORK_DIR", None)
    else:
        os.environ["HARNESS_WORK_DIR"] = previous


@pytest.fixture(scope="session")
def team_server():
    """The session's team server (tests/pg_server.py): PostgreSQL + `mlflow server` on free
    127.0.0.1 ports, started once for every test file that names it, stopped by PID at the end.
    `.url` is the tracking URI, `.db_uri` MLflow's database. Skipped, saying why, only where
    Debian's PostgreSQL binaries are absent."""
    from pg_server import missing_postgres, throwaway_server

    reason = missing_postgres()
    if reason:
        pytest.skip(reason)
    with throwaway_server() as started:
        yield started


@pytest.fixture(scope="session")
def team_database(team_server):
    """A factory: team_database("optuna") -> the URI of a database of that name on the session's
    cluster, beside MLflow's (e.g. an Optuna storage), created on first use."""
    from pg_server import new_database

    return lambda name: new_database(team_server, name)
