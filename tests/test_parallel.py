"""`harness run --ray`: iterations as Ray tasks on a real local Ray head (127.0.0.1 only), logging
to one SQLite MLflow store in a temp folder; real training, a real SIGINT."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import ledger

REPO = Path(__file__).resolve().parents[1]

LEDGER = """\
experiment: parallel
defaults:
  seed: 7
  data: {name: hvc, image_size: 32, val_fraction: 0.25, cache: memory}
  backbone: {name: custom, freeze: none}
  head: {neck: gap, neck_units: 16, tower_units: [8], tower_dropouts: [0.0]}
  optimizer: {name: adam, lr: 0.003}
  batch_size: {train: 16, eval: 16}
profiles:
  cpu: {set: {}, max_epochs_per_pass: 2}
  smoke: {set: {}, max_epochs_per_pass: 1}
iterations:
  a:
    passes: [{epochs: 3}]
  b:
    extends: a
    optimizer: {lr: 0.001}
  c:
    extends: b
    seed: 8
  broken:  # no CIFAR-10 in the hvc folder: this one fails (as bad input, before TensorFlow loads)
    extends: a
    data: {name: cifar10}
  long1:
    extends: a
    backbone: {freeze: backbone}
    passes: [{epochs: 12}]
  long2:
    extends: long1
    optimizer: {lr: 0.001}
"""


def ray_processes(roots=None) -> set[int]:
    """Descendants of `roots` (default: this process): the head's processes and its workers."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), list(roots) if roots is not None else [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def listening_addresses(pids: set[int]) -> dict[str, int]:
    """Local address (hex, as /proc/net/tcp* spells it) -> pid, for every TCP socket those
    processes listen on."""
    inodes = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found[fields[1]] = inodes[fields[9]]
    return found


LOOPBACK_HEX = ("0100007F:", "0000000000000000FFFF00000100007F:", "00000000000000000000000001000000:")


@pytest.fixture(scope="session")
def ray_head():
    """One local head for the session (its start-up is paid once), with two CPUs as on CI;
    stopped at the end, and every process it started gone."""
    from harness.run.parallel import start_local_head

    before = ray_processes()
    ray = start_local_head(num_cpus=2)  # before anything else imports ray (see start_local_head)
    head = ray_processes() - before  # not other fixtures' servers, started later in the session
    yield ray
    started = head | ray_processes(head)
    ray.shutdown()
    # Ray's own shutdown, given time on a loaded 2-core machine; whatever it leaves is stopped by
    # PID here, and nothing may survive that.
    deadline = time.time() + 60
    while time.time() < deadline and alive(started):
        time.sleep(0.2)
    left = alive(started)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    if left:
        print(f"ray.shutdown() left {len(left)} processes after 60 s; stopped by PID")
    deadline = time.time() + 10
    while time.time() < deadline and alive(left):
        time.sleep(0.2)
    assert not alive(left), f"Ray processes survived SIGKILL: {alive(left)}"


def alive(pids) -> list:
    """The pids still running (zombies waiting for their parent do not count)."""
    def running(pid):
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
        except OSError:
            return False
    return [pid for pid in pids if running(pid)]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from harness.data.synth import generate

    folder = tmp_path_factory.mktemp("synth")
    generate(folder, 64, seed=6)
    return folder


@pytest.fixture()
def book(tmp_path):
    path = tmp_path / "parallel.yaml"
    path.write_text(LEDGER)
    return ledger.load(path)


def histories(uri, experiment, names, key):
    from harness.track.store import Store

    store = Store(uri)
    found = {}
    for name in names:
        [run] = store.runs(experiment, name)
        found[name] = (run, [(p.step, p.value) for p in store.metric_history(run.run_id, key)])
    return found


def test_the_head_listens_on_loopback_only(ray_head):
    addresses = listening_addresses(ray_processes())
    assert addresses, "the head listens on nothing?"
    outside = {address: pid for address, pid in addresses.items() if not address.startswith(LOOPBACK_HEX)}
    assert not outside, outside


def test_three_iterations_at_once_equal_serial_runs_and_a_failure_stops_none(ray_head, book, synth, tmp_path):
    from harness.run.launch import run_iteration
    from harness.run.parallel import run_parallel

    uri, lines = f"sqlite:///{tmp_path}/ray/mlflow.db", []
    code = run_parallel(book, ["a", "b", "c", "broken"], profile="smoke", data_dir=str(synth), tracking_uri=uri,
                        log=lines.append)
    assert code == 2, lines  # `broken` had bad input; the others finished
    ended = {line.split(":")[0]: line for line in lines[1:5]}
    assert set(ended) == {"a", "b", "c", "broken"}, lines
    assert all(" done in " in ended[name] and "FINISHED" in ended[name] for name in "abc"), lines
    assert ended["broken"].startswith("broken: bad input in ") and "no CIFAR-10" in ended["broken"]
    assert lines[5].startswith("ray: 4 iterations: 1 bad input, 3 done;"), lines
    assert lines[6].startswith("  broken: bad input: ") and lines[6].endswith("broken.log)")
    # the driver's line is the run's closing line; the learning verdict after it stays in the task's log
    log_a = (Path(lines[0].rsplit(" in ", 1)[1]) / "a.log").read_text()
    assert log_a.startswith("== harness run a as a Ray task: ") and "\na: FINISHED, " in log_a
    assert "above majority on validation" in log_a.rstrip().splitlines()[-1]

    runs = histories(uri, "parallel", ["a", "b", "c"], "val_gender_acc")
    assert all(run.status == "FINISHED" for run, _ in runs.values())
    # at once: every run started before any of them ended
    assert max(run.start_time for run, _ in runs.values()) < min(run.end_time for run, _ in runs.values())

    # a Ray task is exactly `harness run ITER`: one of the three, trained again here, logs the same
    # numbers (one is enough: the three tasks share that path; retraining all three cost minutes)
    serial_uri = f"sqlite:///{tmp_path}/serial/mlflow.db"
    assert run_iteration(book, "b", profile="smoke", data_dir=str(synth), tracking_uri=serial_uri,
                         log=lambda _: None) == 0
    for key in ("val_loss", "val_gender_acc", "val_age_loss"):
        parallel, serial = histories(uri, "parallel", "b", key), histories(serial_uri, "parallel", "b", key)
        assert parallel["b"][1] == serial["b"][1], key


def test_ctrl_c_cancels_the_tasks_and_the_same_command_resumes_them(ray_head, book, synth, tmp_path):
    from harness.run.parallel import run_parallel
    from harness.core.settings import work_dir
    from harness.track.store import Store

    uri, work, names = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "work", ["long1", "long2"]

    def interrupt_after_first_epochs():
        deadline = time.time() + 300
        while time.time() < deadline:
            states = list(work.glob("*/state.json"))
            if len(states) == 2 and all('"step": 1' in s.read_text() for s in states):
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C delivers to the driver
                return
            time.sleep(0.05)

    def command(lines):
        return run_parallel(book, names, profile="full", data_dir=str(synth), tracking_uri=uri,
                            work_dir=str(work), skip_finished=True, log=lines.append)

    # A process started in the background by a shell without job control inherits SIGINT ignored:
    # Ctrl-C's own handler, as an interactive `harness run` has it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=interrupt_after_first_epochs, daemon=True).start()
    lines = []
    try:
        with pytest.raises(KeyboardInterrupt):
            command(lines)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert lines[-1].startswith("interrupted: cancelled long1, long2;"), lines
    store = Store(uri)
    before = {name: store.runs("parallel", name) for name in names}
    assert all(len(runs) == 1 and runs[0].status in ("KILLED", "RUNNING") for runs in before.values()), {
        name: [run.status for run in runs] for name, runs in before.items()}
    for runs in before.values():
        assert (work_dir(work).run(runs[0].run_id) / "state.json").is_file()

    lines = []
    code = command(lines)
    logs = {name: (work / "logs" / "parallel" / f"{name}.log").read_text() for name in names}
    assert code == 0, (lines, logs)
    for name in names:
        [run] = store.runs("parallel", name)
        assert run.run_id == before[name][0].run_id and run.status == "FINISHED"
        assert [p.step for p in store.metric_history(run.run_id, "val_loss")] == list(range(1, 13))
        assert f"resuming unfinished run {run.run_id[:8]}" in logs[name]


def test_ray_without_the_cluster_extra_is_refused_with_the_install_line(tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from harness.cli import main; "
            f"sys.exit(main(['run', '--all', '--ray', '--tracking-uri', 'sqlite:///{tmp_path}/s/mlflow.db']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: harness run --ray: Ray is not installed; pip install -e .[cluster]"]
    assert not (tmp_path / "s").exists()


def test_a_repeated_cancel_interrupts_a_task_once_so_its_cleanup_finishes():
    # Ray repeats a cancel every 2 s until it sees the task stop; the repeat must not cut short
    # the run's KILLED marking (see one_interrupt). Real SIGINTs, in this process's main thread.
    from harness.run.parallel import one_interrupt

    cleaned = False
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with one_interrupt():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # never reached: the first interrupt ends the sleep
            except KeyboardInterrupt:
                os.kill(os.getpid(), signal.SIGINT)  # the repeat, during the cleanup
                time.sleep(0.1)
                cleaned = True
                raise
    assert cleaned
    assert signal.getsignal(signal.SIGINT) is before
