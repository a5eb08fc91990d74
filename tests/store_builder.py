"""A real MLflow store (SQLite, written by MLflow through harness.track.record_finished_run)
holding the runs the read-only commands must tell apart, without training anything:

    base      FINISHED, selected checkpoint logged (selected_val_*_acc/_bacc, selected_epoch), split A, real data
    first     FINISHED, an older run: best_val_* only (no selected checkpoint), split B, synthetic data
    first     FAILED, newer (the table must not show it; `harness runs` must)
    second    KILLED after 1 of its epochs
    reference/majority and reference/linear-probe on split A, reference/majority on split C

Every number is chosen here, so tests compare the commands' output with these values, not with
the code under test. Built once per test session (`records_store` in conftest.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

HEADS = ("gender", "image_quality", "age", "weight", "bag", "footwear", "pose", "emotion")

LEDGER = """\
experiment: everyday
defaults:
  seed: 3
  data: {name: hvc, image_size: 32, val_fraction: 0.25, cache: memory}
  backbone: {name: custom, freeze: none}
  head: {neck: gap, neck_units: 16, tower_units: [8, 8], tower_dropouts: [0.0, 0.3]}
  optimizer: {name: adam, lr: 0.003}
  batch_size: {train: 16, eval: 16}
profiles:
  cpu: {set: {}, max_epochs_per_pass: 2}
  smoke: {set: {data: {limit: 48}, batch_size: {train: 8, eval: 8}}, max_epochs_per_pass: 2}
iterations:
  base:
    passes: [{epochs: 2, monitor: val_gender_acc}]
    remark: The root.
  first:
    extends: base
    optimizer: {lr: 0.001}
    batch_size: {train: 32}
  second:
    extends: first
    passes: [{epochs: 2}, {epochs: 2, lr: 0.0001, resume_from: best}]
"""

T0 = 1_800_000_000_000  # ms: 2027-01-15 08:00 UTC

# Values the store holds (and the tests expect).
BASE_SELECTED = {h: 0.60 + 0.01 * i for i, h in enumerate(HEADS)}
BASE_BACC = {h: 0.50 + 0.01 * i for i, h in enumerate(HEADS)}
BASE_MEAN_BACC = 0.5321
FIRST_BEST = {h: 0.55 + 0.02 * i for i, h in enumerate(HEADS)}
MAJORITY_A, PROBE_A, MAJORITY_C = 0.5560, 0.6012, 0.5000
# harness.split tags as harness.data.split.split_key writes them: A and C the real subset under two
# seeds, B a small synthetic set.
SPLIT_A = "hvc 0123456789ab 6000 rows, val 0.15 seed 1"
SPLIT_B = "hvc ba9876543210 64 rows, val 0.15 seed 1"
SPLIT_C = "hvc 0123456789ab 6000 rows, val 0.15 seed 42"


def history(epochs: int, seed: float) -> list[dict]:
    out = []
    for step in range(1, epochs + 1):
        values = {"loss": 2.0 / step, "val_loss": 2.1 / step, "lr": 1e-3, "epoch_seconds": 3.0 + seed}
        for head in HEADS:
            values[f"{head}_acc"] = values[f"val_{head}_acc"] = 0.4 + 0.05 * step + seed
            values[f"{head}_loss"] = values[f"val_{head}_loss"] = 1.0 / step
        out.append({"step": step, "pass": 0, "metrics": values})
    return out


def build(folder: Path, uri: Optional[str] = None, experiment: str = "everyday") -> dict:
    """The store in `folder` (or at `uri`, a team server, under `experiment`); returns folder,
    ledger path, uri, experiment and run ids by role."""
    from harness import ledger
    from harness.core import records
    from harness.track.store import Store
    from harness.track.finished import record_finished_run

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "runs.yaml"
    path.write_text(LEDGER.replace("experiment: everyday", f"experiment: {experiment}"))
    book = ledger.load(path)
    uri = uri or f"sqlite:///{folder}/mlruns/mlflow.db"
    store = Store(uri)
    exp = book.experiment

    def tags(split: str, synthetic: bool, data: str) -> dict:
        return {records.TAG_PROFILE: "smoke", records.TAG_SPLIT: split, records.TAG_SYNTHETIC: str(synthetic).lower(),
                records.TAG_DATA_DIR: data, records.TAG_DATA: "f1ngerpr1nt0"}

    def run(name: str, profile_tags: dict, hist: list, summary: dict, status="FINISHED", start=0, iteration=None):
        resolved = iteration or book.resolve(name, "smoke")
        return record_finished_run(store, exp, resolved, profile_tags, hist, summary, status=status,
                                   start_time=T0 + start)

    base_summary = {"best_val_gender_acc": 0.65, "best_epoch": 2, "mean_epoch_seconds": 3.0, "total_params": 12345,
                    "trainable_params": 12000, "selected_epoch": 1, "selected_val_mean_bacc": BASE_MEAN_BACC}
    base_summary |= {f"selected_val_{h}_acc": v for h, v in BASE_SELECTED.items()}
    base_summary |= {f"selected_val_{h}_bacc": v for h, v in BASE_BACC.items()}
    ids = {"base": run("base", tags(SPLIT_A, False, "/data/hvc"), history(2, 0.0), base_summary, start=60_000)}
    first_summary = {f"best_val_{h}_acc": v for h, v in FIRST_BEST.items()}
    first_summary |= {"best_epoch": 2, "mean_epoch_seconds": 4.0, "total_params": 23456, "trainable_params": 23000}
    ids["first"] = run("first", tags(SPLIT_B, True, "/tmp/hvc-synth"), history(2, 0.1), first_summary,
                       start=120_000)
    ids["first-failed"] = run("first", tags(SPLIT_B, True, "/tmp/hvc-synth"), history(1, 0.2), {},
                              status="FAILED", start=180_000)
    ids["second-killed"] = run("second", tags(SPLIT_A, False, "/data/hvc"), history(1, 0.0), {}, status="KILLED",
                               start=240_000)
    for role, kind, split, value, start in (("majority-a", "majority", SPLIT_A, MAJORITY_A, 10_000),
                                            ("probe-a", "linear-probe", SPLIT_A, PROBE_A, 20_000),
                                            ("majority-c", "majority", SPLIT_C, MAJORITY_C, 30_000)):
        named = book.resolve("base", "smoke").model_copy(update={"name": f"reference/{kind}"})
        reference_tags = tags(split, False, "/data/hvc") | {records.TAG_KIND: records.KIND_REFERENCE,
                                                            records.TAG_REFERENCE: kind}
        summary = {f"selected_val_{h}_acc": value for h in HEADS} | {"selected_val_mean_bacc": 0.125}
        ids[role] = run(kind, reference_tags, [], summary, start=start, iteration=named)
    return {"folder": folder, "ledger": path, "uri": uri, "experiment": exp, "runs": ids}
