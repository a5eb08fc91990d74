"""The full model: image -> [preprocessing] -> nested backbone -> neck -> one tower per head -> softmax outputs.

This is the notes' model made configurable by `iteration.head`:

    VGG16 -> Flatten -> Dense(512, relu)                                  (the neck)
    per head: Dropout(0.2) -> Dense(128, relu) -> Dropout(0.3) -> Dense(128, relu)   (the tower)
              -> Dense(classes, softmax, name=f"{head}_output")

`head.tower_defect` rebuilds the notes' bug exactly: the tower's second Dropout was applied to
the tower input (`Dropout(0.3)(in_layer)`), so the first Dense never reaches an output and Keras
leaves it out of the graph. That is why the notes' parameter counts (28,089,051 total,
13,374,363 trainable with VGG16 frozen at 224 px) are lower than the fixed model's
(28,221,147 / 13,506,459); both are asserted in tests.

Single-head datasets (CIFAR-10) get one output, `class_output`, returned as a plain tensor so
Keras logs its metrics without a head prefix (harness.core.metrics maps either form).

A backbone with pretrained weights gets the catalog's preprocessing layer in front of it
(harness.models.catalog); one trained from scratch gets the ledger's pixel encoding
(`data.pixels`, harness.data.pixels) unless that is plain [0, 1] RGB; the feature cache and the head model split the graph at the neck, so
they follow the same path as the whole model.
"""

from __future__ import annotations

import re
from typing import Optional

import keras
from keras import layers

from harness.core.labels import heads_for, output_name
from harness.core.errors import InputError
from harness.models.backbones import create_backbone, preprocessing_layer
from harness.models.freeze import apply_freeze, policy_for


def build_model(iteration, input_shape: Optional[tuple] = None, freeze: bool = True,
                training_mean=None) -> keras.Model:
    """Build the model an Iteration describes (no compile, no training).

    `input_shape` defaults to (S, S, 3) with S = iteration.data.image_size. With `freeze` the
    policy in force for the first pass is applied (passes[0].freeze, else backbone.freeze), so
    `count_params(build_model(it))` gives the counts the first pass trains with; later passes
    call `apply_freeze` again before recompiling. `training_mean` is the training split's
    per-pixel mean when `data.pixels.mean` asks for one (harness.data.pipeline.Datasets.pixel_mean).
    """
    size = iteration.data.image_size
    input_shape = tuple(input_shape) if input_shape is not None else (size, size, 3)
    spec = iteration.backbone
    try:
        backbone = create_backbone(spec.name, input_shape, weights=spec.weights, **spec.options())
    except InputError as exc:
        # Backbone messages start with the field ("backbone.weights: ..."); say which iteration.
        raise InputError([f"{iteration.name}.{line}" for line in exc.lines]) from None

    inputs = keras.Input(shape=input_shape, name="image")
    preprocess = preprocessing_layer(spec.name, spec.weights, iteration.data.pixels, training_mean)
    features = backbone(preprocess(inputs) if preprocess is not None else inputs)
    # One neck shared by all heads; one tower per head, in the dataset's head order.
    neck = _neck(features, iteration.head)
    outputs = [_tower(neck, head, len(classes), iteration.head) for head, classes in heads_for(iteration.data.name).items()]
    model = keras.Model(inputs, outputs[0] if len(outputs) == 1 else outputs, name=re.sub(r"[^A-Za-z0-9_.-]", "_", iteration.name))
    if freeze:
        apply_freeze(model, policy_for(iteration, 0))
    return model


# The neck's first layer, per `head.neck`: it reads the backbone's features.
NECK_INPUT_LAYERS = {"flatten": "neck_flatten", "gap": "neck_gap"}


def _neck(features, cfg):
    """Shared by all heads: Flatten (the notes) or global average pooling (size-agnostic,
    and far fewer parameters after a conv base), then Dense(neck_units, relu) if set."""
    if cfg.neck == "flatten":
        x = layers.Flatten(name=NECK_INPUT_LAYERS["flatten"])(features)
    else:
        x = layers.GlobalAveragePooling2D(name=NECK_INPUT_LAYERS["gap"])(features)
    if cfg.neck_units:
        x = layers.Dense(cfg.neck_units, activation="relu", name="neck_dense")(x)
    return x


def _tower(neck, head: str, n_classes: int, cfg):
    """One head's tower and softmax output.

    Layer i is Dropout(tower_dropouts[i]) -> Dense(tower_units[i]) [-> BatchNormalization]
    -> activation: ReLU, except the last tower layer, which uses `last_activation` (the
    ninth iteration's "remove relu from the last layer"). With `tower_defect`, layer 1's
    Dropout reads the tower input instead of layer 0's output, exactly as the notes wrote it,
    so layer 0 is built but dead and Keras drops it from the model.
    """
    x = neck
    count = len(cfg.tower_units)
    for i, (units, rate) in enumerate(zip(cfg.tower_units, cfg.tower_dropouts)):
        source = neck if (cfg.tower_defect and i == 1) else x
        x = layers.Dropout(rate, name=f"{head}_dropout{i + 1}")(source)
        x = layers.Dense(units, name=f"{head}_dense{i + 1}")(x)
        if cfg.batch_norm:
            x = layers.BatchNormalization(momentum=0.9, name=f"{head}_bn{i + 1}")(x)  # settles within an epoch
        activation = cfg.last_activation if i == count - 1 else "relu"
        if activation != "linear":
            x = layers.Activation(activation, name=f"{head}_{activation}{i + 1}")(x)
    return layers.Dense(n_classes, activation="softmax", name=output_name(head))(x)


def count_params(model: keras.Model) -> tuple[int, int, int]:
    """(total, trainable, non_trainable) parameter counts, as `model.summary()` reports them:
    trainable = weights the optimizer updates under the current freeze policy; non-trainable
    = frozen weights plus BatchNormalization moving statistics."""
    trainable = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
    non_trainable = sum(int(keras.ops.size(w)) for w in model.non_trainable_weights)
    return trainable + non_trainable, trainable, non_trainable


# --------------------------------------------------------------------------- parts and files


def _features_tensor(model: keras.Model):
    """The backbone's output inside `model`'s graph: the input of the neck's first layer."""
    neck = next((layer for layer in model.layers if layer.name in NECK_INPUT_LAYERS.values()), None)
    if neck is None:
        raise ValueError(f"model '{model.name}' has no neck layer ({', '.join(NECK_INPUT_LAYERS.values())})")
    return neck.input


def feature_model(model: keras.Model) -> keras.Model:
    """Image -> backbone features (any preprocessing included): what a feature cache computes."""
    return keras.Model(model.inputs, _features_tensor(model), name="features")


def head_model(model: keras.Model) -> keras.Model:
    """The model minus its backbone: the neck, towers and outputs as a model over the
    backbone's features. Its layers are the full model's own, so training it trains them."""
    return keras.Model(_features_tensor(model), model.outputs, name="head")


def load_model(path, compile: bool = True) -> keras.Model:
    """A .keras file the harness wrote (its custom layers are registered by this package).
    safe_mode stays on, spelled out: a .keras file from an artifact store or a colleague must
    not be able to run code (a Lambda layer's pickled bytecode) when it is loaded; the harness
    builds no Lambda layer, so nothing it writes needs it off."""
    return keras.models.load_model(path, compile=compile, safe_mode=True)
