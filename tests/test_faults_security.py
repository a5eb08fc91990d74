"""Security defaults: no model the harness builds holds a Lambda layer (code inside a model
file), every load runs in Keras's safe mode and refuses one, and the ledger's YAML cannot
construct Python objects (see test_faults_input for the tag and path cases)."""

import keras
import pytest

from harness import ledger
from harness.models import build_model, load_model

pytestmark = pytest.mark.faults


def all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


@pytest.mark.parametrize("name", ledger.load("runs.yaml").names)
def test_no_lambda_layer_in_any_ledger_model(name, record_property):
    record_property("expectation", "the smoke-profile model of every runs.yaml iteration has no Lambda layer")
    model = build_model(ledger.load("runs.yaml").resolve(name, "smoke"))
    assert not [layer.name for layer in all_layers(model) if isinstance(layer, keras.layers.Lambda)]


def test_load_model_refuses_a_file_with_a_lambda_layer(tmp_path, record_property):
    record_property("expectation", "load_model (safe_mode) refuses a .keras file carrying a Lambda layer")
    inputs = keras.Input((3,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ValueError, match="safe_mode"):
        load_model(path)
