"""Process control, in one place: loopback addresses, ports, PIDs, health checks, how long a
service may take to come up. Used by the team server and the UI (harness.services), by the
leases (a holder's PID alive?) and by the probe of a tracking server (harness.track.remote).

Pure Python (os, socket, urllib): no MLflow, no TensorFlow.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Optional

LOOPBACK = ("127.0.0.1", "localhost", "::1")
STARTUP_SECONDS = 120.0  # PostgreSQL or `mlflow server` not answering after this: it did not start


def is_loopback(host: str) -> bool:
    return host in LOOPBACK


# --------------------------------------------------------------------------- ports


def port_free(host: str, port: int) -> bool:
    """Whether a server could bind `port` on `host` now. With SO_REUSEADDR, as PostgreSQL and
    gunicorn bind: connections a server closed a moment ago (TIME_WAIT: a restore stops its
    own PostgreSQL, then `--start` starts it on the same port) do not make the port taken."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _below_ephemeral() -> range:
    """The ports under the kernel's ephemeral range (Linux's default starts at 32768), from 20000."""
    try:
        low = int(EPHEMERAL_PORTS.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(20000, max(low, 20001))


def free_port() -> int:
    """A TCP port nobody on 127.0.0.1 listens on now, under the ephemeral range: a port the
    kernel hands out (bind to port 0) may be given to another process's outgoing connection
    before the server binds it (seen: PostgreSQL's port taken while Ray and MLflow clients ran
    beside it), and ports under that range are never handed out so."""
    import random

    candidates = _below_ephemeral()
    # SystemRandom, not the module's generator: a seeded run (harness.train.rng) would have every
    # process pick the same ports in the same order
    for port in random.SystemRandom().sample(candidates, min(200, len(candidates))):
        if port_free("127.0.0.1", port):
            return port
    with socket.socket() as sock:  # every one tried was taken: any port the kernel gives
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def url_for(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


# --------------------------------------------------------------------------- health checks


def health_url(uri: str) -> str:
    return uri.rstrip("/") + "/health"


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = STARTUP_SECONDS) -> bool:
    """Whether the server at `url` answered its health check within `seconds` (False at once
    when `process`, the one serving it, has ended)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(health_url(url), timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


# --------------------------------------------------------------------------- PIDs


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def running_pid(pid_file: Path, expected: str) -> Optional[int]:
    """The PID in `pid_file` when that process is alive and its command line names `expected`
    (a PID file left by a reboot may name someone else's process now)."""
    try:
        pid = int(pid_file.read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) and expected in command else None


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # reaps it when it is this process's child
        except ChildProcessError:
            pass
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


def stop_pid(pid: int, expected: str, first: int, group: bool = False, grace: float = 30.0) -> None:
    """Signal `pid` (its process group with `group`) with `first`, wait up to `grace` s, then SIGKILL."""
    send = os.killpg if group else os.kill
    for sig, wait in ((first, grace), (signal.SIGKILL, 10.0)):
        try:
            send(pid, sig)
        except ProcessLookupError:
            return
        if wait_gone(pid, wait):
            return
    raise RuntimeError(f"harness server: {expected} (pid {pid}) did not stop")


def kill_group(pgid: int, sig: int) -> None:
    """Signal a process group that may be gone already."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
