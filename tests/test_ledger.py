"""The ledger: inheritance, validation errors with their lines, diff, profiles, config sha."""

import textwrap
from pathlib import Path

import pytest

from harness import ledger
from harness.ledger import LedgerError

REPO = Path(__file__).resolve().parents[1]
LEDGERS = [REPO / "runs.yaml", *sorted((REPO / "experiments").glob("*.yaml"))]

HEADER = """\
experiment: test
defaults:
  data: {name: hvc, image_size: 32}
  optimizer: {name: sgd, lr: 0.01}
profiles:
  cpu: {set: {data: {image_size: 16}}, max_epochs_per_pass: 2}
  smoke: {set: {data: {limit: 8}}, max_epochs_per_pass: 1}
iterations:
"""


def write(tmp_path, iterations: str, header: str = HEADER) -> Path:
    path = tmp_path / "ledger.yaml"
    path.write_text(header + textwrap.indent(textwrap.dedent(iterations), "  "))
    return path


def errors_of(path: Path, name: str | None = None) -> list[str]:
    with pytest.raises(LedgerError) as caught:
        book = ledger.load(path)
        book.resolve(name) if name else book.validate_all()
    return caught.value.lines


def line_of(path: Path, needle: str) -> int:
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if needle in text:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


# --------------------------------------------------------------------------- resolution


def test_inheritance_chain_merges_maps_and_replaces_lists(tmp_path):
    path = write(tmp_path, """\
        a:
          head: {tower_units: [64, 64], tower_dropouts: [0.1, 0.1]}
          passes: [{epochs: 3}, {epochs: 2, lr: 0.001, resume_from: best}]
        b:
          extends: a
          optimizer: {momentum: 0.5}
        c:
          extends: b
          head: {tower_units: [32], tower_dropouts: [0.0]}
          passes: [{epochs: 7}]
        """)
    book = ledger.load(path)
    c = book.resolve("c")
    assert c.optimizer.lr == 0.01 and c.optimizer.momentum == 0.5  # map merged across 3 layers
    assert c.data.image_size == 32  # from defaults
    assert c.head.tower_units == (32,)  # list replaced, not appended
    assert [p.epochs for p in c.passes] == [7]
    b = book.resolve("b")
    assert [p.epochs for p in b.passes] == [3, 2] and b.passes[1].resume_from == "best"
    assert b.head.tower_units == (64, 64)


def test_resolved_iterations_are_frozen(tmp_path):
    book = ledger.load(write(tmp_path, "a: {passes: [{epochs: 1}]}\n"))
    a = book.resolve("a")
    with pytest.raises(Exception):
        a.seed = 3
    with pytest.raises(Exception):
        a.optimizer.lr = 1.0


def test_scientific_notation_reads_as_float(tmp_path):
    book = ledger.load(write(tmp_path, "a: {optimizer: {lr: 1e-4}, passes: [{epochs: 1}]}\n"))
    assert book.resolve("a").optimizer.lr == pytest.approx(1e-4)


def test_show_first_lists_exactly_the_two_fixes():
    book = ledger.load(REPO / "runs.yaml")
    changes = ledger.diff(book.resolve("base"), book.resolve("first"))
    assert [(k, old, new) for k, old, new in changes] == [
        ("data.validate_on_train", True, False),
        ("head.tower_defect", True, False),
    ]


def test_diff_reports_pass_level_changes():
    book = ledger.load(REPO / "runs.yaml")
    keys = [k for k, _, _ in ledger.diff(book.resolve("fourth"), book.resolve("fifth"))]
    assert keys == ["passes.1.epochs", "passes.2"]


def test_config_sha_ignores_remarks_but_not_training_keys(tmp_path):
    path = write(tmp_path, """\
        a: {passes: [{epochs: 1}], remark: one}
        b: {extends: a, remark: two, title: other}
        c: {extends: a, seed: 9}
        """)
    book = ledger.load(path)
    assert book.resolve("a").config_sha() == book.resolve("b").config_sha()
    assert book.resolve("a").config_sha() != book.resolve("c").config_sha()


def test_profile_caps_epochs_and_scales_schedule_and_patience(tmp_path):
    path = write(tmp_path, """\
        a:
          passes:
            - epochs: 10
              schedule: {boundaries: [5, 8], values: [0.1, 0.01, 0.001]}
              early_stopping: {patience: 6}
        """)
    book = ledger.load(path)
    cpu = book.resolve("a", "cpu")
    assert cpu.data.image_size == 16
    assert cpu.passes[0].epochs == 2
    assert cpu.passes[0].schedule.boundaries == (1,)
    assert cpu.passes[0].schedule.values == (0.1, 0.01)  # boundary 8 scales to 2, the end of the pass
    assert cpu.passes[0].early_stopping.patience == 2  # never more than the pass's epochs
    assert book.resolve("a", "full") == book.resolve("a")


def test_profile_patience_caps_early_stopping(tmp_path):
    path = tmp_path / "runs.yaml"
    path.write_text(textwrap.dedent("""\
        experiment: t
        profiles:
          cpu: {set: {data: {image_size: 16}}, max_epochs_per_pass: 20, patience: 4}
          smoke: {set: {}, max_epochs_per_pass: 1}
        iterations:
          a:
            passes:
              - {epochs: 50, early_stopping: {patience: 10}}
              - {epochs: 50, early_stopping: {patience: 2}}
        """))
    cpu = ledger.load(path).resolve("a", "cpu")
    assert [p.epochs for p in cpu.passes] == [20, 20]
    assert [p.early_stopping.patience for p in cpu.passes] == [4, 2]  # capped, never raised


@pytest.mark.parametrize("key", ["optimizer: {lr: 0.1}", "loss: {class_weighting: false}",
                                 "data: {split_seed: 3}", "head: {neck: gap}"])
def test_profile_may_change_compute_only(tmp_path, key):
    path = tmp_path / "runs.yaml"
    path.write_text(textwrap.dedent(f"""\
        experiment: t
        profiles:
          cpu:
            set: {{{key}}}
          smoke: {{set: {{}}}}
        iterations:
          a: {{passes: [{{epochs: 2}}]}}
        """))
    with pytest.raises(ledger.LedgerError) as raised:
        ledger.load(path)
    (line,) = raised.value.lines
    assert line.startswith(f"{path}:4: profiles.cpu.set.") and "changes how much is computed" in line


def test_schedule_lr_at():
    schedule = ledger.StepSchedule(boundaries=(2, 4), values=(1.0, 0.1, 0.01))
    assert [schedule.lr_at(e) for e in range(6)] == [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]


@pytest.mark.parametrize("path", LEDGERS, ids=lambda p: p.name)
def test_every_ledger_in_the_repo_validates(path):
    book = ledger.load(path)
    resolved = book.validate_all()
    assert [it.name for it in resolved] == book.names
    for it in resolved:
        for profile in ("cpu", "smoke"):
            assert book.resolve(it.name, profile).total_epochs <= it.total_epochs


def test_hvc_ledger_has_every_iteration_of_the_notes():
    names = ledger.load(REPO / "runs.yaml").names
    assert names == ["base", "first", "second", "third", "fourth", "fifth", "sixth", "seventh",
                     "eighth", "ninth", "tenth", "eleventh", "final"]


# --------------------------------------------------------------------------- validation errors


def test_unknown_key_is_named_with_line_and_suggestion(tmp_path):
    path = write(tmp_path, """\
        a:
          passes: [{epochs: 1}]
          optimizer: {learning_rate: 0.1}
        """)
    [error] = errors_of(path, "a")
    assert error == (f"{path}:{line_of(path, 'learning_rate')}: a.optimizer.learning_rate: "
                     f"unknown key 'learning_rate'")
    path = write(tmp_path, """\
        a:
          pases: [{epochs: 1}]
          passes: [{epochs: 1}]
        """)
    [error] = errors_of(path, "a")
    assert error == f"{path}:{line_of(path, 'pases')}: a.pases: unknown key 'pases' (did you mean 'passes'?)"


def test_unknown_key_inside_a_pass(tmp_path):
    path = write(tmp_path, """\
        a:
          passes:
            - epochs: 1
              resume: best
        """)
    [error] = errors_of(path, "a")
    assert error == (f"{path}:{line_of(path, 'resume: best')}: a.passes.0.resume: unknown key 'resume' "
                     f"(did you mean 'resume_from'?)")


def test_wrong_type(tmp_path):
    path = write(tmp_path, """\
        a:
          passes: [{epochs: ten}]
        """)
    [error] = errors_of(path, "a")
    assert error.startswith(f"{path}:{line_of(path, 'epochs: ten')}: a.passes.0.epochs: ")
    assert "integer" in error and "'ten'" in error
    path = write(tmp_path, """\
        a:
          passes: [{epochs: 1}]
          optimizer:
            lr: fast
        """)
    [error] = errors_of(path, "a")
    assert error.startswith(f"{path}:{line_of(path, 'lr: fast')}: a.optimizer.lr: ")


def test_unknown_backbone_and_dataset(tmp_path):
    path = write(tmp_path, """\
        a:
          passes: [{epochs: 1}]
          backbone: {name: vgg61}
          data: {name: imagenet}
        """)
    lines = errors_of(path, "a")
    assert f"{path}:{line_of(path, 'vgg61')}: a.backbone.name: unknown backbone 'vgg61' (did you mean 'vgg16'?); " \
           f"known: vgg16, resnet20v1, densenet121, custom" in lines
    assert any(e.startswith(f"{path}:{line_of(path, 'imagenet')}: a.data.name: unknown dataset 'imagenet'")
               for e in lines)


def test_backbone_options_and_weights_are_checked_against_the_catalog(tmp_path):
    path = write(tmp_path, """\
        a:
          passes: [{epochs: 1}]
          backbone: {name: vgg16, depth: 20}
        b:
          passes: [{epochs: 1}]
          backbone: {name: resnet20v1, depth: 21}
        c:
          passes: [{epochs: 1}]
          backbone:
            name: custom
            weights: imagenet
        d:
          passes: [{epochs: 1}]
          backbone: {name: densenet121, weights: imagenet}
        """)
    assert errors_of(path, "a") == [f"{path}:{line_of(path, 'depth: 20')}: a.backbone.depth: "
                                    f"vgg16 does not take depth (it takes: no options)"]
    assert errors_of(path, "b") == [f"{path}:{line_of(path, 'depth: 21')}: b.backbone.depth: "
                                    f"ResNet v1 depth must be 6n+2 (20, 32, 44, ...), got 21"]
    assert errors_of(path, "c") == [f"{path}:{line_of(path, 'weights: imagenet')}: c.backbone.weights: "
                                    f"backbone custom has no pretrained weights (got 'imagenet'); use null"]
    assert ledger.load(path).resolve("d").backbone.weights == "imagenet"


def test_extends_missing_iteration(tmp_path):
    path = write(tmp_path, """\
        base: {passes: [{epochs: 1}]}
        child:
          extends: bsae
        """)
    [error] = errors_of(path, "child")
    assert error == f"{path}:{line_of(path, 'extends: bsae')}: child.extends: no iteration named 'bsae' (did you mean 'base'?)"


def test_inheritance_cycle(tmp_path):
    path = write(tmp_path, """\
        a: {extends: c, passes: [{epochs: 1}]}
        b: {extends: a}
        c: {extends: b}
        """)
    [error] = errors_of(path, "a")
    assert "inheritance cycle" in error and "a -> c -> b -> a" in error
    assert error.startswith(f"{path}:{line_of(path, 'b: {extends: a}')}: b.extends: ")


@pytest.mark.parametrize("body, needle, message", [
    ("passes: [{epochs: 0}]", "epochs: 0", "a.passes.0.epochs: Input should be greater than 0"),
    ("passes: [{epochs: -3}]", "epochs: -3", "a.passes.0.epochs: Input should be greater than 0"),
    ("batch_size: {train: 0}\n  passes: [{epochs: 1}]", "train: 0", "a.batch_size.train: Input should be greater than 0"),
])
def test_non_positive_epochs_and_batch_sizes(tmp_path, body, needle, message):
    path = write(tmp_path, f"a:\n  {body}\n")
    [error] = errors_of(path, "a")
    assert error.startswith(f"{path}:{line_of(path, needle)}: {message}")


def test_schedule_boundaries_must_increase(tmp_path):
    path = write(tmp_path, """\
        a:
          passes:
            - epochs: 10
              schedule:
                boundaries: [5, 3]
                values: [0.1, 0.01, 0.001]
        """)
    [error] = errors_of(path, "a")
    assert error == f"{path}:{line_of(path, 'schedule:')}: a.passes.0.schedule: schedule boundaries [5, 3] do not increase"


def test_schedule_values_must_be_one_more_than_boundaries(tmp_path):
    path = write(tmp_path, """\
        a:
          passes:
            - epochs: 10
              schedule: {boundaries: [3, 6], values: [0.1, 0.01]}
        """)
    [error] = errors_of(path, "a")
    assert error == (f"{path}:{line_of(path, 'schedule:')}: a.passes.0.schedule: schedule has 2 boundaries, "
                     f"so it needs 3 values, not 2")


def test_duplicate_keys_anywhere(tmp_path):
    path = write(tmp_path, """\
        a:
          passes: [{epochs: 1}]
          optimizer:
            lr: 0.1
            lr: 0.2
        """)
    [error] = errors_of(path)
    first, second = line_of(path, "lr: 0.1"), line_of(path, "lr: 0.2")
    assert error == f"{path}:{second}: iterations.a.optimizer.lr: duplicate key 'lr' (first written on line {first})"
    path = write(tmp_path, """\
        a: {passes: [{epochs: 1}]}
        a: {passes: [{epochs: 2}]}
        """)
    [error] = errors_of(path)
    assert "iterations.a: duplicate key 'a'" in error


def test_monitor_must_be_a_logged_metric(tmp_path):
    path = write(tmp_path, """\
        a:
          passes: [{epochs: 1, monitor: val_gender_accuracy}]
        """)
    [error] = errors_of(path, "a")
    assert "'val_gender_accuracy' is not a logged metric (did you mean 'val_gender_acc'?)" in error


def test_error_in_inherited_value_points_at_the_line_that_wrote_it(tmp_path):
    path = write(tmp_path, """\
        a:
          passes: [{epochs: 1}]
          head: {tower_units: [64], tower_dropouts: [0.1, 0.2]}
        b:
          extends: a
        """)
    [error] = errors_of(path, "b")
    assert error.startswith(f"{path}:{line_of(path, 'tower_units: [64]')}: b.head: tower_dropouts has 2 entries")


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "a: {passes: [{epochs: 1}]\nb: [\n")
    [error] = errors_of(path)
    assert error.startswith(f"{path}:") and "YAML syntax error" in error


def test_validate_all_collects_every_error(tmp_path):
    path = write(tmp_path, """\
        a: {passes: [{epochs: 0}]}
        b: {passes: [{epochs: 1}], seeed: 3}
        """)
    lines = errors_of(path)
    assert len(lines) == 2
    assert any("a.passes.0.epochs" in e for e in lines) and any("b.seeed" in e for e in lines)


def test_missing_required_profiles(tmp_path):
    path = tmp_path / "l.yaml"
    path.write_text("experiment: x\niterations:\n  a: {passes: [{epochs: 1}]}\n")
    lines = errors_of(path)
    assert any("profiles.cpu: required" in e for e in lines)


def test_set_optimizer_lr_scales_the_lrs_every_pass_sets_and_a_sweep_over_it_is_refused(tmp_path):
    """`--set optimizer.lr=V` on an iteration whose every pass sets its own LR (eleventh: 1e-3,
    then 1e-4) would otherwise train it unchanged under another name: it scales each pass's LR so
    the first starts at V, ratios kept, says so, and `--save-as` writes those LRs. A sweep over
    optimizer.lr there is still refused in one line (a range of factors is what passes.0.lr sweeps)."""
    import shutil

    from harness.core.errors import InputError
    from harness.ledger.overrides import Overrides
    from harness.ledger.space import load_space
    from harness.run.variant import OverrideRun, save_variant

    book = ledger.load("runs.yaml")
    eleventh = book.resolve("eleventh")
    overrides = Overrides.parse(["optimizer.lr=3e-4"])
    overrides.check(eleventh)
    variant = book.resolve("eleventh", changes=overrides.changes(eleventh))
    assert [p.lr for p in variant.passes] == [3e-4, 3e-5] and variant.optimizer.lr == 3e-4
    assert variant.config_sha() != eleventh.config_sha()
    assert overrides.note(eleventh) == ("--set optimizer.lr=3e-4: every pass of eleventh sets its own LR (lr 0.001, "
                                        "lr 0.0001); each is scaled by 0.3, ratios kept: passes.0 lr 0.0003, "
                                        "passes.1 lr 3e-05")
    both = Overrides.parse(["optimizer.lr=3e-4", "passes.1.lr=1e-5"])  # a pass's own flag wins
    assert [p.lr for p in book.resolve("eleventh", changes=both.changes(eleventh)).passes] == [3e-4, 1e-5]
    second = book.resolve("second")  # second's pass takes the optimizer's lr: set as it is, no note
    assert overrides.note(second) is None and overrides.effective(second) == {"optimizer.lr": 3e-4}
    with pytest.raises(InputError, match="--set optimizer.lr: -1 does not fit the field"):
        Overrides.parse(["optimizer.lr=-1"]).check(eleventh)

    copy = tmp_path / "runs.yaml"
    shutil.copy("runs.yaml", copy)
    copied = ledger.load(copy)
    save_variant(copied, "eleventh", OverrideRun(copied, "eleventh", overrides), "eleventh_lr")
    saved = ledger.load(copy)
    saved.validate_all()
    assert saved.resolve("eleventh_lr").config_sha() == variant.config_sha()
    assert [p["lr"] for p in saved.raw_iterations["eleventh_lr"]["passes"]] == [3e-4, 3e-5]

    space = tmp_path / "space.yaml"
    space.write_text("sweep:\n  optimizer.lr: {log_uniform: [1.0e-5, 1.0e-1]}\n")
    with pytest.raises(LedgerError, match="eighth.sweep.optimizer.lr: changes nothing eighth trains"):
        load_space(book, "eighth", space)
    assert load_space(book, "second", space).ranges  # second's own sweep block is fine
