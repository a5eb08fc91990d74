"""`harness reproduce RUN_ID`: a smoke run trained again from its recorded config, in place and
(--at-commit) in a worktree of its commit; what a run records to be reproduced (requirements, the
diff of a dirty tree). Real TensorFlow, real SQLite MLflow stores, throwaway git repositories."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cli_run import harness
from harness.core.metrics import EPOCH_SECONDS, MEAN_EPOCH_SECONDS
from harness.core.records import DIFF_ARTIFACT, TAG_REPRODUCES

from test_variants import LEDGER

pytestmark = pytest.mark.slow  # trains models: left out by `make test-fast`

REPO = Path(__file__).resolve().parents[1]


def git(cwd, *args) -> str:
    return subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=test", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


def make_repo(folder: Path, with_code: bool = False) -> Path:
    """A git repository holding the ledger and a notes file (and, `with_code`, a copy of this
    checkout's harness package), committed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.yaml").write_text(LEDGER)
    (folder / "notes.txt").write_text("notes\n")
    if with_code:
        shutil.copytree(REPO / "harness", folder / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    git(folder, "init", "-q")
    git(folder, "add", ".")
    git(folder, "commit", "-qm", "first")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from harness.data.synth import generate

    folder = tmp_path_factory.mktemp("synth")
    generate(folder, 96, seed=5)
    return str(folder)


def train(repo: Path, uri: str, data: str) -> str:
    done = harness("run", "one", "--profile", "smoke", "--ledger", str(repo / "tiny.yaml"), "--data", data,
                   "--tracking-uri", uri, cwd=repo)
    assert done.returncode == 0, done.stderr
    from harness.track.store import Store

    return Store(uri).runs("tiny", "one")[0].run_id


def histories(uri: str, run_id: str) -> dict:
    """Every per-epoch metric of a run (wall-clock seconds left out): key -> [(step, value)]."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    keys = [k for k in client.get_run(run_id).data.metrics if k not in (EPOCH_SECONDS, MEAN_EPOCH_SECONDS)]
    return {k: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
            for k in keys}


def reproduced(uri: str, old: str) -> str:
    from harness.track.store import Store

    [new] = [r for r in Store(uri).runs("tiny", "one") if r.tags.get(TAG_REPRODUCES) == old]
    return new.run_id


def test_reproducing_a_smoke_run_with_an_unchanged_tree_gives_identical_metrics(tmp_path, data):
    repo = make_repo(tmp_path / "repo")
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    old = train(repo, uri, data)
    done = harness("reproduce", old[:8], "--strict", "--tracking-uri", uri, cwd=repo)
    assert done.returncode == 0, done.stderr
    assert "differs:" not in done.stdout
    assert f"same: commit {git(repo, 'rev-parse', 'HEAD')[:10]}, a clean tree" in done.stdout
    new = reproduced(uri, old)
    before, after = histories(uri, old), histories(uri, new)
    assert "val_gender_acc" in before and before == after  # bit-identical, every epoch, every metric
    assert "val_gender_acc" in done.stdout.split(f"vs new run {new[:8]}")[1]  # compare printed old vs new


def test_a_dirty_trees_diff_is_logged_and_strict_then_refuses(tmp_path, data):
    from harness.track.store import Store

    repo = make_repo(tmp_path / "repo")
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    (repo / "notes.txt").write_text("notes\nan uncommitted change\n")
    old = train(repo, uri, data)
    store = Store(uri)
    record = store.run(old)
    assert record.tags["harness.git_dirty"] == "true"
    assert record.tags["mlflow.source.git.commit"] == git(repo, "rev-parse", "HEAD")
    assert "+an uncommitted change" in store.artifact_text(old, DIFF_ARTIFACT)

    git(repo, "checkout", "notes.txt")  # the tree now differs from the run's
    runs_before = len(store.runs("tiny", "one"))
    done = harness("reproduce", old, "--strict", "--tracking-uri", uri, cwd=repo)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--strict" in lines[0] and "diff" in lines[0], done.stderr
    assert "differs: diff: the run's diff has" in done.stdout
    assert len(Store(uri).runs("tiny", "one")) == runs_before  # nothing trained


def test_at_commit_trains_the_recorded_commit_and_diff_in_a_worktree(tmp_path, data):
    from harness.track.store import Store

    repo = make_repo(tmp_path / "repo", with_code=True)
    first = git(repo, "rev-parse", "HEAD")
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    (repo / "notes.txt").write_text("notes\nrecorded diff\n")
    old = train(repo, uri, data)  # this checkout's code, which the first commit holds, plus a diff
    # The repository moves on: new code, a changed ledger, a clean tree.
    git(repo, "checkout", "notes.txt")
    (repo / "harness" / "__init__.py").write_text((repo / "harness" / "__init__.py").read_text() + "# later\n")
    (repo / "tiny.yaml").write_text(LEDGER.replace("lr: 0.003", "lr: 0.03"))
    git(repo, "commit", "-qam", "later")

    done = harness("reproduce", old, "--at-commit", "--tracking-uri", uri, cwd=repo)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"training in a worktree of {first[:10]} with the recorded diff" in done.stdout
    new = reproduced(uri, old)
    record = Store(uri).run(new)
    assert record.tags["mlflow.source.git.commit"] == first and record.tags["harness.git_dirty"] == "true"
    assert histories(uri, old) == histories(uri, new)
    assert len(git(repo, "worktree", "list").splitlines()) == 1  # the temporary worktree is gone
    assert json.loads(record.tags.get("harness.overrides", "{}")) == {}


def test_what_a_run_records_is_pip_freezes_list_and_costs_under_a_second():
    import sys

    from harness.track.provenance import Provenance, parse_requirements

    try:  # Ray, once imported, puts its vendored packages (colorama among them) on sys.path
        import ray  # noqa: F401
    except ImportError:
        pass
    found = Provenance.now(REPO)
    print(f"provenance: {found.seconds:.2f} s")  # the cost is measured by make bench, not asserted here
    ours = parse_requirements(found.requirements)
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True,
                            check=True).stdout
    theirs = parse_requirements(frozen)  # pip lists an editable install as `-e PATH`: not a name==version line
    assert theirs and all(ours.get(name) == version for name, version in theirs.items())
    assert set(ours) - set(theirs) <= {"ledger-harness"}
