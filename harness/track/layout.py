"""The layout of a run in MLflow, as helpers the store, tracker and readers share: its tags and
params, git's tags, the search for parent runs, an MLflow run as a `RunRecord`.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from mlflow.entities import Param, ViewType


from harness.ledger.schema import Iteration
from harness.ledger.diffing import flatten
from harness.core.records import (KIND_ITERATION, TAG_CONFIG_SHA, TAG_EXTENDS, TAG_GIT_DIRTY, TAG_ITERATION, TAG_KIND, RunRecord)

if TYPE_CHECKING:  # an annotation only: the store imports this module
    from harness.track.store import Store


def git_tags(cwd: Optional[Path] = None) -> dict:
    """Commit and dirty flag of the code that ran (empty outside a git checkout)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if head.returncode != 0:
        return {}
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
    return {"mlflow.source.git.commit": head.stdout.strip(), TAG_GIT_DIRTY: str(dirty).lower()}


def run_record(run) -> RunRecord:
    return RunRecord(run_id=run.info.run_id, name=run.info.run_name, status=run.info.status,
                     start_time=run.info.start_time, end_time=run.info.end_time, tags=dict(run.data.tags),
                     metrics=dict(run.data.metrics), params=dict(run.data.params),
                     steps={m.key: m.step for m in run.data.to_proto().metrics})


def now_ms() -> int:
    return int(time.time() * 1000)


def param_value(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def params_of(values: dict, prefix: str = "") -> list:
    return [Param(k, param_value(v)) for k, v in flatten(values, prefix).items()]


def run_tags(iteration: Iteration) -> dict:
    """An iteration's parent-run tags, before git's and the caller's (ledger, profile, data)."""
    return {TAG_KIND: KIND_ITERATION, TAG_ITERATION: iteration.name, TAG_EXTENDS: iteration.extends or "",
            TAG_CONFIG_SHA: iteration.config_sha(), "mlflow.source.name": "harness run",
            "mlflow.source.type": "LOCAL"}


def search(store: "Store", experiment: str, query: str, max_results: int = 5000) -> list:
    """Active runs of an experiment matching `query`, newest first ([] if it does not exist)."""
    exp_id = store.experiment_id(experiment, create=False)
    if exp_id is None:
        return []
    return store._client.search_runs([exp_id], query, run_view_type=ViewType.ACTIVE_ONLY,
                                     max_results=max_results, order_by=["attributes.start_time DESC"])
