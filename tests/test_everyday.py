"""Everyday use: names found in any ledger, quiet output, and the README agreeing with the tool
(profiles from the ledger, pretrained weight files from the catalog, the GPU and test sections)."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness import ledger
from harness.ledger import locate as ledgers
from harness.core.errors import InputError
from harness.models import catalog

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def harness_process(*args, cwd=REPO):
    """`harness ARGS` as a process of its own: where a test needs a fresh interpreter (the lines
    MLflow and TensorFlow print on their first import)."""
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def harness(*args, cwd=REPO):
    """`harness ARGS` in this process (tests/cli_run.py), without $MLFLOW_TRACKING_URI."""
    from cli_run import harness as in_process

    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        return in_process(*args, cwd=cwd)
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved


# --------------------------------------------------------------------------- names in any ledger


def test_a_name_only_another_ledger_has_is_found_there():
    found = ledgers.locate("thirteenth", root=REPO)
    assert found.path == "experiments/cifar10_resnet20.yaml"
    assert found.message == ("thirteenth: not in runs.yaml; using experiments/cifar10_resnet20.yaml, "
                             "the only ledger that has it")
    assert ledgers.locate("eleventh", root=REPO) == ledgers.Found("runs.yaml")  # runs.yaml answers first
    assert ledgers.locate("thirteenth", "runs.yaml", root=REPO) == ledgers.Found("runs.yaml")  # explicit wins


def test_a_name_in_several_ledgers_asks_which(tmp_path):
    (tmp_path / "runs.yaml").write_text((REPO / "runs.yaml").read_text())
    (tmp_path / "experiments").mkdir()
    for name in ("a.yaml", "b.yaml"):
        shutil_copy = (REPO / "experiments" / "cifar10_resnet20.yaml").read_text()
        (tmp_path / "experiments" / name).write_text(shutil_copy)
    with pytest.raises(InputError) as raised:
        ledgers.locate("thirteenth", root=tmp_path)
    assert raised.value.lines == ["thirteenth: in several ledgers (experiments/a.yaml, experiments/b.yaml); "
                                  "say which with LEDGER=FILE (make) or --ledger FILE (harness)"]
    assert ledgers.locate("nosuch", root=tmp_path).path == "runs.yaml"  # runs.yaml's own error follows


def test_show_and_list_across_ledgers():
    shown = harness("show", "thirteenth")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("thirteenth: not in runs.yaml; using experiments/cifar10_resnet20.yaml")
    assert "changes vs eleventh:" in shown.stdout
    listed = harness("list", "--all")
    assert listed.returncode == 0, listed.stderr
    groups = re.findall(r"^== (\S+) \(experiment (\S+)\)$", listed.stdout, re.M)
    assert groups == [("runs.yaml", "person-attributes"), ("experiments/cifar10_resnet20.yaml", "cifar10-resnet20")]
    cifar = listed.stdout.split("== experiments/cifar10_resnet20.yaml")[1]
    assert [line.split()[0] for line in cifar.strip().splitlines()[1:]] == \
        ledger.load(REPO / "experiments" / "cifar10_resnet20.yaml").names
    missing = harness("show", "twelfth")
    assert missing.returncode == 2 and "did you mean" in missing.stderr
    # Into a pipe whose reader has gone (`| head -1` after its line): no BrokenPipeError traceback.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        closed = subprocess.run([sys.executable, "-m", "harness.cli", "list", "--all"], cwd=REPO, text=True,
                                stdout=write_end, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO)),
                                timeout=60)
    finally:
        os.close(write_end)
    assert closed.returncode == 0 and "Traceback" not in closed.stderr, closed.stderr


# --------------------------------------------------------------------------- quiet by default


def test_tensorflow_import_lines_only_with_verbose():
    """TensorFlow 2.21 prints its oneDNN notice and absl's pre-init warning from C++ while it is
    imported, before TF_CPP_MIN_LOG_LEVEL applies: a command that builds a model prints neither
    (harness.core.quiet sends that one import's stderr to a sink), and with -v both show."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "MLFLOW_TRACKING_URI")}
    noise = ("oneDNN custom operations", "absl::InitializeLog")
    # eleventh's custom CNN at the cpu profile's 64 px builds in a second; VGG16 at 224 px took 20
    quiet = subprocess.run([sys.executable, "-m", "harness.cli", "params", "eleventh"], cwd=REPO, capture_output=True,
                           text=True, env=env, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert "trainable" in quiet.stdout
    loud = subprocess.run([sys.executable, "-m", "harness.cli", "params", "eleventh", "-v"], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=300)
    assert loud.returncode == 0 and all(text in loud.stderr for text in noise), loud.stderr[-2000:]


def test_mlflow_info_lines_only_with_verbose(tmp_path, monkeypatch, capfd):
    """`eval` of an iteration with no runs opens a new MLflow store (MLflow logs that it creates
    its tables) and stops with one error line; with -v the libraries' INFO lines show."""
    quiet = harness_process("eval", "base", "--tracking-uri", f"sqlite:///{tmp_path}/quiet/mlflow.db")
    assert quiet.returncode == 2
    assert quiet.stderr.splitlines() == [quiet.stderr.strip()] and quiet.stderr.startswith("error: base: no finished run")
    assert quiet.stdout == ""
    import logging

    from harness.core import quiet as quiet_mod
    from harness.track.store import Store

    for name in ("MLFLOW_LOGGING_LEVEL", "TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    levels = {name: logging.getLogger(name).level for name in quiet_mod.NOISY_LOGGERS}
    try:
        quiet_mod.configure(verbose=True)
        capfd.readouterr()
        Store(f"sqlite:///{tmp_path}/loud/mlflow.db")
        assert "Creating initial MLflow database tables" in capfd.readouterr().err
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


# --------------------------------------------------------------------------- docs and tool agree


WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}


def numbers(text: str) -> set[int]:
    """The numbers a description states, in digits ("2,000") or words ("one epoch")."""
    found = {int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", text)}
    return found | {WORDS[w] for w in re.findall(r"[a-z]+", text.lower()) if w in WORDS}


@pytest.mark.parametrize("name", ["cpu", "smoke"])
def test_readme_states_each_profile_as_the_ledger_defines_it(name):
    profile = ledger.load(REPO / "runs.yaml").profiles[name]
    fields = {profile.max_epochs_per_pass, profile.patience,
              *(v for v in profile.set.get("data", {}).values() if isinstance(v, int))}
    # The description is what the README quotes and `harness run` prints; its numbers are the fields'.
    assert numbers(profile.description) <= fields, (profile.description, fields)
    assert profile.max_epochs_per_pass in numbers(profile.description)
    assert f"`{name}`: {profile.description}" in README, f"README's {name} profile line differs from runs.yaml"


def test_readme_names_each_pretrained_file_with_its_md5():
    section = README.split("## Pretrained weights")[1].split("\n## ")[0]
    for spec in catalog.CATALOG.values():
        for weights, entry in spec.pretrained.items():
            assert f"`{entry.file}`" in section and entry.md5 in section, spec.name
    assert "~/.keras/models/" in section and "KERAS_HOME" in section


def test_readme_has_the_gpu_and_tests_sections():
    gpu = README.split("## On a GPU")[1].split("\n## ")[0]
    for needed in ("make setup GPU=1", "--profile full", "PROFILE=full", "mixed_precision", "jit_compile"):
        assert needed in gpu, needed
    tests = README.split("## Tests")[1].split("\n## ")[0]
    for needed in ("make test-fast", "make test", "HARNESS_HVC_REAL", "../shared/data/hvc", "2 cores"):
        assert needed in tests, needed


def test_validate_rejects_pretrained_weights_on_a_backbone_without_them(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        experiment: x
        profiles: {cpu: {}, smoke: {}}
        iterations:
          a:
            backbone: {name: custom, weights: imagenet}
            passes: [{epochs: 1}]
        """))
    result = harness("validate", "--ledger", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {bad}:5: a.backbone.weights: backbone custom has no pretrained weights "
                                     f"(got 'imagenet'); use null")
