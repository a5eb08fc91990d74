"""CIFAR-10: the standard `cifar-10-batches-py` folder, or a small synthetic stand-in.

`load_cifar10` returns an `ArrayTable` of all 60,000 images (50,000 training, then the 10,000
test images) with `predefined_split` = (training rows, test rows): the notes' val_acc (0.8929)
was measured on the test batch, so `split()` validates on it rather than carving a random
fraction out of the training set. The pipeline gathers batches straight from the array.

Nothing here downloads: the harness runs offline. With no folder given and none in Keras's
cache, the error says what to fetch and where to put it.
No TensorFlow here.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Optional, Union

import numpy as np

from harness.core.labels import CIFAR10_CLASSES
from harness.data.table import ArrayTable
from harness.core.errors import InputError

FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
DOWNLOAD_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
HEADS = {"class": CIFAR10_CLASSES}


def keras_cache_dir() -> Path:
    """Where `keras.datasets.cifar10.load_data()` leaves the extracted batches.

    Keras 3 extracts into `cifar-10-batches-py-target_extracted/cifar-10-batches-py`; older
    Keras used `~/.keras/datasets/cifar-10-batches-py` directly. The first that exists wins.
    """
    datasets = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
    candidates = [datasets / FOLDER_NAME, datasets / "cifar-10-batches-py-target_extracted" / FOLDER_NAME]
    for candidate in candidates:
        if (candidate / TEST_BATCH).is_file():
            return candidate
    return candidates[0]


def find_cifar10(data_dir: Optional[Union[str, Path]] = None) -> Optional[Path]:
    """The batches folder: `data_dir` itself or its `cifar-10-batches-py` child; with no
    `data_dir`, Keras's cached copy; None when neither holds the batches."""
    if data_dir is None:
        cached = keras_cache_dir()
        return cached if (cached / TEST_BATCH).is_file() else None
    data_dir = Path(data_dir)
    for candidate in (data_dir, data_dir / FOLDER_NAME):
        if (candidate / TEST_BATCH).is_file() or (candidate / TRAIN_BATCHES[0]).is_file():
            return candidate
    return None


def load_cifar10(data_dir: Optional[Union[str, Path]] = None) -> ArrayTable:
    """All 60,000 images, training batches first, with the standard split as predefined_split."""
    folder = find_cifar10(data_dir)
    if folder is None:
        where = Path(data_dir) if data_dir is not None else keras_cache_dir()
        raise InputError([
            f"{where}: no CIFAR-10 batches (data_batch_1..5, test_batch); download cifar-10-python.tar.gz "
            f"from {DOWNLOAD_URL} and extract it so that {where if data_dir is None else where / FOLDER_NAME} "
            f"holds them (or pass --data DIR)"
        ])
    images, labels, digest = [], [], hashlib.sha256()
    for name in TRAIN_BATCHES + (TEST_BATCH,):
        batch_images, batch_labels = _read_batch(folder / name, digest)
        images.append(batch_images)
        labels.append(batch_labels)
    n_train = sum(len(part) for part in labels[:-1])
    n_all = n_train + len(labels[-1])
    return ArrayTable(
        images=np.concatenate(images),
        labels={"class": np.concatenate(labels)},
        heads=HEADS,
        fingerprint=digest.hexdigest()[:12],
        source=str(folder),
        predefined_split=(np.arange(n_train), np.arange(n_train, n_all)),
    )


def _read_batch(path: Path, digest) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: {b'data': (N, 3072) uint8 rows as R, G, B planes, b'labels': [int]}."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError([f"{path}: file not found; a cifar-10-batches-py folder holds "
                          f"{', '.join(TRAIN_BATCHES)} and {TEST_BATCH}"]) from None
    digest.update(raw)
    try:
        batch = pickle.loads(raw, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a CIFAR-10 batch"
        raise InputError([f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc})"]) from None
    if len(images) != len(labels) or (len(labels) and not 0 <= labels.min() <= labels.max() <= 9):
        raise InputError([f"{path}: {len(images)} images but {len(labels)} labels, or labels outside 0-9"])
    return np.ascontiguousarray(images), labels


def synthetic_cifar10(n: int = 2000, seed: int = 0) -> ArrayTable:
    """A CIFAR-shaped set (32x32x3 uint8, 10 classes) a small CNN learns in a few epochs.

    Each class is a pattern family (stripes at four angles, checkerboard, rings, a square, a
    cross, a blob, a gradient) drawn with random phase, frequency jitter, colours and noise,
    so the class is in the shape, not in a single pixel or colour. Used by tests and as the
    cpu profile's stand-in when no CIFAR-10 is available. No predefined split (the ledger's
    val_fraction applies).
    """
    rng = np.random.default_rng([seed, 0xC1FA])
    labels = rng.integers(0, 10, n)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
    freq = rng.uniform(3.0, 4.5, (n, 1, 1)).astype(np.float32) * 2 * np.pi
    centre = rng.uniform(0.35, 0.65, (2, n, 1, 1)).astype(np.float32)
    pattern = np.empty((n, 32, 32), np.float32)
    for label in range(10):
        rows = labels == label
        pattern[rows] = _pattern(label, phase[rows], freq[rows], centre[0][rows], centre[1][rows])
    pattern = np.clip(pattern, -1, 1)[..., None]
    low = rng.uniform(0, 120, (n, 1, 1, 3))
    high = rng.uniform(135, 255, (n, 1, 1, 3))
    images = low + (high - low) * (pattern + 1) / 2 + rng.normal(0, 12, (n, 32, 32, 3))
    return ArrayTable(
        images=np.clip(images, 0, 255).astype(np.uint8),
        labels={"class": labels.astype(np.int64)},
        heads=HEADS,
        fingerprint=hashlib.sha256(f"synthetic-cifar10:{n}:{seed}".encode()).hexdigest()[:12],
        source=f"synthetic CIFAR-10 ({n} images, seed {seed})",
    )


def _pattern(label: int, phase, freq, cy, cx) -> np.ndarray:
    """Class `label`'s pattern in [-1, 1] for k images (parameters shaped (k, 1, 1))."""
    yy, xx = (grid[None] for grid in np.mgrid[0:32, 0:32].astype(np.float32) / 31.0)
    radius = np.hypot(yy - cy, xx - cx)
    if label == 0:  # vertical stripes
        return np.sin(freq * xx + phase)
    if label == 1:  # horizontal stripes
        return np.sin(freq * yy + phase)
    if label == 2:  # diagonal stripes
        return np.sin(freq * (xx + yy) / 1.4 + phase)
    if label == 3:  # anti-diagonal stripes
        return np.sin(freq * (xx - yy) / 1.4 + phase)
    if label == 4:  # checkerboard
        return np.sign(np.sin(freq * xx + phase) * np.sin(freq * yy + phase))
    if label == 5:  # rings
        return np.sin(freq * 1.5 * radius + phase)
    if label == 6:  # a square
        return np.where((np.abs(yy - cy) < 0.22) & (np.abs(xx - cx) < 0.22), 1.0, -1.0)
    if label == 7:  # a cross
        return np.where((np.abs(yy - cy) < 0.08) | (np.abs(xx - cx) < 0.08), 1.0, -1.0)
    if label == 8:  # a round blob
        return np.where(radius < 0.25, 1.0, -1.0)
    return (xx * 2 - 1) * np.cos(phase) + (yy * 2 - 1) * np.sin(phase)  # 9: a linear gradient
