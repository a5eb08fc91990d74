"""The harness from Python: a notebook, a script. The CLI's commands, returning data.

    from harness import api

    book = api.load_ledger()                                   # runs.yaml (or the ledger holding ITER)
    run = api.run("eleventh", profile="smoke", overrides={"optimizer.lr": 3e-4})
    run.run_id, run.metrics["selected_val_gender_acc"]
    api.table()                                                # DataFrame: `harness table --format json`
    api.runs("eleventh")                                       # DataFrame: `harness runs eleventh --json`
    api.compare("tenth", "eleventh")                           # dict: `harness compare tenth eleventh --json`
    api.predict("eleventh", ["photo.jpg"])                     # DataFrame: a row per image
    api.reproduce(run.run_id)                                  # trains it again, compares old and new

Each function is what its command runs (harness.cli calls the same code: `run --set`, `--save-as`,
`reproduce` and `table`, `runs`, `compare` through the same functions), with the same arguments as
keywords: `ledger=` (--ledger), `tracking_uri=`, `work_dir=`, `profile=`, `data=`. Bad input
raises `harness.core.errors.InputError` (the CLI's exit 2), whose `lines` say what. Training prints
its progress with `print` (or `log=`); outside a terminal (a Jupyter cell, a file) that is a plain
line per interval and per epoch, never a redrawn bar (harness.train.progress). `table`, `runs` and
`compare` import no TensorFlow. Little logic of its own: it makes the calls the commands make
and turns their JSON into DataFrames. May import every package below harness.cli.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

from harness.core.errors import InputError
from harness.core.settings import DEFAULT_LEDGER

__all__ = ["load_ledger", "run", "table", "runs", "compare", "predict", "reproduce", "Reproduced"]


def load_ledger(path: Optional[Union[str, Path]] = None, iteration: Optional[str] = None):
    """The ledger (`harness.ledger.Ledger`): `path`, else the one holding `iteration` (runs.yaml
    first, then experiments/*.yaml), else runs.yaml. `.names`, `.resolve(name, profile)`."""
    from harness import ledger
    from harness.ledger.locate import locate

    found = locate(iteration, str(path) if path else None) if iteration else None
    return ledger.load(found.path if found else (path or DEFAULT_LEDGER))


def _overrides(overrides) -> list[str]:
    """{"optimizer.lr": 3e-4} or ["optimizer.lr=3e-4"] -> `--set` flags."""
    if not overrides:
        return []
    if isinstance(overrides, dict):
        return [f"{path}={value if isinstance(value, str) else json.dumps(value)}" for path, value in overrides.items()]
    return list(overrides)


def run(iteration: str, *, profile: Optional[str] = None, data: Optional[str] = None, overrides=None,
        ledger: Optional[str] = None, fresh: bool = False, limit: Optional[int] = None, save_as: Optional[str] = None,
        tracking_uri: Optional[str] = None, work_dir: Optional[str] = None, system_metrics: Optional[bool] = None,
        log=print):
    """Train `iteration` (`harness run ITER`); returns the run's `RunRecord` (run_id, status, tags,
    metrics: the latest value of each, summary metrics included). `overrides` ({path: value} or
    ["path=value"]) trains a variant (`--set`); with `save_as` it is written into the ledger as that
    iteration first and trained as it (`--save-as`)."""
    from harness import ledger as ledger_mod
    from harness.run.launch import run_iteration
    from harness.run.variant import override_run, save_variant
    from harness.track.store import Store

    book = load_ledger(ledger, iteration)
    book.resolve(iteration)
    variant = override_run(book, iteration, _overrides(overrides), fresh)
    if save_as:
        if variant is None:
            raise InputError("--save-as NAME saves a variant: give its changes with overrides=")
        line = save_variant(book, iteration, variant, save_as)
        log(f"{book.path}:{line}: added iteration {save_as} (extends {iteration}): {variant.overrides.label()}")
        book, iteration, variant = ledger_mod.load(book.path), save_as, None
    opened: list[str] = []
    code = run_iteration(book, iteration, profile=profile, data_dir=data, fresh=fresh, tracking_uri=tracking_uri,
                         work_dir=work_dir, limit=limit, variant=variant, system_metrics=system_metrics, log=log,
                         on_run=opened.append)
    record = Store(tracking_uri).run(opened[-1]) if opened else None
    if code and record is None:
        raise RuntimeError(f"{iteration}: training failed (exit {code})")
    return record


def _printed(command, *args, **kwargs):
    """What a report command prints as JSON (its `--json`), parsed."""
    lines: list[str] = []
    command(*args, log=lines.append, **kwargs)
    return json.loads("\n".join(lines))


def table(*, ledger: Optional[str] = None, tracking_uri: Optional[str] = None):
    """The results table's rows as a DataFrame: exactly `harness table --format json` (one row per
    iteration, then the references; raw numbers). Variant (`--set`) runs are never an iteration's row."""
    import pandas as pd

    from harness.report.table import run_table

    book = load_ledger(ledger)
    return pd.DataFrame(_printed(run_table, book, str(book.path), fmt="json", tracking_uri=tracking_uri))


def runs(iteration: Optional[str] = None, *, ledger: Optional[str] = None, tracking_uri: Optional[str] = None):
    """Every run of the experiment (or of `iteration`), variants included, newest first, as a
    DataFrame of `harness runs --json`'s objects."""
    import pandas as pd

    from harness.report.runs import run_list

    book = load_ledger(ledger, iteration)
    return pd.DataFrame(_printed(run_list, book, iteration, tracking_uri=tracking_uri, as_json=True))


def compare(a: str, b: str, *more: str, ledger: Optional[str] = None, tracking_uri: Optional[str] = None,
            show: bool = False) -> dict:
    """Runs side by side (iterations: their latest finished runs; or run ids / prefixes): the dict
    `harness compare A B --json` prints ({"runs", "config_diff", "metrics", ...}); `show` also
    prints the CLI's text."""
    from harness.report.compare import compare_runs

    book = load_ledger(ledger, a if not more else None)
    wanted = [a, b, *more]
    if show:
        compare_runs(book, wanted, tracking_uri=tracking_uri)
    return _printed(compare_runs, book, wanted, tracking_uri=tracking_uri, as_json=True)


def predict(model_or_iter: str, images: Union[str, Path, Iterable[Union[str, Path]]], *,
            ledger: Optional[str] = None, tracking_uri: Optional[str] = None):
    """Each image's label and probability per head (`harness predict`): a DataFrame, a row per
    image (`path`, then `{head}` and `{head}_prob`), from an iteration's latest finished run or a
    models:/NAME@ALIAS (runs:/) URI. Images: files or folders. Unreadable images: an `error` row."""
    import pandas as pd

    from harness.serve.predict import collect, predict_files
    from harness.serve.registry import model_uri_for
    from harness.track.models import load_predictor
    from harness.track.store import Store

    paths = [str(images)] if isinstance(images, (str, Path)) else [str(p) for p in images]
    inputs = collect(paths)
    if inputs.missing or not inputs.files:
        raise InputError([f"predict: {bad}" for bad in inputs.missing] or [f"predict: no image files in {paths}"])
    store = Store(tracking_uri)
    predictor = load_predictor(store, model_uri_for(store, lambda: load_ledger(ledger, model_or_iter), model_or_iter))
    frame, bad = predict_files(predictor, inputs.files)
    if bad:
        frame = pd.concat([frame, pd.DataFrame([{"path": b.where, "error": b.reason} for b in bad])], ignore_index=True)
    return frame


@dataclass
class Reproduced:
    """`harness reproduce`'s outcome: exit code, the old and new run ids, `compare`'s dict of them."""

    code: int
    old: str
    new: Optional[str]
    comparison: Optional[dict]


def reproduce(run_id: str, *, strict: bool = False, at_commit: bool = False, data: Optional[str] = None,
              tracking_uri: Optional[str] = None, work_dir: Optional[str] = None,
              system_metrics: Optional[bool] = None, log=print) -> Reproduced:
    """Train run `run_id`'s recorded config again (harness.run.reproduce), then print old and new
    side by side through `compare` (and return its dict)."""
    from harness.report.compare import compare_runs
    from harness.run.reproduce import reproduce as train_again

    started = time.perf_counter()
    code, old, new = train_again(run_id, tracking_uri=tracking_uri, work_dir=work_dir, data_dir=data, strict=strict,
                                 at_commit=at_commit, system_metrics=system_metrics, log=log)
    comparison = None
    if new:
        from harness.core.records import TAG_LEDGER
        from harness.track.store import Store

        record = Store(tracking_uri).run(old)
        ledger_path = record.tags.get(TAG_LEDGER, DEFAULT_LEDGER)
        if Path(ledger_path).exists():
            book = load_ledger(ledger_path)
            log(f"reproduce: old run {old[:8]} vs new run {new[:8]} ({time.perf_counter() - started:.0f} s):")
            compare_runs(book, [old, new], tracking_uri=tracking_uri, log=log)
            comparison = _printed(compare_runs, book, [old, new], tracking_uri=tracking_uri, as_json=True)
        else:
            log(f"reproduce: new run {new}; the ledger {ledger_path} is gone, so `harness compare {old[:8]} {new[:8]}` "
                f"needs --ledger")
    return Reproduced(code, old, new, comparison)
