"""The pixel encoding: how an image's pixels reach a backbone trained from scratch.

The input pipeline always yields float32 RGB in [0, 1] (harness.data.pipeline). What the
backbone sees is the ledger's `data.pixels`, applied by `encode`, the one function every path
goes through: the model's first layer (harness.models: `PixelEncoding`, so training, the
feature cache, `harness eval`, `harness predict` and the logged MLflow Model all encode inside
the model), and the pixel references (harness.reference) on their arrays.

Why it is a ledger field: a randomly initialised VGG16 is a ReLU network with zero biases, so
its features scale with its input. The notes' notebook fed `cv2.imread` straight to it (BGR,
uint8 0-255, no scaling, no mean); fed [0, 1] instead, its features are 255 times smaller and
nearly constant across images, and the heads learn the majority class. keras.io's
cifar10_resnet divides by 255 and subtracts the training set's per-pixel mean. Each ledger says
which it did.

A mean belongs to the run that computed it: it is taken over the training split's images
(`per_pixel`: an (S, S, 3) array in [0, 1] RGB) and stored in the model, so evaluating or
predicting on another folder subtracts the training mean, never one of the folder given.

Pretrained keras.applications weights keep their own preprocessing (harness.models.catalog);
the encoding applies to backbones trained from scratch. No TensorFlow here: `xp` is numpy or
keras.ops, whichever the caller computes with.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

RANGES = (1, 255)
CHANNEL_ORDERS = ("rgb", "bgr")
MEANS = ("none", "per_pixel")


@dataclass(frozen=True)
class Encoding:
    """An encoding as a model layer keeps it (the ledger's `data.pixels` has the same fields)."""

    range: int = 1
    channels: str = "rgb"
    mean: str = "none"

    @classmethod
    def of(cls, pixels) -> "Encoding":
        return cls(range=int(pixels.range), channels=str(pixels.channels), mean=str(pixels.mean))

    def as_dict(self) -> dict:
        return asdict(self)


def is_identity(pixels) -> bool:
    """True when the encoding leaves [0, 1] RGB images as they are (no layer needed)."""
    return pixels.range == 1 and pixels.channels == "rgb" and pixels.mean == "none"


def encode(images, pixels, mean: Optional[Any] = None, xp=np):
    """[0, 1] RGB images (..., S, S, 3) -> what the backbone sees under `pixels`:
    minus the training mean (when `pixels.mean` is per_pixel), times `pixels.range`, channels
    reversed for BGR. `mean` is in [0, 1] RGB, as `training_mean` computes it."""
    x = images
    if pixels.mean == "per_pixel":
        if mean is None:
            raise ValueError("data.pixels.mean is per_pixel but no training mean was given")
        x = x - mean
    if pixels.range != 1:
        x = x * float(pixels.range)
    if pixels.channels == "bgr":
        x = xp.flip(x, axis=-1)
    return x


def describe(pixels, pretrained: Optional[str] = None) -> str:
    """The encoding in words, for a pass header: `pixels BGR 0-255, no mean`."""
    if pretrained:
        return f"pixels as the {pretrained} weights expect (their own preprocessing)"
    scale = "0-255" if pixels.range == 255 else "0-1"
    mean = "minus the training set's per-pixel mean" if pixels.mean == "per_pixel" else "no mean"
    return f"pixels {pixels.channels.upper()} {scale}, {mean}"


def training_mean(batches, size: int) -> np.ndarray:
    """The per-pixel mean (S, S, 3) float32 of [0, 1] RGB image batches (an iterable of arrays),
    accumulated in float64 so it does not depend on how the images are batched."""
    total = np.zeros((size, size, 3), np.float64)
    count = 0
    for batch in batches:
        batch = np.asarray(batch)
        total += batch.sum(axis=0, dtype=np.float64)
        count += len(batch)
    if not count:
        raise ValueError("a training mean needs at least one image")
    return (total / count).astype(np.float32)


def mean_to_text(mean: Optional[np.ndarray]) -> Optional[str]:
    """A mean as base64 float32 bytes: how a model's config stores it (exact, compact)."""
    if mean is None:
        return None
    return base64.b64encode(np.ascontiguousarray(mean, dtype=np.float32).tobytes()).decode("ascii")


def mean_from_text(text: Optional[str], size: int) -> Optional[np.ndarray]:
    if text is None:
        return None
    return np.frombuffer(base64.b64decode(text), dtype=np.float32).reshape(size, size, 3).copy()
