"""Backbone registry: a catalog name -> the function that builds its Keras feature extractor.

Every backbone is a functional `keras.Model` named "backbone" that maps an image batch
(N, S, S, 3) to a feature map (N, h, w, c). The full model nests it as one layer, so:
- the freeze policy "backbone" is one switch on one layer;
- a feature cache can run the image-to-features part alone and train the rest on its outputs;
- the heads never depend on which backbone sits underneath.

What a backbone is (its options, minimum size, pretrained weights and their preprocessing) is
written in harness.models.catalog; here each catalog name gets its builder through a decorator
(timm's pattern). `create_backbone` checks options, size and weights against the catalog before
building, so a ledger typo never silently builds something else.

Layers get explicit, stable names (`stack2_block1_conv1`, `stage3_sep`, ...) instead of Keras'
global counters (`conv2d_17`), so freeze rules written as name patterns mean the same thing in
every process.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Optional

import keras
from keras import layers

from harness.core.errors import InputError
from harness.data import pixels
from harness.models import catalog

_REGISTRY: dict[str, Callable[..., keras.Model]] = {}

BACKBONE_NAME = "backbone"


def register_backbone(name: str):
    """Decorator: `@register_backbone("vgg16")` makes `create_backbone("vgg16", ...)` call the
    function with `(input_shape, weights=..., **options)`: `weights` the path of a checked weight
    file or None, the options the catalog's defaults overridden by the caller's. The name must be
    in the catalog."""

    def decorate(fn):
        if name in _REGISTRY:
            raise ValueError(f"backbone '{name}' is registered twice")
        if name not in catalog.CATALOG:
            raise ValueError(f"backbone '{name}' is not in harness.models.catalog; add its entry there first")
        _REGISTRY[name] = fn
        return fn

    return decorate


def list_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_REGISTRY)


def create_backbone(name: str, input_shape, weights: Optional[str] = None, **options) -> keras.Model:
    """Build the registered backbone `name` for images of `input_shape` (H, W, 3).

    `weights` is None (random init) or a name the catalog lists for the backbone ("imagenet");
    the file must already be on disk, see `pretrained_file`. Unknown names, options the backbone
    does not take and weights it does not have are InputErrors."""
    if name not in _REGISTRY:
        raise InputError(f"backbone.name: unknown backbone '{name}'; known: {', '.join(list_backbones())}")
    spec = catalog.spec(name)
    problems = [f"backbone.{option}: {message}" for option, message in catalog.option_problems(name, options)]
    weights_problem = catalog.weights_problem(name, weights)
    if weights_problem:
        problems.append(f"backbone.weights: {weights_problem}")
    if problems:
        raise InputError(problems)
    input_shape = tuple(int(d) for d in input_shape)
    _check_size(spec, input_shape)
    source = pretrained_file(name, weights) if weights is not None else None
    model = _REGISTRY[name](input_shape, weights=str(source) if source else None, **{**spec.options, **options})
    if model.name != BACKBONE_NAME:
        raise AssertionError(f"backbone factory '{name}' must return a model named '{BACKBONE_NAME}'")
    return model


def _check_size(spec: catalog.BackboneSpec, input_shape) -> None:
    if spec.min_size is None:
        return
    if input_shape[-1] != 3:
        raise InputError(f"input_shape: backbone {spec.name} needs 3-channel images, got {input_shape}")
    if min(input_shape[:2]) < spec.min_size:
        raise InputError(f"data.image_size: backbone {spec.name} needs images of at least "
                         f"{spec.min_size}x{spec.min_size}, got {input_shape[0]}x{input_shape[1]}")


# --------------------------------------------------------------------------- pretrained weights


def keras_models_dir() -> Path:
    """The folder Keras caches downloaded weights in: $KERAS_HOME/models, else ~/.keras/models
    (/tmp/.keras/models when the home folder is not writable, as Keras itself does). Read at
    call time, so setting KERAS_HOME after Keras was imported still counts."""
    if os.environ.get("KERAS_HOME"):
        base = Path(os.environ["KERAS_HOME"]).expanduser()
    else:
        home = Path("~").expanduser()
        base = (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"
    return base / "models"


def pretrained_file(backbone: str, weights: str = "imagenet") -> Path:
    """Path of the catalog's weight file for `backbone`, checked to exist and to be the file
    Keras expects (md5).

    Checked before calling keras.applications because, without a network, Keras would try to
    download it and fail after a long timeout with an error that does not say where to put the
    file. Training machines are often offline; this says exactly which file to place where.
    """
    entry = catalog.spec(backbone).pretrained[weights]
    folder = keras_models_dir()
    path = folder / entry.file
    if not path.is_file():
        raise InputError(
            f"backbone.weights: {weights} weights for {backbone} not found: place {entry.file} in {folder}/ "
            f"(download {entry.url}; set KERAS_HOME to use another folder than ~/.keras)"
        )
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != entry.md5:
        raise InputError(f"backbone.weights: {path} is not the file Keras expects (md5 mismatch; a partial download?)")
    return path


@keras.saving.register_keras_serializable(package="harness")
class Preprocess(keras.layers.Layer):
    """[0, 1] RGB images -> the inputs pretrained weights expect (harness.models.catalog's
    PREPROCESSING[mode]: keras.applications' `preprocess_input` restated for [0, 1] input).
    No weights; saved in .keras files by its mode."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode
        self.spec = catalog.PREPROCESSING[mode]

    def call(self, images):
        x = images * self.spec.scale
        if self.spec.bgr:
            x = keras.ops.flip(x, axis=-1)
        mean = keras.ops.convert_to_tensor(self.spec.mean, dtype=x.dtype)
        std = keras.ops.convert_to_tensor(self.spec.std, dtype=x.dtype)
        return (x - mean) / std

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="harness")
class PixelEncoding(keras.layers.Layer):
    """[0, 1] RGB images -> the ledger's `data.pixels` (harness.data.pixels.encode: the notes'
    BGR 0-255, or minus the training mean). No weights: the encoding and the training mean
    are its config, so a .keras checkpoint, `harness eval`, `harness predict` and the MLflow
    Model subtract the mean of the run that trained it."""

    def __init__(self, range: int = 1, channels: str = "rgb", mean: str = "none",
                 training_mean: Optional[str] = None, size: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.pixels = pixels.Encoding(range=range, channels=channels, mean=mean)
        self.training_mean, self.size = training_mean, size
        self._mean = pixels.mean_from_text(training_mean, size) if training_mean is not None else None

    def call(self, images):
        mean = None if self._mean is None else keras.ops.convert_to_tensor(self._mean, dtype=images.dtype)
        return pixels.encode(images, self.pixels, mean, xp=keras.ops)

    def get_config(self) -> dict:
        return {**super().get_config(), **self.pixels.as_dict(), "training_mean": self.training_mean,
                "size": self.size}


def preprocessing_layer(name: str, weights: Optional[str], pixel_config=None,
                        training_mean=None) -> Optional[keras.layers.Layer]:
    """The layer a model puts before backbone `name` with `weights`: the weights' own
    preprocessing when pretrained, else the ledger's pixel encoding (`pixel_config`, with the
    training split's mean when it asks for one); None when it needs none."""
    spec = catalog.preprocessing_for(name, weights)
    if spec is not None:
        return Preprocess(spec.mode, name="preprocess")
    if pixel_config is None or pixels.is_identity(pixel_config):
        return None
    encoding = pixels.Encoding.of(pixel_config)
    if encoding.mean == "per_pixel" and training_mean is None:
        # A model built without data (`harness params`, the model summary): the encoding
        # without its mean; training always passes the split's mean.
        encoding = pixels.Encoding(encoding.range, encoding.channels, "none")
    size = None if training_mean is None else int(training_mean.shape[0])
    return PixelEncoding(**encoding.as_dict(), training_mean=pixels.mean_to_text(training_mean),
                         size=size, name="pixels")


# --------------------------------------------------------------------------- keras.applications


@register_backbone("vgg16")
def vgg16(input_shape, weights=None) -> keras.Model:
    """VGG16 convolutional part (include_top=False): the notes' original backbone, 14,714,688
    parameters, output (S/32, S/32, 512)."""
    return keras.applications.VGG16(include_top=False, weights=weights, input_shape=input_shape, name=BACKBONE_NAME)


@register_backbone("densenet121")
def densenet121(input_shape, weights=None) -> keras.Model:
    """DenseNet121 without its classifier: the notes' final backbone, 7,037,504 parameters,
    output (S/32, S/32, 1024)."""
    return keras.applications.DenseNet121(include_top=False, weights=weights, input_shape=input_shape,
                                          name=BACKBONE_NAME)


# --------------------------------------------------------------------------- ResNet v1


def _resnet_layer(x, name, filters=16, kernel_size=3, strides=1, activation="relu", batch_norm=True):
    """keras.io cifar10_resnet `resnet_layer` with conv_first=True: Conv2D -> BN -> activation,
    he_normal init and L2(1e-4) on the kernel, as in the original."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        kernel_initializer="he_normal",
        kernel_regularizer=keras.regularizers.l2(1e-4),
        name=f"{name}_conv",
    )(x)
    if batch_norm:
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    if activation is not None:
        x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


@register_backbone("resnet20v1")
def resnet20v1(input_shape, weights=None, *, depth: int) -> keras.Model:
    """ResNet v1 for CIFAR-sized images (keras.io "cifar10_resnet", `resnet_v1`), depth 6n+2
    (checked by the catalog).

    Three stacks of n basic blocks at 16, 32, 64 filters; the first block of stacks 2 and 3
    halves the resolution and matches the shortcut with a 1x1 conv (no BN). The original ends
    with AveragePooling2D(8) -> Flatten -> Dense(classes); that classifier is left to the head
    (neck 'gap', neck_units null, no tower), so ResNet20 at 32x32 with 10 classes has exactly
    the original's 274,442 parameters (273,066 trainable) as a whole model.
    """
    blocks = (depth - 2) // 6
    inputs = keras.Input(shape=input_shape, name="image")
    x = _resnet_layer(inputs, "stem")
    filters = 16
    for stack in range(3):
        for block in range(blocks):
            name = f"stack{stack + 1}_block{block + 1}"
            strides = 2 if stack > 0 and block == 0 else 1
            y = _resnet_layer(x, f"{name}_1", filters, strides=strides)
            y = _resnet_layer(y, f"{name}_2", filters, activation=None)
            if strides != 1:
                x = _resnet_layer(x, f"{name}_shortcut", filters, kernel_size=1, strides=strides,
                                  activation=None, batch_norm=False)
            x = layers.Add(name=f"{name}_add")([x, y])
            x = layers.Activation("relu", name=f"{name}_out")(x)
        filters *= 2
    return keras.Model(inputs, x, name=BACKBONE_NAME)


# --------------------------------------------------------------------------- custom CNN


# Keras's default 0.99 needs several hundred steps before the moving statistics match the
# weights; a CPU-profile run has ~50 steps an epoch and is judged on validation (inference-mode
# BN) after a few epochs, so the statistics must settle within one epoch.
BN_MOMENTUM = 0.9


@register_backbone("custom")
def custom(input_shape, weights=None, *, widths) -> keras.Model:
    """A compact CNN for 64-224 px person crops (the notes' eleventh iteration, "Custom").

    Design, and why:
    - Stem: 3x3 conv, stride 2, 32 filters, BN, ReLU. Halving at once keeps the expensive
      full-resolution work to one layer: at 224 px the network costs ~0.36 G multiply-adds
      per image (VGG16's conv base: ~15.4 G), so a GPU epoch takes seconds and a CPU can
      train it at 64-96 px (1/12 of the work of 224 px).
    - Four stages at widths 32-64-128-256, each: 3x3 conv-BN-ReLU (mixes channels, widens),
      3x3 depthwise-separable conv-BN-ReLU (a second 3x3 receptive-field step at ~1/8 of the
      cost of a full conv), then 2x2 max-pool. With the stem that is a /32 reduction: 7x7 at
      224 px, 2x2 at 64 px. Two 3x3s per stage grow the receptive field to the whole crop,
      which gender, pose and bag need (they are global cues, not textures).
    - Batch norm after every conv: the ledger trains from scratch with SGD at LRs from 1e-4 to
      1e-1; BN keeps that whole range usable without a warm-up. Momentum 0.9 (see BN_MOMENTUM).
    - No classifier: the head's neck 'gap' (global average pooling) makes it size-agnostic, so
      the same weights run at 64 px on CPU and 224 px on GPU.
    - 492,480 parameters (VGG16's conv base: 14.7M), which suits ~11k training images.
    Layer names are `stem_*` and `stage{k}_*`, so freeze rules can target stages.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage, width in enumerate(widths, start=1):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"stage{stage}_conv")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"stage{stage}_conv_bn")(x)
        x = layers.ReLU(name=f"stage{stage}_conv_relu")(x)
        x = layers.SeparableConv2D(width, 3, padding="same", use_bias=False, name=f"stage{stage}_sep")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"stage{stage}_sep_bn")(x)
        x = layers.ReLU(name=f"stage{stage}_sep_relu")(x)
        x = layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
    return keras.Model(inputs, x, name=BACKBONE_NAME)
