"""The cpu profile sizes each iteration by what it costs: passes on cached features of a frozen
backbone keep the ledger's image size, batch and epochs, capped by their measured cost; passes
that train the backbone get the shrunken images and the epoch cap; an iteration may carry its
own adjustment. Pure Python, except the last test (one tiny real run)."""

import pytest

from harness import ledger
from harness.ledger.profiles import announcement

REPO_LEDGER = "runs.yaml"


def test_frozen_iterations_keep_the_ledger_as_written_under_cpu_with_a_cost_cap():
    book = ledger.load(REPO_LEDGER)
    for name in ("base", "second", "eighth"):
        written, cpu = book.resolve(name), book.resolve(name, "cpu")
        assert cpu.data.image_size == written.data.image_size == 224
        assert [p.epochs for p in cpu.passes] == [p.epochs for p in written.passes]
        assert cpu.batch_size == written.batch_size
        assert all(p.max_seconds == 900 for p in cpu.passes)
        assert cpu.data.pixels == written.data.pixels
        assert cpu.data.pixels.range == 255 and cpu.data.pixels.channels == "bgr"
        assert (written.compute.mixed_precision, cpu.compute.mixed_precision) == ("none", "bfloat16")
    line = announcement("eighth", "cpu", "no GPU visible", book.resolve("eighth"), book.resolve("eighth", "cpu"),
                        book.path)
    assert ("passes 1-3 train on cached backbone features and keep the ledger's 224 px, batch and epochs, "
            "each capped by measured cost at 900 s") in line, line
    assert "computed in bfloat16 (compute.mixed_precision none->bfloat16)" in line, line


def test_iterations_that_train_the_backbone_are_shrunk_and_capped():
    book = ledger.load(REPO_LEDGER)
    eleventh = book.resolve("eleventh", "cpu")
    assert eleventh.data.image_size == 64
    assert all(p.epochs <= 20 and p.max_seconds is None for p in eleventh.passes)
    assert eleventh.batch_size.train == 16
    assert eleventh.compute.mixed_precision == "none"  # bfloat16 is the cached-feature rule's only


def test_the_cached_feature_rule_sets_compute_switches_only(tmp_path):
    path = tmp_path / "l.yaml"
    path.write_text(LEDGER.replace("    max_epochs_per_pass: 5\n", "    max_epochs_per_pass: 5\n"
                                   "    cached_feature_passes: {max_seconds: 9, set: {data: {image_size: 32}}}\n"))
    with pytest.raises(ledger.LedgerError) as caught:
        ledger.load(path)
    assert caught.value.lines == [f"{path}:11: profiles.cpu.cached_feature_passes.set: passes on "
                                  f"cached features keep the ledger's data and batch; `set` takes compute switches "
                                  f"only (got data)"], caught.value.lines


LEDGER = """\
experiment: adjust
defaults:
  data: {name: hvc, image_size: 64, limit: 48, cache: memory}
  backbone: {name: custom, freeze: none}
  head: {neck: gap, neck_units: 8, tower_units: [8], tower_dropouts: [0.0]}
  batch_size: {train: 8, eval: 8}
profiles:
  cpu:
    set: {data: {image_size: 48}}
    max_epochs_per_pass: 5
    iterations:
      heavy: {set: {data: {image_size: 32}}, max_epochs_per_pass: 2}
  smoke: {set: {}}
iterations:
  light:
    passes: [{epochs: 9}]
  heavy:
    extends: light
"""


def test_an_iteration_adjusts_its_profile_and_a_typo_is_refused_at_its_line(tmp_path):
    path = tmp_path / "l.yaml"
    path.write_text(LEDGER)
    book = ledger.load(path)
    light, heavy = book.resolve("light", "cpu"), book.resolve("heavy", "cpu")
    assert (light.data.image_size, light.passes[0].epochs) == (48, 5)
    assert (heavy.data.image_size, heavy.passes[0].epochs) == (32, 2)
    path.write_text(LEDGER.replace("      heavy: {set", "      haevy: {set"))
    with pytest.raises(ledger.LedgerError) as caught:
        ledger.load(path)
    assert caught.value.lines == [f"{path}:12: profiles.cpu.iterations.haevy: no such iteration "
                                  f"(did you mean 'heavy'?)"], caught.value.lines
    path.write_text(LEDGER.replace("{set: {data: {image_size: 32}}", "{set: {optimizer: {lr: 0.1}}"))
    with pytest.raises(ledger.LedgerError) as caught:
        ledger.load(path)
    assert "profiles.cpu.iterations.heavy.set.optimizer" in caught.value.lines[0], caught.value.lines


CAPPED = """\
experiment: capped
defaults:
  seed: 2
  data: {name: hvc, image_size: 32, limit: 48, cache: memory, pixels: {range: 255, channels: bgr, mean: none}}
  backbone: {name: custom, freeze: backbone}
  head: {neck: gap, neck_units: 8, tower_units: [8], tower_dropouts: [0.0]}
  batch_size: {train: 8, eval: 8}
profiles:
  cpu: {set: {}, cached_feature_passes: {max_seconds: 1}}
  smoke: {set: {}}
iterations:
  frozen:
    passes: [{epochs: 6}]
"""


@pytest.mark.train  # trains a pass: not for `make test-fast`
def test_a_pass_on_cached_features_stops_at_its_measured_cost_and_says_so(tmp_path):
    from harness.data.synth import generate
    from harness.run.launch import run_iteration
    from harness.track.store import Store

    data = generate(tmp_path / "synth", 48, seed=2)
    path = tmp_path / "capped.yaml"
    path.write_text(CAPPED)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    lines = []
    assert run_iteration(ledger.load(path), "frozen", profile="cpu", data_dir=str(data), tracking_uri=uri,
                         log=lines.append) == 0, lines
    run = Store(uri).runs("capped", "frozen")[0]
    ended = [line for line in lines if "by its cost cap" in line]
    assert len(ended) == 1 and "cap 1 s" in ended[0], lines
    epochs = int(ended[0].split("after epoch ")[1].split("/")[0])
    assert 1 <= epochs < 6
    assert run.metrics["selected_epoch"] <= epochs
