"""After training: the MLflow Model of a run, the registry, `harness predict`, serving, the run's
dataset input and system metrics. Real TensorFlow, a real SQLite MLflow store in a temp folder,
a real `mlflow models serve` process answering a real HTTP call.

One smoke-sized run (on the real hvc subset when HARNESS_HVC_REAL names it, else on a small
synthetic set) is trained once for the module and shared.
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import ledger
from harness.core import metrics
from harness.core.labels import HVC_HEADS
from harness.core.process import free_port
from harness.core.records import NEW, TAG_ITERATION, TAG_SYNTHETIC, DataLineage, Decision

REAL = os.environ.get("HARNESS_HVC_REAL", "")
HAS_REAL = bool(REAL) and (Path(REAL) / "hvc_annotations.csv").is_file()

LEDGER = """\
experiment: person-attributes
defaults:
  seed: 7
  data: {name: hvc, image_size: 32, val_fraction: 0.25, cache: memory, limit: 64}
  backbone: {name: custom, freeze: none}
  head: {neck: gap, neck_units: 16, tower_units: [8], tower_dropouts: [0.0]}
  optimizer: {name: adam, lr: 0.003}
  batch_size: {train: 16, eval: 16}
profiles:
  cpu: {set: {}, max_epochs_per_pass: 1}
  smoke: {set: {}, max_epochs_per_pass: 1}
iterations:
  eleventh:
    passes: [{epochs: 1}]
"""

COLUMNS = [name for head in HVC_HEADS for name in (head, f"{head}_prob")]


def _heldout(folder: Path, source: Path, rows: range) -> Path:
    """An hvc-format folder of a few images of `source` (copied into the test's temp folder)."""
    frame = pd.read_csv(source / "hvc_annotations.csv", dtype=str, keep_default_na=False).iloc[list(rows)]
    (folder / "resized").mkdir(parents=True)
    paths = []
    for index, path in enumerate(frame["image_path"], start=1):
        shutil.copyfile(source / path, folder / "resized" / f"{index}.jpg")
        paths.append(f"resized/{index}.jpg")
    frame = frame.assign(image_path=paths)
    frame.to_csv(folder / "hvc_annotations.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished smoke run; returns what the tests look at."""
    from harness.run.launch import run_iteration
    from harness.track.store import Store

    root = tmp_path_factory.mktemp("models")
    if HAS_REAL:
        data = Path(REAL)
    else:
        from harness.data.synth import generate

        data = generate(root / "synth", 96, seed=5)
    (root / "ledger.yaml").write_text(LEDGER)
    book = ledger.load(root / "ledger.yaml")
    uri = f"sqlite:///{root}/store/mlflow.db"
    lines = []
    code = run_iteration(book, "eleventh", profile="smoke", data_dir=str(data), tracking_uri=uri, log=lines.append,
                         system_metrics=True)  # the one training that tests them (conftest turns them off)
    assert code == 0, lines
    store = Store(uri)
    run = store.runs("person-attributes", "eleventh")[0]
    heldout = _heldout(root / "heldout", data, range(70, 86))
    return {"book": book, "ledger": str(root / "ledger.yaml"), "uri": uri, "data": data, "store": store, "run": run,
            "heldout": heldout, "root": root}


@pytest.fixture(scope="module")
def champion(trained):
    """The run's model registered as version 1 with alias champion."""
    from harness.serve.registry import register_iteration

    lines = []
    version = register_iteration(trained["book"], "eleventh", alias="champion", tracking_uri=trained["uri"],
                                 log=lines.append)
    return version, lines


def cli(trained, *args):
    from harness.cli import main

    return main([*args, "--tracking-uri", trained["uri"]])


@pytest.fixture(scope="module")
def pyfunc_model(trained, champion):
    import mlflow.pyfunc

    from harness.track.models import _tracking_uri

    with _tracking_uri(trained["uri"]):
        return mlflow.pyfunc.load_model("models:/person-attributes@champion")


def test_a_finished_run_logs_one_pyfunc_model_with_signature_and_a_working_example(trained):
    import mlflow.models
    import mlflow.pyfunc
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    from harness.track.models import _tracking_uri, model_uri

    run = MlflowClient(trained["uri"]).get_run(trained["run"].run_id)
    assert len(run.outputs.model_outputs) == 1  # once per run, not per pass
    uri = model_uri(trained["store"], trained["run"].run_id)
    with _tracking_uri(trained["uri"]):
        info = mlflow.models.get_model_info(uri)
        local = Path(download_artifacts(uri, dst_path=str(trained["root"] / "downloaded")))
    assert [(c.name, str(c.type)) for c in info.signature.inputs.inputs] == [("image", "DataType.binary")]
    assert [c.name for c in info.signature.outputs.inputs] == COLUMNS

    # The input example is one real JPEG of the run's data, and the model predicts on it, loaded
    # the way any MLflow user loads it (pyfunc, from the downloaded folder).
    meta = mlflow.models.Model.load(local)
    example = meta.load_input_example(str(local))
    assert list(example.columns) == ["image"] and example.loc[0, "image"][:2] == b"\xff\xd8"
    model = mlflow.pyfunc.load_model(str(local))
    predicted = model.predict(example)
    assert list(predicted.columns) == COLUMNS and len(predicted) == 1
    for head, classes in HVC_HEADS.items():
        assert predicted.loc[0, head] in classes
        assert 0 < predicted.loc[0, f"{head}_prob"] <= 1
    served = json.loads((local / "serving_input_example.json").read_text())["dataframe_split"]
    assert base64.decodebytes(served["data"][0][0].encode()) == example.loc[0, "image"]

    card = json.loads((local / "artifacts" / "card.json").read_text())
    assert (card["image_size"], card["iteration"], card["run_id"]) == (32, "eleventh", trained["run"].run_id)
    assert {"keras==3.15.1", "mlflow==3.17.2"} <= set((local / "requirements.txt").read_text().split())
    # The harness code travels with the model; nothing is pickled (models from code).
    assert (local / "code" / "harness" / "serve" / "predict.py").is_file()
    assert not list(local.rglob("*.pkl"))


def test_register_moves_the_alias_and_models_lists_the_version(trained, champion, capsys):
    from harness.track.models import model_versions

    version, lines = champion
    assert (version.name, version.version, version.aliases) == ("person-attributes", "1", ("champion",))
    assert "models:/person-attributes@champion" in lines[0]

    capsys.readouterr()
    assert cli(trained, "models", "--json", "--ledger", trained["ledger"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    run = trained["run"]
    expected = run.metrics.get(metrics.selected_name("hvc", "gender", "acc"), run.metrics[metrics.best_val_acc("hvc")])
    assert listed["version"] == 1 and listed["aliases"] == "champion" and listed["iteration"] == "eleventh"
    assert listed["run"] == run.run_id[:8] and listed["val gender acc"] == pytest.approx(expected)
    assert listed["data"] == Path(str(trained["data"])).name + ("" if HAS_REAL else " (synthetic)")

    # Bad input: exit 2, one line, and no new version written.
    assert cli(trained, "register", "eleventh", "--alias", "v3", "--ledger", trained["ledger"]) == 2
    assert "--alias v3" in capsys.readouterr().err
    assert cli(trained, "register", "twelfth", "--ledger", trained["ledger"]) == 2
    assert len(model_versions(trained["store"], "person-attributes")) == 1


def test_pyfunc_labels_agree_with_eval_argmax_on_held_out_images(trained, pyfunc_model):
    """Same preprocessing as training: the served labels are the evaluated model's argmax, and
    their accuracy is what `harness eval` reports on the same folder."""
    from harness.data.hvc import load_hvc
    from harness.data.pipeline import eval_dataset
    from harness.run.evaluate import evaluate_iteration
    from harness.models import load_model
    from harness.track.models import _tracking_uri

    folder = trained["heldout"]
    table = pd.read_csv(folder / "hvc_annotations.csv", dtype=str, keep_default_na=False)
    images = [(folder / path).read_bytes() for path in table["image_path"]]
    served = pyfunc_model.predict(pd.DataFrame({"image": images}))
    assert len(served) == len(images)

    iteration = trained["book"].resolve("eleventh", "smoke")
    with _tracking_uri(trained["uri"]):
        from mlflow.artifacts import download_artifacts

        checkpoint = download_artifacts(run_id=trained["run"].run_id, artifact_path="checkpoint",
                                        dst_path=str(trained["root"] / "ckpt"))
    model = load_model(next(Path(checkpoint).glob("*.keras")), compile=False)
    heldout = load_hvc(folder)
    rows = np.arange(len(heldout))
    labels = {head: values[rows] for head, values in heldout.labels.items()}
    outputs = model.predict(eval_dataset(heldout, rows, iteration).map(lambda x, y: x), verbose=0)
    outputs = outputs if isinstance(outputs, dict) else dict(zip(model.output_names, outputs))
    evaluated = evaluate_iteration(trained["book"], "eleventh", data_dir=str(folder), tracking_uri=trained["uri"])["eval"]
    for head, classes in HVC_HEADS.items():
        argmax = np.asarray(classes)[np.asarray(outputs[f"{head}_output"]).argmax(axis=1)]
        assert list(served[head]) == list(argmax), head
        truth = np.asarray(classes)[labels[head]]
        assert (served[head].to_numpy() == truth).mean() == pytest.approx(evaluated[f"{head}_acc"], abs=1e-6), head


def test_predict_names_bad_images_predicts_the_rest_and_exits_1(trained, champion, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    good = sorted((trained["heldout"] / "resized").glob("*.jpg"))[:2]
    for path in good:
        shutil.copyfile(path, folder / path.name)
    (folder / "notes.jpg").write_text("not a picture")
    (folder / "cut.jpg").write_bytes(good[0].read_bytes()[:600])
    out = tmp_path / "out" / "predictions.csv"
    capsys.readouterr()
    assert cli(trained, "predict", "eleventh", str(folder), "--out", str(out), "--ledger", trained["ledger"]) == 1
    err = capsys.readouterr().err
    assert f"{folder / 'notes.jpg'}: not an image" in err
    assert f"{folder / 'cut.jpg'}: truncated image" in err
    written = pd.read_csv(out)
    assert list(written.columns) == ["path", *COLUMNS]
    assert sorted(Path(p).name for p in written["path"]) == sorted(p.name for p in good)

    # One image by registered alias, as JSON: every head's label and probability.
    assert cli(trained, "predict", "models:/person-attributes@champion", str(good[0]), "--json") == 0
    [row] = json.loads(capsys.readouterr().out)
    assert list(row["heads"]) == list(HVC_HEADS)
    assert all(label["label"] in HVC_HEADS[head] for head, label in row["heads"].items())

    # Bad arguments: exit 2 before a model is loaded.
    assert cli(trained, "predict", "eleventh", str(tmp_path / "missing.jpg"), "--ledger", trained["ledger"]) == 2
    assert "missing.jpg: no such file or folder" in capsys.readouterr().err
    assert cli(trained, "predict", "models:/person-attributes@nobody", str(good[0])) == 2



def test_the_served_model_answers_a_rest_call(trained, champion, pyfunc_model, tmp_path):
    """`mlflow models serve` of models:/person-attributes@champion on a loopback port, a real
    POST of a real image, then the server's process group stopped by its PID."""
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # uvicorn, started by `mlflow models serve`
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained["uri"], "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                               "models:/person-attributes@champion", "--env-manager", "local", "-h", "127.0.0.1",
                               "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not answer /ping in 240 s"
                time.sleep(0.5)
        image = sorted((trained["heldout"] / "resized").glob("*.jpg"))[0].read_bytes()
        body = json.dumps({"dataframe_split": {"columns": ["image"],
                                               "data": [[base64.b64encode(image).decode()]]}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            [answer] = json.loads(response.read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
    assert server.returncode is not None
    local = pyfunc_model.predict(pd.DataFrame({"image": [image]}))
    assert list(answer) == COLUMNS
    for head in HVC_HEADS:
        assert answer[head] == local.loc[0, head]
        assert answer[f"{head}_prob"] == pytest.approx(local.loc[0, f"{head}_prob"], abs=1e-5)


def test_the_run_records_its_data_as_a_dataset_input_and_system_metrics(trained):
    from mlflow.tracking import MlflowClient

    from harness.data.hvc import load_hvc

    run = MlflowClient(trained["uri"]).get_run(trained["run"].run_id)
    [given] = run.inputs.dataset_inputs
    table = load_hvc(trained["data"], limit=64)
    assert given.dataset.digest == table.fingerprint
    assert json.loads(given.dataset.source) == {"uri": str(table.folder)}
    profile = json.loads(given.dataset.profile)
    assert (profile["train_images"], profile["val_images"]) == (48, 16)
    assert profile["synthetic"] is (not HAS_REAL)
    assert {tag.key: tag.value for tag in given.tags}["mlflow.data.context"] == "training"
    assert run.data.tags[TAG_SYNTHETIC] == str(not HAS_REAL).lower()
    assert run.info.run_name == ("eleventh" if HAS_REAL else "eleventh · synthetic")
    assert run.data.tags[TAG_ITERATION] == "eleventh"
    system = {key for key in run.data.metrics if key.startswith(metrics.SYSTEM_PREFIX)}
    assert {f"{metrics.SYSTEM_PREFIX}cpu_utilization_percentage",
            f"{metrics.SYSTEM_PREFIX}system_memory_usage_megabytes",
            f"{metrics.SYSTEM_PREFIX}disk_usage_percentage"} <= system


def test_synthetic_runs_are_marked_in_their_name_and_system_metrics_stop_with_the_run(tmp_path, monkeypatch):
    """No training needed: a tracker started and failed. Its monitor samples (every 0.2 s
    here), logs on stop, and leaves no thread behind; with system metrics off nothing is logged."""
    from harness.track.store import Store

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    (tmp_path / "l.yaml").write_text(LEDGER)
    iteration = ledger.load(tmp_path / "l.yaml").resolve("eleventh")
    store = Store(f"sqlite:///{tmp_path}/mlflow.db")
    data = DataLineage(name="hvc-synth", digest="abc123", source=str(tmp_path / "hvc-synth"), dataset="hvc",
                       n_train=30, n_val=10, synthetic=True)
    tracker = store.start(Decision(NEW), "person-attributes", iteration, {}, data=data, system_metrics=True)
    [thread] = [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]
    assert thread.daemon  # a killed or exiting process never waits for it
    time.sleep(1.0)
    tracker.fail("test: stopped on purpose")
    assert not thread.is_alive()
    run = store.run(tracker.run_id)
    assert run.name == "eleventh · synthetic" and run.iteration == "eleventh" and run.tags[TAG_SYNTHETIC] == "true"
    cpu = store.metric_history(tracker.run_id, f"{metrics.SYSTEM_PREFIX}cpu_utilization_percentage")
    assert len(cpu) >= 2 and [p.step for p in cpu] == list(range(len(cpu)))

    quiet = store.start(Decision(NEW), "person-attributes", iteration, {}, system_metrics=False)
    assert not [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]
    quiet.fail("test")
    record = store.run(quiet.run_id)
    assert record.name == "eleventh" and not [k for k in record.metrics if k.startswith(metrics.SYSTEM_PREFIX)]

    from harness.cli.parser import build_parser

    assert build_parser().parse_args(["run", "eleventh", "--no-system-metrics"]).system_metrics is False
    default = build_parser().parse_args(["run", "eleventh"]).system_metrics
    assert default is None  # the setting decides: on unless HARNESS_SYSTEM_METRICS=0 (the tests' own)
    from harness.core import settings

    monkeypatch.delenv(settings.SYSTEM_METRICS_ENV, raising=False)
    assert settings.system_metrics(default) is True
    monkeypatch.setenv(settings.SYSTEM_METRICS_ENV, "0")
    assert settings.system_metrics(default) is False and settings.system_metrics(True) is True


def test_image_problems_are_named():
    import io

    from PIL import Image

    from harness.serve.predict import image_problem

    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), "red").save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    assert image_problem(jpeg) is None
    assert image_problem(b"") == "empty file"
    assert image_problem(b"GIF89a nonsense").startswith(("unreadable image", "truncated image", "not an image"))
    assert image_problem(b"hello").startswith("not an image")
    assert image_problem(jpeg[: len(jpeg) // 2]).startswith("truncated image")
