"""Data layer on the real 6,000-image hvc subset, read in place (never copied).

The folder comes from the HARNESS_HVC_REAL environment variable (`.ci/run` sets it to
../shared/data/hvc); without it these tests skip and say why.
"""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.data import synth
from harness.core.labels import HVC_CSV_COLUMNS, HVC_CSV_HEADER, HVC_HEADS, HVC_MAJORITY_RATES
from harness.data.hvc import fingerprint, load_hvc
from harness.data.split import split
from harness.ledger import Iteration

REAL = os.environ.get("HARNESS_HVC_REAL", "")

pytestmark = pytest.mark.skipif(
    not REAL or not (Path(REAL) / "hvc_annotations.csv").is_file(),
    reason="real hvc subset not available: set HARNESS_HVC_REAL to the folder holding hvc_annotations.csv "
           "(.ci/run sets it to ../shared/data/hvc)",
)


@pytest.fixture(scope="module")
def real_table():
    return load_hvc(REAL)


def test_real_csv_header_is_the_fixed_header_and_the_generator_writes_it(tmp_path):
    real_header = (Path(REAL) / "hvc_annotations.csv").read_text().splitlines()[0]
    assert real_header == ",".join(HVC_CSV_HEADER)
    generated = synth.generate(tmp_path / "s", 3, seed=0)
    assert (generated / "hvc_annotations.csv").read_text().splitlines()[0] == real_header


def test_real_label_vocabulary_is_the_fixed_classes():
    real = pd.read_csv(Path(REAL) / "hvc_annotations.csv", dtype=str, keep_default_na=False)
    for head, classes in HVC_HEADS.items():
        assert set(real[HVC_CSV_COLUMNS[head]]) == set(classes), head


def test_real_subset_loads_clean_with_the_documented_majority_rates(real_table):
    assert len(real_table) == 6000 and not real_table.skipped
    for head, classes in HVC_HEADS.items():
        counts = np.bincount(real_table.labels[head], minlength=len(classes))
        assert abs(counts.max() / 6000 - HVC_MAJORITY_RATES[head]) < 0.001, head
        # The generator's hard-coded frequencies are these.
        assert np.allclose(counts / 6000, synth.REAL_FREQUENCIES[head], atol=0.0006), head
    assert (real_table.sizes == 224).all()


def test_real_split_is_deterministic_disjoint_and_stratified(real_table):
    train, val = split(real_table, 0.15, seed=1)
    again_train, again_val = split(real_table, 0.15, seed=1)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert len(val) == 900 and not set(train) & set(val)
    assert not set(real_table.paths[train]) & set(real_table.paths[val])
    gender = real_table.labels["gender"]
    assert abs(gender[val].mean() - gender[train].mean()) < 0.005


def test_real_fingerprint_is_stable(real_table):
    assert fingerprint(REAL) == real_table.fingerprint


def test_real_images_through_the_pipeline():
    from harness.data.pipeline import make_datasets

    table = load_hvc(REAL, limit=48)
    iteration = Iteration.model_validate_json(json.dumps({
        "name": "real", "passes": [{"epochs": 1}], "data": {"image_size": 64},
        "batch_size": {"train": 16, "eval": 16}, "augmentation": {"flip": True},
    }))
    train, val = split(table, 0.25, seed=1)
    data = make_datasets(iteration, table, train, val)
    x, y = next(iter(data.train))
    assert x.shape == (16, 64, 64, 3) and x.dtype.name == "float32"
    assert 0.0 <= float(x.numpy().min()) and float(x.numpy().max()) <= 1.0
    assert {k: v.shape[-1] for k, v in y.items()} == {f"{h}_output": len(c) for h, c in HVC_HEADS.items()}
    assert sum(int(b[0].shape[0]) for b in data.val) == 12
