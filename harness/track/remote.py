"""A tracking URI that names a server (http:// or https://): is it there, quickly, and how long
MLflow may keep retrying once it is not.

Left to itself, MLflow's REST client retries a failed request 7 times with a backoff factor of 2
and a 120 s timeout per try, so a wrong or stopped server keeps `harness run` silent for
minutes. So every command that talks to a server first asks its `/health` endpoint (unprotected
even under basic auth), with a timeout, and stops with one line naming the URI when no answer
comes: before TensorFlow is imported or anything is written. And unless the user set them,
MLflow's own HTTP settings are bounded (`configure_http_client`) so that a server lost in the
middle of a run fails the call after about a minute; the run's state stays in the work dir and the
same command resumes it once the server is back. A server back within the retry window (about
60 s: urllib3 waits 0, 2, 4, 8, 16, 32 s; a server restarting on a busy machine needs
more than 30 s) answers the very call that met it gone, and the run simply
goes on (tests/test_faults_server.py kills one mid-run). urllib3 logs its retries only to a
NullHandler, so a run would stall in silence meanwhile: `RetryNotice` says so in one line.
Pure Python (urllib, logging): no MLflow import here.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Optional

from harness.core.process import health_url
from harness.track.uris import chosen_uri, is_server
from harness.core.errors import TrackingUnreachable
from harness.core.settings import TRACKING_URI_ENV

PROBE_SECONDS = 5.0  # one /health request; a refused connection answers at once
PROBE_TRIES = 2  # so the worst case (a server that accepts and never answers) is ~10 s, under 15
# MLflow's environment settings, read on every request; the user's own values win.
HTTP_SETTINGS = {
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # the harness prints its own closing line
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6",  # 0+2+4+8+16+32 s of backoff: a server restart fits
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


RETRY_LOGGER = "urllib3.connectionpool"  # where urllib3 says "Retrying (...) after ..."
NOTICE_EVERY = 60.0  # seconds between two notices: one line per outage, not one per retry


def retry_window() -> int:
    """Seconds MLflow keeps retrying one request under the current settings (urllib3 2: no wait
    before the first retry, then factor * 2**k), timeouts and jitter aside."""
    setting = lambda name: os.environ.get(name) or HTTP_SETTINGS[name]  # noqa: E731
    retries = int(setting("MLFLOW_HTTP_REQUEST_MAX_RETRIES"))
    factor = float(setting("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"))
    return round(sum(factor * 2 ** k for k in range(1, retries)))


class RetryNotice(logging.Handler):
    """One line on stderr when MLflow's HTTP client starts retrying a request to the tracking
    server, naming it, so a stalled run says why; at most one per NOTICE_EVERY seconds."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.uri, self._last = "", -NOTICE_EVERY

    def emit(self, record):
        message = record.getMessage()
        now = time.monotonic()
        if not message.startswith("Retrying") or now - self._last < NOTICE_EVERY:
            return
        self._last = now
        low = message.lower()
        reason = "connection refused" if "refused" in low else "timed out" if "timed out" in low else "no answer"
        print(f"tracking server {self.uri or 'unknown'} did not answer ({reason}); MLflow retries for about "
              f"{retry_window()} s", file=sys.stderr, flush=True)


_notice = RetryNotice()


def configure_http_client(uri: Optional[str] = None) -> None:
    """MLflow's HTTP retries and timeout bounded (and its per-run "View run at" lines off),
    unless the environment already sets them; a retry announced once (RetryNotice)."""
    for name, value in HTTP_SETTINGS.items():
        os.environ.setdefault(name, value)
    _notice.uri = uri or _notice.uri
    logger = logging.getLogger(RETRY_LOGGER)
    if _notice not in logger.handlers:
        logger.addHandler(_notice)


def check_reachable(uri: str, timeout: float = PROBE_SECONDS, tries: int = PROBE_TRIES) -> None:
    """Return when the server at `uri` answers its health check; otherwise raise
    TrackingUnreachable with one line naming the URI and why. Any HTTP answer, even an error
    status, means a server is there; only silence, a refused connection or a failed name fails."""
    reason = ""
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(health_url(uri), timeout=timeout):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError) as exc:
            reason = str(getattr(exc, "reason", exc)) or type(exc).__name__
            if "refused" in reason.lower() or "name or service" in reason.lower():
                break  # a definite answer: no point in asking again
            if attempt + 1 < tries:
                time.sleep(0.5)
    raise TrackingUnreachable(
        f"tracking server {uri} is unreachable ({reason}); start it with `make server`, or point "
        f"--tracking-uri / {TRACKING_URI_ENV} at a running one")


def check_tracking(explicit: Optional[str] = None) -> None:
    """For a command about to use the store: a server URI is probed (and MLflow's retries
    bounded); a SQLite store needs nothing."""
    uri = chosen_uri(explicit)
    if is_server(uri):
        configure_http_client(uri)
        check_reachable(uri)
