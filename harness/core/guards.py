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

from harness.core.errors import InputError

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
    # http(s): harness.track.remote probes the server (one line, bounded retries) before any command runs.


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


def check_artifact_path(path: str, run_id: str) -> None:
    """An artifact path names something inside the run's artifacts: relative, no `..`. The
    harness only asks for its own names, but a path that came from elsewhere (a store shared by
    a colleague, a command line) must not read or write beside them."""
    parts = Path(path).parts
    if not path or Path(path).is_absolute() or ".." in parts or "\\" in path:
        raise InputError(f"run {run_id}: artifact path '{path}' leads outside the run's artifacts; "
                         f"artifact paths are relative, without '..'")


def check_inside(root: Path, folder: Path, what: str) -> None:
    """Every file under `root` (or `root` itself) lies inside `folder`, no link leading out: what
    a download or a local artifact store holds can then be read without leaving it."""
    folder = Path(folder).resolve()
    entries = [Path(root)] + (sorted(Path(root).rglob("*")) if Path(root).is_dir() else [])
    for entry in entries:
        resolved = entry.resolve()
        if resolved != folder and folder not in resolved.parents:
            raise InputError(f"{what}: {entry} leads outside {folder} (a link to {resolved}); "
                             f"refused, nothing was read from it")
