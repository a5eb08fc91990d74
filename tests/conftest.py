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
    """A throwaway team server for the session: a PostgreSQL cluster and `mlflow server` on free
    127.0.0.1 ports, started by harness.server's own code (as `make server` does) and stopped by
    PID at the end. Skipped, saying why, only where Debian's PostgreSQL binaries are absent."""
    import shutil
    import tempfile
    from pathlib import Path

    from harness import server

    if server.postgres_bin() is None:
        pytest.skip(f"PostgreSQL binaries not found under {server.PG_BIN_GLOB} (apt-get install postgresql)")
    # Under /tmp, not pytest's tmp_path: as root, PostgreSQL runs as `postgres`, who may not
    # enter pytest's 0700 base folder.
    root = Path(tempfile.mkdtemp(prefix="harness-server-"))
    root.chmod(0o755)
    folder = server.ServerFolder(root)
    try:
        started = server.start(folder, port=server.free_port(), db_port=server.free_port(), workers=2,
                               durable=False, log=lambda *_: None)
    except BaseException:
        server.stop(folder, log=lambda *_: None)
        shutil.rmtree(root, ignore_errors=True)
        raise
    yield started
    server.stop(folder, log=lambda *_: None)
    shutil.rmtree(root, ignore_errors=True)
