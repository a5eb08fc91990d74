"""Training-time augmentation on whole batches: horizontal flip and cutout (TensorFlow).

Every random draw is a stateless op keyed on a per-batch seed the pipeline derives from
(iteration seed, global batch number), so the same seed gives the same flips and holes in the
same epoch of every run, whatever the thread scheduling, and a resumed run can continue the
exact sequence. Working on a batch at a time keeps tf.data's per-element overhead out of it.
"""

from __future__ import annotations

import tensorflow as tf


def flip(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Mirror each image left-right with probability 1/2. images: (B, H, W, C) float."""
    batch = tf.shape(images)[0]
    mirror = tf.random.stateless_uniform([batch], seed=seed) < 0.5
    return tf.where(mirror[:, None, None, None], tf.reverse(images, axis=[2]), images)


def cutout(images: tf.Tensor, seed: tf.Tensor, size: int, count: int = 1) -> tf.Tensor:
    """Zero `count` squares of side `size` pixels per image, centred uniformly at random (the
    square may hang over the border, as in DeVries & Taylor 2017 and the notes' cutout(5))."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    centres = tf.random.stateless_uniform([batch, count, 2], seed=seed, minval=0, maxval=1)
    cy = tf.cast(centres[..., 0] * tf.cast(height, tf.float32), tf.int32)[:, :, None]  # (B, K, 1)
    cx = tf.cast(centres[..., 1] * tf.cast(width, tf.float32), tf.int32)[:, :, None]
    top, left = cy - size // 2, cx - size // 2
    rows = tf.range(height)[None, None, :]
    cols = tf.range(width)[None, None, :]
    in_rows = (rows >= top) & (rows < top + size)  # (B, K, H)
    in_cols = (cols >= left) & (cols < left + size)  # (B, K, W)
    holes = tf.reduce_any(in_rows[:, :, :, None] & in_cols[:, :, None, :], axis=1)  # (B, H, W)
    return images * tf.cast(~holes, images.dtype)[..., None]


def augment_batch(images: tf.Tensor, seed: tf.Tensor, use_flip: bool, cutout_size=None, cutout_count=1) -> tf.Tensor:
    """The iteration's augmentation for one batch; `seed` is a shape-(2,) int tensor."""
    if use_flip:
        images = flip(images, tf.random.experimental.stateless_fold_in(seed, 1))
    if cutout_size:
        images = cutout(images, tf.random.experimental.stateless_fold_in(seed, 2), cutout_size, cutout_count)
    return images
