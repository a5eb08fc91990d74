"""The frozen-backbone feature cache persisted in the work dir (harness.train.feature_cache):
real TensorFlow, a tiny synthetic hvc set, a VGG16 backbone at 32 px fed BGR 0-255 as the notes did."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from harness import ledger

pytestmark = pytest.mark.slow  # builds and runs backbones

REPO = Path(__file__).resolve().parents[1]

LEDGER = """\
experiment: features
defaults:
  seed: 3
  data: {name: hvc, image_size: 32, val_fraction: 0.25, cache: memory, pixels: {range: 255, channels: bgr}}
  backbone: {name: vgg16, freeze: backbone}
  head: {neck: flatten, neck_units: 16, tower_units: [8], tower_dropouts: [0.0]}
  optimizer: {name: sgd, lr: 0.01, momentum: 0.9}
  batch_size: {train: 16, eval: 16}
profiles:
  cpu: {set: {}, max_epochs_per_pass: 2}
  smoke: {set: {}, max_epochs_per_pass: 1}
iterations:
  first:
    passes: [{epochs: 1}]
  later:
    extends: first
    data: {validate_on_train: true}
    optimizer: {name: adam, lr: 0.001}
    batch_size: {train: 8}
  bigger:
    extends: first
    data: {image_size: 48}
  reseeded:
    extends: first
    seed: 4
  unscaled:
    extends: first
    data: {pixels: {range: 1, channels: rgb}}
  halved:
    extends: first
    compute: {mixed_precision: bfloat16}
"""

N_ROWS = 48


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from harness.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth"), N_ROWS, seed=5)


@pytest.fixture()
def book(tmp_path):
    path = tmp_path / "features.yaml"
    path.write_text(LEDGER)
    return ledger.load(path)


@pytest.fixture()
def work(tmp_path, monkeypatch):
    """A work dir of this test's own (runs and subprocesses find it through HARNESS_WORK_DIR)."""
    from harness.core.settings import work_dir

    monkeypatch.setenv("HARNESS_WORK_DIR", str(tmp_path / "work"))
    return work_dir()


def _cache(book, name, synth, folder, log):
    """(FeatureCache, the model its backbone comes from, the image datasets) for iteration `name`."""
    from harness.data.pipeline import make_datasets
    from harness.data.source import open_dataset
    from harness.data.split import split
    from harness.models import build_model
    from harness.train import FeatureCache, FeatureInputs, set_seeds

    iteration = book.resolve(name)
    set_seeds(iteration.seed)
    table, _ = open_dataset(iteration, str(synth))
    parts = split(table, 0.25, 1)
    images = make_datasets(iteration, table, parts.train, parts.val)
    inputs = FeatureInputs.of(iteration, table, parts.train, parts.val, folder=folder)
    return FeatureCache(images, inputs, log=log), build_model(iteration), images


def _features_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.npy"))


def test_features_are_the_feature_models_own_and_a_second_cache_reads_them_without_a_forward_pass(
        book, synth, work, monkeypatch):
    import keras

    from harness.models import feature_model

    lines = []
    cache, model, images = _cache(book, "first", synth, work.features, lines.append)
    data = cache.datasets_for(model)
    [path] = _features_files(work.features)
    assert cache.last_path == path
    assert lines[-1].startswith(f"feature cache: backbone features of {N_ROWS} images computed once (")
    assert str(path) in lines[-1]
    expected = feature_model(model).predict(images.rows(np.arange(N_ROWS)).map(lambda x, y: x), verbose=0)
    stored = np.load(path, mmap_mode="r")
    np.testing.assert_allclose(stored, expected, rtol=1e-6, atol=1e-7)
    about = json.loads(path.with_suffix(".json").read_text())
    assert about["backbone"] == "vgg16" and about["image_size"] == 32 and about["rows"] == N_ROWS
    assert about["pixels"] == {"range": 255, "channels": "bgr", "mean": "none"}
    assert [layer.name for layer in feature_model(model).layers] == ["image", "pixels", "backbone"]
    assert about["shape"] == list(expected.shape) and about["dtype"] == "float32"
    assert about["bytes"] == path.stat().st_size and about["by"]["iteration"] == "first"
    assert not list(work.features.glob("*partial*"))
    # the datasets carry the features: a batch of them is the stored rows
    batch, _ = next(iter(data.val))
    assert batch.shape[1:] == expected.shape[1:]

    mtime = path.stat().st_mtime_ns
    monkeypatch.setattr(keras.Model, "predict", lambda *a, **k: pytest.fail("a hit ran the backbone"))
    lines.clear()
    again, model, _ = _cache(book, "first", synth, work.features, lines.append)
    again.datasets_for(model)
    assert len(lines) == 1 and lines[0].startswith(f"feature cache: hit, backbone features of {N_ROWS} images "
                                                   f"read from {path} (")
    assert "computed for iteration first by pid " in lines[0] and "no backbone pass" in lines[0]
    assert path.stat().st_mtime_ns == mtime


def test_a_later_iteration_hits_and_another_size_or_seed_misses(book, synth, work, store_uri):
    from harness.run.launch import run_iteration

    def run(name):
        lines = []
        assert run_iteration(book, name, profile="full", data_dir=str(synth), tracking_uri=store_uri,
                             log=lines.append) == 0, lines
        return [line for line in lines if line.startswith("feature cache")]

    [computed] = run("first")
    assert computed.startswith(f"feature cache: backbone features of {N_ROWS} images computed once")
    [path] = _features_files(work.features)
    mtime = path.stat().st_mtime_ns
    # another split (validation on the training rows), optimizer and batch size: a hit
    [hit] = run("later")
    assert hit.startswith(f"feature cache: hit, backbone features of {N_ROWS} images read from {path}")
    assert "computed for iteration first by pid " in hit
    assert path.stat().st_mtime_ns == mtime and _features_files(work.features) == [path]
    # another image size, other backbone weights (seed), another pixel encoding: computed anew
    for name in ("bigger", "reseeded", "unscaled"):
        lines = []
        cache, model, _ = _cache(book, name, synth, work.features, lines.append)
        cache.datasets_for(model)
        [missed] = lines
        assert missed.startswith(f"feature cache: backbone features of {N_ROWS} images computed once"), name
        assert cache.last_path != path
    # the same backbone computed in bfloat16 (the cpu profile's frozen passes): other features
    [halved] = run("halved")
    assert halved.startswith(f"feature cache: backbone features of {N_ROWS} images computed once"), halved
    files = _features_files(work.features)
    assert len(files) == 5 and path in files and path.stat().st_mtime_ns == mtime
    assert any(f.name.startswith("vgg16-48px-") for f in files)


@pytest.fixture()
def store_uri(tmp_path):
    return f"sqlite:///{tmp_path}/store/mlflow.db"


def test_damaged_files_are_recomputed_saying_why(book, synth, work):
    lines = []
    cache, model, _ = _cache(book, "first", synth, work.features, lines.append)
    cache.datasets_for(model)
    [path] = _features_files(work.features)
    good = np.array(np.load(path))
    sidecar = path.with_suffix(".json")

    def recompute():
        lines.clear()
        fresh, model, _ = _cache(book, "first", synth, work.features, lines.append)
        fresh.datasets_for(model)
        np.testing.assert_array_equal(np.load(path), good)
        assert not list(work.features.glob("*partial*"))
        return lines

    with open(path, "r+b") as handle:  # a copy cut short, a disk that filled
        handle.truncate(path.stat().st_size // 2)
    first, second = recompute()
    assert first.startswith(f"feature cache: {path} cannot be used (the file has ")
    assert "computing it again" in first and "computed once" in second

    sidecar.write_text("{not json")
    first, second = recompute()
    assert "its sidecar" in first and "unreadable" in first and "computed once" in second

    about = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**about, "shape": [1, 2]}))
    first, _ = recompute()
    assert "the sidecar says shape (1, 2)" in first

    with open(path, "r+b") as handle:  # the header itself damaged, the size intact
        handle.write(b"garbage!")
    first, _ = recompute()
    assert "the .npy file is unreadable" in first

    sidecar.unlink()
    first, _ = recompute()
    assert "sidecar" in first and "missing" in first


SCRIPT = """\
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from harness import ledger
from harness.core.settings import work_dir
import test_feature_cache as t

book = ledger.load({ledger!r})
lines = []
cache, model, _ = t._cache(book, "first", Path({synth!r}), work_dir().features, lines.append)
ready = Path({barrier!r})
(ready / sys.argv[1]).touch()
while len(list(ready.iterdir())) < 2:  # both processes start on the key at once
    time.sleep(0.005)
cache.datasets_for(model)
print("\\n".join(lines))
"""


def test_two_processes_on_one_cache_compute_once(book, synth, work, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    script = tmp_path / "features_worker.py"
    script.write_text(SCRIPT.format(tests=str(REPO / "tests"), ledger=str(book.path), synth=str(synth),
                                    barrier=str(barrier)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    workers = [subprocess.Popen([sys.executable, str(script), str(i)], cwd=REPO, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    outputs = []
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
        outputs.append([line for line in out.splitlines() if line.startswith("feature cache")])
    lines = [line for output in outputs for line in output]
    computed = [line for line in lines if "computed once" in line]
    hits = [line for line in lines if line.startswith("feature cache: hit")]
    assert len(computed) == 1 and len(hits) == 1, lines
    [path] = _features_files(work.features)
    assert str(path) in computed[0] and str(path) in hits[0]
    assert not list(work.features.glob("*partial*"))
    assert np.load(path, mmap_mode="r").shape[0] == N_ROWS
