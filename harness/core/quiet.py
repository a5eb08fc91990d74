"""Quiet by default: a harness command prints what the harness says, not its libraries' chatter.

Silenced unless `-v` is given: MLflow's INFO lines ("Creating initial MLflow database tables",
alembic's migration lines, its artifact-download progress bars), TensorFlow's C++ INFO/WARNING
lines (also the two it prints while it is imported, see QuietTensorFlowImport), and deprecation
warnings raised inside third-party packages (the Starlette one `harness ui`'s server printed). The
settings go through the environment too, so the processes a command starts (the MLflow
server of `harness ui`) are quiet alike. Warnings and errors still show; `-v` shows everything.
Must run before MLflow is imported: MLflow reads MLFLOW_LOGGING_LEVEL when it is first imported.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import tempfile
import warnings

QUIET_WARNINGS = "ignore::DeprecationWarning,ignore::PendingDeprecationWarning,ignore::FutureWarning"
NOISY_LOGGERS = ("mlflow", "alembic", "absl", "urllib3", "git")
# MLflow's asynchronous logging logs every failed batch as an ERROR with the whole exception (SQL
# included); the harness receives that same exception from the batch's future (harness.track.
# tracker) and says what it means in one line, so these are shown only with -v.
ASYNC_LOGGING_LOGGER = "mlflow.utils.async_logging"

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
        logging.getLogger(ASYNC_LOGGING_LOGGER).setLevel(logging.INFO)
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
    logging.getLogger(ASYNC_LOGGING_LOGGER).setLevel(logging.CRITICAL)
    if "tensorflow" not in sys.modules and not any(isinstance(f, QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, QuietTensorFlowImport())


@contextlib.contextmanager
def stderr_to_sink():
    """File descriptor 2 sent to a temporary file for the block (C++ code writes there, not to
    sys.stderr); what was written is shown after all if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """TensorFlow 2.21 prints "oneDNN custom operations are on ..." and absl's "All log messages
    before absl::InitializeLog() ..." from C++ while it is imported, before TF_CPP_MIN_LOG_LEVEL
    applies (tensorflow#100442), twice a process. This finder meets the first `import
    tensorflow` (wherever it happens: keras, the harness's lazy imports) and runs that one import
    with stderr sent to a sink; every later import is untouched. It removes itself at once."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = QuietLoader(spec.loader)
        return spec


class QuietLoader(importlib.abc.Loader):
    """The real loader, its module's code run under stderr_to_sink; anything else asked of it
    (resource readers, say) answered by the real one."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with stderr_to_sink():
            self.loader.exec_module(module)

    def __getattr__(self, name):
        return getattr(self.loader, name)
