"""The hvc person-attributes dataset: read and validate `hvc_annotations.csv` and its images.

Everything a training run could trip over later is checked here, before any training, and
reported as one line per bad row naming the CSV line (header = line 1): a researcher should
learn about a truncated JPEG in the first second, not in epoch 37. The checks:
missing CSV, missing column, unknown label value, image path escaping the data folder,
missing image, unreadable or truncated JPEG, no rows left. With `skip_bad_rows` the bad rows
are dropped and listed on the table instead.

JPEG check: the file must start with the start-of-image marker, end with the end-of-image
marker (a truncated file does not), and PIL must decode it; the decode runs at 1/8 scale
(`draft`), which still walks the whole compressed stream but costs ~0.2 ms an image.

CSV reading notes: labels are read as plain strings with pandas' NA parsing off, because the
bag column's class is literally "None" and pandas would otherwise turn it into NaN.
No TensorFlow here.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PureWindowsPath
from typing import Optional, Union

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from harness.core.labels import HVC_CSV_COLUMNS, HVC_CSV_HEADER, HVC_HEADS
from harness.data.table import HvcTable, SkippedRow
from harness.core.errors import InputError

CSV_NAME = "hvc_annotations.csv"
# More bad rows than this are summarised in one extra line instead of listed.
MAX_LINES_SHOWN = 20
# Rows are checked in chunks, so a `limit` stops the image checks early.
_CHUNK = 512

_SOI = b"\xff\xd8"
# A decompression bomb is a small file that declares a huge image; the header says so before
# anything is decoded. hvc crops are 224x224; this is ~6,300 px square.
MAX_IMAGE_PIXELS = 40_000_000
_EOI = b"\xff\xd9"


def load_hvc(folder: Union[str, Path], skip_bad_rows: bool = False, limit: Optional[int] = None) -> HvcTable:
    """Read `folder/hvc_annotations.csv`; raise InputError (one line per bad row) or return the
    usable rows. `limit` keeps the first N valid rows; rows after the N-th are not checked."""
    folder = Path(folder)
    csv_path = folder / CSV_NAME
    raw = _read_csv_bytes(csv_path)
    frame = _parse(csv_path, raw)
    root = os.path.abspath(folder)

    problems = _cheap_problems(frame)
    kept: list[int] = []
    sizes: list[tuple[int, int]] = []
    bad: list[SkippedRow] = []
    lines = frame["csv_line"].to_numpy()
    images = frame["image_path"].to_numpy()
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        for start in range(0, len(frame), _CHUNK):
            rows = range(start, min(start + _CHUNK, len(frame)))
            to_check = [i for i in rows if not problems[i]]
            checked = dict(zip(to_check, pool.map(lambda i: _image_problem(root, images[i]), to_check)))
            for i in rows:
                if i in checked and checked[i][0]:
                    problems[i].append(checked[i][0])
                if problems[i]:
                    bad.append(SkippedRow(int(lines[i]), "; ".join(problems[i])))
                else:
                    kept.append(i)
                    sizes.append(checked[i][1])
                    if limit is not None and len(kept) >= limit:
                        break
            if limit is not None and len(kept) >= limit:
                break

    if bad and not skip_bad_rows:
        shown = [f"{csv_path}:{row.line}: {row.reason}" for row in bad[:MAX_LINES_SHOWN]]
        if len(bad) > MAX_LINES_SHOWN:
            shown.append(f"{csv_path}: {len(bad) - MAX_LINES_SHOWN} more bad rows not shown "
                         f"({len(bad)} in all); --skip-bad-rows drops them")
        raise InputError(shown)
    if not kept:
        what = f"all {len(bad)} rows are bad and were skipped" if bad else "the file has a header but no rows"
        raise InputError([f"{csv_path}: no rows left: {what}"])

    kept_frame = frame.iloc[kept].reset_index(drop=True)
    labels = {
        head: pd.Categorical(kept_frame[HVC_CSV_COLUMNS[head]], categories=classes).codes.astype(np.int64)
        for head, classes in HVC_HEADS.items()
    }
    return HvcTable(
        folder=folder,
        csv_path=csv_path,
        paths=np.array([os.path.join(root, os.path.normpath(p)) for p in kept_frame["image_path"]], dtype=str),
        labels=labels,
        frame=kept_frame,
        sizes=np.array(sizes, dtype=np.int64).reshape(-1, 2),
        fingerprint=_fingerprint(raw, root, frame["image_path"]),
        heads=HVC_HEADS,
        skipped=bad,
    )


def fingerprint(folder: Union[str, Path]) -> str:
    """12 hex digits of sha256 over the CSV bytes and the sorted list of images it names with
    their file sizes: changes when a label, a row or an image file changes."""
    csv_path = Path(folder) / CSV_NAME
    raw = _read_csv_bytes(csv_path)
    return _fingerprint(raw, os.path.abspath(folder), _parse(csv_path, raw)["image_path"])


# --------------------------------------------------------------------------- reading


def _read_csv_bytes(csv_path: Path) -> bytes:
    try:
        return csv_path.read_bytes()
    except FileNotFoundError:
        hint = "" if csv_path.parent.is_dir() else f" (no folder {csv_path.parent})"
        raise InputError([f"{csv_path}: file not found{hint}; the data folder must hold {CSV_NAME} "
                          f"and the images it names"]) from None
    except NotADirectoryError:
        raise InputError([f"{csv_path.parent}: is a file, not a folder; the data folder must hold {CSV_NAME} "
                          f"and the images it names"]) from None
    except OSError as exc:
        raise InputError([f"{csv_path}: cannot read: {exc.strerror}"]) from None


def _parse(csv_path: Path, raw: bytes) -> pd.DataFrame:
    """All cells as stripped strings ('' when missing) plus `csv_line`; blank lines dropped."""
    try:
        frame = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, skip_blank_lines=False,
                            encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise InputError([f"{csv_path}:1: empty file; expected the header {','.join(HVC_CSV_HEADER)}"]) from None
    except pd.errors.ParserError as exc:
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if match:
            expected, line, saw = match.groups()
            raise InputError([f"{csv_path}:{line}: {saw} fields, the header has {expected}"]) from None
        raise InputError([f"{csv_path}: not a readable CSV: {str(exc).strip()}"]) from None
    except UnicodeDecodeError as exc:
        raise InputError([f"{csv_path}: not UTF-8 text (byte {exc.start})"]) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in HVC_CSV_HEADER if c not in frame.columns]
    if missing:
        names = ", ".join(f"'{c}'" for c in missing)
        raise InputError([f"{csv_path}:1: missing column{'s' if len(missing) > 1 else ''} {names}; "
                          f"the header must name {','.join(HVC_CSV_HEADER)}"])
    frame = frame[list(HVC_CSV_HEADER)].fillna("").apply(lambda column: column.astype(str).str.strip())
    # Data row i sits on line i + 2 because blank lines are kept as empty rows until here.
    frame["csv_line"] = np.arange(len(frame)) + 2
    blank = (frame[list(HVC_CSV_HEADER)] == "").all(axis=1)
    return frame[~blank].reset_index(drop=True)


# --------------------------------------------------------------------------- checks


def _cheap_problems(frame: pd.DataFrame) -> list[list[str]]:
    """Per row, the label and path problems (no file access)."""
    problems: list[list[str]] = [[] for _ in range(len(frame))]
    for head, classes in HVC_HEADS.items():
        column = HVC_CSV_COLUMNS[head]
        values = frame[column]
        for i in np.flatnonzero(~values.isin(classes).to_numpy()):
            problems[i].append(f"{column} '{values.iloc[i]}': unknown label; allowed: {', '.join(classes)}")
    first_line: dict[str, int] = {}
    for i, (image_path, line) in enumerate(zip(frame["image_path"], frame["csv_line"])):
        problem = _path_problem(image_path)
        if problem:
            problems[i].append(problem)
            continue
        # The same image twice would count twice, and could sit in both splits.
        key = os.path.normpath(image_path)
        if key in first_line:
            problems[i].append(f"image_path '{image_path}': duplicate of line {first_line[key]}")
        else:
            first_line[key] = int(line)
    return problems


def _path_problem(image_path: str) -> Optional[str]:
    if not image_path:
        return "image_path is empty"
    if os.path.isabs(image_path) or PureWindowsPath(image_path).drive or image_path.startswith("\\"):
        return f"image_path '{image_path}': absolute path; image paths are relative to the CSV's folder"
    normal = os.path.normpath(image_path)
    if normal == ".." or normal.startswith(".." + os.sep) or normal == ".":
        return f"image_path '{image_path}': escapes the data folder"
    return None


def _image_problem(root: str, image_path: str) -> tuple[Optional[str], tuple[int, int]]:
    """(problem or None, (height, width)) for one image named by the CSV."""
    where = f"image_path '{image_path}'"
    real = os.path.realpath(os.path.join(root, image_path))
    if not real.startswith(os.path.realpath(root) + os.sep):
        return f"{where}: a link leading outside the data folder (to {real})", (0, 0)
    try:
        with open(real, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return f"{where}: file not found", (0, 0)
    except IsADirectoryError:
        return f"{where}: is a folder, not an image", (0, 0)
    except OSError as exc:
        return f"{where}: cannot read: {exc.strerror}", (0, 0)
    if not data:
        return f"{where}: empty file", (0, 0)
    if not data.startswith(_SOI):
        return f"{where}: not a JPEG (no start-of-image marker)", (0, 0)
    if not data.rstrip(b"\x00").endswith(_EOI):
        return f"{where}: truncated JPEG (no end-of-image marker)", (0, 0)
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                return f"{where}: declares {width}x{height} px, more than {MAX_IMAGE_PIXELS:,}; refused unread", (0, 0)
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
    except Image.DecompressionBombError as exc:
        return f"{where}: refused unread ({exc})", (0, 0)
    except UnidentifiedImageError:
        return f"{where}: corrupt JPEG (no image format recognised)", (0, 0)
    except (OSError, SyntaxError, ValueError) as exc:
        return f"{where}: corrupt JPEG ({exc})", (0, 0)
    return None, (height, width)


# --------------------------------------------------------------------------- fingerprint


def _fingerprint(raw_csv: bytes, root: str, image_paths) -> str:
    digest = hashlib.sha256(raw_csv)
    for image_path in sorted(set(image_paths)):
        size = -1
        if not _path_problem(image_path):
            try:
                size = os.stat(os.path.join(root, image_path)).st_size
            except OSError:
                pass
        digest.update(f"\n{image_path}\t{size}".encode())
    return digest.hexdigest()[:12]
