"""Reading a team server's runs through MLflow's REST API directly, for the commands that only read
(`table`, `runs`, `compare`), so they answer in well under 1.5 s instead of paying 2-8 s to import
MLflow first (the server path used to: 5.25 s for 500 runs, BENCHMARKS.md row (e)).

The questions and answers are fast_store.SqliteReader's and reader.MlflowReader's (RunRecords);
the answers must be MlflowReader's, run for run and in the same order (tests/test_rest_reader.py
compares them against a real PostgreSQL-backed server). So this module asks the server what
MlflowReader's client asks it, over the same endpoints, and orders as MLflow's store does (newest
start first, then run id):

    GET  /api/2.0/mlflow/experiments/get-by-name   the experiment's id (404: no such experiment)
    POST /api/2.0/mlflow/runs/search               one call per page of PAGE runs, page_token on;
                                                   all runs: SLICE-run pages, WAVE at once (below)
    GET  /api/2.0/mlflow/runs/get                  one run by id (`run`, `known` of other runs)

Each question is the search MlflowReader's client sends (the filters are harness.core.records'),
answered once per reader: `table` asks for one run per iteration (~40 ms each on the server),
never for all 500 runs with their params (6.7 MB and ~5 s of the server's time, measured; that
is what `harness runs` without an iteration needs, a page of PAGE runs per call).

All the runs of an experiment (`harness runs`) are the server's heaviest answer: its SQL store
builds every run's params, tags and metrics as ORM objects and then JSON (about 2 s of one core
for 500 runs, measured). A team server has several workers (`make server`: one a core), so the
pages are asked for WAVE at once. MLflow's page token is its own business ("this format is not
stable" in mlflow.utils.search_utils), so the reader asks for the later pages with tokens made
the way the server makes them, and keeps the answers only if the server's own token for the
second page is that token; otherwise it reads page after page with the server's tokens.

Anything this module does not expect (a proxy's HTML, an error status other than "no such
experiment", a field missing, settings it does not handle such as MLflow's auth plugins, client
certificates or workspaces) hands the whole reader over to MlflowReader, the MLflow client, which
answers the same questions its own way (`Fallback`). A server that does not answer at all is
refused before, with harness.track.remote's one line. Pure Python (urllib, json): no MLflow.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Optional

from harness.core.records import REFERENCES_QUERY, KIND_VARIANT, RunRecord, finished_query, parent_query

API = "/api/2.0/mlflow"
PAGE = 5000  # runs per search call (the server allows up to 50,000; MlflowReader asks for 5,000)
TIMEOUT = 30.0  # seconds per request, as harness.track.remote bounds MLflow's own
# Settings whose meaning lives inside MLflow's client (an auth plugin, a client certificate, a
# workspace header): with any of them set, the MLflow client reads instead.
MLFLOW_ONLY_SETTINGS = ("MLFLOW_TRACKING_AUTH", "MLFLOW_TRACKING_CLIENT_CERT_PATH", "MLFLOW_WORKSPACE")
SLICE = 128  # runs per page when all of them are read, WAVE pages at once
WAVE = 4
_ACTIVE_RUNS = "ACTIVE_ONLY"
_NEWEST_FIRST = ["attributes.start_time DESC"]


class Fallback(Exception):
    """The server answered in a way this reader does not handle: use MLflow's client instead."""


def supported() -> bool:
    """Whether this reader can speak for the client here (none of MLFLOW_ONLY_SETTINGS set)."""
    return not any(os.environ.get(name) for name in MLFLOW_ONLY_SETTINGS)


def offset_token(offset: int) -> str:
    """The page token MLflow's stores write for the page that starts at `offset`."""
    return base64.b64encode(json.dumps({"offset": offset}).encode()).decode()


class RestClient:
    """JSON over HTTP to one server, with MLflow's own credential settings (basic auth from
    MLFLOW_TRACKING_USERNAME/PASSWORD, a bearer MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_INSECURE_TLS,
    MLFLOW_TRACKING_SERVER_CERT_PATH). Errors other than "does not exist" raise Fallback."""

    def __init__(self, uri: str):
        self.base = uri.rstrip("/") + API
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        if user and password:
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {basic}"
        elif token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.context = None
        if uri.startswith("https://"):
            if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
                self.context = ssl.create_default_context()  # MLflow's "insecure TLS": no checks at all
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE
            else:
                self.context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))

    def call(self, method: str, endpoint: str, body: Optional[dict] = None) -> Optional[dict]:
        """The decoded answer; None for MLflow's RESOURCE_DOES_NOT_EXIST."""
        url, data = self.base + endpoint, None
        if method == "GET" and body:
            url += "?" + urllib.parse.urlencode(body)
        elif body is not None:
            data = json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=self.context) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            if "RESOURCE_DOES_NOT_EXIST" in text:
                return None
            raise Fallback(f"{method} {endpoint}: HTTP {exc.code} {text[:200]}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            raise Fallback(f"{method} {endpoint}: {exc}") from None


    def artifact_text(self, run_id: str, path: str) -> Optional[str]:
        """A run's text artifact, None when the run has none of that name: listed first
        (artifacts/list, as MlflowReader's client does), then read through the server's own
        download route (/get-artifact, the UI's), which answers a missing file with an error."""
        folder = path.rsplit("/", 1)[0] if "/" in path else ""
        listed = self.call("GET", "/artifacts/list", {"run_id": run_id, **({"path": folder} if folder else {})})
        if listed is None or path not in {f.get("path") for f in listed.get("files", [])}:
            return None
        url = self.base[: -len(API)] + "/get-artifact?" + urllib.parse.urlencode({"path": path, "run_uuid": run_id})
        request = urllib.request.Request(url, method="GET", headers={k: v for k, v in self.headers.items()
                                                                      if k != "Content-Type"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=self.context) as answer:
                return answer.read().decode()
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            raise Fallback(f"GET /get-artifact {path}: {exc}") from None


def run_record(run: dict) -> RunRecord:
    """An MLflow Run in REST JSON as the RunRecord harness.track.layout.run_record makes of the
    client's Run: int64 fields may come as strings, NaN and infinities as "NaN", "Infinity"."""
    info, data = run["info"], run.get("data", {})
    metrics, steps = {}, {}
    for metric in data.get("metrics", []):
        metrics[metric["key"]] = float(metric.get("value", 0.0))
        steps[metric["key"]] = int(metric.get("step", 0))
    end = int(info.get("end_time", 0) or 0)
    return RunRecord(run_id=info["run_id"], name=info.get("run_name", ""), status=info.get("status", "RUNNING"),
                     start_time=int(info.get("start_time", 0) or 0), end_time=end or None,
                     tags={t["key"]: t.get("value", "") for t in data.get("tags", [])},
                     metrics=metrics, params={p["key"]: p.get("value", "") for p in data.get("params", [])},
                     steps=steps)


class RestReader:
    """MlflowReader's answers for one experiment on a server, read over REST without MLflow. Each
    question sends the search MlflowReader's client sends (the filters of harness.core.records),
    so the server does the same, small, work: the table's look-ups return one run each (a
    search over all 500 runs with their params costs the server seconds); answers are kept for
    the reader's life."""

    def __init__(self, uri: str, experiment: str):
        self.uri, self.experiment = uri, experiment
        self._rest = RestClient(uri)
        found = self._rest.call("GET", "/experiments/get-by-name", {"experiment_name": experiment})
        self._experiment_id = found["experiment"]["experiment_id"] if found else None
        self._found: dict[tuple, list[RunRecord]] = {}

    def _search(self, query: str, max_results: Optional[int] = None) -> list[RunRecord]:
        """Active runs of the experiment matching `query`, newest first: the first `max_results`,
        or all of them, a page per call."""
        if self._experiment_id is None:
            return []
        key = (query, max_results)
        if key not in self._found:
            body = {"experiment_ids": [self._experiment_id], "filter": query, "run_view_type": _ACTIVE_RUNS,
                    "max_results": max_results or PAGE, "order_by": _NEWEST_FIRST}
            runs = self._rest.call("POST", "/runs/search", body).get("runs", []) if max_results else (
                self._all_at_once(body) or self._page_after_page(body))
            self._found[key] = [run_record(run) for run in runs]
        return self._found[key]

    def _page_after_page(self, body: dict) -> list[dict]:
        runs, body = [], dict(body)
        while True:
            page = self._rest.call("POST", "/runs/search", body) or {}
            runs += page.get("runs", [])
            if not page.get("next_page_token"):
                return runs
            body["page_token"] = page["next_page_token"]

    def _all_at_once(self, body: dict) -> Optional[list[dict]]:
        """Every matching run, SLICE-run pages asked for WAVE at once (module docstring); None
        when the server's own token is not the one made here."""
        def page(offset: int) -> dict:
            token = {"page_token": offset_token(offset)} if offset else {}
            return self._rest.call("POST", "/runs/search", {**body, "max_results": SLICE, **token}) or {}

        runs: list = []
        with ThreadPoolExecutor(WAVE) as pool:
            for wave in range(0, 1 << 30, WAVE * SLICE):
                pages = list(pool.map(page, range(wave, wave + WAVE * SLICE, SLICE)))
                if wave == 0 and pages[0].get("next_page_token", offset_token(SLICE)) != offset_token(SLICE):
                    return None
                for one in pages:
                    runs += one.get("runs", [])
                    if not one.get("next_page_token"):
                        return runs

    def runs(self, iteration: Optional[str] = None, variants: bool = False) -> list[RunRecord]:
        """Parent runs, newest first (with `variants`, the `--set` runs too, merged by start time)."""
        found = self._search(parent_query(iteration))
        if variants:
            found = sorted(found + self._search(parent_query(iteration, kind=KIND_VARIANT)),
                           key=lambda r: r.start_time or 0, reverse=True)
        return found

    def latest_finished(self, iteration: str, config_sha: Optional[str] = None) -> Optional[RunRecord]:
        found = self._search(finished_query(iteration, config_sha), max_results=1)
        return found[0] if found else None

    def references(self) -> list[RunRecord]:
        return self._search(REFERENCES_QUERY)

    def _get(self, run_id: str) -> Optional[RunRecord]:
        """The active run with this exact id, in any experiment (None if unknown or deleted)."""
        found = self._rest.call("GET", "/runs/get", {"run_id": run_id})
        if not found or found["run"]["info"].get("lifecycle_stage", "active") != "active":
            return None
        return run_record(found["run"])

    def known(self, run_ids: Iterable[str]) -> set[str]:
        """The ids among `run_ids` of runs the server holds (deleted ones not): one search for
        those in this experiment, a look-up for each of the rest (another experiment's)."""
        ids = [i for i in dict.fromkeys(run_ids) if i and "'" not in i]
        if not ids:
            return set()
        listed = ", ".join(f"'{i}'" for i in ids)
        here = {r.run_id for r in self._search(f"attributes.run_id IN ({listed})")}
        return here | {i for i in ids if i not in here and self._get(i) is not None}

    def run(self, run_id: str) -> Optional[RunRecord]:
        """The run with this id, or the only parent or finished reference run of the experiment
        whose id starts with it."""
        if not run_id:
            return None
        exact = self._get(run_id)
        if exact is not None:
            return exact
        matches = [r for r in self.runs() + self.references() if r.run_id.startswith(run_id)]
        return self._get(matches[0].run_id) if len(matches) == 1 else None

    def predictions(self, run_id: str):
        """The run's per-example predictions (harness.core.predictions), None when it logged none."""
        from harness.core import predictions

        text = self._rest.artifact_text(run_id, predictions.ARTIFACT) if run_id else None
        return None if text is None else predictions.loads(text)


class ServerReader:
    """RestReader, handing over to MlflowReader (MLflow's client) for good the first time the
    server answers in a way RestReader does not expect: the same questions, the same answers."""

    def __init__(self, uri: str, experiment: str):
        self.uri, self.experiment = uri, experiment
        self._reader = None
        if supported():
            try:
                self._reader = RestReader(uri, experiment)
            except Fallback:
                pass
        if self._reader is None:
            self._use_client()

    def _use_client(self):
        from harness.track.reader import MlflowReader

        self._reader = MlflowReader(self.uri, self.experiment)
        return self._reader

    def _ask(self, name: str, *args, **kwargs):
        try:
            return getattr(self._reader, name)(*args, **kwargs)
        except Fallback:
            return getattr(self._use_client(), name)(*args, **kwargs)

    def runs(self, iteration: Optional[str] = None, variants: bool = False) -> list[RunRecord]:
        return self._ask("runs", iteration, variants=variants)

    def latest_finished(self, iteration: str, config_sha: Optional[str] = None) -> Optional[RunRecord]:
        return self._ask("latest_finished", iteration, config_sha)

    def references(self) -> list[RunRecord]:
        return self._ask("references")

    def known(self, run_ids: Iterable[str]) -> set[str]:
        return self._ask("known", list(run_ids))

    def run(self, run_id: str) -> Optional[RunRecord]:
        return self._ask("run", run_id)

    def predictions(self, run_id: str):
        return self._ask("predictions", run_id)

    @property
    def via_rest(self) -> bool:
        return isinstance(self._reader, RestReader)
