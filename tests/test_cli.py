"""The CLI as a user runs it: its output and its exit code. The commands run in-process
(`harness.cli.main`, as the console script calls it: ~7 s less per call than a subprocess); the
console script itself, and the imports a command must not make, are checked in subprocesses."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cli_run import harness  # noqa: F401  (the in-process `harness ARGS`)

REPO = Path(__file__).resolve().parents[1]


def test_the_console_script_runs_as_a_user_runs_it():
    result = subprocess.run([sys.executable, "-m", "harness.cli", "list"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split()[0] == "base"


def test_list_prints_iterations_in_ledger_order():
    result = harness("list")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == ["base", "first", "second", "third", "fourth", "fifth", "sixth", "seventh",
                     "eighth", "ninth", "tenth", "eleventh", "final"]


def test_show_first_ends_with_the_two_fixes():
    result = harness("show", "first")
    assert result.returncode == 0, result.stderr
    tail = result.stdout.strip().splitlines()[-3:]
    assert tail == [
        "changes vs base:",
        "  data.validate_on_train: true -> false",
        "  head.tower_defect: true -> false",
    ]


def test_show_with_profile_applies_it():
    result = harness("show", "eleventh", "--profile", "cpu")
    assert result.returncode == 0, result.stderr
    assert "image_size: 64" in result.stdout


def test_validate_both_ledgers():
    for path in ["runs.yaml", "experiments/cifar10_resnet20.yaml"]:
        result = harness("validate", "--ledger", path)
        assert result.returncode == 0, result.stderr
        assert "valid" in result.stdout


def test_bad_ledger_exits_2_with_one_line_per_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        experiment: x
        profiles: {cpu: {}, smoke: {}}
        iterations:
          a:
            passes: [{epochs: 0}]
            backbone: {name: vgg61}
        """))
    result = harness("validate", "--ledger", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert sorted(lines) == [
        f"error: {bad}:5: a.passes.0.epochs: Input should be greater than 0 (got 0)",
        f"error: {bad}:6: a.backbone.name: unknown backbone 'vgg61' (did you mean 'vgg16'?); "
        f"known: vgg16, resnet20v1, densenet121, custom",
    ]
    assert result.stdout == ""


@pytest.mark.parametrize("args", [
    ("show", "nope"),
    ("list", "--ledger", "missing.yaml"),
    ("show", "base", "--profile", "gpu"),
    ("frobnicate",),
])
def test_bad_input_exits_2(args):
    result = harness(*args)
    assert result.returncode == 2, result
    assert result.stderr.strip()


PROBE = """
import sys
from harness.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
assert "tensorflow" not in sys.modules, "imported tensorflow"
assert "mlflow" not in sys.modules, "imported mlflow"
print("CLEAN", code)
"""


@pytest.mark.parametrize("args", [["list"], ["show", "eleventh"], ["validate"], ["--help"], ["show", "--help"]])
def test_ledger_commands_do_not_import_tensorflow(args):
    result = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "CLEAN 0" in result.stdout
