"""Quiet by default: a harness command prints what the harness says, not its libraries' chatter.

Silenced unless `-v` is given: MLflow's INFO lines ("Creating initial MLflow database tables",
alembic's migration lines, its artifact-download progress bars), TensorFlow's C++ INFO/WARNING
lines, and deprecation warnings
raised inside third-party packages (the Starlette one `harness ui`'s server printed). The
settings go through the environment too, so the processes a command starts (the MLflow
server of `harness ui`) are quiet alike. Warnings and errors still show; `-v` shows everything.
Must run before MLflow is imported: MLflow reads MLFLOW_LOGGING_LEVEL when it is first imported.
"""

from __future__ import annotations

import logging
import os
import warnings

QUIET_WARNINGS = "ignore::DeprecationWarning,ignore::PendingDeprecationWarning,ignore::FutureWarning"
NOISY_LOGGERS = ("mlflow", "alembic", "absl", "urllib3", "git")

_verbose = False


def is_verbose() -> bool:
    """Whether `-v` was given (a server's own start-up lines are then shown, not logged to a file)."""
    return _verbose


def configure(verbose: bool = False) -> None:
    """Quiet (the default) or verbose logging for this process and the ones it starts."""
    global _verbose
    _verbose = verbose
    if verbose:
        os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per checkpoint download
    if not os.environ.get("PYTHONWARNINGS"):
        os.environ["PYTHONWARNINGS"] = QUIET_WARNINGS
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
