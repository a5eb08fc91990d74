"""Shared test settings.

- Runs keep their checkpoints in a temporary work dir (HARNESS_WORK_DIR), never in mlruns/work.
- The real 6,000-image hvc subset is found by itself: HARNESS_HVC_REAL, else ../shared/data/hvc
  beside the checkout; the session header says which, and each real-data test that skips says why.
  The real CIFAR-10 subset likewise: HARNESS_CIFAR10_REAL, else ../shared/data/cifar10.
- The session fails if it changed a tracked file of the repository (`git status --porcelain`
  before and after): tests and benchmarks write only to temporary folders.
- Trainings log no system metrics (HARNESS_SYSTEM_METRICS=0) unless a test asks for them, and
  no MLflow Model (HARNESS_LOG_MODEL=0) outside the modules that load one (LOGS_MODELS).
- Each test carries cost markers (train, subprocess, server, browser, real; faults and slow where
  its module says so), given at collection (the end of this file).
- `records_store`: one real MLflow store of hand-made runs (tests/store_builder.py) for the
  read-only commands.
"""

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_ENV = "HARNESS_HVC_REAL"


def _find_real_data() -> str:
    """HARNESS_HVC_REAL, else ../shared/data/hvc (a shared/ beside the clone or the worktree), set
    into the environment so every test module and subprocess sees it."""
    if os.environ.get(REAL_ENV):
        return os.environ[REAL_ENV]
    for candidate in (REPO.parent / "shared" / "data" / "hvc", REPO.parent.parent / "shared" / "data" / "hvc"):
        if (candidate / "hvc_annotations.csv").is_file():
            os.environ[REAL_ENV] = str(candidate)
            return str(candidate)
    return ""


REAL_DATA = _find_real_data()

CIFAR_ENV = "HARNESS_CIFAR10_REAL"


def _find_real_cifar() -> str:
    """HARNESS_CIFAR10_REAL, else ../shared/data/cifar10 (the real 5,085 + 500 image subset in
    the standard cifar-10-batches-py layout), set into the environment like the hvc one."""
    if os.environ.get(CIFAR_ENV):
        return os.environ[CIFAR_ENV]
    for candidate in (REPO.parent / "shared" / "data" / "cifar10", REPO.parent.parent / "shared" / "data" / "cifar10"):
        if (candidate / "cifar-10-batches-py" / "test_batch").is_file():
            os.environ[CIFAR_ENV] = str(candidate)
            return str(candidate)
    return ""


REAL_CIFAR = _find_real_cifar()

# A shell without job control (`cmd &`, nohup, some CI runners) starts its background children
# with SIGINT ignored, and Python keeps an inherited SIG_IGN: a real Ctrl-C signal sent by the
# tests (to a run, to Ray's workers through ray.cancel) would then do nothing. Take Ctrl-C's
# own handler back, for this process and the ones it starts.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_report_header(config):
    hvc = (f"real hvc subset: {REAL_DATA} (real-data tests run)" if REAL_DATA else
           f"real hvc subset: not found ({REAL_ENV} unset, no ../shared/data/hvc): "
           "the real-data tests skip, each saying why")
    cifar = (f"real CIFAR-10 subset: {REAL_CIFAR}" if REAL_CIFAR else
             f"real CIFAR-10 subset: not found ({CIFAR_ENV} unset, no ../shared/data/cifar10): its tests skip")
    return [hvc, cifar]


def _git_status() -> str:
    try:
        result = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                                timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout if result.returncode == 0 else ""


@pytest.fixture(autouse=True, scope="session")
def tracked_files_untouched():
    """Fails the session (at teardown) when a test changed, added or deleted a file git tracks or
    would show (ignored outputs such as mlruns/ and data/ excepted)."""
    before = _git_status()
    yield
    after = _git_status()
    assert after == before, f"the tests changed the repository:\nbefore:\n{before}\nafter:\n{after}"


@contextlib.contextmanager
def environ(name: str, value: str):
    """`name=value` in this process's environment (and so its subprocesses') for the block, then
    as it was."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@pytest.fixture(autouse=True, scope="session")
def no_system_metrics():
    """Trainings sample no MLflow system metrics (a monitor thread per run) unless a test asks for
    them (HARNESS_SYSTEM_METRICS=0, inherited by subprocesses); test_models_registry's does."""
    with environ("HARNESS_SYSTEM_METRICS", "0"):
        yield


# The test modules whose runs log an MLflow Model because they load, register or serve it; every
# other training in the suite skips it (HARNESS_LOG_MODEL=0: seconds a run that nothing reads).
LOGS_MODELS = {"test_models_registry", "test_pixels", "test_variants"}


@pytest.fixture(autouse=True, scope="session")
def no_model_logging():
    with environ("HARNESS_LOG_MODEL", "0"):
        yield


@pytest.fixture(autouse=True, scope="module")
def model_logging_where_used(request, no_model_logging):
    """HARNESS_LOG_MODEL=1 for the modules in LOGS_MODELS, before their module fixtures train."""
    if request.module.__name__.rsplit(".", 1)[-1] not in LOGS_MODELS:
        yield
        return
    os.environ["HARNESS_LOG_MODEL"] = "1"
    yield
    os.environ["HARNESS_LOG_MODEL"] = "0"


@pytest.fixture(autouse=True, scope="session")
def isolated_work_dir(tmp_path_factory):
    """Runs keep their checkpoints and state in a temporary work dir, never in the repository's
    mlruns/work (subprocesses inherit it through HARNESS_WORK_DIR)."""
    folder = tmp_path_factory.mktemp("work")
    with environ("HARNESS_WORK_DIR", str(folder)):
        yield folder


@pytest.fixture(scope="session")
def records_store(tmp_path_factory):
    from store_builder import build

    return build(tmp_path_factory.mktemp("records"))


@pytest.fixture(scope="session")
def team_server():
    """The session's team server (tests/pg_server.py): PostgreSQL + `mlflow server` on free
    127.0.0.1 ports, started once for every test file that names it, stopped by PID at the end.
    `.url` is the tracking URI, `.db_uri` MLflow's database. Skipped, saying why, only where
    Debian's PostgreSQL binaries are absent."""
    from pg_server import missing_postgres, throwaway_server

    reason = missing_postgres()
    if reason:
        pytest.skip(reason)
    with throwaway_server() as started:
        yield started


@pytest.fixture(scope="session")
def team_database(team_server):
    """A factory: team_database("optuna") -> the URI of a database of that name on the session's
    cluster, beside MLflow's (e.g. an Optuna storage), created on first use."""
    from pg_server import new_database

    return lambda name: new_database(team_server, name)


# --------------------------------------------------------------------------- markers by cost
# Each test gets the cost markers of what it does (setup.cfg lists them; `make test-fast` leaves
# out train, subprocess-heavy, server, browser and faults). A module's own `pytestmark` (slow,
# faults) is kept. The marks are given here, by module and by fixture, so that a new test in a
# module is marked without anyone remembering to.
TRAINS = {"test_train", "test_data_learnability", "test_distribute", "test_parallel", "test_real_learning",
          "test_sweep", "test_concurrency", "test_models_registry", "test_reference", "test_feature_cache",
          "test_lrfind", "test_server", "test_pixels", "test_variants", "test_reproduce", "test_faults_resume", "test_faults_signals",
          "test_faults_state", "test_faults_store", "test_faults_server", "test_faults_queue", "test_trust"}
SUBPROCESSES = {"test_cli", "test_concurrency", "test_distribute", "test_everyday", "test_faults_resume",
                "test_faults_server", "test_faults_signals", "test_faults_state", "test_faults_store",
                "test_faults_queue", "test_rest_reader",
                "test_parallel", "test_runs_compare", "test_sweep", "test_train", "test_ui_browser", "test_reproduce",
                "test_trust"}
SERVERS = {"test_server", "test_faults_server", "test_server_backup"}  # and every test that uses the team_server fixture
BROWSERS = {"test_ui_browser"}
REAL = {"test_data_real", "test_real_learning"}
RAY = {"test_parallel", "test_distribute"}


# pytest-xdist (`make test`: -n 3 --dist loadgroup --no-loadscope-reorder) sends each xdist group
# to one worker, whole, in the order collected here. Each module is a group, so that its module
# fixtures (a trained run, a sweep, a killed run, the UI's runs) are built once instead of once per
# worker; the tests on the session's team server share one group (one PostgreSQL, one MLflow
# server), the Ray tests another (two Ray heads never start at once on two cores), and the modules
# that read the session's smoke store a third. The groups go out longest first (the server's, the
# Ray tests, the real-data runs, then the modules that train or share the smoke store), so that no
# long one starts last.
SHARED_GROUPS = {"test_report": "smoke_store", "test_ui_browser": "smoke_store"}


def _group(module: str, marks: set) -> str:
    if "server" in marks:
        return "server"
    if module in RAY:
        return "ray"
    return SHARED_GROUPS.get(module, module)


def _longest_first(group: str) -> tuple:
    return (group != "server", group != "ray", group not in REAL, group not in TRAINS and group != "smoke_store")


# tryfirst: xdist's own collection hook (which reads the xdist_group marks) runs after this one.
# pytest is pinned below 9.2 (setup.cfg): with 9.2, xdist 3.8's groups are silently ignored
# (pytest-dev/pytest-xdist#1386).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    groups = {}  # id(item) -> its xdist group
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        fixtures = set(getattr(item, "fixturenames", ()))
        marks = {name for name, names in (("train", TRAINS), ("subprocess", SUBPROCESSES), ("browser", BROWSERS),
                                          ("real", REAL)) if module in names}
        if item.get_closest_marker("slow") and module not in BROWSERS:
            marks.add("train")
        if module in SERVERS or "team_server" in fixtures:
            marks.add("server")
        if "real_data" in fixtures:
            marks.add("real")
        for mark in sorted(marks):
            item.add_marker(getattr(pytest.mark, mark))
        groups[id(item)] = _group(module, marks)
        item.add_marker(pytest.mark.xdist_group(groups[id(item)]))
    items.sort(key=lambda item: _longest_first(groups[id(item)]))  # stable: each group keeps its order
