"""`harness eval ITER`: the iteration's selected checkpoint evaluated on a data folder, with a warning
when the folder holds images the run trained on.
"""

from __future__ import annotations


import numpy as np
from pathlib import Path
from typing import Optional

from harness.core import metrics
from harness.core.errors import InputError
from harness.core.records import (RunRecord)


from harness.run.prepare import TRAINING_IMAGES


def evaluate_iteration(book, name: str, *, data_dir: Optional[str], tracking_uri: Optional[str] = None,
                       work_dir: Optional[str] = None, log_to_run: bool = False) -> dict:
    """The notes' evaluate dict, plus each head's balanced accuracy, for the selected checkpoint of
    the latest finished run: on the run's own validation split, or on every image of another
    folder in the same format (a held-out set, say), checked for images the run trained on.
    The checkpoint is downloaded into the work dir."""
    from harness.core.settings import work_dir as resolve_work_dir
    from harness.track.store import Store

    book.resolve(name)
    store = Store(tracking_uri)
    run = store.latest_finished(book.experiment, name)
    if run is None:
        raise InputError(f"{name}: no finished run in experiment '{book.experiment}' of {store.uri}; "
                         f"train it first with `make run ITER={name}`")
    iteration = book.resolve(name, run.profile)
    table, rows, scored = _eval_rows(run, iteration, data_dir)
    warning = None if data_dir is None else _overlap_warning(store, run, table, rows)
    work = resolve_work_dir(work_dir)
    work.root.mkdir(parents=True, exist_ok=True)
    result = _evaluate_checkpoint(store, run, iteration, table, rows, work.root)
    if log_to_run:
        store.attach(run.run_id, result, f"eval/{Path(str(data_dir)).name or 'data'}.json")
    return {"run_id": run.run_id, "profile": run.profile, "eval": result, "images": len(rows), "scored": scored,
            "warning": warning}


def _eval_rows(run: RunRecord, iteration, data_dir: Optional[str]):
    """(table, rows, what they are): the run's validation split when no folder is given, else
    every image of the folder (CIFAR-10: its test batch)."""
    from harness.data.source import open_dataset
    from harness.data.split import split

    if data_dir is None:
        table, _ = open_dataset(iteration, run.data_dir or None)
        data = iteration.data
        parts = split(table, data.val_fraction, data.split_seed, validate_on_train=data.validate_on_train)
        changed = "" if table.fingerprint == run.data_fingerprint else " (WARNING: the data changed since the run)"
        return table, parts.val, f"the run's validation split of {run.data_dir or table.name}{changed}"
    if iteration.data.name == "cifar10":
        from harness.data.cifar10 import load_cifar10

        table = load_cifar10(data_dir)
        rows = table.predefined_split[1] if table.predefined_split is not None else np.arange(len(table))
        return table, rows, f"{data_dir}"
    from harness.data.hvc import load_hvc

    table = load_hvc(data_dir)
    return table, np.arange(len(table)), f"every image of {data_dir}"


def _overlap_warning(store, run: RunRecord, table, rows) -> Optional[str]:
    """A line when the evaluated images include the run's training images (by path or bytes)."""
    import json
    import tempfile

    from harness.data.overlap import overlap

    with tempfile.TemporaryDirectory(prefix="eval-") as tmp:
        try:
            record = json.loads(store.download(run.run_id, TRAINING_IMAGES, Path(tmp)).read_text())
        except InputError:
            raise
        except Exception:  # a run from before training rows were recorded
            return (f"WARNING: run {run.run_id[:8]} has no record of its training images ({TRAINING_IMAGES}), "
                    f"so overlap with them was not checked")
    found = overlap(record, table, rows)
    if not found.shared:
        return None
    return (f"WARNING: {found.shared} of {len(rows)} images are training images of run {run.run_id[:8]} "
            f"({found.by_path} by path, {found.by_content} by identical content; e.g. {found.example}): "
            f"these numbers are not held-out")


def _evaluate_checkpoint(store, run: RunRecord, iteration, table, rows, scratch: Path) -> dict:
    from harness.core.labels import heads_for

    dataset_name = iteration.data.name
    heads = heads_for(dataset_name)
    logs, predictions = checkpoint_outputs(store, run, iteration, table, rows, scratch)
    scores = metrics.selected_summary({head: table.labels[head][rows] for head in heads}, predictions, dataset_name, None)
    balanced = {metrics.head_metric(dataset_name, head, metrics.BALANCED_ACC):
                scores[metrics.selected_name(dataset_name, head, metrics.BALANCED_ACC)] for head in heads}
    return dict(sorted({**metrics.from_keras_logs(logs, dataset_name), **balanced}.items()))


def checkpoint_outputs(store, run: RunRecord, iteration, table, rows, scratch: Path) -> tuple[dict, dict]:
    """(Keras's evaluate logs, head -> argmax class per row) of the run's selected checkpoint on
    `rows` of `table`: what `harness eval` scores, and what the run's predictions artifact must equal."""
    import tempfile

    from harness.core.labels import heads_for
    from harness.data.pipeline import eval_dataset
    from harness.models import load_model
    from harness.train import build_now, labels_for_model
    from harness.train.loop import predicted_classes

    heads = heads_for(iteration.data.name)
    with tempfile.TemporaryDirectory(prefix="eval-", dir=scratch) as tmp:
        checkpoint = store.download(run.run_id, "checkpoint", Path(tmp))
        files = sorted(Path(checkpoint).glob("*.keras"))
        if not files:
            raise InputError(f"{iteration.name}: run {run.run_id} has no checkpoint artifact")
        model = load_model(files[0])
        dataset = labels_for_model(eval_dataset(table, rows, iteration), heads)
        build_now(model, dataset)
        logs = model.evaluate(dataset, return_dict=True, verbose=0)
        return logs, predicted_classes(model, dataset.map(lambda x, y: x), heads)
