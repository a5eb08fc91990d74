"""Bad input, table-driven: every rejected case exits 2 with exactly one located line (file:line,
CSV line, argument or variable name), writes nothing to MLflow and leaves nothing in the work
folder; every accepted case loads and decodes. `harness.cli.main` runs in this process: bad input
is refused before TensorFlow is imported, so these cases cost milliseconds, not a process each.

Decisions on the data cases that could go either way (also in FAULTS.md):
- grayscale and CMYK JPEGs are accepted: the pipeline decodes every JPEG to 3 RGB channels.
- a PNG file named .jpg is rejected ("not a JPEG"): the CSV promises JPEGs, and a file that is
  not what its name says is more often a mistake than a choice.
"""

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.cli import main

pytestmark = pytest.mark.faults

LEDGER = """\
experiment: faults
defaults:
  seed: 3
  data: {name: hvc, image_size: 32, val_fraction: 0.25, cache: memory}
  backbone: {name: custom, freeze: none}
  head: {neck: gap, neck_units: 16, tower_units: [8], tower_dropouts: [0.0]}
  optimizer: {name: adam, lr: 0.003}
  batch_size: {train: 4, eval: 4}
profiles:
  cpu: {set: {}, max_epochs_per_pass: 1}
  smoke: {set: {}, max_epochs_per_pass: 1}
iterations:
  one:
    passes: [{epochs: 1}]
"""
CSV = "hvc_annotations.csv"


@pytest.fixture(scope="module")
def good_data(tmp_path_factory):
    from harness.data.synth import generate

    folder = tmp_path_factory.mktemp("good")
    generate(folder, 8, seed=5)
    return folder


class Case:
    """A folder of its own holding a good ledger and a copy of good data, and the argv of
    `harness run` over them; a case changes what it needs."""

    def __init__(self, root: Path, good_data: Path):
        self.root = root
        self.ledger = root / "ledger.yaml"
        self.ledger.write_text(LEDGER)
        self.data = root / "data"
        shutil.copytree(good_data, self.data)
        self.store = root / "store"
        self.work = root / "work"
        self.env: dict = {}
        self.args = ["run", "one", "--ledger", str(self.ledger), "--profile", "smoke", "--data", str(self.data),
                     "--tracking-uri", f"sqlite:///{self.store}/mlflow.db", "--work-dir", str(self.work)]

    @property
    def csv(self) -> Path:
        return self.data / CSV

    def csv_lines(self) -> list[str]:
        return self.csv.read_text().splitlines()

    def write_csv(self, lines: list[str]) -> None:
        self.csv.write_text("\n".join(lines) + "\n")

    def set_arg(self, flag: str, value: str) -> None:
        self.args[self.args.index(flag) + 1] = value

    def image(self, n: int = 1) -> Path:
        return self.data / "resized" / f"{n}.jpg"


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small valid JPEG whose frame header is rewritten to declare width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 60)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


# ---------------------------------------------------------------- rejected: the table
# (id, what is tried, what the one line must contain)

def ledger_syntax(c): c.ledger.write_text("experiment: faults\niterations: [one\n")
def ledger_tabs(c): c.ledger.write_text("experiment: faults\niterations:\n\tone: {passes: [{epochs: 1}]}\n")
def ledger_empty(c): c.ledger.write_text("")
def ledger_10mb(c): c.ledger.write_text(LEDGER + ("# padding " + "x" * 90 + "\n") * 100_000)
def ledger_alias_bomb(c):
    """Nine levels of nine aliases: 9**9 (387 million) strings once expanded, from 10 lines."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    c.ledger.write_text(LEDGER + "bomb:\n" + "".join(f"  {line}\n" for line in lines))
def ledger_python_object(c):
    c.ledger.write_text(LEDGER + f"  evil: !!python/object/apply:os.system ['touch {c.root}/pwned']\n")
def ledger_not_utf8(c): c.ledger.write_bytes(LEDGER.replace("faults", "caf\xe9").encode("latin-1"))
def ledger_wrong_case_top(c): c.ledger.write_text(LEDGER.replace("iterations:", "Iterations:"))
def ledger_wrong_case_field(c): c.ledger.write_text(LEDGER.replace("passes:", "Passes:"))
def ledger_deep(c): c.ledger.write_text(LEDGER + "  deep: " + "[" * 1000 + "]" * 1000 + "\n")
def ledger_duplicate_key(c): c.ledger.write_text(LEDGER + "  one:\n    passes: [{epochs: 2}]\n")
def ledger_missing(c): c.ledger.unlink()
def ledger_folder(c): c.ledger.unlink(); c.ledger.mkdir()
def ledger_negative_epochs(c): c.ledger.write_text(LEDGER.replace("{epochs: 1}]", "{epochs: -3}]"))
def ledger_absurd_lr(c): c.ledger.write_text(LEDGER.replace("lr: 0.003", "lr: 1.0e+300"))
def ledger_absurd_image_size(c): c.ledger.write_text(LEDGER.replace("image_size: 32", "image_size: 1000000"))
def ledger_absurd_epochs(c): c.ledger.write_text(LEDGER.replace("{epochs: 1}]", "{epochs: 1000000000}]"))


def csv_empty(c): c.csv.write_bytes(b"")
def csv_header_only(c): c.write_csv(c.csv_lines()[:1])
def csv_duplicate_path(c):
    lines = c.csv_lines()
    c.write_csv(lines + [lines[1]])
def csv_not_utf8(c): c.csv.write_bytes(c.csv.read_bytes().replace(b"images/synth/1.jpg", b"images/synth/caf\xe9.jpg"))
def csv_missing_column(c): c.write_csv([line.rsplit(",", 1)[0] for line in c.csv_lines()])
def csv_unknown_label(c): c.csv.write_text(c.csv.read_text().replace(",male,", ",mail,", 1))
def csv_absolute_path(c): c.csv.write_text(c.csv.read_text().replace(",resized/1.jpg", ",/etc/passwd"))
def csv_dotdot_path(c): c.csv.write_text(c.csv.read_text().replace(",resized/1.jpg", ",../../etc/passwd"))
def csv_short_row(c): c.write_csv(c.csv_lines() + ["only,three,fields"])
def image_bomb(c): c.image(1).write_bytes(jpeg_declaring(50_000, 50_000))
def image_symlink_out(c):
    outside = c.root / "outside.jpg"
    shutil.copy(c.image(1), outside)
    c.image(1).unlink()
    c.image(1).symlink_to(outside)
def image_png_named_jpg(c): Image.new("RGB", (224, 224)).save(c.image(1), format="PNG")
def image_truncated(c): c.image(1).write_bytes(c.image(1).read_bytes()[:400])
def image_missing(c): c.image(1).unlink()
def data_is_file(c): c.set_arg("--data", str(c.csv))
def data_missing(c): c.set_arg("--data", str(c.root / "nowhere"))


def unknown_profile(c): c.set_arg("--profile", "smok")
def negative_limit(c): c.args += ["--limit", "-5"]
def not_a_number_limit(c): c.args += ["--limit", "1e99x"]
def unknown_iteration(c): c.args[1] = "onee"
def file_tracking_uri(c): c.set_arg("--tracking-uri", f"file://{c.store}")
def plain_path_tracking_env(c):
    i = c.args.index("--tracking-uri")
    del c.args[i:i + 2]
    c.env["MLFLOW_TRACKING_URI"] = str(c.store)
def unreachable_http(c): c.set_arg("--tracking-uri", "http://127.0.0.1:9")
def work_dir_is_file(c):
    c.work.write_text("not a folder")
    c.set_arg("--work-dir", str(c.work / "inside"))
def work_dir_read_only(c):
    if os.geteuid() == 0:  # root ignores permission bits: a pseudo file system refuses it
        c.set_arg("--work-dir", "/sys/harness-work")
    else:
        (c.root / "ro").mkdir(mode=0o555)
        c.set_arg("--work-dir", str(c.root / "ro" / "work"))
def port_out_of_range(c): c.args[:] = ["ui", "--port", "70000", "--tracking-uri", f"sqlite:///{c.store}/mlflow.db"]
def synth_negative_n(c): c.args[:] = ["data", "synth", "--out", str(c.root / "synth"), "--n", "-1"]


REJECTED = [
    ("ledger-yaml-syntax", ledger_syntax, "YAML syntax error", "ledger.yaml:"),
    ("ledger-tab-indentation", ledger_tabs, "YAML syntax error", "ledger.yaml:3"),
    ("ledger-empty", ledger_empty, "a ledger is a mapping", "ledger.yaml:1"),
    ("ledger-10MB", ledger_10mb, "a ledger is at most", "ledger.yaml"),
    ("ledger-billion-laughs", ledger_alias_bomb, "alias", "ledger.yaml:"),
    ("ledger-python-object-tag", ledger_python_object, "plain YAML values only", "ledger.yaml:"),
    ("ledger-not-utf8", ledger_not_utf8, "not UTF-8", "ledger.yaml:1"),
    ("ledger-wrong-case-top-key", ledger_wrong_case_top, "Iterations", "ledger.yaml:"),
    ("ledger-wrong-case-field", ledger_wrong_case_field, "Passes", "ledger.yaml:"),
    ("ledger-1000-deep", ledger_deep, "nested", "ledger.yaml:"),
    ("ledger-duplicate-key", ledger_duplicate_key, "duplicate key", "ledger.yaml:"),
    ("ledger-missing", ledger_missing, "not found", "ledger.yaml"),
    ("ledger-is-a-folder", ledger_folder, "folder", "ledger.yaml"),
    ("ledger-negative-epochs", ledger_negative_epochs, "epochs", "ledger.yaml:"),
    ("ledger-absurd-lr", ledger_absurd_lr, "less than or equal to 10", "ledger.yaml:"),
    ("ledger-absurd-image-size", ledger_absurd_image_size, "less than or equal to 4096", "ledger.yaml:"),
    ("ledger-absurd-epochs", ledger_absurd_epochs, "less than or equal to 100000", "ledger.yaml:"),
    ("csv-0-bytes", csv_empty, "empty file", f"{CSV}:1"),
    ("csv-header-only", csv_header_only, "no rows", CSV),
    ("csv-duplicate-image-path", csv_duplicate_path, "duplicate of line 2", f"{CSV}:10"),
    ("csv-not-utf8", csv_not_utf8, "not UTF-8", CSV),
    ("csv-missing-column", csv_missing_column, "missing column", f"{CSV}:1"),
    ("csv-unknown-label", csv_unknown_label, "mail", f"{CSV}:"),
    ("csv-absolute-image-path", csv_absolute_path, "absolute path", f"{CSV}:"),
    ("csv-dotdot-image-path", csv_dotdot_path, "escapes the data folder", f"{CSV}:"),
    ("csv-short-row", csv_short_row, "fields", f"{CSV}:10"),
    ("image-decompression-bomb", image_bomb, "refused unread", f"{CSV}:"),
    ("image-symlink-out-of-folder", image_symlink_out, "outside the data folder", f"{CSV}:"),
    ("image-png-named-jpg", image_png_named_jpg, "not a JPEG", f"{CSV}:"),
    ("image-truncated", image_truncated, "truncated JPEG", f"{CSV}:"),
    ("image-missing", image_missing, "file not found", f"{CSV}:"),
    ("data-is-a-file", data_is_file, "is a file, not a folder", CSV),
    ("data-missing", data_missing, "file not found", "nowhere"),
    ("arg-unknown-profile", unknown_profile, "no profile named 'smok'", "ledger.yaml"),
    ("arg-negative-limit", negative_limit, "positive", "--limit"),
    ("arg-limit-not-a-number", not_a_number_limit, "invalid int value", "--limit"),
    ("arg-unknown-iteration", unknown_iteration, "onee", "ledger.yaml"),
    ("arg-file-tracking-uri", file_tracking_uri, "file store", "--tracking-uri file://"),
    ("env-plain-path-tracking-uri", plain_path_tracking_env, "file store", "MLFLOW_TRACKING_URI"),
    ("arg-unreachable-http-tracking-uri", unreachable_http, "is unreachable", "http://127.0.0.1:9"),
    ("arg-work-dir-is-a-file", work_dir_is_file, "is a file, not a folder", "--work-dir"),
    ("arg-work-dir-read-only", work_dir_read_only, "not writable", "--work-dir"),
    ("arg-port-out-of-range", port_out_of_range, "not a TCP port", "--port 70000"),
    ("arg-synth-negative-n", synth_negative_n, "positive number of images", "--n"),
]


@pytest.mark.parametrize("name, change, what, where", REJECTED, ids=[r[0] for r in REJECTED])
def test_rejected(name, change, what, where, good_data, tmp_path, monkeypatch, capsys, record_property):
    record_property("expectation", f"exit 2, one line at {where!r} saying {what!r}; no MLflow write, work folder empty")
    case = Case(tmp_path, good_data)
    change(case)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    started = time.perf_counter()
    try:
        code = main(case.args)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    seconds = time.perf_counter() - started
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    lines = [line for line in err if not line.startswith(("usage:", " "))]  # argparse's usage block
    assert code == 2, err
    assert len(lines) == 1, err
    assert what in lines[0] and where in lines[0], lines[0]
    assert not case.store.exists(), "MLflow store written"
    assert not case.work.is_dir() or not any(case.work.iterdir()), "work folder written"
    assert not (tmp_path / "pwned").exists()
    record_property("result_detail", f"{lines[0][:160]} ({seconds:.2f} s)")


# ---------------------------------------------------------------- accepted

def csv_bom(c): c.csv.write_bytes(b"\xef\xbb\xbf" + c.csv.read_bytes())
def csv_crlf(c): c.csv.write_bytes(c.csv.read_bytes().replace(b"\n", b"\r\n"))
def csv_quoted_commas(c):
    lines = c.csv_lines()
    c.write_csv([lines[0]] + ['"images/synth/a, b ""quoted"".jpg"' + line[line.index(","):] for line in lines[1:]])
def image_grayscale(c): Image.open(c.image(1)).convert("L").save(c.image(1), format="JPEG")
def image_cmyk(c): Image.open(c.image(1)).convert("CMYK").save(c.image(1), format="JPEG")


ACCEPTED = [
    ("csv-utf8-bom", csv_bom),
    ("csv-crlf-line-endings", csv_crlf),
    ("csv-quoted-fields-with-commas", csv_quoted_commas),
    ("image-grayscale-jpeg", image_grayscale),
    ("image-cmyk-jpeg", image_cmyk),
]


@pytest.mark.parametrize("name, change", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted(name, change, good_data, tmp_path, record_property):
    """Loaded with every row, and every image decodes to an RGB array of the model's size."""
    record_property("expectation", "accepted: every row loads and decodes to (32, 32, 3) RGB")
    from harness import ledger
    from harness.data.hvc import load_hvc
    from harness.data.pipeline import eval_dataset

    case = Case(tmp_path, good_data)
    change(case)
    table = load_hvc(case.data)
    assert len(table) == 8
    iteration = ledger.load(case.ledger).resolve("one", "smoke")
    images = np.concatenate([x.numpy() for x, _ in eval_dataset(table, np.arange(8), iteration)])
    assert images.shape == (8, 32, 32, 3) and np.isfinite(images).all() and images.max() > 0
    if name == "image-grayscale-jpeg":  # the grey image became three equal channels
        assert np.allclose(images[0, ..., 0], images[0, ..., 1], atol=1 / 255)
