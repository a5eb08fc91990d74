"""Checks of the places a run will write to, made before anything is written.

A run that trips over its tracking URI or work folder after it has opened an MLflow run leaves a
RUNNING run behind and a traceback on screen; these checks turn each such case into the one
located line of bad input (exit 2) while nothing exists yet. No MLflow, no TensorFlow.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from harness.errors import InputError

SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "databricks")


def check_tracking_uri(uri: str, where: str = "--tracking-uri") -> None:
    """MLflow 3.17's file store is deprecated and raises mid-run: refuse `file:` and bare
    paths up front."""
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme == "file" or scheme == "":
        raise InputError(f"{where} {uri}: MLflow's file store is deprecated and fails in MLflow 3.17; "
                         f"use a SQLite file (sqlite:///PATH/mlflow.db) or a server (http://HOST:PORT)")
    if scheme not in SCHEMES:
        raise InputError(f"{where} {uri}: unknown scheme '{scheme}'; use sqlite:///PATH or http://HOST:PORT")
    # http(s): harness.remote probes the server (one line, bounded retries) before any command runs.


def check_work_dir(root: Path, where: str = "--work-dir") -> None:
    """The work folder (or the nearest folder above it that exists) must be a writable folder."""
    path = Path(root)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise InputError(f"{where} {root}: {existing} is a file, not a folder")
    if not _can_create_in(existing):
        raise InputError(f"{where} {root}: {existing} is not writable; checkpoints and run state go there "
                         f"(pick another with --work-dir or HARNESS_WORK_DIR)")


def _can_create_in(folder: Path) -> bool:
    """Try it (and take it back): permission bits say nothing to root, and a read-only mount
    or a pseudo file system refuses what the bits allow."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".harness-probe-", dir=folder))
    except OSError:
        return False
    return True
