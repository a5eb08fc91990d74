"""Stop signals, real ones: SIGINT, SIGTERM and SIGHUP end a training run as KILLED with one
"interrupted" line that says how to resume, and a rerun resumes; `harness ui` and its mlflow
server are gone within 5 s of SIGTERM or SIGHUP.

The training runs go through `harness.cli.main` in this process (TensorFlow is already loaded;
a subprocess would cost its import each time); the signal is sent by the run to itself at a
named moment (HARNESS_FAULT, harness/faults.py), so no timing luck is involved."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.core import faults
from harness.core.process import free_port
from harness.cli import main

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[1]
SHORT = """\
experiment: signals
defaults:
  seed: 3
  data: {name: hvc, image_size: 32, val_fraction: 0.25, cache: memory}
  backbone: {name: custom, freeze: none}
  head: {neck: gap, neck_units: 16, tower_units: [8], tower_dropouts: [0.2]}
  optimizer: {name: adam, lr: 0.003}
  batch_size: {train: 16, eval: 16}
profiles:
  cpu: {set: {}, max_epochs_per_pass: 2}
  smoke: {set: {}, max_epochs_per_pass: 2}
iterations:
  short:
    passes: [{epochs: 2}]
"""


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from harness.data.synth import generate

    folder = tmp_path_factory.mktemp("synth")
    generate(folder, 48, seed=5)
    return folder


@pytest.fixture()
def handlers():
    """main() installs SIGTERM/SIGHUP handlers; put pytest's back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_each_stop_signal_is_a_keyboard_interrupt_named_after_it_with_its_exit_code(signum, code, handlers):
    """The part of a stop that differs by signal: the three then share one path through a run
    (the end-to-end test below, with SIGTERM): the run's reason names the signal, the exit code
    is 128 + its number."""
    from harness.core import signals

    signals.install()
    with pytest.raises(KeyboardInterrupt) as caught:
        os.kill(os.getpid(), signum)
        for _ in range(100):  # the handler runs between bytecodes of the main thread
            time.sleep(0.01)
    assert (str(caught.value) or "SIGINT") == signal.Signals(signum).name  # launch's "interrupted (...)"
    assert signals.exit_code(caught.value) == code


@pytest.mark.parametrize("name, code", [("sigterm", 143)])
def test_stop_signal_marks_the_run_killed_says_so_once_and_a_rerun_resumes(
        name, code, synth, tmp_path, monkeypatch, capsys, handlers):
    from harness.track.store import Store

    ledger = tmp_path / "signals.yaml"
    ledger.write_text(SHORT)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["run", "short", "--ledger", str(ledger), "--profile", "smoke", "--data", str(synth),
            "--tracking-uri", uri, "--work-dir", str(tmp_path / "work")]
    monkeypatch.setenv(faults.ENV, f"after-snapshot:1:{name}")
    monkeypatch.setattr(faults, "_reached", {})
    assert main(argv) == code
    out = capsys.readouterr()
    lines = (out.out + out.err).splitlines()
    assert sum("interrupted" in line for line in lines) == 1, lines
    assert sum("run the same command again to resume" in line for line in lines) == 1, lines
    [parent] = Store(uri).runs("signals", "short")
    assert parent.status == "KILLED"
    assert parent.tags["harness.failure_reason"] == f"interrupted ({signal.Signals[name.upper()].name})"

    monkeypatch.delenv(faults.ENV)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"resuming unfinished run {parent.run_id[:8]}" in out and "resuming pass 1 after epoch 1" in out
    [parent] = Store(uri).runs("signals", "short")
    assert parent.status == "FINISHED"
    assert [p.step for p in Store(uri).metric_history(parent.run_id, "val_loss")] == [1, 2]



def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"  # a zombie has ended


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_ui_and_its_mlflow_server_stop_within_5_s(signum, tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    ui = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", "--port", str(port)], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in ui.stdout:
            if line.startswith("open http://127.0.0.1:"):
                break
        else:
            pytest.fail(f"harness ui ended before serving (exit {ui.wait()})")
        server = children(ui.pid)
        assert server, "no mlflow server child"
        group = [server[0], *children(server[0])]  # mlflow and its uvicorn
        started = time.monotonic()
        ui.send_signal(signum)
        while time.monotonic() - started < 10 and (ui.poll() is None or any(alive(p) for p in group)):
            time.sleep(0.05)
        stopped_after = time.monotonic() - started
        assert ui.poll() is not None and not any(alive(p) for p in group), "still running after 10 s"
        assert stopped_after < 5.0, f"stopped after {stopped_after:.1f} s"
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait()


def test_ui_refuses_an_address_beyond_loopback(tmp_path, capsys):
    assert main(["ui", "--host", "0.0.0.0", "--port", str(free_port()), "--tracking-uri",
                 f"sqlite:///{tmp_path}/mlflow.db"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: harness ui: --host 0.0.0.0:") and "no authentication" in line
    assert not list(tmp_path.iterdir())  # no store created
