"""`harness ui` in a real browser: headless Debian Chromium driven by Selenium.

The UI is started the way a researcher starts it (`harness ui --port P`) on a free loopback port
over a store holding two smoke runs (shared with tests/test_report.py). Chromium opens MLflow's
run comparison for the two runs, then its val_gender_acc chart for them; the test asserts from
the DOM and from the UI's own API responses (read through Chrome's DevTools log) that
val_gender_acc is shown for both runs, with MLflow's values, and takes a PNG screenshot
(HARNESS_SCREENSHOTS=DIR keeps a copy). The server is stopped by its PID.

Skipped only when /usr/bin/chromium is missing (.ci/run installs Debian's chromium and
chromium-driver).
"""

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from harness.core.process import free_port

from test_report import build_smoke_store

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,900")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CHROMIUM.exists(), reason=(
    "/usr/bin/chromium is missing: install Debian's chromium and chromium-driver "
    "(apt-get install chromium chromium-driver, as .ci/run does)"))]



def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """`harness ui` over the smoke store on a free port; yields (url, store info); stopped by PID."""
    store = build_smoke_store(tmp_path_factory)
    port = free_port()
    log = tmp_path_factory.mktemp("ui") / "server.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "w") as server_log:
        process = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "ui", "--port", str(port), "--tracking-uri", store["uri"]],
            cwd=store["folder"], env=env, stdout=subprocess.PIPE, stderr=server_log, text=True,
            start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    url, page, deadline = None, None, time.monotonic() + 150
    try:
        while url is None and time.monotonic() < deadline and process.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            found = re.search(r"open ((http://127\.0\.0\.1:\d+)\S*)", line)
            page, url = (found.group(1), found.group(2)) if found else (None, None)
        assert url == f"http://127.0.0.1:{port}", f"no URL printed; server log:\n{log.read_text()[-3000:]}"
        yield url, store, page
    finally:
        os.kill(process.pid, signal.SIGTERM)  # harness ui stops mlflow server and its uvicorn
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        deadline = time.monotonic() + 15
        while port_open(port) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not port_open(port), "the UI server still answers after its PID was told to stop"


@pytest.fixture()
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path, prefix='chromium-')}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(predicate, seconds=60, what="condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def api_responses(driver, fragment: str) -> list[tuple[str, dict]]:
    """(url, JSON body) of every API response so far whose URL contains `fragment`."""
    found = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] != "Network.responseReceived":
            continue
        url = message["params"]["response"]["url"]
        if fragment in url:
            body = driver.execute_cdp_cmd("Network.getResponseBody", {"requestId": message["params"]["requestId"]})
            found.append((url, json.loads(body["body"])))
    return found


def test_compare_view_shows_val_gender_acc_for_both_runs(ui, browser, tmp_path):
    from mlflow.tracking import MlflowClient

    url, store, _ = ui
    client = MlflowClient(store["uri"])
    runs = {name: client.get_run(run_id) for name, run_id in store["runs"].items()}
    ids = [run.info.run_id for run in runs.values()]
    experiment_id = runs["base"].info.experiment_id
    history = {run.info.run_id: {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_gender_acc")}
               for run in runs.values()}
    assert all(history.values())

    # 1. The run comparison: both runs side by side, their metrics fetched by the UI itself.
    browser.get(f"{url}/#/compare-runs?runs={quote(json.dumps(ids))}&experiments={quote(json.dumps([experiment_id]))}")
    body = lambda: browser.find_element("tag name", "body").text  # noqa: E731
    wait_for(lambda: "Comparing 2 Runs" in body() and all(i in body() for i in ids), what="the comparison page")
    searched = [b for u, b in api_responses(browser, "/mlflow/runs/search")]
    seen = {}
    for payload in searched:
        for run in payload.get("runs", []):
            metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
            if "val_gender_acc" in metrics:
                seen[run["info"]["run_id"]] = metrics["val_gender_acc"]
    assert set(seen) == set(ids), f"the UI's runs/search did not return val_gender_acc for both runs: {seen}"
    for run_id, value in seen.items():
        assert value == pytest.approx(runs_latest(client, run_id))

    # 2. The comparison's val_gender_acc chart ("Plot chart" on the metric's row) for both runs.
    browser.get(f"{url}/#/metric?runs={quote(json.dumps(ids))}&metric={quote(json.dumps('val_gender_acc'))}"
                f"&experiments={quote(json.dumps([experiment_id]))}"
                f"&plot_metric_keys={quote(json.dumps(['val_gender_acc']))}&plot_layout={{}}&x_axis=step"
                "&y_axis_scale=linear&line_smoothness=1&show_point=true&deselected_curves=[]"
                "&last_linear_y_axis_range=[]")
    names = {run_id: run.info.run_name for run_id, run in zip(ids, runs.values())}
    rows = wait_for(lambda: summary_rows(browser, names.values()), what="the val_gender_acc summary table")
    assert "val_gender_acc" in body()
    for run_id, name in names.items():
        last_step = max(history[run_id])
        latest = re.match(r"([0-9.]+) \(step=(\d+)\)", rows[name][0])
        assert latest, f"row for {name}: {rows[name]}"
        assert int(latest.group(2)) == last_step
        assert float(latest.group(1)) == pytest.approx(history[run_id][last_step], abs=5e-4)
    fetched = {}
    for request_url, payload in api_responses(browser, "/mlflow/metrics/get-history"):
        for metric in payload.get("metrics", []):
            if metric["key"] == "val_gender_acc":
                run_id = metric.get("run_id") or re.search(r"run_uuid=([0-9a-f]+)", request_url).group(1)
                fetched.setdefault(run_id, {})[metric["step"]] = metric["value"]
    assert fetched == history, "the chart's own history requests differ from MLflow's val_gender_acc"

    # 3. The picture: the chart with both runs' curves and the summary table.
    for close in browser.find_elements("css selector", "button[aria-label='Close']"):
        if close.is_displayed():
            close.click()  # the assistant side panel, so the chart gets the room
    wait_for(lambda: browser.execute_script(TRACES_JS) >= len(ids), what="a curve per run in the chart")
    time.sleep(1)  # let plotly finish its resize transition
    shot = tmp_path / "val_gender_acc_compare.png"
    assert browser.save_screenshot(str(shot))
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    if os.environ.get("HARNESS_SCREENSHOTS"):
        keep = Path(os.environ["HARNESS_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / shot.name)


def test_the_printed_url_opens_the_runs_table_with_val_gender_acc(ui, browser, tmp_path):
    """`harness ui` prints the experiment's runs page sorted by val_gender_acc; the experiment is
    tagged as model training, so its first screen is the runs table (not MLflow 3's GenAI
    overview), its rows in MLflow's val_gender_acc order, best first."""
    from mlflow.tracking import MlflowClient

    url, store, page = ui
    client = MlflowClient(store["uri"])
    experiment = client.get_experiment_by_name(store["experiment"])
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert page == (f"{url}/#/experiments/{experiment.experiment_id}/runs"
                    "?orderByKey=metrics.%60val_gender_acc%60&orderByAsc=false")
    browser.get(page)
    runs = [client.get_run(run_id) for run_id in store["runs"].values()]
    best_first = [r.info.run_name for r in sorted(runs, key=lambda r: -r.data.metrics["val_gender_acc"])]
    body = lambda: browser.find_element("tag name", "body").text  # noqa: E731
    wait_for(lambda: "Training runs" in body() and all(n in body() for n in best_first), seconds=90,
             what="the runs table with both runs")
    assert "Sort: val_gender_acc" in body()
    shown = wait_for(lambda: [n for n in browser.execute_script(RUN_NAMES_JS) if n in best_first] or None,
                     what="the run names in the table")
    assert shown == best_first, "the table is not in MLflow's val_gender_acc order"
    assert "Detect Issues" not in body()
    shot = tmp_path / "runs_page.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("HARNESS_SCREENSHOTS"):
        keep = Path(os.environ["HARNESS_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / shot.name)


RUN_NAMES_JS = ("return [...document.querySelectorAll('[role=row] a, .ag-row a')].map(a => a.innerText.trim())"
                ".filter((name, i, all) => all.indexOf(name) === i)")


def runs_latest(client, run_id: str) -> float:
    return client.get_run(run_id).data.metrics["val_gender_acc"]


TRACES_JS = "return document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length"

ROWS_JS = """
return [...document.querySelectorAll('tr, [role="row"]')].map(row =>
    [...row.querySelectorAll('td, th, [role="cell"], [role="gridcell"]')].map(cell => cell.innerText.trim()));
"""


def summary_rows(browser, names) -> dict:
    """Run name -> the cells after it in the metric page's summary table (Latest, Min, Max),
    once every run has its row. Read in one script call: React re-renders while it loads."""
    rows = {}
    for cells in browser.execute_script(ROWS_JS):
        if len(cells) >= 4 and cells[0] in names and "step=" in cells[1]:
            rows[cells[0]] = cells[1:]
    return rows if set(rows) == set(names) else None
