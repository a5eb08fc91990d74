"""harness.track.rest_reader reads the team server over MLflow's REST API without MLflow: against the
real PostgreSQL-backed server (conftest.team_server) it must answer exactly as MlflowReader, MLflow's
own client, does (every field of every run, in the same order), so `table`, `runs` and `compare`
print the same bytes through either; and it must hand over to the client when the server answers
in a way it does not expect."""

import math
import subprocess
import sys

import pytest

from cli_run import REPO, harness
from harness.track import fast_store, rest_reader
from harness.track.reader import MlflowReader


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def same_records(ours, theirs) -> None:
    assert [r.run_id for r in ours] == [r.run_id for r in theirs]
    for a, b in zip(ours, theirs):
        assert (a.name, a.status, a.start_time, a.end_time, a.tags, a.params, a.steps) == (
            b.name, b.status, b.start_time, b.end_time, b.tags, b.params, b.steps)
        assert a.metrics.keys() == b.metrics.keys() and all(same(a.metrics[k], b.metrics[k]) for k in a.metrics)


@pytest.fixture(scope="module")
def server_store(team_server, tmp_path_factory):
    """store_builder's runs on the server, plus what a SQLite-shaped test would not meet: a variant,
    a NaN metric, two runs started in the same millisecond, a RUNNING run (no end time), a
    deleted run."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from store_builder import T0, build, history
    from harness import ledger
    from harness.core import records
    from harness.track.finished import record_finished_run
    from harness.track.store import Store

    built = build(tmp_path_factory.mktemp("rest"), uri=team_server.url, experiment="rest-reader")
    store, book = Store(team_server.url), ledger.load(built["ledger"])
    exp, base = built["experiment"], book.resolve("base", "smoke")
    variant_tags = {records.TAG_KIND: records.KIND_VARIANT, records.TAG_OVERRIDES: '{"optimizer.lr": 0.0003}'}
    built["runs"]["variant"] = record_finished_run(store, exp, base, variant_tags, history(2, 0.0),
                                                   {"best_val_gender_acc": float("nan")}, start_time=T0 + 90_000)
    for role in ("tie-1", "tie-2"):
        built["runs"][role] = record_finished_run(store, exp, base, {}, history(1, 0.3), {}, start_time=T0 + 300_000)
    client = MlflowClient(team_server.url)
    running = client.create_run(store.experiment_id(exp), run_name="second", start_time=T0 + 400_000,
                                tags={records.TAG_KIND: records.KIND_ITERATION, records.TAG_ITERATION: "second"})
    client.log_batch(running.info.run_id, metrics=[Metric("loss", float("inf"), T0, 1)])
    built["runs"]["running"] = running.info.run_id
    gone = record_finished_run(store, exp, base, {}, history(1, 0.4), {}, start_time=T0 + 500_000)
    client.delete_run(gone)
    built["runs"]["deleted"] = gone
    built["runs"]["elsewhere"] = client.create_run(client.create_experiment("rest-reader-other")).info.run_id
    return built


@pytest.mark.parametrize("pages", ["waves", "server tokens"])
def test_the_rest_reader_answers_as_mlflows_client(server_store, monkeypatch, pages):
    """All the runs come in waves of pages asked for at once, SLICE runs a page (several waves
    here); when the server's page token is not the one the reader makes (another MLflow),
    page after page with the server's tokens, PAGE runs a page. Either way, as the client."""
    uri, experiment, ids = server_store["uri"], server_store["experiment"], server_store["runs"]
    reader, client = fast_store.open_reader(uri, experiment), MlflowReader(uri, experiment)
    assert isinstance(reader, rest_reader.ServerReader) and reader.via_rest
    monkeypatch.setattr(rest_reader, "SLICE", 2)
    monkeypatch.setattr(rest_reader, "WAVE", 2)
    monkeypatch.setattr(rest_reader, "PAGE", 2)
    if pages == "server tokens":
        made_here = rest_reader.offset_token
        monkeypatch.setattr(rest_reader, "offset_token", lambda offset: made_here(offset) + "=")
    asked = []
    monkeypatch.setattr(rest_reader.RestClient, "call", _counted(rest_reader.RestClient.call, asked))
    reader = fast_store.open_reader(uri, experiment)
    for variants in (False, True):
        same_records(reader.runs(variants=variants), client.runs(variants=variants))
        for iteration in ("base", "first", "second", "nope"):
            same_records(reader.runs(iteration, variants=variants), client.runs(iteration, variants=variants))
    tokens = [body.get("page_token") for endpoint, body in asked if endpoint == "/runs/search" and body]
    assert any(tokens) and len(reader.runs()) > 2 * 2  # more than one wave of pages
    if pages == "waves":
        assert rest_reader.offset_token(4) in tokens  # the second wave's first page
    same_records(reader.references(), client.references())
    assert ids["deleted"] not in {r.run_id for r in reader.runs()}
    for iteration in ("base", "first", "second"):
        for sha in (None, "0" * 12):
            ours, theirs = reader.latest_finished(iteration, sha), client.latest_finished(iteration, sha)
            assert (ours and ours.run_id) == (theirs and theirs.run_id)
    for key in (ids["base"], ids["base"][:8], ids["running"], ids["variant"], ids["deleted"], ids["elsewhere"],
                "0" * 32, "f", ""):
        ours, theirs = reader.run(key), client.run(key)
        same_records([ours] if ours else [], [theirs] if theirs else [])
    asked = [ids["base"], ids["majority-c"], ids["deleted"], ids["variant"], ids["elsewhere"], "0" * 32]
    assert reader.known(asked) == client.known(asked) == {ids["base"], ids["majority-c"], ids["variant"],
                                                          ids["elsewhere"]}
    assert reader.via_rest


def _counted(call, asked: list):
    def counting(self, method, endpoint, body=None):
        asked.append((endpoint, body))
        return call(self, method, endpoint, body)
    return counting


def test_the_rest_reader_reads_a_runs_predictions_as_mlflows_client(server_store):
    """The predictions artifact (harness.core.predictions) of a run on the server reads back the
    same through the REST reader as through MLflow's client; a run without one reads as None."""
    from mlflow.tracking import MlflowClient

    from harness.core import predictions

    uri, experiment, ids = server_store["uri"], server_store["experiment"], server_store["runs"]
    table = predictions.build([3, 7], ["a.jpg", "b.jpg"], {"gender": ["female", "male"]}, {"gender": [0, 1]},
                              {"gender": [1, 1]}, {"gender": [0.75, 0.5]})
    MlflowClient(uri).log_dict(ids["first"], table, predictions.ARTIFACT)
    reader, client = fast_store.open_reader(uri, experiment), MlflowReader(uri, experiment)
    ours = reader.predictions(ids["first"])
    assert ours is not None and ours == client.predictions(ids["first"])
    assert ours.pred["gender"] == ("male", "male") and ours.rows == (3, 7)
    assert reader.predictions(ids["base"]) is None and client.predictions(ids["base"]) is None
    assert reader.via_rest


def test_table_runs_and_compare_print_the_same_through_either_reader(server_store, monkeypatch):
    uri, ledger_path = server_store["uri"], str(server_store["ledger"])
    commands = [("table", "--format", "json"), ("table", "--format", "csv"), ("runs", "--json"), ("runs", "first"),
                ("compare", "base", "first", "--json"), ("compare", "base", server_store["runs"]["variant"])]
    rest = [harness(*c, "--ledger", ledger_path, "--tracking-uri", uri) for c in commands]
    monkeypatch.setattr(fast_store, "open_reader", lambda u, e: MlflowReader(u, e))
    client = [harness(*c, "--ledger", ledger_path, "--tracking-uri", uri) for c in commands]
    for command, ours, theirs in zip(commands, rest, client):
        assert ours.returncode == theirs.returncode == 0, (command, ours.stderr)
        assert ours.stdout == theirs.stdout != "", command
    assert '"base"' in rest[0].stdout


def test_the_table_on_a_server_imports_no_mlflow(server_store):
    """`harness table --format json` against the server, in a fresh process, never imports MLflow."""
    code = ("import sys; from harness.cli import main; rc = main(sys.argv[1:]); "
            "assert 'mlflow' not in sys.modules, 'mlflow imported'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "table", "--format", "json", "--ledger",
                           str(server_store["ledger"]), "--tracking-uri", server_store["uri"]],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert '"base"' in done.stdout


def test_an_unexpected_answer_hands_over_to_mlflows_client(server_store, monkeypatch):
    """A server that answers the search in a way the REST reader does not handle (here: an
    endpoint it does not have) is read by MLflow's client instead, with the same answers."""
    uri, experiment = server_store["uri"], server_store["experiment"]
    reader = fast_store.open_reader(uri, experiment)
    monkeypatch.setattr(rest_reader, "API", "/api/2.0/no-such-api")
    broken = fast_store.open_reader(uri, experiment)
    assert not broken.via_rest
    same_records(broken.runs(variants=True), reader.runs(variants=True))
    monkeypatch.setenv("MLFLOW_WORKSPACE", "elsewhere")  # a setting only MLflow's client applies
    assert not rest_reader.supported()
