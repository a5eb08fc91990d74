"""The fault point `queue-not-flushed` (harness/core/faults.py): a run SIGKILLed just after an
epoch was handed to MLflow's asynchronous logging (harness.track.tracker), before anything waited
for it, resumes with every epoch logged exactly once on the parent run and on each pass run, with
the numbers of an uninterrupted run. Real subprocesses, real SIGKILL, real TensorFlow, a real
SQLite MLflow store; the ledger, data and reference run are test_faults_resume's."""

import pytest

from test_faults_resume import STEPS, book, harness_run, histories, per_epoch, synth, uninterrupted  # noqa: F401

pytestmark = pytest.mark.faults


def pass_histories(uri: str) -> dict:
    """pass run name -> metric -> [(step, value)] of the one parent run's pass runs."""
    from harness.track.store import Store

    store = Store(uri)
    [parent] = store.runs("exact", "exact")
    return {child.name: {key: [(p.step, p.value) for p in store.metric_history(child.run_id, key)]
                         for key in child.metrics if key != "epoch_seconds"}
            for child in store.children(parent.run_id)}


@pytest.fixture(scope="module")
def uninterrupted_passes(uninterrupted, tmp_path_factory):
    """The uninterrupted run's pass histories (its store is the first module folder named so)."""
    folders = sorted(tmp_path_factory.getbasetemp().glob("uninterrupted*"))
    return pass_histories(f"sqlite:///{folders[0]}/mlflow.db")


def test_killed_with_an_epoch_in_the_queue_resumes_with_every_epoch_once(book, synth, uninterrupted,
                                                                          uninterrupted_passes, tmp_path,
                                                                          record_property):
    record_property("expectation", "SIGKILL at queue-not-flushed (epoch 2, then epoch 4 in pass 2), then a rerun: "
                    "one FINISHED run; on the parent and on each pass run every epoch once, equal to an "
                    "uninterrupted run")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for fault in ("queue-not-flushed:2", "queue-not-flushed:2"):  # epoch 2, then epoch 4 (pass 2) of the rerun
        killed = harness_run(book, synth, tmp_path, fault=fault)
        assert killed.returncode == -9, (fault, killed.stdout[-2000:] + killed.stderr[-2000:])
    final = harness_run(book, synth, tmp_path)
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
    _, status, history = histories(uri)
    assert status == "FINISHED"
    expected = per_epoch(uninterrupted)
    assert "val_loss" in expected and "val_gender_acc" in expected
    assert per_epoch(history).keys() == expected.keys()
    for key, points in expected.items():
        assert history[key] == points, key  # steps 1..5, each once, the same floats
    passes = pass_histories(uri)
    assert sorted(passes) == sorted(uninterrupted_passes) == ["exact/pass-1", "exact/pass-2"]
    for name, metrics in uninterrupted_passes.items():
        for key, points in metrics.items():
            assert passes[name][key] == points, (name, key)
    assert [s for s, _ in passes["exact/pass-1"]["loss"]] + [s for s, _ in passes["exact/pass-2"]["loss"]] == STEPS
