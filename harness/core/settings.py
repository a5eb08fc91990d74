"""Where things go: each setting with its flag, environment variable and default.

    setting     flag              environment            default
    ledger      --ledger          -                      runs.yaml
    tracking    --tracking-uri    MLFLOW_TRACKING_URI    sqlite:///mlruns/mlflow.db (artifacts beside it)
    work dir    --work-dir        HARNESS_WORK_DIR       ./mlruns/work
    data        --data            HARNESS_DATA           a synthetic set in data/ (harness.data.source)

The tracking URI is resolved by harness.track.resolve_uri; the work dir here. The work dir
holds what a run keeps locally and large: its checkpoints and run state, decoded-image caches
and frozen-backbone features. It is its own setting, never derived from the tracking URI, so a
run tracked on a remote server (http://...) keeps its files where the user says. Pure Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

DEFAULT_LEDGER = "runs.yaml"

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"

WORK_DIR_ENV = "HARNESS_WORK_DIR"
DEFAULT_WORK_DIR = Path("mlruns") / "work"


@dataclass(frozen=True)
class WorkDir:
    """The work folder:

        <root>/<run_id>/   one run's state and checkpoints (harness.train.checkpoints)
        <root>/cache/      decoded-image caches (`data.cache: disk`)
        <root>/features/   frozen-backbone features, shared by runs (harness.train.feature_cache)
    """

    root: Path

    def run(self, run_id: str) -> Path:
        """A run's own folder (created by whoever writes into it)."""
        return self.root / run_id

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def features(self) -> Path:
        return self.root / "features"


def work_dir(explicit: Optional[Union[str, Path]] = None) -> WorkDir:
    """--work-dir, else $HARNESS_WORK_DIR, else ./mlruns/work; absolute, so a later chdir
    changes nothing. Creates nothing."""
    chosen = explicit or os.environ.get(WORK_DIR_ENV) or DEFAULT_WORK_DIR
    return WorkDir(Path(chosen).expanduser().resolve())


SYSTEM_METRICS_ENV = "HARNESS_SYSTEM_METRICS"  # "0": runs log no system metrics unless asked (the tests)


def system_metrics(explicit: Optional[bool] = None) -> bool:
    """Whether a run samples MLflow's system metrics: --no-system-metrics, else
    $HARNESS_SYSTEM_METRICS (0 off), else on."""
    if explicit is not None:
        return explicit
    return os.environ.get(SYSTEM_METRICS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


LOG_MODEL_ENV = "HARNESS_LOG_MODEL"  # "0": a run logs no MLflow Model (the tests that do not use one)


def log_model() -> bool:
    """Whether a finished run logs its selected checkpoint as an MLflow Model: $HARNESS_LOG_MODEL
    (0 off), else on. Off only in tests that never load, register or serve the model: logging it
    (signature, input example, the Keras file copied) costs seconds a run there, and nothing reads it."""
    return os.environ.get(LOG_MODEL_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
