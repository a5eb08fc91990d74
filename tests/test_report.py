"""`harness table`: the results table from MLflow.

A session-scoped store holds real smoke runs (TensorFlow on a tiny synthetic set) of base and
first; then the ledger's `first` is edited so its run turns stale, and second and third are never
run. The golden file is the table with every number that comes from a run replaced by
the name of the MLflow value it must equal (a cell that differs stays literal, so the golden
comparison fails on it): the golden pins the layout and every ledger-derived cell, the
substitution pins the numbers to MLflow's.

Set UPDATE_GOLDEN=1 to rewrite tests/golden/ after an intended change.
"""

import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness import ledger, report

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"

LEDGER_V1 = """\
experiment: report-golden
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
    title: both notebook defects on
    data: {validate_on_train: true}
    head: {tower_defect: true}
    passes: [{epochs: 10, monitor: val_gender_acc}]
    reported:
      - {val_acc: {gender: 0.6248}, seconds_per_epoch: 65, source: notes table}
    remark: Validated on training images | not real validation.
  first:
    extends: base
    title: base with the two fixes
    data: {validate_on_train: false}
    head: {tower_defect: false}
    reported:
      - {val_acc: {gender: 0.5781}, seconds_per_epoch: 43}
    remark: Acc reduced.
  second:
    extends: first
    passes:
      - {epochs: 30, lr: 0.01}
      - {epochs: 20, lr: 0.001, resume_from: best}
    reported:
      - {val_acc: {gender: 0.7041}}
      - {val_acc: {gender: 0.7167}, epoch: 42}
  third:
    extends: second
    backbone: {freeze: [{pattern: "^conv", trainable: false}, {pattern: ".*", trainable: true}]}
"""

# After the runs: `first` gets a new LR, so its run no longer matches the ledger.
LEDGER_V2 = LEDGER_V1.replace(
    "    title: base with the two fixes\n", "    title: base with the two fixes\n    optimizer: {lr: 0.002}\n")

README = """\
# A project

Intro text that must survive.

<!-- results:start -->
stale content
<!-- results:end -->

## Afterwards

More text.
"""


_SMOKE: dict = {}


def build_smoke_store(tmp_path_factory) -> dict:
    """A store with smoke runs of base and first (ledger v1): the folder, the tracking URI, the
    experiment and the run ids. The ledger file left in the folder is v2. Built once per test
    session (tests/test_ui_browser.py shares it through this function)."""
    if _SMOKE:
        return _SMOKE
    from harness.data.synth import generate
    from harness.launch import run_iteration

    folder = tmp_path_factory.mktemp("report")
    data = folder / "data"
    generate(data, 64, seed=5)
    path = folder / "runs.yaml"
    path.write_text(LEDGER_V1)
    book = ledger.load(path)
    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    run_ids = {}
    for name in ("base", "first"):
        lines = []
        code = run_iteration(book, name, profile="smoke", data_dir=str(data), tracking_uri=uri, log=lines.append)
        assert code == 0, lines
        run_ids[name] = re.search(r"run ([0-9a-f]{32})", "\n".join(lines)).group(1)
    path.write_text(LEDGER_V2)
    _SMOKE.update(folder=folder, uri=uri, runs=run_ids, experiment=book.experiment)
    return _SMOKE


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory):
    return build_smoke_store(tmp_path_factory)


def harness_table(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """`harness table` in a fresh process that reports afterwards whether TensorFlow or Keras
    got imported."""
    probe = textwrap.dedent("""\
        import sys
        from harness.cli import main
        code = main(sys.argv[1:])
        heavy = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
        print("IMPORTED:" + ",".join(heavy))
        sys.exit(code)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-c", probe, "table", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=180)


# --------------------------------------------------------------------------- golden


def split_row(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def expected_cells(run, reported: float | None) -> dict:
    """Column -> (the cell the table must show, the token that replaces it in the golden)."""
    m = run.metrics
    best, epoch = m["best_val_gender_acc"], int(m["best_epoch"])
    cells = {
        "Total params": (f"{int(m['total_params']):,}", "<total_params>"),
        "Trainable params": (f"{int(m['trainable_params']):,}", "<trainable_params>"),
        "Best val gender acc (epoch)": (f"{best:.4f} @ {epoch}", "<best_val_gender_acc> @ <best_epoch>"),
        "Gender lift vs majority (0.556)": (f"{best - 0.556:+.4f}", "<best_val_gender_acc - 0.556>"),
        "s/epoch": (f"{m['mean_epoch_seconds']:.1f}", "<mean_epoch_seconds>"),
    }
    for head in ("image_quality", "age", "weight", "bag", "footwear", "pose", "emotion"):
        cells[f"val {head}"] = (f"{m[f'best_val_{head}_acc']:.4f}", f"<best_val_{head}_acc>")
    if reported is not None:
        cells["vs reported"] = (f"{best - reported:+.4f}", "<best_val_gender_acc - reported>")
    return cells


def normalize(text: str, store, expected_runs: dict, stale: set, reported: dict) -> str:
    """The RESULTS file with run-derived numbers replaced by tokens, table padding removed."""
    out, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            out.append(line)
            continue
        cells = split_row(line)
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("-:"):
            row = dict(zip(header, cells))
            name = row["Iteration"]
            if name in expected_runs:
                run = store.run(expected_runs[name])
                for column, (shown, token) in expected_cells(run, reported.get(name)).items():
                    if row[column] == shown:
                        row[column] = token
                run_cell = run.run_id[:8] + (" stale" if name in stale else "")
                if row["Run"] == run_cell:
                    row["Run"] = "<run_id>" + (" stale" if name in stale else "")
            cells = [row[column] for column in header]
        else:
            cells = ["---"] * len(cells)
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 once"
    assert text == path.read_text(), f"differs from {path} (UPDATE_GOLDEN=1 rewrites it after an intended change)"


def test_table_golden_readme_idempotent_no_tensorflow(smoke_store, tmp_path):
    from harness.tracking import Store

    folder = smoke_store["folder"]
    readme = folder / "README.md"
    readme.write_text(README)
    first = harness_table(folder, "--tracking-uri", smoke_store["uri"], "--plot", "results.png")
    assert first.returncode == 0, first.stderr
    assert "IMPORTED:\n" in first.stdout, "harness table imported TensorFlow or Keras"
    results = folder / "experiments" / "RESULTS.md"
    text = results.read_text()

    runs = smoke_store["runs"]
    store = Store(smoke_store["uri"])
    normalized = normalize(text, store, runs, stale={"first"}, reported={"base": 0.6248, "first": 0.5781})
    check_golden("results_smoke.md", normalized)

    # The printed table is the file's table; the README block holds it, the rest is untouched.
    table = "\n".join(line for line in text.splitlines() if line.startswith("|"))
    assert table in first.stdout
    block = readme.read_text().split(report.RESULTS_START)[1].split(report.RESULTS_END)[0]
    assert table in block and "stale content" not in block
    assert readme.read_text().startswith("# A project\n\nIntro text that must survive.\n\n<!-- results:start -->\n")
    assert readme.read_text().endswith("<!-- results:end -->\n\n## Afterwards\n\nMore text.\n")

    png = (folder / "results.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000

    before = (results.read_bytes(), readme.read_bytes())
    second = harness_table(folder, "--tracking-uri", smoke_store["uri"])
    assert second.returncode == 0, second.stderr
    assert "IMPORTED:\n" in second.stdout
    assert (results.read_bytes(), readme.read_bytes()) == before
    assert "RESULTS.md: unchanged" in second.stdout and "results block unchanged" in second.stdout


def test_gender_numbers_are_mlflows_and_rows_are_current_stale_not_run(smoke_store):
    from harness.tracking import RunReader, Store

    book = ledger.load(smoke_store["folder"] / "runs.yaml")
    rows = report.collect(book, RunReader(smoke_store["uri"], book.experiment).latest_finished)
    assert [(r.name, r.state) for r in rows] == [
        ("base", "current"), ("first", "stale"), ("second", "not run"), ("third", "not run")]
    frame = report.table_frame(book, rows)
    store = Store(smoke_store["uri"])
    for row, (_, cells) in zip(rows[:2], frame.iterrows()):
        run = store.run(smoke_store["runs"][row.name])
        assert row.run == run
        assert cells["Best val gender acc (epoch)"] == (
            f"{run.metrics['best_val_gender_acc']:.4f} @ {int(run.metrics['best_epoch'])}")
        assert cells["Profile"] == "smoke"
    assert frame.iloc[1]["Run"] == smoke_store["runs"]["first"][:8] + " stale"
    assert list(frame["Best val gender acc (epoch)"])[2:] == ["not run", "not run"]
    assert list(frame["Run"])[2:] == ["", ""]


def test_runs_yaml_first_lists_the_two_fixes_and_reads_not_run_without_runs():
    book = ledger.load(REPO / "runs.yaml")
    frame = report.table_frame(book, report.collect(book, FakeStore({}).find))
    first = frame[frame["Iteration"] == "first"].iloc[0]
    assert first["Changes vs parent"] == "data.validate_on_train: true -> false; head.tower_defect: true -> false"
    assert first["Reported gender"] == "0.5781"
    assert set(frame["Best val gender acc (epoch)"]) == {"not run"}
    assert list(frame["Iteration"]) == book.names and list(frame["#"]) == [str(i + 1) for i in range(len(book.names))]


# --------------------------------------------------------------------------- selection (no MLflow)


def record(run_id, start, sha, profile="full", status="FINISHED", **metrics):
    from harness.records import RunRecord

    return RunRecord(run_id=run_id, name=run_id, status=status, start_time=start,
                     tags={"harness.config_sha": sha, "harness.profile": profile}, metrics=metrics)


class FakeStore:
    """`find` over a list of records, as RunReader.latest_finished answers it."""

    def __init__(self, records: dict):
        self.records = records  # iteration -> [record]
        self.calls = 0

    def find(self, name, config_sha=None):
        self.calls += 1
        found = [r for r in self.records.get(name, []) if r.status == "FINISHED"
                 and (config_sha is None or r.config_sha == config_sha)]
        return max(found, key=lambda r: r.start_time) if found else None


@pytest.fixture()
def v2_book(tmp_path):
    path = tmp_path / "ledger.yaml"
    path.write_text(LEDGER_V2)
    return ledger.load(path)


def test_newer_stale_run_does_not_hide_an_older_current_one(v2_book):
    sha = {p: v2_book.resolve("first", p).config_sha() for p in ("full", "smoke", "cpu")}
    fake = FakeStore({"first": [
        record("old-current-full", 1, sha["full"]),
        record("mid-current-smoke", 2, sha["smoke"], "smoke"),
        record("new-stale", 3, "000000000000", "smoke"),
        record("newest-failed", 4, sha["full"], status="FAILED"),
    ]})
    rows = report.collect(v2_book, fake.find)
    first = rows[1]
    assert first.state == "current" and first.run.run_id == "mid-current-smoke"
    assert first.shown.batch_size.train == 8  # described under the run's profile
    assert first.written.batch_size.train == 16


def test_only_runs_of_an_older_config_or_unknown_profile_show_stale(v2_book):
    sha = v2_book.resolve("base", "full").config_sha()
    fake = FakeStore({
        "base": [record("b1", 1, "000000000000"), record("b2", 2, sha, profile="gone")],
        "first": [record("f1", 1, "0" * 12, status="FAILED")],
    })
    rows = report.collect(v2_book, fake.find)
    assert (rows[0].state, rows[0].run.run_id) == ("stale", "b2")
    assert rows[1].state == "not run" and rows[1].run is None
    frame = report.table_frame(v2_book, rows)
    assert frame.iloc[0]["Run"] == "b2 stale"
    assert list(frame["Best val gender acc (epoch)"])[1:] == ["not run"] * 3


def test_current_runs_cost_one_lookup_per_iteration(v2_book):
    records = {name: [record(f"{name}-{i}", i, v2_book.resolve(name, "smoke").config_sha(), "smoke")
                      for i in range(40)] for name in v2_book.names}
    fake = FakeStore(records)
    rows = report.collect(v2_book, fake.find)
    assert fake.calls == len(v2_book.names)
    assert [r.run.run_id for r in rows] == [f"{name}-39" for name in v2_book.names]


def test_cells_escape_pipes_and_describe_freeze_rules_and_reported_passes(v2_book):
    rows = report.collect(v2_book, FakeStore({}).find)
    frame = report.table_frame(v2_book, rows)
    assert frame.iloc[0]["Remark"] == "Validated on training images \\| not real validation."
    assert frame.iloc[3]["Freeze"] == "^conv frozen, .* trains"
    assert frame.iloc[2]["Reported gender"] == "0.7167 @ 42 (pass 2)"
    assert frame.iloc[0]["Architecture"] == "custom + gap-16 + towers 8-8 (1st Dense dead)"
    markdown = report.to_markdown(frame)
    widths = {len(split_row(line)) for line in markdown.splitlines()}
    assert widths == {len(frame.columns)}


def test_single_head_ledger_gets_acc_columns():
    book = ledger.load(REPO / "experiments" / "cifar10_resnet20.yaml")
    name = book.names[0]
    run = record("c1", 1, book.resolve(name, "full").config_sha(), best_val_acc=0.8929, best_epoch=41,
                 total_params=274442, trainable_params=273066, mean_epoch_seconds=55.0)
    rows = report.collect(book, FakeStore({name: [run]}).find)
    frame = report.table_frame(book, rows)
    assert "Best val acc (epoch)" in frame.columns and "Acc lift vs majority (0.100)" in frame.columns
    assert not any(c.startswith("val ") for c in frame.columns)
    assert frame.iloc[0]["Best val acc (epoch)"] == "0.8929 @ 41"
    assert frame.iloc[0]["Acc lift vs majority (0.100)"] == "+0.7929"
    assert frame.iloc[0]["Total params"] == "274,442"
    reported = book.resolve(name).reported[0].val_acc["acc"]
    assert frame.iloc[0]["vs reported"] == f"{0.8929 - reported:+.4f}"
    assert report.default_out(str(book.path), book.experiment).as_posix() == "experiments/RESULTS-cifar10-resnet20.md"


# --------------------------------------------------------------------------- files


def test_readme_block_refresh_is_idempotent_and_needs_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert report.refresh_readme(readme, "| a |\n|---|\n| 1 |\n") is True
    once = readme.read_bytes()
    assert report.refresh_readme(readme, "| a |\n|---|\n| 1 |\n") is False
    assert readme.read_bytes() == once
    assert once.decode() == README.replace("stale content", "| a |\n|---|\n| 1 |")
    readme.write_text("# no block\n")
    with pytest.raises(report.InputError, match="no '<!-- results:start -->'"):
        report.refresh_readme(readme, "x")


def test_table_over_a_missing_store_reads_not_run_and_creates_nothing(tmp_path, v2_book):
    from harness.tracking import RunReader

    uri = f"sqlite:///{tmp_path}/nowhere/mlflow.db"
    rows = report.collect(v2_book, RunReader(uri, v2_book.experiment).latest_finished)
    assert {r.state for r in rows} == {"not run"}
    assert not (tmp_path / "nowhere").exists()


def test_readme_only_for_the_default_ledger(tmp_path, monkeypatch, v2_book):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text(README)
    (tmp_path / "other.yaml").write_text(LEDGER_V2)
    book = ledger.load("other.yaml")
    uri = f"sqlite:///{tmp_path}/none/mlflow.db"
    lines = []
    assert report.run_table(book, "other.yaml", tracking_uri=uri, log=lines.append) == 0
    assert (tmp_path / "experiments" / "RESULTS-report-golden.md").exists()
    assert (tmp_path / "README.md").read_text() == README
    assert report.run_table(book, "other.yaml", tracking_uri=uri, readme="README.md", log=lines.append) == 0
    assert "stale content" not in (tmp_path / "README.md").read_text()
    (tmp_path / "runs.yaml").write_text(LEDGER_V2)
    (tmp_path / "README.md").write_text(README)
    assert report.run_table(ledger.load("runs.yaml"), "runs.yaml", tracking_uri=uri, no_readme=True,
                            log=lines.append) == 0
    assert (tmp_path / "README.md").read_text() == README
    assert (tmp_path / "experiments" / "RESULTS.md").exists()


# --------------------------------------------------------------------------- ui (no browser)


def test_ui_command_binds_loopback_and_serves_the_artifact_root(tmp_path):
    from harness.cli import build_parser
    from harness.tracking import server_command

    args = build_parser().parse_args(["ui"])
    assert (args.host, args.port) == ("127.0.0.1", 5000)
    cmd = server_command(f"sqlite:///{tmp_path}/m/mlflow.db", "127.0.0.1", 5077)
    assert cmd[1:4] == ["-m", "mlflow", "server"]
    flags = dict(zip(cmd[4::1], cmd[5::1]))
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "5077"
    assert flags["--backend-store-uri"] == f"sqlite:///{tmp_path}/m/mlflow.db"
    assert flags["--default-artifact-root"] == (tmp_path / "m" / "artifacts").as_uri()
    assert "--serve-artifacts" in cmd
    relative = server_command("sqlite:///mlruns/mlflow.db", "127.0.0.1", 5000)
    assert relative[relative.index("--backend-store-uri") + 1] == f"sqlite:///{Path('mlruns/mlflow.db').resolve()}"


def test_ui_refuses_a_port_in_use():
    from harness.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["ui", "--port", str(port), "--tracking-uri", "sqlite:////tmp/unused/mlflow.db"]) == 2
