"""`harness register`, `harness models` and `harness predict`: a finished run's model after training.

Every finished `harness run` logs its selected checkpoint as an MLflow Model (harness.track,
harness.serve.predict). `register ITER [--alias A]` makes the latest finished run's model a new version
of the registered model named after the ledger's experiment (person-attributes), one registered
model per ledger; `models` lists the versions; `predict` runs a model, given as an iteration
(its latest finished run) or any models:/ URI (`models:/person-attributes@champion`), on image
files and folders. No TensorFlow here: `predict` loads it with the model.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Optional

from harness.core import metrics
from harness.core.errors import InputError
from harness.core.records import TAG_DATA_DIR, TAG_ITERATION, TAG_SYNTHETIC, ModelVersionRecord, RunRecord

URI_SCHEMES = ("models:/", "runs:/")


def _finished_run(store, book, iteration: str) -> RunRecord:
    book.resolve(iteration)  # an unknown name fails here, naming the ledger
    run = store.latest_finished(book.experiment, iteration)
    if run is None:
        raise InputError(f"{iteration}: no finished run in experiment '{book.experiment}' of {store.uri}; "
                         f"train it first with `make run ITER={iteration}`")
    return run


def register_iteration(book, iteration: str, *, alias: Optional[str] = None, tracking_uri: Optional[str] = None,
                       log=print) -> ModelVersionRecord:
    """The latest finished run of `iteration` registered under the ledger's experiment name."""
    from harness.track.store import Store
    from harness.track.models import register

    store = Store(tracking_uri)
    run = _finished_run(store, book, iteration)
    version = register(store, book.experiment, run, alias)
    moved = f"; alias {alias} -> version {version.version}" if alias else ""
    target = f"models:/{version.name}@{alias}" if alias else f"models:/{version.name}/{version.version}"
    log(f"registered {version.name} version {version.version} from run {run.run_id[:8]} ({iteration}, data "
        f"{data_label(run)}){moved}. Use it: harness predict {target} IMAGE...")
    return version


def data_label(run: Optional[RunRecord]) -> str:
    """The data a run trained on, as the listing shows it: the folder's name, marked when synthetic."""
    if run is None:
        return "?"
    folder = Path(run.tags.get(TAG_DATA_DIR, "")).name or run.data_fingerprint or "?"
    return folder + (" (synthetic)" if run.tags.get(TAG_SYNTHETIC) == "true" else "")


def primary_accuracy(run: Optional[RunRecord]) -> tuple[str, Optional[float]]:
    """(primary head, the run's validation accuracy of it): the selected checkpoint's when the
    run logged it, else the best epoch's."""
    dataset = run.params.get("data.name", "hvc") if run is not None else "hvc"
    head = metrics.primary_head(dataset)
    if run is not None:
        for name in (metrics.selected_name(dataset, head, metrics.ACC.short), metrics.best_val_acc(dataset)):
            if name in run.metrics:
                return head, run.metrics[name]
    return head, None


def list_models(book, *, tracking_uri: Optional[str] = None, as_json: bool = False, out=None) -> int:
    """Every version of the ledger's registered model, newest first."""
    from tabulate import tabulate

    out = out or sys.stdout
    from harness.track.store import Store
    from harness.track.models import model_versions
    from harness.track.uris import store_exists

    versions = model_versions(Store(tracking_uri), book.experiment) if store_exists(tracking_uri) else []
    rows = [_row(version) for version in versions]
    if as_json:
        print(json.dumps(rows, indent=1), file=out)
    elif not rows:
        print(f"no registered versions of '{book.experiment}' yet: harness register ITER --alias champion", file=out)
    else:
        print(tabulate([list(row.values()) for row in rows], headers=list(rows[0]), tablefmt="github",
                       floatfmt=".4f"), file=out)
    return 0


def _row(version: ModelVersionRecord) -> dict:
    head, accuracy = primary_accuracy(version.run)
    created = datetime.datetime.fromtimestamp(version.created / 1000).strftime("%Y-%m-%d %H:%M") if version.created else ""
    return {"version": int(version.version), "aliases": ", ".join(version.aliases),
            "iteration": version.tags.get(TAG_ITERATION) or (version.run.iteration if version.run else ""),
            "data": data_label(version.run), f"val {head} acc": accuracy, "run": version.run_id[:8], "created": created}


def model_uri_for(store, book_loader, target: str) -> str:
    """A models:/ or runs:/ URI as given; an iteration name -> its latest finished run's model."""
    from harness.track.models import model_uri

    if target.startswith(URI_SCHEMES):
        return target
    book = book_loader()
    run = _finished_run(store, book, target)
    uri = model_uri(store, run.run_id)
    if uri is None:
        raise InputError(f"{target}: run {run.run_id} logged no MLflow Model (it finished before models were logged); "
                         f"train it again with `harness run {target} --fresh`")
    return uri


def predict(target: str, paths: list[str], *, book_loader, tracking_uri: Optional[str] = None, as_json: bool = False,
            out_csv: Optional[str] = None, log=print, err=None) -> int:
    """Each image's label and probability per head; bad images named with the reason on stderr.
    Exit code 1 when any image failed, 0 otherwise; a path that does not exist is bad input."""
    from harness.serve.predict import as_json as json_rows, collect, describe_row, predict_files
    from harness.track.store import Store
    from harness.track.models import load_predictor

    err = err or (lambda line: print(line, file=sys.stderr))
    inputs = collect(paths)
    if inputs.missing:
        raise InputError([f"harness predict: {bad}" for bad in inputs.missing])
    if not inputs.files:
        raise InputError(f"harness predict: no image files in {', '.join(paths)} (looked for "
                         f"{', '.join(sorted({'.jpg', '.jpeg', '.png'}))}, ...)")
    store = Store(tracking_uri)
    predictor = load_predictor(store, model_uri_for(store, book_loader, target))
    frame, bad = predict_files(predictor, inputs.files)
    heads = list(predictor.card.heads)
    if out_csv:
        Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out_csv, index=False)
        err(f"wrote {len(frame)} predictions ({len(heads)} heads) to {out_csv}")
    if as_json:
        log(json.dumps(json_rows(frame, heads) + [{"path": b.where, "error": b.reason} for b in bad], indent=1))
    elif not out_csv:
        for _, row in frame.iterrows():
            log(f"{row['path']}: {describe_row(row, heads)}")
    for item in bad:
        err(f"error: {item.where}: {item.reason}")
    if bad:
        err(f"{len(bad)} of {len(inputs.files)} image(s) could not be predicted")
    return 1 if bad else 0
