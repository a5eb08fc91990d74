"""`harness run --all --ray [ADDRESS]`: the ledger's iterations trained at once, as Ray tasks.

Iterations are independent trainings: a child's `extends` is a difference in the ledger, not a
dependency on its parent's weights, so every iteration named is submitted at once and the
cluster runs as many as it has room for. Each task takes one GPU where the cluster has GPUs
(and is given a fresh worker process, so the GPU's memory is returned when it ends), CPUs
otherwise, in shares small enough that every task fits at once.

Each task is exactly `harness run ITER` (harness.run.launch.run_iteration) in a Ray worker: it logs to
the tracking URI the driver resolved (an http server; or the driver's SQLite file when the head
is this machine) and keeps its checkpoints in its run's own folder under the common work dir, so a
killed task, a cancelled one or a plain `harness run ITER` later resumes it like any other run.
The task's full output goes to `<work dir>/logs/<iteration>.log`; the driver prints one line per
iteration as it ends, then a summary. A failed iteration does not stop the others. Ctrl-C cancels
the tasks (they mark their runs KILLED and keep their state) and the same command resumes them.

ADDRESS: `auto` (the default) joins the cluster $RAY_ADDRESS names when it is set, else starts a
private head on this machine, every port on 127.0.0.1, for the command's length, and stops it
after; anything else is a cluster address for ray.init (`HOST:PORT` of a `ray start --head`, or
`ray://HOST:10001`). Ray is the optional `cluster` extra; without it `--ray` is refused with the
line that installs it.
"""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from harness.core.errors import InputError

AUTO = "auto"
INSTALL_HINT = "pip install -e .[cluster]"
LOOPBACK = "127.0.0.1"
RAY_ADDRESS_ENV = "RAY_ADDRESS"
# Ray's switch for its single-machine mode (named for the platforms where it is the default).
RAY_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Task output goes to files in the work dir, not to the driver's terminal.
QUIET = {"log_to_driver": False, "logging_level": "error"}
# How long cancelled tasks get to mark their runs KILLED before their workers are killed outright.
CANCEL_GRACE_S = 30.0
WAIT_POLL_S = 0.2
# A share of a CPU is only scheduled to four decimals: 2/3 rounded up would not fit three times.
CPU_SHARE_DECIMALS = 4

# Exit codes of an iteration, as `harness run` gives them.
OK, FAILED, BAD_INPUT, INTERRUPTED = 0, 1, 2, 130


def ray_installed() -> bool:
    """Whether `import ray` would work (an import blocked with sys.modules["ray"] = None counts
    as missing)."""
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


def require_ray():
    """The ray module, or the one line that says how to get it (exit 2). Checked without
    importing it first: the import reads settings (see start_local_head) that must be set before."""
    if not ray_installed():
        raise InputError(f"harness run --ray: Ray is not installed; {INSTALL_HINT}")
    import ray

    return ray


@dataclass
class Outcome:
    """How one iteration's task ended: its exit code and the line that says so."""

    name: str
    code: int
    line: str
    seconds: float
    log_file: str

    @property
    def word(self) -> str:
        return {OK: "done", BAD_INPUT: "bad input", INTERRUPTED: "interrupted"}.get(self.code, "FAILED")


def task_resources(cluster: dict, tasks: int) -> dict:
    """Ray options for each task: one GPU (in a fresh worker, so its memory is freed) where the
    cluster has GPUs; otherwise a share of the CPUs small enough that every task fits at once
    (three smoke tasks on a 2-core CI machine still run together)."""
    cpus = float(cluster.get("CPU", 1.0))
    share = math.floor(min(1.0, cpus / max(tasks, 1)) * 10 ** CPU_SHARE_DECIMALS) / 10 ** CPU_SHARE_DECIMALS
    if cluster.get("GPU", 0) >= 1:
        return {"num_gpus": 1, "num_cpus": share, "max_calls": 1, "max_retries": 0}
    return {"num_cpus": share, "max_retries": 0}


def train_one(ledger_path: str, name: str, options: dict, log_file: str) -> Outcome:
    """One iteration inside a Ray worker, as `harness run NAME` trains it; its output goes to
    `log_file` line by line (a `tail -f` follows it). A cancel arrives as KeyboardInterrupt: the
    run is marked KILLED with its state kept, and the interrupt goes on to Ray."""
    from harness import ledger
    from harness.run.launch import run_iteration

    started = time.perf_counter()
    lines: list[str] = []
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", buffering=1) as out:
        # the file is appended to: a rerun's output follows the interrupted one's
        out.write(f"== harness run {name} as a Ray task: {socket.gethostname()} pid {os.getpid()}, "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")

        def log(line: str) -> None:
            lines.append(line)
            out.write(line + "\n")

        try:
            from harness.run.variant import override_run

            options = dict(options)
            book, flags = ledger.load(ledger_path), options.pop("overrides", None)  # `--set`: a variant run
            with one_interrupt():
                code = run_iteration(book, name, log=log, variant=override_run(book, name, flags, options["fresh"]),
                                     **options)
            line = closing_line(name, lines)
        except InputError as exc:
            code, line = BAD_INPUT, exc.lines[0]
            log(f"error: {line}")
        except Exception as exc:  # noqa: BLE001 - any failure ends this iteration only
            code, line = FAILED, f"{type(exc).__name__}: {exc}"
            log(f"error: {line}")
    return Outcome(name, code, line, time.perf_counter() - started, log_file)


@contextmanager
def one_interrupt():
    """Within it, the first SIGINT raises KeyboardInterrupt and later ones are ignored.

    Ray cancels a running task by interrupting the worker's main thread, and repeats the request
    every 2 s (its cancellation_retry_ms) while it has not seen the task stop. A second interrupt
    landing in the run's own KILLED marking, or in the release of its iteration lock, would
    leave the run RUNNING with a lease naming this worker: a process Ray keeps alive for the
    next task, so the rerun the cancel promised would be refused as "already being trained".
    Outside the main thread (where no signal handler can be set) it does nothing."""
    interrupted = False

    def first_only(_signum, _frame):
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, first_only)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def closing_line(name: str, lines: list[str]) -> str:
    """The line that says how the run ended (`NAME: FINISHED, ...`, `NAME: FAILED, ...`), not the
    learning verdict that follows it (that stays in the task's log); a skipped iteration's last
    line says why it was skipped."""
    ended = (f"{name}: FINISHED", f"{name}: FAILED")
    return next((line for line in reversed(lines) if line.startswith(ended)), lines[-1] if lines else "")


def connect(address: Optional[str]):
    """(ray, started_here): attached to the cluster `address` names (see the module docstring).
    `started_here` when a private head was started for this call, which the caller then stops
    with ray.shutdown(); a process already attached (a test's head) stays attached."""
    joined = address if address and address != AUTO else os.environ.get(RAY_ADDRESS_ENV)
    if joined:
        ray = require_ray()
        if not ray.is_initialized():
            ray.init(address=joined, **QUIET)
        return ray, False
    os.environ.setdefault(RAY_SINGLE_MACHINE_ENV, "0")
    ray = require_ray()
    if ray.is_initialized():
        return ray, False
    return start_local_head(), True


def start_local_head(num_cpus: Optional[int] = None):
    """A private single-node cluster for this process, every port on 127.0.0.1, no dashboard;
    returns the ray module (already attached when this process started one before).

    Ray resolves 127.0.0.1 to the machine's outward address unless it runs in its single-machine
    mode, which its constants read from the environment when ray is first imported: set here,
    before that import, and inherited by the head's processes and workers."""
    os.environ.setdefault(RAY_SINGLE_MACHINE_ENV, "0")
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, _node_ip_address=LOOPBACK, **QUIET)
    return ray


def _check_reachable_store(ray, tracking_uri: str) -> None:
    """A SQLite file is on this machine only: tasks on other nodes could not log to it."""
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) > 1 and tracking_uri.startswith("sqlite:"):
        raise InputError(f"harness run --ray: the cluster has {len(nodes)} nodes but the tracking URI "
                         f"{tracking_uri} is a file on this machine; start a tracking server every node reaches "
                         f"(make server) and pass --tracking-uri http://HOST:PORT")


def _task_options(tracking_uri: str, work_root: Path, data_dir: Optional[str], options: dict) -> dict:
    """What every task is given: absolute places, so a worker's own working folder is irrelevant."""
    return dict(options, tracking_uri=tracking_uri, work_dir=str(work_root),
                data_dir=str(Path(data_dir).resolve()) if data_dir else None)


def _shared_default_data(book, names, data_dir: Optional[str], log) -> Optional[str]:
    """With no data named, the synthetic default set is generated once here, before the tasks
    start, instead of by every task at the same time into the same folder."""
    from harness.data.source import DATA_ENV
    from harness.data.synth import ensure_default_data

    if data_dir or os.environ.get(DATA_ENV) or all(book.resolve(n).data.name != "hvc" for n in names):
        return data_dir
    folder, generated = ensure_default_data()
    if generated:
        log(generated)
    return str(folder.resolve())


def run_parallel(book, names: list[str], address: Optional[str] = AUTO, *, profile: Optional[str] = None,
                 data_dir: Optional[str] = None, fresh: bool = False, tracking_uri: Optional[str] = None,
                 work_dir: Optional[str] = None, skip_bad_rows: bool = False, skip_finished: bool = True,
                 limit: Optional[int] = None, overrides: Optional[list[str]] = None, log: Callable = print) -> int:
    """Train `names` as Ray tasks; the exit code is the worst iteration's (2 bad input, 1 failed).
    `overrides`: `--set PATH=VALUE` flags, each task trains that variant of its iteration."""
    if not ray_installed():
        require_ray()
    from harness.core.settings import work_dir as resolve_work_dir
    from harness.track.store import Store
    from harness.track.uris import resolve_uri

    uri = resolve_uri(tracking_uri, create=True)
    work = resolve_work_dir(work_dir)
    # The store and the experiment are made once, here: tasks that all find no experiment would
    # all create it, and all but one would fail (and a new SQLite file would be set up by each).
    Store(uri).experiment_id(book.experiment)
    data_dir = _shared_default_data(book, names, data_dir, log)
    ray, started_here = connect(address)
    try:
        _check_reachable_store(ray, uri)
        resources = task_resources(ray.cluster_resources(), len(names))
        options = _task_options(uri, work.root, data_dir, {
            "profile": profile, "fresh": fresh, "skip_bad_rows": skip_bad_rows, "skip_finished": skip_finished,
            "limit": limit, "overrides": overrides})
        task = ray.remote(train_one).options(**resources)
        where = "a local Ray head on 127.0.0.1" if started_here else "the Ray cluster"
        logs = work.root / "logs" / book.experiment
        log(f"ray: {len(names)} iterations on {where} ({_describe(resources)} each); tracking {uri}; "
            f"the output of each in {logs}")
        ledger_path = str(Path(book.path).resolve())
        pending = {task.remote(ledger_path, name, options, str(logs / f"{name}.log")): name for name in names}
        outcomes = _collect(ray, pending, log)
    finally:
        if started_here:
            ray.shutdown()
    return _summary(outcomes, log)


def _describe(resources: dict) -> str:
    if resources.get("num_gpus"):
        return "1 GPU"
    return f"{resources['num_cpus']:g} CPU"


def _collect(ray, pending: dict, log) -> list[Outcome]:
    """Outcomes in the order the tasks end, one line each; on Ctrl-C the rest are cancelled."""
    outcomes: list[Outcome] = []
    try:
        while pending:
            # A short timeout: Python handles Ctrl-C only between calls, and every task is busy.
            done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_POLL_S)
            for ref in done:
                outcome = _outcome(ray, ref, pending.pop(ref))
                outcomes.append(outcome)
                said = outcome.line.removeprefix(f"{outcome.name}: ")  # the run's own line names it too
                log(f"{outcome.name}: {outcome.word} in {outcome.seconds:.0f} s: {said}")
    except KeyboardInterrupt:
        names = sorted(pending.values())
        cancel(ray, list(pending))
        log(f"interrupted: cancelled {', '.join(names) or 'nothing'}; their runs keep their state, "
            f"run the same command again to resume")
        raise
    return outcomes


def _outcome(ray, ref, name: str) -> Outcome:
    """A task's Outcome, or one made from what Ray raised (a worker that died, a cancel)."""
    try:
        return ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        return Outcome(name, INTERRUPTED, "cancelled; run the same command again to resume", 0.0, "")
    except ray.exceptions.RayError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Outcome(name, FAILED, f"{type(exc).__name__}: {first}", 0.0, "")


def cancel(ray, refs: list) -> None:
    """Cancel tasks: first as a KeyboardInterrupt inside each (its run is marked KILLED, its
    state kept), then, for any still running after CANCEL_GRACE_S, by killing its worker (the
    run stays RUNNING with its state: resumable all the same, once that worker is gone, which
    is waited for here: a rerun started while it still held the iteration's lock and lease
    would be refused)."""
    for ref in refs:
        ray.cancel(ref)
    _, stuck = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S) if refs else ([], [])
    for ref in stuck:
        ray.cancel(ref, force=True)
    if stuck:
        ray.wait(stuck, num_returns=len(stuck), timeout=CANCEL_GRACE_S)


def _summary(outcomes: list[Outcome], log) -> int:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.word] = counts.get(outcome.word, 0) + 1
    slowest = max((o.seconds for o in outcomes), default=0.0)
    log(f"ray: {len(outcomes)} iterations: " + ", ".join(f"{n} {w}" for w, n in sorted(counts.items()))
        + f"; the longest took {slowest:.0f} s")
    for outcome in outcomes:
        if outcome.code not in (OK,):
            log(f"  {outcome.name}: {outcome.word}: {outcome.line} (output: {outcome.log_file or 'none'})")
    codes = {o.code for o in outcomes}
    return BAD_INPUT if BAD_INPUT in codes else (FAILED if codes - {OK} else OK)
