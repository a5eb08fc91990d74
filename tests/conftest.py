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
