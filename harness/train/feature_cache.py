"""The frozen-backbone feature cache: backbone features computed once, the neck and heads
trained on them.

When a pass's backbone is frozen and no augmentation changes pixels between epochs, every epoch
would push the same images through the same backbone. Instead its features are computed once for
every row of the table (`harness.models.feature_model`: pixel encoding, preprocessing and
backbone), and the pass fits `harness.models.head_model` (the full model's own neck and towers)
on datasets of those features that follow the image stream's order step for step. Checkpoints
stay whole models. No YAML, no MLflow.

Where the features live. With `FeatureInputs.folder` (the work dir's `features/`, settings.WorkDir)
they persist there and are shared by every iteration and process that would compute the same
numbers:

    features/<backbone>-<S>px-<key16>.npy    float32 (n_rows, *feature shape), read memory-mapped
    features/<backbone>-<S>px-<key16>.json   what it is: key, backbone, image size, pixels, data
                                             fingerprint, rows, shape, dtype, bytes, seconds,
                                             created, by (iteration, pid, host)
    features/<backbone>-<S>px-<key16>.lock   the per-key file lock (filelock)

The key (`feature_key`) is a sha256 over everything the features depend on: the exact bytes of
every weight of the feature model, the JSON configs of its layers (any pixel-encoding or
preprocessing layer in front of the backbone included; layer names canonicalised, so two builds
of one architecture agree), its input shape, the table's data fingerprint and the rows. Features
are computed for every row of the table, so iterations with different splits share one file.

Concurrency: a writer holds the key's lock, writes `<name>.<pid>.partial.npy` in the same folder
and `os.replace`s it (then the sidecar), so a half-written file is never read under the final
name; a second process waits on the lock and then hits. A file that does not match its sidecar
(truncated, wrong shape, dtype or size, unreadable) is recomputed, with a line saying why.

Without a folder (or without a data fingerprint) features stay in this process: the last few
arrays are kept so later runs here on the same inputs (a sweep's trials) reuse them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from harness.ledger.schema import Iteration

MiB = 2 ** 20
# Features are computed in chunks of about this many bytes of output (a multiple of the eval
# batch), written straight into the memory-mapped file: never the whole array twice in memory.
_CHUNK_BYTES = 64 * MiB


@dataclass
class FeatureInputs:
    """What the cache needs from the data: the table rows to compute features for (all of
    them), the table's length, and how to turn a row-indexed feature array into datasets
    (harness.data.pipeline.make_datasets with `features=`)."""

    rows: np.ndarray
    n_rows: int
    build: Callable
    # The table's data fingerprint; empty: the features are never shared beyond this run.
    fingerprint: str = ""
    # Where features persist (settings.WorkDir.features); None: kept in this process only.
    folder: Optional[Path] = None
    batch: int = 64  # the eval batch size the images are batched with for the backbone pass
    # For the sidecar and the lines: backbone, image_size, pixels, iteration.
    about: dict = field(default_factory=dict)

    @classmethod
    def of(cls, iteration, table, train_idx, val_idx, folder: Optional[Path] = None) -> "FeatureInputs":
        """For a split of a table: features for every row of the table, turned into datasets of
        the split's train and val rows that follow the image stream's order. With `folder`,
        persisted and shared there."""
        from harness.data.pipeline import make_datasets

        pixels = getattr(iteration.data, "pixels", None)
        about = {"iteration": iteration.name, "backbone": iteration.backbone.name,
                 "weights": iteration.backbone.weights, "image_size": iteration.data.image_size,
                 "pixels": pixels.model_dump() if hasattr(pixels, "model_dump") else pixels}
        return cls(rows=np.arange(len(table), dtype=np.int64), n_rows=len(table),
                   fingerprint=str(getattr(table, "fingerprint", "") or ""),
                   folder=Path(folder) if folder is not None else None,
                   batch=int(iteration.batch_size.eval), about=about,
                   build=lambda array: make_datasets(iteration, table, train_idx, val_idx, features=array))


def applies(iteration: Iteration, pass_index: int) -> bool:
    """Features can stand in for images only when the backbone cannot change (frozen for the
    whole pass) and the images cannot either (no flip or cutout between epochs). The same rule
    the cpu profile sizes such passes by (harness.ledger's Iteration.on_cached_features)."""
    return iteration.on_cached_features(pass_index)


# --------------------------------------------------------------------------- the key


def _layer_names(model, names: set) -> set:
    names.add(model.name)
    for layer in model.layers:
        names.add(layer.name)
        if hasattr(layer, "layers"):
            _layer_names(layer, names)
    return names


def _canonical(value, names: set, renamed: dict):
    """A model config with layer names replaced by their order of appearance and `trainable`
    dropped (neither changes what the model computes)."""
    if isinstance(value, dict):
        return {k: _canonical(v, names, renamed) for k, v in sorted(value.items()) if k != "trainable"}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, names, renamed) for v in value]
    if isinstance(value, str) and value in names:
        return renamed.setdefault(value, f"#{len(renamed)}")
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def feature_key(features_model, inputs: FeatureInputs) -> str:
    """sha256 of everything the features depend on (see the module docstring)."""
    digest = hashlib.sha256()
    config = _canonical(features_model.get_config(), _layer_names(features_model, set()), {})
    head = {"config": config, "input_shape": list(features_model.input_shape[1:]),
            "data": inputs.fingerprint, "n_rows": int(inputs.n_rows)}
    digest.update(json.dumps(head, sort_keys=True, default=repr).encode())
    digest.update(hashlib.sha256(np.ascontiguousarray(inputs.rows, dtype=np.int64).tobytes()).digest())
    for variable in features_model.weights:
        array = np.ascontiguousarray(np.asarray(variable.numpy()))
        digest.update(f"{variable.path}|{array.dtype.str}|{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- the files


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _mib(nbytes: int) -> str:
    return f"{nbytes / MiB:.0f} MiB" if nbytes >= 10 * MiB else f"{nbytes / MiB:.1f} MiB"


def _load(path: Path, sidecar: Path, key: str, shape: tuple) -> tuple[Optional[np.ndarray], dict, str]:
    """(the memory-mapped array, its sidecar, "") when both are there and agree; else
    (None, {}, why not). Never raises for a damaged file."""
    if not path.exists() and not sidecar.exists():
        return None, {}, "absent"
    try:
        about = json.loads(sidecar.read_text())
    except FileNotFoundError:
        return None, {}, f"its sidecar {sidecar.name} is missing"
    except (OSError, ValueError) as exc:
        return None, {}, f"its sidecar {sidecar.name} is unreadable ({exc.__class__.__name__})"
    if not isinstance(about, dict) or about.get("key") != key:
        return None, {}, f"its sidecar {sidecar.name} describes other features"
    if list(about.get("shape", [])) != list(shape) or about.get("dtype") != "float32":
        return None, {}, (f"the sidecar says shape {tuple(about.get('shape', ()))} {about.get('dtype')}, "
                          f"expected {tuple(shape)} float32")
    try:
        size = path.stat().st_size
        if size != about.get("bytes"):
            return None, {}, f"the file has {size:,} bytes, its sidecar says {about.get('bytes'):,}"
        array = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        return None, {}, "the .npy file is missing"
    except (OSError, ValueError, TypeError, EOFError) as exc:
        return None, {}, f"the .npy file is unreadable ({exc})"
    if array.shape != tuple(shape) or array.dtype != np.float32:
        return None, {}, f"the file holds {array.shape} {array.dtype}, expected {tuple(shape)} float32"
    return array, about, ""


def _compute_into(features_model, images, rows: np.ndarray, batch: int, out: np.ndarray) -> None:
    """feature_model.predict over `rows`, in chunks of whole eval batches, into `out`."""
    per_row = int(np.prod(out.shape[1:])) * out.dtype.itemsize
    chunk = max(batch, (_CHUNK_BYTES // max(per_row, 1)) // batch * batch)
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        out[start:start + len(part)] = features_model.predict(images.rows(part).map(lambda x, y: x), verbose=0)


# Without a folder, feature arrays outlive one run in this process: a sweep's trials train on
# the same images through the same seeded, frozen backbone. The last few, by key.
_RECENT: dict = {}
_KEEP = 2


class FeatureCache:
    """Datasets of backbone features per feature key: passes that reload the same frozen
    backbone reuse them, and so do later runs, here or (with a folder) in any process."""

    def __init__(self, images, inputs: FeatureInputs, log=print):
        self.images, self.inputs, self.log = images, inputs, log
        self._computed: dict = {}
        self.last_path: Optional[Path] = None  # the file the last datasets_for read or wrote

    def datasets_for(self, model):
        """Feature datasets (harness.data.pipeline.Datasets) for `model`'s current backbone."""
        from harness.models import feature_model

        features_model = feature_model(model)
        key = feature_key(features_model, self.inputs)
        if key not in self._computed:
            shape = (self.inputs.n_rows, *features_model.output_shape[1:])
            if self.inputs.folder is not None and self.inputs.fingerprint:
                array = self._persisted(features_model, key, shape)
            else:
                array = self._in_memory(features_model, key, shape)
            self._computed[key] = self.inputs.build(array)
        return self._computed[key]

    # ----------------------------------------------------------------------- in this process

    def _in_memory(self, features_model, key: str, shape: tuple) -> np.ndarray:
        n = len(self.inputs.rows)
        if self.inputs.fingerprint and key in _RECENT:
            self.log(f"feature cache: the backbone features of {n} images, computed by an earlier run in "
                     f"this process on the same images and backbone, reused")
            return _RECENT[key]
        started = time.perf_counter()
        features = np.zeros(shape, np.float32)
        _compute_into(features_model, self.images, self.inputs.rows, self.inputs.batch, features)
        if self.inputs.fingerprint:
            _RECENT[key] = features
            while len(_RECENT) > _KEEP:
                _RECENT.pop(next(iter(_RECENT)))
        self.log(f"feature cache: backbone features of {n} images computed once "
                 f"({time.perf_counter() - started:.1f} s, {_mib(features.nbytes)} in memory); "
                 f"the neck and heads train on them (compute.feature_cache: false turns this off)")
        return features

    # ----------------------------------------------------------------------- in the work dir

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        about = self.inputs.about
        stem = f"{about.get('backbone', 'backbone')}-{about.get('image_size', 'x')}px-{key[:16]}"
        folder = self.inputs.folder
        return folder / f"{stem}.npy", folder / f"{stem}.json", folder / f"{stem}.lock"

    def _hit(self, path: Path, about: dict, array: np.ndarray, waited: bool) -> np.ndarray:
        by = about.get("by", {})
        who = f"iteration {by.get('iteration', '?')} by pid {by.get('pid', '?')} on {by.get('host', '?')}"
        self.log(f"feature cache: hit, backbone features of {array.shape[0]} images read from {path} "
                 f"({_mib(path.stat().st_size)}, memory-mapped; computed for {who} at {about.get('created', '?')} "
                 f"in {about.get('seconds', 0):.1f} s){', after waiting for that process' if waited else ''}; "
                 f"no backbone pass")
        self.last_path = path
        return array

    def _persisted(self, features_model, key: str, shape: tuple) -> np.ndarray:
        from filelock import FileLock, Timeout

        path, sidecar, lock_path = self._paths(key)
        array, about, why = _load(path, sidecar, key, shape)
        if array is not None:
            return self._hit(path, about, array, waited=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path))
        waited = False
        try:
            lock.acquire(timeout=0)
        except Timeout:
            self.log(f"feature cache: another process is computing {path.name}; waiting for it")
            lock.acquire()
            waited = True
        try:
            array, about, why = _load(path, sidecar, key, shape)
            if array is not None:
                return self._hit(path, about, array, waited)
            if why != "absent":
                self.log(f"feature cache: {path} cannot be used ({why}); computing it again")
            return self._write(features_model, key, shape, path, sidecar)
        finally:
            lock.release()

    def _write(self, features_model, key: str, shape: tuple, path: Path, sidecar: Path) -> np.ndarray:
        """Compute into a temporary file beside `path`, then os.replace it and the sidecar in.
        The caller holds the key's lock."""
        for stale in path.parent.glob(f"{path.stem}.*.partial*"):  # a killed writer's leftovers
            stale.unlink(missing_ok=True)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npy")
        partial_sidecar = sidecar.with_name(f"{sidecar.stem}.{os.getpid()}.partial.json")
        started = time.perf_counter()
        try:
            out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=shape)
            _compute_into(features_model, self.images, self.inputs.rows, self.inputs.batch, out)
            out.flush()
            del out
            seconds = time.perf_counter() - started
            about = {"key": key, **self.inputs.about, "data": self.inputs.fingerprint,
                     "rows": int(self.inputs.n_rows), "shape": list(shape), "dtype": "float32",
                     "bytes": partial.stat().st_size, "seconds": round(seconds, 3), "created": _now(),
                     "by": {"iteration": self.inputs.about.get("iteration"), "pid": os.getpid(),
                            "host": socket.gethostname()}}
            partial_sidecar.write_text(json.dumps(about, indent=2, default=str) + "\n")
            os.replace(partial, path)
            os.replace(partial_sidecar, sidecar)
        finally:
            partial.unlink(missing_ok=True)
            partial_sidecar.unlink(missing_ok=True)
        array = np.load(path, mmap_mode="r")
        self.last_path = path
        self.log(f"feature cache: backbone features of {shape[0]} images computed once "
                 f"({seconds:.1f} s, {_mib(path.stat().st_size)}) into {path}, shared by later runs on the same "
                 f"backbone, images and size; the neck and heads train on them "
                 f"(compute.feature_cache: false turns this off)")
        return array
