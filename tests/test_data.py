"""Data layer on synthetic data: loading, validation, split, generator, CIFAR-10, tf.data pipeline.

Small on purpose (tens of 32 px images): the suite runs on a shared two-core machine.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.data import synth
from harness.data.cifar10 import load_cifar10, synthetic_cifar10
from harness.core.labels import CIFAR10_CLASSES, HVC_CSV_COLUMNS, HVC_CSV_HEADER, HVC_HEADS, HVC_MAJORITY_RATES
from harness.data.hvc import fingerprint, load_hvc
from harness.data.split import class_weights, split
from harness.data.source import open_dataset
from harness.data.split import VALIDATE_ON_TRAIN_WARNING, check_disjoint
from harness.core.errors import InputError
from harness.ledger import Iteration

N_SYNTH = 40


def make_iteration(**sections) -> Iteration:
    """A resolved Iteration with small defaults; keyword sections replace whole sub-configs."""
    raw = {"name": "t", "passes": [{"epochs": 1}], "seed": 3,
           "data": {"image_size": 32}, "batch_size": {"train": 8, "eval": 16}}
    raw.update(sections)
    return Iteration.model_validate_json(json.dumps(raw))


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth") / "hvc", N_SYNTH, seed=0)


@pytest.fixture
def data_copy(synth_dir, tmp_path) -> Path:
    """A private copy of the synthetic set that a test may break."""
    return Path(shutil.copytree(synth_dir, tmp_path / "hvc"))


def edit_csv(folder: Path, edit) -> None:
    csv = folder / "hvc_annotations.csv"
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    frame = edit(frame)
    frame.to_csv(csv, index=False)


# --------------------------------------------------------------------------- heads and labels


def test_heads_match_the_design_class_order():
    assert list(HVC_HEADS) == ["gender", "image_quality", "age", "weight", "bag", "footwear", "pose", "emotion"]
    assert HVC_HEADS["bag"] == ("Daily/Office/Work Bag", "Grocery/Home/Plastic Bag", "None")
    for classes in HVC_HEADS.values():
        assert list(classes) == sorted(classes)  # pd.get_dummies order


def test_labels_are_class_indices_in_fixed_order(synth_dir):
    table = load_hvc(synth_dir)
    frame = pd.read_csv(synth_dir / "hvc_annotations.csv", dtype=str, keep_default_na=False)
    assert len(table) == N_SYNTH and not table.skipped
    for head, classes in HVC_HEADS.items():
        expected = [classes.index(v) for v in frame[HVC_CSV_COLUMNS[head]]]
        assert table.labels[head].tolist() == expected
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table.paths)


def test_bag_class_none_is_a_label_not_missing(data_copy):
    edit_csv(data_copy, lambda f: f.assign(carryingbag="None"))
    table = load_hvc(data_copy)
    assert (table.labels["bag"] == HVC_HEADS["bag"].index("None")).all()


def test_subset_lacking_a_class_keeps_one_hot_width(data_copy):
    edit_csv(data_copy, lambda f: f.assign(gender="male", age="55+"))
    table = load_hvc(data_copy)
    train, val = split(table, 0.25, seed=1)
    from harness.data.pipeline import make_datasets

    data = make_datasets(make_iteration(), table, train, val)
    _, labels = next(iter(data.val))
    assert labels["gender_output"].shape[-1] == 2 and labels["age_output"].shape[-1] == 5
    assert np.all(labels["gender_output"].numpy()[:, 1] == 1)  # male is column 1, as in get_dummies
    assert np.all(labels["age_output"].numpy()[:, 4] == 1)


# --------------------------------------------------------------------------- split


def test_split_is_deterministic_disjoint_and_stratified(synth_dir):
    table = load_hvc(synth_dir)
    train, val = split(table, 0.25, seed=7)
    again = split(table, 0.25, seed=7)
    assert np.array_equal(train, again.train) and np.array_equal(val, again.val)
    assert again.message is None
    assert not set(train) & set(val) and len(train) + len(val) == len(table)
    assert len(val) == 10
    gender = table.labels["gender"]
    assert abs(gender[val].mean() - gender.mean()) <= 0.1
    other = split(table, 0.25, seed=8)
    assert not np.array_equal(val, other.val)


def test_validate_on_train_reuses_training_images_and_says_so(synth_dir):
    table = load_hvc(synth_dir)
    result = split(table, 0.25, seed=7, validate_on_train=True)
    assert np.array_equal(result.train, result.val)
    assert np.array_equal(result.train, split(table, 0.25, seed=7).train)
    assert result.message == VALIDATE_ON_TRAIN_WARNING and result.message.startswith("WARNING validate_on_train")


def test_overlap_guard_stops_shared_rows_and_shared_images(data_copy):
    # Two CSV rows naming one file are now refused when the CSV is read (test_faults_input);
    # the split guard stays as a second line of defence, tested on a table given such rows.
    table = load_hvc(data_copy)
    table.paths[5] = table.paths[0]
    edit_csv(data_copy, lambda f: f.assign(image_path=f["image_path"].where(f.index != 5, f["image_path"][0])))
    with pytest.raises(InputError, match="duplicate of line 2"):
        load_hvc(data_copy)
    with pytest.raises(InputError, match="overlap in 1 rows"):
        check_disjoint(table, np.array([0, 1, 2]), np.array([2, 3]))
    with pytest.raises(InputError) as info:
        check_disjoint(table, np.array([0, 1]), np.array([5, 6]))
    (line,) = info.value.lines
    assert line.startswith(f"{table.csv_path}:2: image_path 'resized/1.jpg' is in both training and validation")
    assert "CSV lines 2, 7" in line


def test_class_weights_are_balanced_and_absent_classes_neutral():
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([0, 0, 0, 1, 2, 2])
    weights = class_weights(labels, 4)
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=labels)
    assert np.allclose(weights[:3], expected) and weights[3] == 1.0


# --------------------------------------------------------------------------- bad input


def _truncate(folder):
    path = folder / "resized" / "6.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return 7, "image_path 'resized/6.jpg': truncated JPEG"


def _corrupt(folder):
    path = folder / "resized" / "6.jpg"
    data = path.read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, len(data) // 2, dtype=np.uint8).tobytes()
    path.write_bytes(data[: len(data) // 4] + noise + data[-2:])  # markers intact, scan data garbage
    return 7, "image_path 'resized/6.jpg': corrupt JPEG"


def _not_jpeg(folder):
    (folder / "resized" / "6.jpg").write_bytes(b"hello, not an image")
    return 7, "image_path 'resized/6.jpg': not a JPEG"


def _missing_image(folder):
    (folder / "resized" / "9.jpg").unlink()
    return 10, "image_path 'resized/9.jpg': file not found"


def _unknown_label(folder):
    edit_csv(folder, lambda f: f.assign(gender=f["gender"].where(f.index != 15, "Male")))
    return 17, "gender 'Male': unknown label; allowed: female, male"


def _escape_parent(folder):
    (folder.parent / "outside.jpg").write_bytes((folder / "resized" / "1.jpg").read_bytes())
    edit_csv(folder, lambda f: f.assign(image_path=f["image_path"].where(f.index != 2, "../outside.jpg")))
    return 4, "image_path '../outside.jpg': escapes the data folder"


def _escape_nested(folder):
    edit_csv(folder, lambda f: f.assign(image_path=f["image_path"].where(f.index != 2, "resized/../../x.jpg")))
    return 4, "image_path 'resized/../../x.jpg': escapes the data folder"


def _absolute(folder):
    absolute = str((folder / "resized" / "1.jpg").resolve())
    edit_csv(folder, lambda f: f.assign(image_path=f["image_path"].where(f.index != 2, absolute)))
    return 4, f"image_path '{absolute}': absolute path"


def _too_many_fields(folder):
    csv = folder / "hvc_annotations.csv"
    lines = csv.read_text().splitlines()
    lines[4] += ",extra"
    csv.write_text("\n".join(lines) + "\n")
    return 5, "11 fields, the header has 10"


def _missing_column(folder):
    edit_csv(folder, lambda f: f.drop(columns=["bodypose"]))
    return 1, "missing column 'bodypose'"


def _header_only(folder):
    (folder / "hvc_annotations.csv").write_text(",".join(HVC_CSV_HEADER) + "\n")
    return None, "no rows left"


def _no_csv(folder):
    (folder / "hvc_annotations.csv").unlink()
    return None, "file not found"


BAD_INPUTS = [_truncate, _corrupt, _not_jpeg, _missing_image, _unknown_label, _escape_parent, _escape_nested,
              _absolute, _too_many_fields, _missing_column, _header_only, _no_csv]


@pytest.mark.parametrize("breaker", BAD_INPUTS, ids=[b.__name__.strip("_") for b in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_row(data_copy, breaker):
    line, what = breaker(data_copy)
    with pytest.raises(InputError) as info:
        load_hvc(data_copy)
    (message,) = info.value.lines
    csv = data_copy / "hvc_annotations.csv"
    where = f"{csv}:{line}: " if line else f"{csv}: "
    assert message.startswith(where), message
    assert what in message, message


def test_every_bad_row_gets_its_own_line(data_copy):
    _missing_image(data_copy)
    _unknown_label(data_copy)
    with pytest.raises(InputError) as info:
        load_hvc(data_copy)
    assert [line.split(": ")[0].rsplit(":", 1)[1] for line in info.value.lines] == ["10", "17"]


def test_skip_bad_rows_drops_and_reports_them(data_copy):
    _truncate(data_copy)
    _unknown_label(data_copy)
    table = load_hvc(data_copy, skip_bad_rows=True)
    assert len(table) == N_SYNTH - 2
    assert [row.line for row in table.skipped] == [7, 17]
    assert "truncated JPEG" in table.skipped[0].reason
    assert table.skipped_message.startswith("skipped 2 bad rows: line 7 (image_path 'resized/6.jpg': truncated")
    assert not any(p.endswith(os.path.join("resized", "6.jpg")) for p in table.paths)


def test_skip_bad_rows_with_nothing_left_is_an_error(data_copy):
    edit_csv(data_copy, lambda f: f.assign(emotion="Bored"))
    with pytest.raises(InputError) as info:
        load_hvc(data_copy, skip_bad_rows=True)
    (message,) = info.value.lines
    assert f"no rows left: all {N_SYNTH} rows are bad" in message


def test_limit_keeps_the_first_valid_rows(data_copy):
    _missing_image(data_copy)  # line 10 = row 9
    table = load_hvc(data_copy, skip_bad_rows=True, limit=12)
    assert len(table) == 12
    assert table.frame["csv_line"].tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14]
    # Rows past the limit are not checked at all.
    _unknown_label(data_copy)  # line 17
    assert len(load_hvc(data_copy, skip_bad_rows=False, limit=5)) == 5


def test_fingerprint_tracks_labels_and_image_files(data_copy):
    first = fingerprint(data_copy)
    assert first == fingerprint(data_copy) == load_hvc(data_copy).fingerprint
    assert len(first) == 12
    image = data_copy / "resized" / "3.jpg"
    image.write_bytes(image.read_bytes() + b"\x00")
    second = fingerprint(data_copy)
    assert second != first
    edit_csv(data_copy, lambda f: f.assign(gender="male"))
    assert fingerprint(data_copy) not in (first, second)


# --------------------------------------------------------------------------- generator


def test_generator_writes_the_real_format(synth_dir):
    csv = synth_dir / "hvc_annotations.csv"
    assert csv.read_text().splitlines()[0] == ",".join(HVC_CSV_HEADER)
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    assert len(frame) == N_SYNTH
    for head, classes in HVC_HEADS.items():
        assert set(frame[HVC_CSV_COLUMNS[head]]) <= set(classes)
    assert frame["image_path"].tolist() == [f"resized/{i}.jpg" for i in range(1, N_SYNTH + 1)]
    assert frame["filename"].tolist() == [f"images/synth/{i}.jpg" for i in range(1, N_SYNTH + 1)]
    with Image.open(synth_dir / "resized" / "1.jpg") as image:
        assert (image.format, image.size, image.mode) == ("JPEG", (224, 224), "RGB")


def test_generator_is_deterministic(tmp_path, synth_dir):
    again = synth.generate(tmp_path / "again", 5, seed=0)
    csv = (again / "hvc_annotations.csv").read_text().splitlines()
    assert csv == (synth_dir / "hvc_annotations.csv").read_text().splitlines()[:6]
    assert (again / "resized" / "5.jpg").read_bytes() == (synth_dir / "resized" / "5.jpg").read_bytes()
    other = synth.generate(tmp_path / "other", 5, seed=1)
    assert (other / "resized" / "5.jpg").read_bytes() != (again / "resized" / "5.jpg").read_bytes()


def test_generator_refuses_to_overwrite_a_real_dataset(data_copy):
    edit_csv(data_copy, lambda f: f.assign(filename="images/Set1/1.jpg"))
    before = (data_copy / "hvc_annotations.csv").read_bytes()
    with pytest.raises(InputError, match="not a synthetic set"):
        synth.generate(data_copy, 3, seed=0)
    assert (data_copy / "hvc_annotations.csv").read_bytes() == before
    synth.generate(data_copy.parent / "fresh", 2, seed=0)
    synth.generate(data_copy.parent / "fresh", 3, seed=0)  # regenerating a synthetic set is fine
    assert len(load_hvc(data_copy.parent / "fresh")) == 3


def test_generator_class_frequencies_match_the_real_ones():
    labels = synth.sample_labels(40_000, seed=0)
    for head, classes in HVC_HEADS.items():
        freq = np.bincount(labels[head], minlength=len(classes)) / 40_000
        assert np.allclose(freq, synth.REAL_FREQUENCIES[head], atol=0.01), head
        assert abs(freq.max() - HVC_MAJORITY_RATES[head]) < 0.01, head


def test_default_data_is_generated_once(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "DEFAULT_N", 6)
    folder, message = synth.ensure_default_data(tmp_path / "data")
    assert folder == tmp_path / "data" / "hvc-synth" and len(load_hvc(folder)) == 6
    assert "generated 6 synthetic hvc images" in message
    assert "--data DIR" in message and "HARNESS_DATA" in message
    assert synth.ensure_default_data(tmp_path / "data") == (folder, None)


# --------------------------------------------------------------------------- cifar10


def _write_fake_cifar(folder: Path, per_batch: int = 4) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, handle)


def test_cifar10_reads_the_standard_batches(tmp_path):
    _write_fake_cifar(tmp_path / "cifar-10-batches-py")
    table = load_cifar10(tmp_path)  # the parent folder works too
    assert table.images.shape == (24, 32, 32, 3) and table.images.dtype == np.uint8
    assert table.heads == {"class": CIFAR10_CLASSES}
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as handle:
        raw = pickle.load(handle, encoding="bytes")
    first = raw[b"data"][0]
    assert np.array_equal(table.images[20][..., 0].ravel(), first[:1024])  # red plane first
    assert table.labels["class"][20] == raw[b"labels"][0]
    result = split(table, 0.15, seed=1)
    assert result.train.tolist() == list(range(20)) and result.val.tolist() == list(range(20, 24))
    assert "test split" in result.message
    assert len(load_cifar10(tmp_path / "cifar-10-batches-py").head(12)) == 12


def test_cifar10_missing_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(InputError) as info:
        load_cifar10()
    (message,) = info.value.lines
    assert "cifar-10-python.tar.gz" in message and "https://www.cs.toronto.edu/~kriz/cifar.html" in message
    with pytest.raises(InputError, match="cifar-10-python.tar.gz"):
        load_cifar10(tmp_path / "nowhere")


def test_cifar10_uses_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    _write_fake_cifar(tmp_path / "keras" / "datasets" / "cifar-10-batches-py")
    assert len(load_cifar10()) == 24


def test_cifar10_corrupt_batch_names_the_file(tmp_path):
    _write_fake_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(InputError, match="data_batch_3: not a CIFAR-10 python batch"):
        load_cifar10(tmp_path / "c")


def test_synthetic_cifar10_shape_and_determinism():
    table = synthetic_cifar10(50, seed=2)
    assert table.images.shape == (50, 32, 32, 3) and table.images.dtype == np.uint8
    assert set(np.unique(table.labels["class"])) <= set(range(10))
    assert np.array_equal(table.images, synthetic_cifar10(50, seed=2).images)
    assert table.predefined_split is None


# --------------------------------------------------------------------------- source


def test_open_dataset_hvc_sources(synth_dir, tmp_path, monkeypatch):
    iteration = make_iteration(data={"image_size": 32, "limit": 10})
    table, messages = open_dataset(iteration, data_dir=synth_dir)
    assert len(table) == 10 and messages == []
    monkeypatch.setenv("HARNESS_DATA", str(synth_dir))
    table, messages = open_dataset(iteration)
    assert len(table) == 10 and "HARNESS_DATA" in messages[0]
    monkeypatch.delenv("HARNESS_DATA")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(synth, "DEFAULT_N", 12)
    table, messages = open_dataset(iteration)
    assert len(table) == 10 and messages[0].startswith("no data given: generated 12 synthetic")
    assert (tmp_path / "data" / "hvc-synth" / "hvc_annotations.csv").is_file()


def test_open_dataset_reports_skipped_rows(data_copy):
    _missing_image(data_copy)
    table, messages = open_dataset(make_iteration(), data_dir=data_copy, skip_bad_rows=True)
    assert messages == ["skipped 1 bad row: line 10 (image_path 'resized/9.jpg': file not found)"]


def test_open_dataset_cifar10_falls_back_to_synthetic(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    iteration = make_iteration(data={"name": "cifar10", "image_size": 32, "limit": 30})
    table, messages = open_dataset(iteration)
    assert len(table) == 30 and "synthetic" in messages[0] and "cifar-10-python.tar.gz" in messages[0]
    _write_fake_cifar(tmp_path / "real")
    table, messages = open_dataset(iteration, data_dir=tmp_path / "real")
    assert len(table) == 24 and messages == []


def test_non_pipeline_modules_do_not_import_tensorflow():
    code = ("import sys, harness.data.hvc, harness.data.synth, harness.data.source, harness.data.cifar10, "
            "harness.data.split, harness.data.table; assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# --------------------------------------------------------------------------- pipeline


def _batches(dataset, n=None):
    items = dataset.take(n) if n else dataset
    return [(x, {k: v for k, v in y.items()}) for x, y in items.as_numpy_iterator()]


def test_pipeline_shapes_dtypes_and_labels(synth_dir):
    from harness.data.pipeline import make_datasets

    table = load_hvc(synth_dir)
    train, val = split(table, 0.25, seed=1)
    data = make_datasets(make_iteration(), table, train, val)
    assert (data.n_train, data.n_val, data.steps_per_epoch) == (30, 10, 3)
    assert data.heads == HVC_HEADS
    epoch = _batches(data.train_epoch(0))
    assert len(epoch) == 3
    for x, y in epoch:
        assert x.shape == (8, 32, 32, 3) and x.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
        assert set(y) == {f"{h}_output" for h in HVC_HEADS}
        for head, classes in HVC_HEADS.items():
            assert y[f"{head}_output"].shape == (8, len(classes)) and y[f"{head}_output"].dtype == np.float32
            assert np.all(y[f"{head}_output"].sum(axis=1) == 1)
    (vx, vy), = _batches(data.val)
    assert vx.shape == (10, 32, 32, 3)
    for head in HVC_HEADS:
        assert np.array_equal(vy[f"{head}_output"].argmax(axis=1), data.val_labels[head])
        assert np.array_equal(data.val_labels[head], table.labels[head][val])
        assert np.array_equal(data.train_labels[head], table.labels[head][train])
    # The stream goes on past one epoch.
    assert len(_batches(data.train, 7)) == 7


def test_pipeline_pixels_are_the_resized_image(synth_dir):
    from harness.data.pipeline import make_datasets

    table = load_hvc(synth_dir)
    data = make_datasets(make_iteration(data={"image_size": 56}), table, np.arange(8), np.arange(8, 10))
    (x, _), = _batches(data.val)
    with Image.open(table.paths[8]) as image:
        expected = np.asarray(image.convert("RGB").resize((56, 56), Image.BILINEAR), np.float32) / 255
    assert np.abs(x[0] - expected).mean() < 0.03


def test_training_order_and_augmentation_are_reproducible(synth_dir, tmp_path):
    from harness.data.pipeline import make_datasets

    table = load_hvc(synth_dir)
    train, val = split(table, 0.25, seed=1)
    augmented = {"flip": True, "cutout": {"size": 6, "count": 2}}

    def two_epochs(seed, cache="none", augmentation=augmented):
        iteration = make_iteration(seed=seed, augmentation=augmentation, data={"image_size": 32, "cache": cache})
        data = make_datasets(iteration, table, train, val, cache_dir=tmp_path / "cache")
        return data, _batches(data.train, 2 * data.steps_per_epoch)

    data, first = two_epochs(5)
    _, second = two_epochs(5)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, second))
    assert all(np.array_equal(a[1]["gender_output"], b[1]["gender_output"]) for a, b in zip(first, second))
    # Each epoch is reshuffled, and another seed gives another order.
    steps = data.steps_per_epoch
    assert not np.array_equal(first[0][0], first[steps][0])
    _, other = two_epochs(6)
    assert not np.array_equal(first[0][0], other[0][0])
    # Resuming at epoch 1 continues the same sequence.
    resumed = _batches(data.train_from(1), steps)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(resumed, first[steps:]))
    # The cache is a speed knob only: same batches from memory and disk.
    for cache in ("memory", "disk"):
        cached, batches = two_epochs(5, cache)
        assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, batches)), cache
    assert cached.cache_path.parent == tmp_path / "cache" and cached.cache_path.suffix == ".npy"
    # Augmentation really changes training images, never validation ones.
    plain, unaugmented = two_epochs(5, augmentation={})
    assert not np.array_equal(first[0][0], unaugmented[0][0])
    assert np.array_equal(_batches(data.val)[0][0], _batches(plain.val)[0][0])


def test_cutout_zeroes_squares_and_flip_mirrors():
    import tensorflow as tf

    from harness.data.augment import cutout, flip

    ones = tf.ones([64, 32, 32, 3])
    holes = cutout(ones, tf.constant([1, 2]), size=5, count=2).numpy()
    zeros = (holes[..., 0] == 0).sum(axis=(1, 2))
    assert zeros.max() <= 2 * 25 and zeros.min() >= 0 and zeros.mean() > 25
    assert set(np.unique(holes)) == {0.0, 1.0}
    image = tf.reshape(tf.range(64 * 4 * 3, dtype=tf.float32), [64, 4, 1, 3]) * tf.ones([1, 1, 4, 1])
    image += tf.reshape(tf.range(4, dtype=tf.float32), [1, 1, 4, 1])
    flipped = flip(image, tf.constant([3, 4])).numpy()
    mirrored = [np.array_equal(f, i.numpy()[:, ::-1]) for f, i in zip(flipped, image)]
    unchanged = [np.array_equal(f, i.numpy()) for f, i in zip(flipped, image)]
    assert all(m or u for m, u in zip(mirrored, unchanged)) and 16 < sum(mirrored) < 48


def test_pipeline_feeds_cifar_arrays(tmp_path):
    from harness.data.pipeline import eval_dataset, make_datasets

    table = synthetic_cifar10(40, seed=1)
    train, val = split(table, 0.25, seed=1)
    for size in (32, 40):
        data = make_datasets(make_iteration(data={"name": "cifar10", "image_size": size}), table, train, val)
        x, y = _batches(data.train, 1)[0]
        assert x.shape == (8, size, size, 3) and x.dtype == np.float32 and set(y) == {"class_output"}
        assert y["class_output"].shape == (8, 10)
    (vx, vy), = _batches(data.val)
    assert np.array_equal(vy["class_output"].argmax(1), table.labels["class"][val])
    _write_fake_cifar(tmp_path / "cifar-10-batches-py")
    fake = load_cifar10(tmp_path)
    rows = fake.predefined_split[1]
    dataset = eval_dataset(fake, rows, make_iteration(data={"name": "cifar10", "image_size": 32}))
    (ex, ey), = _batches(dataset)
    assert ex.shape == (4, 32, 32, 3) and np.array_equal(ey["class_output"].argmax(1), fake.labels["class"][rows])


def test_eval_dataset_reads_every_row_of_a_folder_in_order(synth_dir):
    from harness.data.pipeline import eval_dataset

    table = load_hvc(synth_dir)
    rows = np.arange(len(table))[::-1]
    batches = _batches(eval_dataset(table, rows, make_iteration()))
    assert sum(len(x) for x, _ in batches) == N_SYNTH
    gender = np.concatenate([y["gender_output"] for _, y in batches]).argmax(1)
    assert np.array_equal(gender, table.labels["gender"][rows])
