"""Security defaults: no model the harness builds holds a Lambda layer (code inside a model
file), every load runs in Keras's safe mode and refuses one, and the ledger's YAML cannot
construct Python objects (see test_faults_input for the tag and path cases)."""

import json

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


@pytest.fixture()
def attached(tmp_path):
    """A real SQLite store (tests/store_builder.py) with a JSON artifact attached to its base run:
    (store, run id, the artifact's file in the store's local artifact folder)."""
    from store_builder import build

    from harness.track.store import Store

    built = build(tmp_path / "store")
    store = Store(built["uri"])
    run_id = built["runs"]["base"]
    store.attach(run_id, {"rows": [1, 2, 3]}, "probe/rows.json")
    [stored] = (tmp_path / "store").rglob("probe/rows.json")
    return store, run_id, stored


def test_artifact_download_works_inside_the_run(attached, tmp_path, record_property):
    record_property("expectation", "a run's own artifact downloads into the folder asked for")
    store, run_id, _ = attached
    local = store.download(run_id, "probe/rows.json", tmp_path / "out")
    assert local.is_relative_to(tmp_path / "out") and json.loads(local.read_text()) == {"rows": [1, 2, 3]}


@pytest.mark.parametrize("path", ["../../../etc", "/etc/passwd", "probe/../../x"])
def test_artifact_path_leading_out_is_refused(attached, tmp_path, path, record_property):
    record_property("expectation", f"artifact path '{path}': one line 'leads outside the run's artifacts', "
                                   f"nothing downloaded")
    from harness.core.errors import InputError

    store, run_id, _ = attached
    with pytest.raises(InputError, match="leads outside the run's artifacts"):
        store.download(run_id, path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_artifact_link_leading_out_of_a_local_store_is_refused(attached, tmp_path, record_property):
    record_property("expectation", "a link in a local artifact folder pointing outside it: refused before "
                                   "the copy (which would follow it), nothing downloaded")
    from harness.core.errors import InputError

    store, run_id, stored = attached
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the run")
    (stored.parent / "leak.txt").symlink_to(secret)
    with pytest.raises(InputError, match="leads outside"):
        store.download(run_id, "probe", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))
