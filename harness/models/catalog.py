"""The backbone catalog: each backbone's name, options, minimum input size, pretrained weights
(file and md5) and the preprocessing those weights expect, in the spirit of timm's `default_cfgs`.

No TensorFlow: the ledger validates `backbone:` against this table, and the registry in
harness.models.backbones builds what it lists (one builder registered per name). Adding a
backbone is an entry here and a builder there; no name is kept twice.

Pretrained weights and preprocessing: keras.applications' ImageNet weights were trained on its
`preprocess_input` (0-255 inputs; "caffe": BGR minus the ImageNet mean, "torch": scaled to [0, 1],
minus mean, over std). The pipeline feeds [0, 1] RGB images, so a model built with pretrained
weights starts with a layer that maps [0, 1] images to what the weights expect (PREPROCESSING,
restated for [0, 1] inputs). Backbones trained from scratch see the [0, 1] images as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class Preprocessing:
    """keras.applications' `preprocess_input` for one mode, on [0, 1] RGB input:
    x * scale, channel order reversed when `bgr`, minus `mean`, divided by `std` (per channel)."""

    mode: str
    scale: float
    bgr: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


PREPROCESSING = {
    p.mode: p for p in (
        Preprocessing("caffe", 255.0, True, (103.939, 116.779, 123.68)),
        Preprocessing("torch", 1.0, False, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    )
}


@dataclass(frozen=True)
class Pretrained:
    """A weight file as keras.applications downloads it (Keras 3.15): name, md5, where from."""

    file: str
    md5: str
    url: str
    preprocessing: str  # a key of PREPROCESSING


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    summary: str
    # Smallest image side it accepts (None: any); images must have 3 channels.
    min_size: Optional[int] = None
    # Builder keyword options beyond the input shape and weights, with their defaults.
    options: dict[str, Any] = field(default_factory=dict)
    # Weights name (as the ledger writes it) -> the file.
    pretrained: dict[str, Pretrained] = field(default_factory=dict)


CATALOG: dict[str, BackboneSpec] = {spec.name: spec for spec in (
    BackboneSpec(
        "vgg16", "VGG16 convolutional part (the notes' original backbone), output (S/32, S/32, 512)",
        min_size=32,
        pretrained={"imagenet": Pretrained(
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc",
            KERAS_WEIGHTS_URL + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "caffe")},
    ),
    BackboneSpec(
        "resnet20v1", "ResNet v1 for CIFAR-sized images (keras.io cifar10_resnet), depth 6n+2",
        options={"depth": 20},
    ),
    BackboneSpec(
        "densenet121", "DenseNet121 without its classifier (the notes' final backbone), output (S/32, S/32, 1024)",
        min_size=32,
        pretrained={"imagenet": Pretrained(
            "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "30ee3e1110167f948a6b9946edeeb738",
            KERAS_WEIGHTS_URL + "densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "torch")},
    ),
    BackboneSpec(
        "custom", "A compact CNN for 64-224 px person crops (the notes' eleventh iteration)",
        min_size=32, options={"widths": (32, 64, 128, 256)},
    ),
)}


def names() -> tuple[str, ...]:
    """Backbone names in catalog order."""
    return tuple(CATALOG)


def spec(name: str) -> BackboneSpec:
    return CATALOG[name]


def option_problems(name: str, options: dict) -> list[tuple[str, str]]:
    """(option, what is wrong) for each option `name` does not take or takes another value of."""
    backbone = CATALOG[name]
    problems = []
    for option, value in options.items():
        if option not in backbone.options:
            takes = ", ".join(backbone.options) or "no options"
            problems.append((option, f"{name} does not take {option} (it takes: {takes})"))
        elif option == "depth" and not _resnet_depth(value):
            problems.append((option, f"ResNet v1 depth must be 6n+2 (20, 32, 44, ...), got {value}"))
    return problems


def weights_problem(name: str, weights: Optional[str]) -> Optional[str]:
    """What is wrong with asking `name` for `weights` (None: nothing)."""
    if weights is None or weights in CATALOG[name].pretrained:
        return None
    available = ", ".join(CATALOG[name].pretrained)
    if not available:
        return f"backbone {name} has no pretrained weights (got '{weights}'); use null"
    return f"backbone {name} has no '{weights}' weights; it has: {available}"


def preprocessing_for(name: str, weights: Optional[str]) -> Optional[Preprocessing]:
    """The input mapping a backbone with these weights needs (None: the [0, 1] images as they are)."""
    if weights is None:
        return None
    return PREPROCESSING[CATALOG[name].pretrained[weights].preprocessing]


def _resnet_depth(depth) -> bool:
    return isinstance(depth, int) and depth >= 8 and (depth - 2) % 6 == 0
