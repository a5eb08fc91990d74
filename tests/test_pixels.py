"""The pixel encoding (`data.pixels`, harness.data.pixels): validated where it is written, one
formula in numpy and in the model, and one image reaching the backbone as the same tensor
through training, `harness eval`'s checkpoint, `harness predict` and the logged MLflow Model,
with the training run's mean. Real TensorFlow, a real SQLite MLflow store, a synthetic set."""

import numpy as np
import pytest

from harness import ledger
from harness.data import pixels

LEDGER = """\
experiment: pixels-test
defaults:
  seed: 3
  data:
    name: hvc
    image_size: 32
    val_fraction: 0.25
    cache: memory
    limit: 64
    pixels: {range: 255, channels: bgr, mean: per_pixel}
  backbone: {name: custom, freeze: none}
  head: {neck: gap, neck_units: 16, tower_units: [8], tower_dropouts: [0.0]}
  optimizer: {name: adam, lr: 0.003}
  batch_size: {train: 16, eval: 16}
profiles:
  cpu: {set: {}, max_epochs_per_pass: 1}
  smoke: {set: {}, max_epochs_per_pass: 1}
iterations:
  enc:
    passes: [{epochs: 1}]
"""


def test_a_bad_pixels_value_exits_2_at_its_file_line(tmp_path, capsys):
    from harness.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(LEDGER.replace("range: 255", "range: 128"))
    assert main(["validate", "--ledger", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    line = next(n for n, text in enumerate(LEDGER.splitlines(), start=1) if "pixels:" in text)
    assert err == [f"error: {path}:{line}: enc.data.pixels.range: Input should be 1 or 255 (got 128)"], err


def test_pixels_default_to_plain_rgb_and_leave_older_config_shas_alone():
    plain = ledger.validate_dict({"name": "x", "passes": [{"epochs": 1}]})
    assert pixels.is_identity(plain.data.pixels)
    spelled = ledger.with_changes(plain, {"data": {"pixels": {"range": 1, "channels": "rgb", "mean": "none"}}})
    assert spelled.config_sha() == plain.config_sha()  # runs logged before the field keep their sha
    notes = ledger.with_changes(plain, {"data": {"pixels": {"range": 255, "channels": "bgr"}}})
    assert notes.config_sha() != plain.config_sha()


def test_the_model_layer_encodes_with_the_same_formula_and_keeps_its_mean_in_a_keras_file(tmp_path):
    import keras

    from harness.models.backbones import PixelEncoding, preprocessing_layer

    rng = np.random.default_rng(0)
    images = rng.random((2, 8, 8, 3), dtype=np.float32)
    mean = rng.random((8, 8, 3), dtype=np.float32)
    config = ledger.PixelConfig(range=255, channels="bgr", mean="per_pixel")
    expected = ((images - mean) * 255.0)[..., ::-1]
    np.testing.assert_allclose(pixels.encode(images, config, mean), expected, rtol=1e-6)
    layer = preprocessing_layer("custom", None, config, mean)
    assert isinstance(layer, PixelEncoding)
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, layer(inputs))
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, rtol=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
    # Plain [0, 1] RGB adds no layer; pretrained weights keep their own (the catalog's).
    assert preprocessing_layer("custom", None, ledger.PixelConfig(), None) is None
    assert pixels.describe(config) == "pixels BGR 0-255, minus the training set's per-pixel mean"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from harness.data.synth import generate
    from harness.run.launch import run_iteration
    from harness.track.store import Store

    root = tmp_path_factory.mktemp("pixels")
    data = generate(root / "synth", 80, seed=4)
    (root / "ledger.yaml").write_text(LEDGER)
    book = ledger.load(root / "ledger.yaml")
    uri = f"sqlite:///{root}/store/mlflow.db"
    lines = []
    assert run_iteration(book, "enc", profile="smoke", data_dir=str(data), tracking_uri=uri, log=lines.append) == 0, lines
    store = Store(uri)
    return {"book": book, "data": data, "store": store, "run": store.runs("pixels-test", "enc")[0], "lines": lines,
            "root": root}


def _encoded(model, x):
    """What `model`'s backbone receives for the [0, 1] images x: its pixels layer's output."""
    import keras

    return np.asarray(keras.Model(model.inputs[0], model.get_layer("pixels").output)(x))


def test_one_image_reaches_the_backbone_alike_in_train_eval_predict_and_the_mlflow_model(trained):
    from harness.data.pipeline import eval_dataset, make_datasets
    from harness.data.source import open_dataset
    from harness.data.split import split
    from harness.models import build_model, load_model
    from harness.serve.predict import model_input
    from harness.track.models import load_predictor, model_uri

    header = next(line for line in trained["lines"] if line.startswith("== enc pass 1/1"))
    assert "pixels BGR 0-255, minus the training set's per-pixel mean" in header

    book, store, run = trained["book"], trained["store"], trained["run"]
    iteration = book.resolve("enc", "smoke")
    table, _ = open_dataset(iteration, str(trained["data"]), skip_bad_rows=False)
    parts = split(table, iteration.data.val_fraction, iteration.data.split_seed)
    bundle = make_datasets(iteration, table, parts.train, parts.val)
    row = int(parts.val[0])
    size = iteration.data.image_size

    # Training: the pipeline's tensor through the model built with the split's mean.
    x_train = next(bundle.rows([row]).as_numpy_iterator())[0]
    in_training = _encoded(build_model(iteration, training_mean=bundle.pixel_mean), x_train)
    # `harness eval`: the run's checkpoint on the eval dataset of the same row.
    checkpoint = sorted(store.download(run.run_id, "checkpoint", trained["root"] / "ckpt").glob("*.keras"))[0]
    x_eval = next(eval_dataset(table, [row], iteration).as_numpy_iterator())[0]
    in_eval = _encoded(load_model(checkpoint, compile=False), x_eval)
    # `harness predict` and the MLflow Model: the file's bytes through the logged model.
    predictor = load_predictor(store, model_uri(store, run.run_id))
    with open(table.paths[row], "rb") as handle:
        x_predict = model_input(handle.read(), size)[None]
    in_mlflow_model = _encoded(predictor.model, x_predict)

    np.testing.assert_array_equal(x_train, x_eval)
    np.testing.assert_array_equal(x_train, x_predict)
    np.testing.assert_allclose(in_eval, in_training, atol=1e-4)
    np.testing.assert_allclose(in_mlflow_model, in_training, atol=1e-4)
    # The mean is the training split's, carried by the model, not one of the images given.
    expected = pixels.encode(x_train, iteration.data.pixels, bundle.pixel_mean)
    np.testing.assert_allclose(in_mlflow_model, expected, atol=1e-3)
    train_only = np.stack([x for x, _ in bundle.rows(parts.train).unbatch().as_numpy_iterator()]).mean(axis=0)
    np.testing.assert_allclose(bundle.pixel_mean, train_only, atol=1e-5)
    layer_mean = pixels.mean_from_text(predictor.model.get_layer("pixels").training_mean, size)
    np.testing.assert_array_equal(layer_mean, bundle.pixel_mean)


def test_a_single_head_model_predicts_through_the_predictor_with_its_training_mean():
    """CIFAR-10's one output comes back from Keras as one array, not a list (the MLflow Model's
    input example once failed on it: 'axis 1 is out of bounds')."""
    from harness.models import build_model
    from harness.serve.predict import ModelCard, Predictor

    book = ledger.load("experiments/cifar10_resnet20.yaml")
    iteration = book.resolve("final")
    mean = np.full((32, 32, 3), 0.5, np.float32)
    model = build_model(iteration, training_mean=mean)
    card = ModelCard.of(iteration, run_id="r", profile="cpu", data="d", selected_epoch=1)
    frame = Predictor(model, card).predict_arrays(np.random.default_rng(1).random((3, 32, 32, 3), dtype=np.float32))
    assert list(frame.columns) == ["class", "class_prob"] and len(frame) == 3
    assert set(frame["class"]) <= set(card.heads["class"]) and (frame["class_prob"] > 0).all()
    np.testing.assert_array_equal(pixels.mean_from_text(model.get_layer("pixels").training_mean, 32), mean)
