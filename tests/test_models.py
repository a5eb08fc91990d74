"""Models: registry, forward pass and one training step per backbone, exact parameter counts,
freeze policies, and the offline ImageNet-weights error.

Kept small for a 2-core CI machine: every backbone trains at 32 px on a batch of 4, and the
224 px count checks only build (no forward pass is needed to count parameters).
"""

import json
import subprocess
import sys
from pathlib import Path

import inspect

import numpy as np
import pytest
from pydantic import ValidationError

keras = pytest.importorskip("keras")

from harness import ledger  # noqa: E402
from harness.core.labels import heads_for  # noqa: E402
from harness.core.errors import InputError  # noqa: E402
from harness.models import apply_freeze, build_model, count_params, list_backbones  # noqa: E402
from harness.models import backbones, catalog  # noqa: E402
from harness.models.backbones import Preprocess, create_backbone, register_backbone  # noqa: E402
from harness.models.freeze import iter_layers, policy_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CIFAR_LEDGER = ROOT / "experiments" / "cifar10_resnet20.yaml"


@pytest.fixture(scope="module")
def runs():
    return ledger.load(ROOT / "runs.yaml")


def make_iteration(**fields) -> ledger.Iteration:
    """A hand-made Iteration, validated the way the ledger validates one (through JSON)."""
    fields.setdefault("name", "handmade")
    fields.setdefault("passes", [{"epochs": 1}])
    return ledger.Iteration.model_validate_json(json.dumps(fields))


def small(name: str, **head) -> ledger.Iteration:
    """The `first` iteration's model (8 heads, Flatten, Dense(512), 128-128 towers) at 32 px on
    backbone `name`, everything trainable. Dropout 0 so a training-mode forward pass is
    deterministic and "the loss went down" is a fair comparison."""
    return make_iteration(
        data={"name": "hvc", "image_size": 32},
        backbone={"name": name, "freeze": "none"},
        head={"tower_dropouts": [0.0, 0.0], **head},
    )


def fixed_batch(model, n=4, seed=0):
    rng = np.random.default_rng(seed)
    size = model.input_shape[1]
    x = rng.uniform(0, 1, size=(n, size, size, 3)).astype("float32")
    y = {}
    for head, classes in heads_for("hvc").items():
        y[f"{head}_output"] = np.eye(len(classes), dtype="float32")[rng.integers(0, len(classes), n)]
    return x, y


def compile_sgd(model, lr=1e-2, eager=False):
    """SGD with categorical cross-entropy on every head, as the notes train.

    `global_clipnorm` bounds the step's length: a random init at 32 px can have gradients in
    the hundreds (DenseNet, ResNet), where any fixed LR overshoots; with a bounded step,
    "one step lowers the loss" tests the gradient's direction, which is the point."""
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=lr, momentum=0.9, global_clipnorm=1.0),
        loss={name: "categorical_crossentropy" for name in model.output_names},
        jit_compile=False,  # XLA compile time dwarfs one step on a CPU
        run_eagerly=eager,  # tracing DenseNet's train step takes ~25 s on 2 cores; eager ~3 s
    )


# --------------------------------------------------------------------------- registry


def test_registry_builds_exactly_the_catalog():
    assert list_backbones() == sorted(catalog.names())


def test_each_builder_takes_the_options_its_catalog_entry_lists():
    for name in catalog.names():
        parameters = set(inspect.signature(backbones._REGISTRY[name]).parameters) - {"input_shape", "weights"}
        assert parameters == set(catalog.spec(name).options), name


def test_registering_a_name_the_catalog_lacks_is_an_error():
    with pytest.raises(ValueError, match="not in harness.models.catalog"):
        register_backbone("vgg19")(lambda input_shape, weights=None: None)


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="twice"):
        register_backbone("vgg16")(lambda input_shape, weights=None: None)


def test_unknown_backbone_and_option_are_input_errors():
    with pytest.raises(InputError, match="unknown backbone 'vgg19'"):
        create_backbone("vgg19", (32, 32, 3))
    with pytest.raises(InputError, match="does not take depth"):
        create_backbone("vgg16", (32, 32, 3), depth=20)


@pytest.mark.parametrize("name", list_backbones())
def test_backbone_is_a_model_named_backbone(name):
    backbone = create_backbone(name, (32, 32, 3))
    assert isinstance(backbone, keras.Model) and backbone.name == "backbone"
    assert len(backbone.output_shape) == 4  # a feature map; pooling is the neck's job


# --------------------------------------------------------------------------- forward + train step


@pytest.mark.parametrize("name", list_backbones())
def test_forward_pass_and_one_training_step(name):
    keras.utils.set_random_seed(0)  # the same init every run: a failure reproduces
    model = build_model(small(name))
    heads = heads_for("hvc")
    assert model.output_names == [f"{head}_output" for head in heads]
    x, y = fixed_batch(model)

    predictions = model(x, training=False)
    assert len(predictions) == len(heads)
    for pred, classes in zip(predictions, heads.values()):
        pred = np.asarray(pred)
        assert pred.shape == (len(x), len(classes))
        assert np.all(np.isfinite(pred))
        np.testing.assert_allclose(pred.sum(axis=1), 1.0, rtol=1e-5)

    compile_sgd(model, eager=True)
    # train_on_batch reports the loss of the forward pass it updates from, so the second call
    # shows the loss on the same batch after one step.
    before = model.train_on_batch(x, y)[0]  # [total, then one loss per head]
    after = model.train_on_batch(x, y)[0]
    assert np.isfinite(before) and np.isfinite(after)
    assert after < before, f"{name}: loss {before:.4f} -> {after:.4f} after one SGD step"
    assert all(np.all(np.isfinite(np.asarray(w))) for w in model.weights)


def test_single_head_model_for_cifar10():
    model = build_model(make_iteration(
        data={"name": "cifar10", "image_size": 32},
        backbone={"name": "resnet20v1", "freeze": "none"},
        head={"neck": "gap", "neck_units": None, "tower_units": [], "tower_dropouts": []},
    ))
    assert model.output_names == ["class_output"]
    out = model(np.zeros((2, 32, 32, 3), "float32"))
    assert not isinstance(out, (list, tuple)) and tuple(out.shape) == (2, 10)


def test_backbone_runs_alone_for_a_feature_cache():
    model = build_model(small("custom", neck="gap"))
    backbone = model.get_layer("backbone")
    x, _ = fixed_batch(model, n=2)
    features = backbone(x, training=False)
    assert tuple(features.shape[1:]) == tuple(backbone.output_shape[1:])
    assert tuple(features.shape[1:]) == tuple(model.get_layer("neck_gap").input.shape[1:])


# --------------------------------------------------------------------------- exact counts


def test_vgg16_counts_with_the_notes_tower_defect(runs):
    base = runs.resolve("base")
    assert base.head.tower_defect and base.backbone.freeze == "backbone"
    assert count_params(build_model(base)) == (28_089_051, 13_374_363, 14_714_688)


def test_vgg16_counts_with_the_tower_fixed(runs):
    assert count_params(build_model(runs.resolve("first"))) == (28_221_147, 13_506_459, 14_714_688)


def test_tower_defect_leaves_the_first_dense_out_of_the_graph(runs):
    model = build_model(runs.resolve("base"), input_shape=(32, 32, 3))
    names = {layer.name for layer in model.layers}
    assert "gender_dense2" in names and "gender_dense1" not in names
    assert model.get_layer("gender_dense2").input.shape[-1] == 512  # fed by the neck


def resnet20_cifar() -> ledger.Iteration:
    return make_iteration(
        data={"name": "cifar10", "image_size": 32},
        backbone={"name": "resnet20v1", "freeze": "none"},
        head={"neck": "gap", "neck_units": None, "tower_units": [], "tower_dropouts": []},
    )


def test_resnet20v1_counts():
    assert count_params(build_model(resnet20_cifar())) == (274_442, 273_066, 1_376)


def test_resnet_depth_is_6n_plus_2():
    deeper = count_params(build_model(resnet20_cifar().model_copy(
        update={"backbone": ledger.BackboneConfig(name="resnet20v1", freeze="none", depth=32)})))
    assert deeper[0] > 274_442
    with pytest.raises(InputError, match="6n\\+2"):
        create_backbone("resnet20v1", (32, 32, 3), depth=21)


@pytest.mark.skipif(not CIFAR_LEDGER.exists(), reason="the CIFAR-10 ledger is not written yet")
def test_cifar_ledger_resnet20_iterations_count_274442():
    cifar = ledger.load(CIFAR_LEDGER)
    checked = 0
    for name in cifar.names:
        iteration = cifar.resolve(name)
        if iteration.backbone.name == "resnet20v1" and (iteration.backbone.depth or 20) == 20:
            assert count_params(build_model(iteration))[0] == 274_442, name
            checked += 1
    assert checked


def test_depth_on_another_backbone_is_refused_by_the_ledger_and_the_registry():
    with pytest.raises(ValidationError, match="vgg16 does not take depth"):
        make_iteration(backbone={"name": "vgg16", "depth": 20}, data={"name": "hvc", "image_size": 32})
    with pytest.raises(InputError, match="backbone.depth: vgg16 does not take depth"):
        create_backbone("vgg16", (32, 32, 3), depth=20)


def test_too_small_images_are_input_errors():
    with pytest.raises(InputError, match="at least 32x32"):
        create_backbone("densenet121", (16, 16, 3))


# --------------------------------------------------------------------------- freeze policies


@pytest.fixture(scope="module")
def model():
    return build_model(small("custom"), freeze=False)


def trainable_paths(model):
    return {"/".join([o.name for o in outer] + [layer.name]): layer.trainable and all(o.trainable for o in outer)
            for layer, outer in iter_layers(model) if layer.weights}


def test_freeze_none_trains_everything(model):
    summary = apply_freeze(model, "none")
    assert not summary.frozen and all(trainable_paths(model).values())
    total, trainable, non_trainable = count_params(model)
    bn_stats = sum(2 * layer.moving_mean.shape[0] for layer, _ in iter_layers(model)
                   if isinstance(layer, keras.layers.BatchNormalization))
    assert non_trainable == bn_stats and trainable == total - bn_stats


def test_freeze_backbone_freezes_exactly_the_backbone(model):
    summary = apply_freeze(model, "backbone")
    state = trainable_paths(model)
    assert {p for p, t in state.items() if not t} == {p for p in state if p.startswith("backbone/")}
    assert set(summary.frozen) == {p for p in state if p.startswith("backbone/")}
    assert count_params(model)[1] == sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert count_params(model)[1] == count_params(model)[0] - model.get_layer("backbone").count_params()


def test_freeze_rules_reach_inside_the_backbone_first_match_wins(model):
    rules = (
        ledger.FreezeRule(pattern="^stage4_", trainable=True),   # fine-tune the last stage
        {"pattern": "^backbone$", "trainable": False},           # ... freeze the rest of the backbone
        ("^gender_", False),                                     # and the gender tower
        {"pattern": "never_matches", "trainable": False},
    )
    summary = apply_freeze(model, rules)
    state = trainable_paths(model)
    for path, trainable in state.items():
        layer = path.split("/")[-1]
        if path.startswith("backbone/"):
            assert trainable == layer.startswith("stage4_"), path
        else:
            assert trainable == (not layer.startswith("gender_")), path
    assert summary.unmatched == ("never_matches",)


def test_freeze_rule_order_decides(model):
    apply_freeze(model, [("^stage1_conv", False), ("^stage1_", True), ("^backbone$", True)])
    state = trainable_paths(model)
    assert not state["backbone/stage1_conv"] and not state["backbone/stage1_conv_bn"]
    assert state["backbone/stage1_sep"] and state["backbone/stage1_sep_bn"]
    apply_freeze(model, [("^stage1_", True), ("^stage1_conv", False)])
    state = trainable_paths(model)
    assert state["backbone/stage1_conv"] and state["backbone/stage1_conv_bn"]
    assert all(state.values())  # layers matching no rule stay trainable


def test_freeze_bad_policies_are_input_errors(model):
    with pytest.raises(InputError, match="unknown policy 'all'"):
        apply_freeze(model, "all")
    with pytest.raises(InputError, match="not a regular expression"):
        apply_freeze(model, [("stage(", False)])


def backbone_kernels(model):
    return [np.array(w) for w in model.get_layer("backbone").weights if w.path.endswith(("kernel", "gamma"))]


@pytest.mark.slow
def test_freeze_reapplied_before_a_recompile_takes_effect():
    """A pass that overrides the policy: freeze the backbone, train; unfreeze, recompile, train."""
    model = build_model(small("custom"), freeze=False)
    x, y = fixed_batch(model)
    apply_freeze(model, "backbone")  # pass 1
    compile_sgd(model)
    start = backbone_kernels(model)
    model.train_on_batch(x, y)
    after_pass_1 = backbone_kernels(model)
    assert all(np.array_equal(a, b) for a, b in zip(start, after_pass_1))

    apply_freeze(model, "none")  # pass 2 overrides the policy
    compile_sgd(model)
    model.train_on_batch(x, y)
    after_pass_2 = backbone_kernels(model)
    assert not any(np.array_equal(a, b) for a, b in zip(after_pass_1, after_pass_2))


def test_policy_for_a_pass_prefers_its_override():
    iteration = make_iteration(
        backbone={"name": "vgg16", "freeze": "backbone"},
        passes=[{"epochs": 1}, {"epochs": 1, "resume_from": "best", "freeze": "none"}],
    )
    assert policy_for(iteration, 0) == "backbone" and policy_for(iteration, 1) == "none"


# --------------------------------------------------------------------------- imagenet offline


@pytest.mark.parametrize("name, file_name", [
    ("vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ("densenet121", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
])
def test_imagenet_without_the_file_names_file_and_folder(name, file_name, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(InputError) as err:
        create_backbone(name, (32, 32, 3), weights="imagenet")
    message = str(err.value)
    assert file_name in message and str(tmp_path / "models") in message
    assert "\n" not in message


def test_imagenet_with_a_corrupt_file_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"partial")
    with pytest.raises(InputError, match="md5 mismatch"):
        create_backbone("vgg16", (32, 32, 3), weights="imagenet")


def test_imagenet_on_a_backbone_without_pretrained_weights():
    with pytest.raises(InputError, match="no pretrained weights"):
        create_backbone("custom", (32, 32, 3), weights="imagenet")


@pytest.mark.parametrize("mode, reference", [
    ("caffe", "vgg16"),
    ("torch", "densenet"),
])
def test_preprocess_layer_matches_keras_preprocess_input_on_unit_images(mode, reference):
    """The pipeline feeds [0, 1] RGB; keras.applications' preprocess_input takes 0-255."""
    x = np.random.default_rng(0).uniform(0, 1, size=(2, 8, 8, 3)).astype("float32")
    expected = getattr(keras.applications, reference).preprocess_input(x * 255.0)
    np.testing.assert_allclose(np.asarray(Preprocess(mode)(x)), expected, rtol=1e-5, atol=1e-3)


def test_pretrained_backbones_get_their_preprocessing_and_it_survives_a_keras_file(tmp_path, monkeypatch):
    # No weight file on this machine: build the architecture, keep the pretrained path's layers.
    monkeypatch.setattr(backbones, "pretrained_file", lambda name, weights="imagenet": None)
    assert catalog.preprocessing_for("vgg16", "imagenet").mode == "caffe"
    assert catalog.preprocessing_for("densenet121", "imagenet").mode == "torch"
    iteration = small("vgg16").model_copy(update={"backbone": ledger.BackboneConfig(name="vgg16", weights="imagenet")})
    model = build_model(iteration)
    assert model.get_layer("preprocess").mode == "caffe"
    assert "preprocess" not in [layer.name for layer in build_model(small("vgg16")).layers]
    model.save(tmp_path / "m.keras")
    from harness.models import load_model

    loaded = load_model(tmp_path / "m.keras")
    x, _ = fixed_batch(model, n=2)
    for a, b in zip(model(x, training=False), loaded(x, training=False)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_feature_and_head_models_split_the_whole_model_and_share_its_layers():
    from harness.models import feature_model, head_model

    for neck in ("gap", "flatten"):
        model = build_model(small("custom", neck=neck))
        x, _ = fixed_batch(model, n=2)
        features = feature_model(model).predict(x, verbose=0)
        head = head_model(model)
        for a, b in zip(head(features, training=False), model(x, training=False)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
        shared = {id(layer) for layer in model.layers}
        assert all(id(layer) in shared for layer in head.layers if not isinstance(layer, keras.layers.InputLayer))


# --------------------------------------------------------------------------- import hygiene


def test_ledger_and_models_package_do_not_import_tensorflow():
    code = ("import sys, harness.ledger, harness.models, harness.models.catalog; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_model_with_nested_backbone_round_trips_through_keras_file(tmp_path):
    """Checkpoints are whole-model .keras files: the nested backbone and a freeze must survive."""
    model = build_model(small("resnet20v1", neck="gap"))
    apply_freeze(model, "backbone")
    x, _ = fixed_batch(model, n=2)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("backbone").name == "backbone"
    assert count_params(loaded) == count_params(model)
    for a, b in zip(model(x, training=False), loaded(x, training=False)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
