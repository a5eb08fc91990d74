"""The synthetic hvc set is learnable: a small CNN beats the majority rate on every head.

This is what makes the embedded default useful: a head stuck at its majority rate on this data
means a broken model, loss or pipeline, not hard data. It also exercises the training stream
with Keras (`steps_per_epoch`). About a minute on two CPU cores: 1,500 images at 48 px, a
three-layer CNN, 10 epochs. Run with `-s` to see the per-head table.
"""

import json

import numpy as np
import pytest

from harness.data import synth
from harness.core.labels import HVC_HEADS, HVC_MAJORITY_RATES
from harness.data.hvc import load_hvc
from harness.data.split import split
from harness.ledger import Iteration

pytestmark = pytest.mark.slow  # trains models: left out by `make test-fast`

N, SIZE, EPOCHS = 1500, 48, 10
# Beat both the validation split's own majority rate and the real subset's by this much.
MARGIN = 0.03


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return synth.generate(tmp_path_factory.mktemp("learn") / "hvc", N, seed=0)


def small_cnn(size: int, heads: dict):
    import keras

    inputs = keras.Input((size, size, 3))
    x = inputs
    for filters in (24, 48, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Dense(128, activation="relu")(keras.layers.Flatten()(x))
    outputs = [keras.layers.Dense(len(c), activation="softmax", name=f"{h}_output")(x) for h, c in heads.items()]
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-3), loss=["categorical_crossentropy"] * len(outputs))
    return model


def test_small_cnn_beats_majority_rate_on_every_head(synth_dir):
    import keras

    from harness.data.pipeline import make_datasets

    iteration = Iteration.model_validate_json(json.dumps({
        "name": "learn", "passes": [{"epochs": EPOCHS}], "seed": 0,
        "data": {"image_size": SIZE, "cache": "memory"}, "batch_size": {"train": 32, "eval": 128},
    }))
    table = load_hvc(synth_dir)
    train, val = split(table, 0.2, seed=1)
    data = make_datasets(iteration, table, train, val)
    keras.utils.set_random_seed(0)
    model = small_cnn(SIZE, table.heads)
    model.fit(data.train, epochs=EPOCHS, steps_per_epoch=data.steps_per_epoch, shuffle=False, verbose=0)
    predictions = model.predict(data.val, verbose=0)

    rows, failures = [], []
    for (head, classes), probabilities in zip(HVC_HEADS.items(), predictions):
        truth = data.val_labels[head]
        accuracy = float((probabilities.argmax(axis=1) == truth).mean())
        majority = float(np.bincount(truth, minlength=len(classes)).max() / len(truth))
        bar = max(majority, HVC_MAJORITY_RATES[head]) + MARGIN
        rows.append(f"| {head} | {accuracy:.3f} | {majority:.3f} | {HVC_MAJORITY_RATES[head]:.3f} |")
        if accuracy < bar:
            failures.append(f"{head}: {accuracy:.3f} < {bar:.3f}")
    print("\n| head | val acc | val majority | real majority |\n|---|---|---|---|\n" + "\n".join(rows))
    assert not failures, failures
