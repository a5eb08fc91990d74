"""Where the runs are: the one tracking-URI resolver, the one SQLite-URI parser, the one `mlflow server`
command line (the team server, the UI and the tests build theirs here). Pure Python: no MLflow import.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from harness.core.settings import DEFAULT_TRACKING_URI, TRACKING_URI_ENV

SQLITE_PREFIX = "sqlite:///"


def is_server(uri: Optional[str]) -> bool:
    return bool(uri) and uri.split("://", 1)[0].lower() in ("http", "https")


def chosen_uri(explicit: Optional[str] = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the default store (unresolved: enough to
    tell a server from a file)."""
    return explicit or os.environ.get(TRACKING_URI_ENV) or DEFAULT_TRACKING_URI


def resolve_uri(explicit: Optional[str] = None, create: bool = False) -> str:
    """The tracking URI: --tracking-uri, else $MLFLOW_TRACKING_URI, else the project's SQLite
    store. A relative SQLite path is made absolute (a server started elsewhere, or a later
    chdir, finds the same file); with `create`, the SQLite file's folder is made."""
    uri = chosen_uri(explicit)
    db = sqlite_path(uri)
    if db is None:
        return uri
    if create:
        db.parent.mkdir(parents=True, exist_ok=True)
    return f"{SQLITE_PREFIX}{db.resolve()}"


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a `sqlite:///PATH` URI (None for any other store): the one SQLite-URI
    parser, for the tracking store, the fast reader and the sweep's study storage alike."""
    return Path(uri[len(SQLITE_PREFIX):]) if uri.startswith(SQLITE_PREFIX) else None


def store_exists(uri: Optional[str] = None) -> bool:
    """False for a SQLite store whose file does not exist yet (reading must not create one)."""
    db = sqlite_path(resolve_uri(uri))
    return db is None or db.exists()


def artifact_root(uri: str) -> Optional[Path]:
    """Where new experiments keep their artifacts: `artifacts/` beside a SQLite file; None for a
    server, which decides itself."""
    db = sqlite_path(resolve_uri(uri))
    return db.parent / "artifacts" if db is not None else None


def mlflow_server_command(host: str, port: int, workers: int, artifacts: str, *, store: Optional[str] = None,
                          default_artifact_root: Optional[str] = None, app_name: Optional[str] = None,
                          allowed_hosts: Optional[str] = None, gunicorn_config: Optional[str] = None) -> list[str]:
    """The one `mlflow server` command line: artifacts proxied to `artifacts` (a file: URI), the
    store (given) as backend and registry alike, else taken from MLFLOW_BACKEND_STORE_URI in the
    environment (kept off the command line `ps` shows when it holds a password). With
    `gunicorn_config` (an importable module) it runs under gunicorn with those settings instead of
    MLflow's default uvicorn."""
    command = [sys.executable, "-m", "mlflow", "server", "--serve-artifacts", "--artifacts-destination", artifacts]
    if store:
        command += ["--backend-store-uri", store, "--registry-store-uri", store]  # the same store (and no notice saying so)
    if default_artifact_root:
        command += ["--default-artifact-root", default_artifact_root]
    command += ["--host", host, "--port", str(port), "--workers", str(workers)]
    if app_name:
        command += ["--app-name", app_name]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    if gunicorn_config:
        command += ["--gunicorn-opts", f"--config python:{gunicorn_config}"]
    return command


def server_command(uri: str, host: str, port: int, workers: int = 1) -> list[str]:
    """`mlflow server` over a SQLite store, its artifact root served (new experiments land beside
    the SQLite file, as Store puts them; existing ones keep their recorded file locations)."""
    uri = resolve_uri(uri)
    artifacts = artifact_root(uri).as_uri()
    return mlflow_server_command(host, port, workers, artifacts, store=uri, default_artifact_root=artifacts)


def local_artifact_root(artifact_uri: str) -> Optional[Path]:
    """The folder of a run's artifacts when the store keeps them on this machine (file: or a
    bare path), else None (a server serves them, and the copy is checked after download)."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(artifact_uri)
    if parsed.scheme not in ("", "file"):
        return None
    return Path(url2pathname(parsed.path)).resolve()
