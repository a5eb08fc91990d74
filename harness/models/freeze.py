"""Freeze policies: which layers a pass trains.

A policy is one of
- "none": every layer trainable;
- "backbone": the nested backbone (the layer named "backbone") frozen, neck and towers trainable
  (the notes' "VGG16 default" of freezing the convolutional base);
- an ordered list of rules, each a regular-expression `pattern` searched in layer names and a
  `trainable` flag (`harness.ledger.FreezeRule`, a dict, or a (pattern, trainable) pair).

Rules are big_vision's "name pattern -> frozen or not", applied to every layer with weights,
including the layers INSIDE the nested backbone. For each layer the first rule that matches
wins; a rule matches a layer when it is found in the layer's own name or in the name of a
nested model that encloses it, so `[{pattern: block5, trainable: true}, {pattern: ^backbone$,
trainable: false}]` fine-tunes VGG16's last block and freezes the rest of the backbone. Layers
that match no rule stay trainable: a policy lists what to freeze (or exempt), not everything.

`apply_freeze` resets every layer to trainable before applying the policy, so it can be called
again when a pass overrides the policy; Keras only sees the change after the model is compiled
again (compile after every apply_freeze). Keras runs a frozen BatchNormalization in inference
mode (moving statistics), which is what fine-tuning wants.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, Union

import keras

from harness.core.errors import InputError
from harness.models.backbones import BACKBONE_NAME


@dataclass(frozen=True)
class FreezeSummary:
    """What a policy did: layers with weights, as "backbone/block1_conv1" paths."""

    policy: str
    trainable: tuple[str, ...]
    frozen: tuple[str, ...]
    # Rules that decided no layer (they matched nothing, or only layers an earlier rule took):
    # usually a typo, or a pattern meant for another backbone.
    unmatched: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"freeze {self.policy}: {len(self.trainable)} layers trainable, {len(self.frozen)} frozen"
        if self.unmatched:
            text += f" (rules that decided no layer: {', '.join(self.unmatched)})"
        return text


def policy_for(iteration, pass_index: int = 0):
    """The policy in force for a pass: the pass's own `freeze` if it sets one, else the
    backbone's."""
    override = iteration.passes[pass_index].freeze
    return iteration.backbone.freeze if override is None else override


def iter_layers(model: keras.Model, _enclosing: tuple = ()) -> Iterator[tuple[keras.layers.Layer, tuple]]:
    """Every non-container layer as (layer, the nested models around it, outermost first),
    descending into nested models (the backbone) but not listing the containers themselves."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from iter_layers(layer, _enclosing + (layer,))
        elif not isinstance(layer, keras.layers.InputLayer):
            yield layer, _enclosing


def _all_trainable(model: keras.Model) -> None:
    """Mark the model, every nested model and every layer trainable.

    Not just `model.trainable = True`: on the TensorFlow backend that assignment is skipped
    when the value is already True (AutoTrackable short-circuits `self.x = self.x`), so it
    would not reach sublayers frozen one by one by an earlier policy.
    """
    model.trainable = True
    for layer, enclosing in iter_layers(model):
        for outer in enclosing:
            outer.trainable = True
        layer.trainable = True


def _rules(policy: Sequence[Any]) -> list[tuple[str, re.Pattern, bool]]:
    rules = []
    for index, rule in enumerate(policy):
        if isinstance(rule, dict):
            pattern, trainable = rule.get("pattern"), rule.get("trainable")
        elif isinstance(rule, (tuple, list)) and len(rule) == 2:
            pattern, trainable = rule
        else:
            pattern, trainable = getattr(rule, "pattern", None), getattr(rule, "trainable", None)
        if not isinstance(pattern, str) or not isinstance(trainable, bool):
            raise InputError(f"freeze.{index}: a rule needs a string pattern and a boolean trainable, got {rule!r}")
        try:
            rules.append((pattern, re.compile(pattern), trainable))
        except re.error as exc:
            raise InputError(f"freeze.{index}: pattern '{pattern}' is not a regular expression: {exc}") from None
    return rules


def apply_freeze(model: keras.Model, policy: Union[str, Sequence[Any]]) -> FreezeSummary:
    """Set `trainable` on every layer of `model` according to `policy` (see the module
    docstring); returns which layers ended up trainable and frozen. Recompile afterwards."""
    _all_trainable(model)  # a clean slate each time, so a pass can override the policy
    unmatched: tuple[str, ...] = ()
    if isinstance(policy, str):
        if policy == "backbone":
            try:
                model.get_layer(BACKBONE_NAME).trainable = False
            except ValueError:
                raise InputError(f"freeze 'backbone': model '{model.name}' has no nested layer named '{BACKBONE_NAME}'") from None
        elif policy != "none":
            raise InputError(f"freeze: unknown policy '{policy}'; use none, backbone or a list of rules")
        label = policy
    else:
        rules = _rules(policy)
        used = set()
        for layer, enclosing in iter_layers(model):
            for index, (_, regex, trainable) in enumerate(rules):
                if regex.search(layer.name) or any(regex.search(outer.name) for outer in enclosing):
                    layer.trainable = trainable
                    used.add(index)
                    break
        unmatched = tuple(pattern for index, (pattern, _, _) in enumerate(rules) if index not in used)
        label = "rules [" + ", ".join(f"{p}: {'train' if t else 'freeze'}" for p, _, t in rules) + "]"
    trainable, frozen = [], []
    for layer, enclosing in iter_layers(model):
        if not layer.weights:
            continue
        path = "/".join([outer.name for outer in enclosing] + [layer.name])
        # A layer is effectively frozen if it, or any model around it, is not trainable.
        live = layer.trainable and all(outer.trainable for outer in enclosing)
        (trainable if live else frozen).append(path)
    return FreezeSummary(label, tuple(trainable), tuple(frozen), unmatched)
