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
from datetime import datetime, timezone
from pathlib import Path

import pytest

from harness import ledger
from harness import report
from harness.core.errors import InputError

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
    from harness.run.launch import run_iteration

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
    """`harness table` in a fresh process that reports afterwards whether TensorFlow, Keras or
    MLflow got imported (a SQLite store of a known schema is read without MLflow)."""
    probe = textwrap.dedent("""\
        import sys
        from harness.cli import main
        code = main(sys.argv[1:])
        heavy = sorted(m for m in ("tensorflow", "keras", "mlflow") if m in sys.modules)
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


def shown_value(m: dict) -> str:
    """The value cell a run must get, computed here from its metrics: the selected checkpoint's
    when logged, else (older runs) the best epoch's, marked; synthetic data marked."""
    if "selected_val_gender_acc" in m:
        return f"{m['selected_val_gender_acc']:.4f} @ {int(m['selected_epoch'])}†"
    return f"{m['best_val_gender_acc']:.4f} @ {int(m['best_epoch'])}‡†"


def head_value(m: dict, head: str) -> float:
    return m.get(f"selected_val_{head}_acc", m.get(f"best_val_{head}_acc"))


def expected_cells(run, reported: float | None) -> dict:
    """Column -> (the cell the table must show, the token that replaces it in the golden)."""
    m = run.metrics
    value = head_value(m, "gender")
    cells = {
        "Total/trainable": (f"{int(m['total_params']):,}/{int(m['trainable_params']):,}", "<total>/<trainable>"),
        "Val gender (epoch)": (shown_value(m), "<val gender @ epoch>"),
        "vs majority": (f"{value - 0.556:+.4f}°", "<val gender - 0.556>°"),
        "s/epoch": (f"{m['mean_epoch_seconds']:.1f}", "<mean_epoch_seconds>"),
        "Started (UTC)": (datetime.fromtimestamp(run.start_time / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M"),
                          "<start>"),
    }
    if run.tags.get("harness.split"):  # names the generated data's fingerprint
        cells["Split"] = (run.tags["harness.split"], "<split>")
    if reported is not None:
        cells["vs reported"] = (f"{value - reported:+.4f}", "<val gender - reported>")
    return cells


def head_cells(run, header: list, section: str) -> dict:
    """Per-head table cells: accuracy (selected, else best) or balanced accuracy, and the mean."""
    m, heads = run.metrics, header[2:-1]
    if section.startswith("Balanced"):
        values = {h: m.get(f"selected_val_{h}_bacc") for h in heads} | {"mean": m.get("selected_val_mean_bacc")}
    else:
        values = {h: head_value(m, h) for h in heads}
        values["mean"] = sum(values.values()) / len(heads)
    return {h: (f"{v:.4f}", f"<{h}>") for h, v in values.items() if v is not None}


def normalize(text: str, store, expected_runs: dict, stale: set, reported: dict) -> str:
    """The RESULTS file with run-derived numbers replaced by tokens, table padding removed."""
    out, header, section = [], None, ""
    for line in text.splitlines():
        if not line.startswith("|"):
            out.append(line)
            header = None
            section = line[3:] if line.startswith("## ") else section
            continue
        cells = split_row(line)
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("-:"):
            row = dict(zip(header, cells))
            name = row["Iteration"]
            # The trust table's cells are notes or differences of runs on other images: literal.
            if name in expected_runs and not section.startswith("Against the parent"):
                run = store.run(expected_runs[name])
                found = expected_cells(run, reported.get(name)) if "Run" in row else head_cells(run, header, section)
                for column, (shown, token) in found.items():
                    if row.get(column) == shown:
                        row[column] = token
                run_cell = run.run_id + (" stale" if name in stale else "")
                if row.get("Run") == run_cell:
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


def readme_block(readme: Path) -> str:
    return readme.read_text().split(report.RESULTS_START)[1].split(report.RESULTS_END)[0]


@pytest.mark.slow  # the smoke store trains two iterations
def test_table_golden_readme_idempotent_no_tensorflow(smoke_store, tmp_path):
    from harness.track.store import Store

    folder = smoke_store["folder"]
    readme = folder / "README.md"
    readme.write_text(README)
    first = harness_table(folder, "--tracking-uri", smoke_store["uri"], "--plot", "results.png")
    assert first.returncode == 0, first.stderr
    assert "IMPORTED:\n" in first.stdout, "harness table imported TensorFlow, Keras or MLflow"
    results = folder / "experiments" / "RESULTS.md"
    text = results.read_text()

    runs = smoke_store["runs"]
    store = Store(smoke_store["uri"])
    normalized = normalize(text, store, runs, stale={"first"}, reported={"base": 0.6248, "first": 0.5781})
    check_golden("results_smoke.md", normalized)

    # The README block: the notes' columns only, no line over 220 bytes, the rest untouched.
    block = readme_block(readme)
    table = [line for line in block.splitlines() if line.startswith("|")]
    assert split_row(table[0]) == report.Layout("hvc").readme_columns()
    assert max(len(line.encode()) for line in block.splitlines()) <= report.README_WIDTH
    assert len(table) == 2 + 4 and "stale content" not in block
    assert "\n".join(table) in first.stdout
    assert readme.read_text().startswith("# A project\n\nIntro text that must survive.\n\n<!-- results:start -->\n")
    assert readme.read_text().endswith("<!-- results:end -->\n\n## Afterwards\n\nMore text.\n")
    assert "† = trained on hvc synthetic" in block  # the data the rows trained on, where a reader sees it

    png = (folder / "results.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000

    before = (results.read_bytes(), readme.read_bytes())
    second = harness_table(folder, "--tracking-uri", smoke_store["uri"])
    assert second.returncode == 0, second.stderr
    assert (results.read_bytes(), readme.read_bytes()) == before
    assert "RESULTS.md: unchanged" in second.stdout and "results block unchanged" in second.stdout


@pytest.mark.slow
def test_gender_numbers_are_mlflows_and_rows_are_current_stale_not_run(smoke_store):
    from harness.track.fast_store import open_reader
    from harness.track.store import Store

    book = ledger.load(smoke_store["folder"] / "runs.yaml")
    rows = report.collect(book, open_reader(smoke_store["uri"], book.experiment).latest_finished)
    assert [(r.name, r.state) for r in rows] == [
        ("base", "current"), ("first", "stale"), ("second", "not run"), ("third", "not run")]
    tables = report.build(book, rows, {})
    store = Store(smoke_store["uri"])
    for row, cells in zip(rows[:2], tables.main):
        run = store.run(smoke_store["runs"][row.name])
        assert row.run.run_id == run.run_id and row.run.metrics == pytest.approx(run.metrics)
        assert cells["Val gender (epoch)"] == shown_value(run.metrics)
        assert cells["Profile"] == "smoke"
    assert tables.main[1]["Run"] == smoke_store["runs"]["first"] + " stale"
    assert [c["Val gender (epoch)"] for c in tables.main[2:]] == ["not run", "not run"]
    assert [c["Run"] for c in tables.main[2:]] == ["", ""]


def test_runs_yaml_first_lists_the_two_fixes_and_reads_not_run_without_runs():
    book = ledger.load(REPO / "runs.yaml")
    tables = report.build(book, report.collect(book, FakeStore({}).find), {})
    first = next(c for c in tables.main if c["Iteration"] == "first")
    assert first["Changes vs parent"] == "validate_on_train on→off; tower_defect on→off"
    assert first["Reported gender"] == "0.5781"
    fourth = next(c for c in tables.main if c["Iteration"] == "fourth")
    assert fourth["Changes vs parent"] == "epochs 30+20→10+40; lr 1e-1+1e-2→1e-1+1e-4"
    assert {c["Val gender (epoch)"] for c in tables.main} == {"not run"}
    assert [c["Iteration"] for c in tables.main] == book.names
    assert [c["#"] for c in tables.main] == [str(i + 1) for i in range(len(book.names))]
    readme = report.readme_table(tables)
    assert max(len(line.encode()) for line in readme.splitlines()) <= report.README_WIDTH


# --------------------------------------------------------------------------- selection (no MLflow)


def record(run_id, start, sha, profile="full", status="FINISHED", **metrics):
    from harness.core.records import RunRecord

    return RunRecord(run_id=run_id, name=run_id, status=status, start_time=start,
                     tags={"harness.config_sha": sha, "harness.profile": profile}, metrics=metrics)


class FakeStore:
    """`find` over a list of records, as a RunReader's latest_finished answers it."""

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
    main = report.build(v2_book, rows, {}).main
    assert main[0]["Run"] == "b2 stale"
    assert [c["Val gender (epoch)"] for c in main[1:]] == ["not run"] * 3


def test_current_runs_cost_one_lookup_per_iteration(v2_book):
    records = {name: [record(f"{name}-{i}", i, v2_book.resolve(name, "smoke").config_sha(), "smoke")
                      for i in range(40)] for name in v2_book.names}
    fake = FakeStore(records)
    rows = report.collect(v2_book, fake.find)
    assert fake.calls == len(v2_book.names)
    assert [r.run.run_id for r in rows] == [f"{name}-39" for name in v2_book.names]


def test_cells_escape_pipes_and_describe_freeze_rules_and_reported_passes(v2_book):
    rows = report.collect(v2_book, FakeStore({}).find)
    tables = report.build(v2_book, rows, {})
    main = tables.main
    assert main[0]["Remark"] == "Validated on training images | not real validation."
    assert main[3]["Freeze"] == "^conv frozen, .* trains"
    assert main[2]["Reported gender"] == "0.7167 @ 42 (pass 2)"
    assert main[0]["Architecture"] == "custom gap-16 2x8 [1st dead]"
    assert main[2]["Changes vs parent"] == "epochs 10→30+20; lr 2e-3→1e-2+1e-3; p1 monitor val_gender_acc→val_loss"
    assert main[3]["Changes vs parent"] == "freeze none→^conv frozen, .* trains"
    columns = tables.layout.main_columns()
    markdown = report.markdown(columns, main)
    assert "Validated on training images \\| not real validation." in markdown
    widths = {len(split_row(line)) for line in markdown.splitlines()}
    assert widths == {len(columns)}


def test_single_head_ledger_gets_acc_columns():
    book = ledger.load(REPO / "experiments" / "cifar10_resnet20.yaml")
    name = book.names[0]
    run = record("c1", 1, book.resolve(name, "full").config_sha(), best_val_acc=0.8929, best_epoch=41,
                 total_params=274442, trainable_params=273066, mean_epoch_seconds=55.0)
    rows = report.collect(book, FakeStore({name: [run]}).find)
    tables = report.build(book, rows, {})
    assert "Val acc (epoch)" in tables.layout.readme_columns()
    assert tables.layout.head_columns() == ["#", "Iteration", "class"]
    first = tables.main[0]
    assert first["Val acc (epoch)"] == "0.8929 @ 41‡"  # no selected checkpoint: the best epoch, marked
    assert first["vs majority"] == "+0.7929°"  # no majority reference run: CIFAR-10's 0.1
    assert first["Total/trainable"] == "274,442/273,066"
    assert report.compact_params(first["Total/trainable"]) == "274k/273k"
    reported = book.resolve(name).reported[0].val_acc["acc"]
    assert first["vs reported"] == f"{0.8929 - reported:+.4f}"
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
    with pytest.raises(InputError, match="no '<!-- results:start -->'"):
        report.refresh_readme(readme, "x")


def test_table_over_a_missing_store_reads_not_run_and_creates_nothing(tmp_path, v2_book):
    from harness.track.reader import MlflowReader

    uri = f"sqlite:///{tmp_path}/nowhere/mlflow.db"
    rows = report.collect(v2_book, MlflowReader(uri, v2_book.experiment).latest_finished)
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
    from harness.cli.parser import build_parser
    from harness.track.uris import server_command

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
