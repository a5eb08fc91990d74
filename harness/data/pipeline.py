"""The tf.data input pipeline: table + split + iteration -> training and validation datasets.

Elements are `(image, labels)`: image float32 RGB in [0, 1] of shape (S, S, 3), labels a dict
`{f"{head}_output": one-hot float32}` (cifar10: `class_output`), batched. The ledger's pixel
encoding (`data.pixels`: the notes' BGR 0-255, a training mean) is the model's first layer
(harness.data.pixels), so every path into a model feeds it these same [0, 1] images; for a
per-pixel mean, `Datasets.pixel_mean` is the training split's.

Training is an endless stream of epochs, each exactly `steps_per_epoch` full batches, so use
    model.fit(data.train, epochs=E, steps_per_epoch=data.steps_per_epoch, validation_data=data.val)
and to continue at epoch k (a resumed pass): `data.train_from(k)` with `initial_epoch=k`.
Why a stream: Keras then keeps one iterator for the whole fit, so epoch e's order and
augmentation are a pure function of (seed, e): the order is a stateless shuffle keyed on
(seed, epoch), the augmentation stateless ops keyed on (seed, global batch number). Two runs with
the same seed see identical batches, parallel decoding notwithstanding (tf.data keeps order),
and a resumed run continues the sequence instead of restarting it. As in the notes'
PersonDataGenerator (`len = floor(n / batch)`, reshuffled every epoch) the last partial batch of
an epoch is dropped, a different one each epoch. Validation is neither shuffled nor augmented
and keeps every image; its order is the table's, matching `val_labels`.

Where images come from:
- hvc, cache "none": read + decode each JPEG per epoch (parallel, with a JPEG DCT downscale when
  the target is at most half the stored size), resized to S as uint8.
- hvc, cache "memory"/"disk": the same decode runs once over the table into a (N, S, S, 3)
  uint8 array, kept in memory or written as `.npy` under `cache_dir` (default `cache/`) and
  memory-mapped; the file name holds the data fingerprint, S and a hash of the rows used, so a
  changed dataset, size, limit or skip list never reads a stale cache, and both splits share it.
  Batches are gathered from the array, so the order is the same for every cache mode.
- ArrayTable (cifar10): gathered from its in-memory array, resized per batch if S differs.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from harness.data.augment import augment_batch
from harness.core.labels import output_name
from harness.data.pixels import training_mean

DEFAULT_CACHE_DIR = "cache"


@dataclass(frozen=True, eq=False)
class Datasets:
    """What training needs from the data; see the module docstring for how to feed Keras."""

    val: tf.data.Dataset
    n_train: int
    n_val: int
    heads: dict[str, tuple[str, ...]]
    train_labels: dict[str, np.ndarray]  # table order (not shuffled): class weights
    val_labels: dict[str, np.ndarray]  # the order `val` yields: confusion matrices
    steps_per_epoch: int
    batch_size: int  # training batch size actually used (smaller only if n_train is)
    # The training split's per-pixel mean ((S, S, 3), [0, 1] RGB) when `data.pixels.mean` is
    # per_pixel (harness.data.pixels): the model subtracts it; else None.
    pixel_mean: Optional[np.ndarray]
    cache_path: Optional[Path]
    _stream: Callable[[int], tf.data.Dataset]
    _rows: Callable[[np.ndarray], tf.data.Dataset]

    @property
    def train(self) -> tf.data.Dataset:
        """The endless training stream from epoch 0."""
        return self._stream(0)

    def train_from(self, epoch: int) -> tf.data.Dataset:
        """The endless training stream starting at `epoch` (0-based), for resumed passes."""
        return self._stream(epoch)

    def rows(self, indices) -> tf.data.Dataset:
        """Given table rows in the given order, unshuffled and unaugmented, as (x, labels)
        batches of the validation batch size: what a frozen backbone's features are computed on."""
        return self._rows(np.asarray(indices, dtype=np.int64))

    def train_epoch(self, epoch: int) -> tf.data.Dataset:
        """Exactly one epoch (finite), identical to that epoch of the stream."""
        return self._stream(epoch).take(self.steps_per_epoch)


def make_datasets(iteration, table, train_idx, val_idx, cache_dir=None, features=None) -> Datasets:
    """Build the training stream and validation dataset for `iteration` over `table` rows.

    With `features` (an array indexed by table row: a frozen backbone's output for every row)
    the same stream yields those instead of images: identical order and batching, so training
    the head on them follows the image path step for step."""
    size = iteration.data.image_size
    train_idx = np.asarray(train_idx, dtype=np.int64)
    val_idx = np.asarray(val_idx, dtype=np.int64)
    if not len(train_idx):
        raise ValueError("make_datasets needs at least one training row")
    if features is None:
        source = _Source(table, size, iteration.data.cache, cache_dir)
        finish = _finisher(table, size, source.native_size, iteration)
    else:
        source = _FeatureSource(features)
        finish = _label_finisher(table)
    batch = min(iteration.batch_size.train, len(train_idx))
    steps = max(1, len(train_idx) // batch)
    seed = int(iteration.seed)

    def stream(start_epoch: int) -> tf.data.Dataset:
        order = tf.constant(train_idx)
        per_epoch = steps * batch
        shuffle_key = tf.constant([seed, 0], dtype=tf.int64)

        def one_epoch(epoch):
            key = tf.random.experimental.stateless_fold_in(shuffle_key, epoch)
            shuffled = tf.random.experimental.stateless_shuffle(order, seed=key)
            return tf.data.Dataset.from_tensor_slices(shuffled[:per_epoch])

        ids = tf.data.Dataset.counter(start_epoch).flat_map(one_epoch)
        batches = source.batches(ids, batch, drop_remainder=True).enumerate(start=start_epoch * steps)
        batches = batches.map(lambda number, pair: finish(pair[0], pair[1], number),
                              num_parallel_calls=tf.data.AUTOTUNE)
        return batches.prefetch(tf.data.AUTOTUNE)

    pixel_mean = None
    if features is None and iteration.data.pixels.mean == "per_pixel":
        train_images = _eval_batches(source, finish, train_idx, iteration.batch_size.eval)
        pixel_mean = training_mean((x for x, _ in train_images.as_numpy_iterator()), size)
    return Datasets(
        val=_eval_batches(source, finish, val_idx, iteration.batch_size.eval),
        n_train=len(train_idx),
        n_val=len(val_idx),
        heads=dict(table.heads),
        train_labels={h: v[train_idx] for h, v in table.labels.items()},
        val_labels={h: v[val_idx] for h, v in table.labels.items()},
        steps_per_epoch=steps,
        batch_size=batch,
        pixel_mean=pixel_mean,
        cache_path=source.cache_path,
        _stream=stream,
        _rows=lambda rows: _eval_batches(source, finish, rows, iteration.batch_size.eval),
    )


def eval_dataset(table, rows, iteration) -> tf.data.Dataset:
    """Rows `rows` of a table, in that order, as an evaluation dataset at the iteration's image
    size and eval batch size: decoded per image (no cache), never augmented."""
    source = _Source(table, iteration.data.image_size, "none", None)
    finish = _finisher(table, iteration.data.image_size, source.native_size, iteration)
    return _eval_batches(source, finish, np.asarray(rows, dtype=np.int64), iteration.batch_size.eval)


# --------------------------------------------------------------------------- internals


def _eval_batches(source, finish, indices: np.ndarray, batch: int) -> tf.data.Dataset:
    ids = tf.data.Dataset.from_tensor_slices(tf.constant(indices, dtype=tf.int64))
    batches = source.batches(ids, batch, drop_remainder=False)
    return batches.map(lambda images, rows: finish(images, rows, None),
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _finisher(table, size: int, native_size: int, iteration):
    """uint8 batch + row indices (+ batch number when training) -> (float image, one-hot dict)."""
    labels = {head: tf.constant(values, dtype=tf.int32) for head, values in table.labels.items()}
    widths = {head: len(classes) for head, classes in table.heads.items()}
    aug = iteration.augmentation
    cutout_size = aug.cutout.size if aug.cutout else None
    cutout_count = aug.cutout.count if aug.cutout else 1
    augments = aug.flip or bool(cutout_size)
    augment_key = tf.constant([int(iteration.seed), 1], dtype=tf.int64)

    def finish(images, rows, batch_number):
        x = tf.cast(images, tf.float32) / 255.0
        if native_size != size:
            x = tf.clip_by_value(tf.image.resize(x, [size, size], antialias=True), 0.0, 1.0)
        if batch_number is not None and augments:
            key = tf.random.experimental.stateless_fold_in(augment_key, batch_number)
            x = augment_batch(x, key, aug.flip, cutout_size, cutout_count)
        y = {output_name(head): tf.one_hot(tf.gather(labels[head], rows), widths[head], dtype=tf.float32)
             for head in labels}
        return x, y

    return finish


def _label_finisher(table):
    """Feature batches pass through untouched (no resize, no augmentation); labels one-hot."""
    labels = {head: tf.constant(values, dtype=tf.int32) for head, values in table.labels.items()}
    widths = {head: len(classes) for head, classes in table.heads.items()}

    def finish(features, rows, batch_number):
        y = {output_name(head): tf.one_hot(tf.gather(labels[head], rows), widths[head], dtype=tf.float32)
             for head in labels}
        return features, y

    return finish


class _FeatureSource:
    """Row indices -> batches of precomputed features, gathered like cached images."""

    cache_path = None

    def __init__(self, features: np.ndarray):
        self.array = features

    def batches(self, ids: tf.data.Dataset, batch: int, drop_remainder: bool) -> tf.data.Dataset:
        return _gather_batches(self.array, ids, batch, drop_remainder)


class _Source:
    """Turns a dataset of row indices into batches of (uint8 images, row indices).

    `native_size` is the side of what it yields: S for hvc (decoded straight to S), the stored
    size for arrays (the finisher resizes those per batch).
    """

    def __init__(self, table, size: int, cache: str, cache_dir):
        self.cache_path: Optional[Path] = None
        self.array: Optional[np.ndarray] = None
        if getattr(table, "images", None) is not None:
            self.array = table.images
            self.native_size = int(table.images.shape[1])
            return
        self.native_size = size
        self._load = _jpeg_loader(table.sizes, size)
        self._paths = tf.constant(table.paths)
        if cache == "memory":
            self.array = _decode_all(table.paths, self._load, np.empty((len(table), size, size, 3), np.uint8))
        elif cache == "disk":
            self.array, self.cache_path = _disk_cache(table, size, self._load, cache_dir)

    def batches(self, ids: tf.data.Dataset, batch: int, drop_remainder: bool) -> tf.data.Dataset:
        if self.array is None:
            paths, load = self._paths, self._load
            images = ids.map(lambda row: (load(tf.gather(paths, row)), row), num_parallel_calls=tf.data.AUTOTUNE)
            return images.batch(batch, drop_remainder=drop_remainder)
        return _gather_batches(self.array, ids, batch, drop_remainder)


def _gather_batches(array: np.ndarray, ids: tf.data.Dataset, batch: int, drop_remainder: bool) -> tf.data.Dataset:
    """Batches of (array rows, row indices), gathered from an in-memory or memory-mapped array."""
    shape = [None, *array.shape[1:]]
    dtype = tf.as_dtype(array.dtype)

    def gather(rows):
        values = tf.numpy_function(lambda r: np.ascontiguousarray(array[r]), [rows], dtype, stateful=False)
        values.set_shape(shape)
        return values, rows

    return ids.batch(batch, drop_remainder=drop_remainder).map(gather, num_parallel_calls=tf.data.AUTOTUNE)


def _jpeg_loader(sizes: np.ndarray, size: int):
    """path -> (S, S, 3) uint8 (see _jpeg_decoder)."""
    decode = _jpeg_decoder(sizes, size)
    return lambda path: decode(tf.io.read_file(path))


def _jpeg_decoder(sizes: np.ndarray, size: int):
    """JPEG bytes -> (S, S, 3) uint8. Decodes at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
    far cheaper than decoding in full and shrinking) when every image stays at least S that way;
    skips the resize when every image already is S x S."""
    exact = len(sizes) > 0 and bool((sizes == size).all())
    smallest = int(sizes.min()) if len(sizes) else size
    ratio = max([r for r in (1, 2, 4, 8) if smallest // r >= size] or [1])

    def decode(contents):
        image = tf.io.decode_jpeg(contents, channels=3, ratio=ratio)
        if exact:
            return tf.ensure_shape(image, [size, size, 3])
        return _resize_uint8(image, size)

    return decode


def _resize_uint8(image, size: int):
    image = tf.image.resize(image, [size, size], antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def jpeg_for_model(contents: bytes, size: int) -> np.ndarray:
    """One JPEG file's bytes -> (S, S, 3) float32 in [0, 1], exactly as training and `harness
    eval` feed an hvc image to the model (same DCT-scaled decode, resize and rounding), so a
    prediction on the file agrees with the evaluation of it."""
    height, width = (int(v) for v in tf.io.extract_jpeg_shape(contents)[:2])
    image = _jpeg_decoder(np.array([[height, width]]), size)(tf.constant(contents))
    return image.numpy().astype(np.float32) / 255.0


def pixels_for_model(pixels: np.ndarray, size: int) -> np.ndarray:
    """A decoded (H, W, 3) uint8 image of any size (a PNG, say) -> (S, S, 3) float32 in [0, 1],
    resized and rounded as the JPEG path resizes."""
    image = tf.constant(pixels, dtype=tf.uint8)
    if tuple(pixels.shape[:2]) != (size, size):
        image = _resize_uint8(image, size)
    return image.numpy().astype(np.float32) / 255.0


def _decode_all(paths: np.ndarray, load, out: np.ndarray) -> np.ndarray:
    images = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    position = 0
    for batch in images.batch(256).prefetch(2).as_numpy_iterator():
        out[position:position + len(batch)] = batch
        position += len(batch)
    return out


def _disk_cache(table, size: int, load, cache_dir) -> tuple[np.ndarray, Path]:
    """Decoded images as a memory-mapped .npy, written once (atomically) and reused."""
    rows = hashlib.sha256("\n".join(table.paths.tolist()).encode()).hexdigest()[:8]
    folder = Path(cache_dir or DEFAULT_CACHE_DIR)
    path = folder / f"{table.name}-{table.fingerprint}-{size}px-{rows}.npy"
    shape = (len(table), size, size, 3)
    if path.is_file():
        array = np.load(path, mmap_mode="r")
        if array.shape == shape and array.dtype == np.uint8:
            return array, path
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
    _decode_all(table.paths, load, out)
    out.flush()
    del out
    os.replace(partial, path)
    return np.load(path, mmap_mode="r"), path
