"""Predictions from a trained checkpoint: what the MLflow Model runs, and `harness predict`.

No MLflow here. harness.track wraps a `Predictor` in a thin `mlflow.pyfunc.PythonModel`, so
the model an MLflow user loads (pyfunc, `mlflow models serve`) and `harness predict` run the same
code. Why the harness's own wrapper: MLflow's Keras flavor turns a multi-output model's list of
outputs into one array and fails, and there the preprocessing would be the caller's problem.

The model's input (its signature): a DataFrame with one column `image`, each cell the bytes of
one encoded image file (JPEG, PNG, BMP, GIF, WebP, ...). In-process callers pass `bytes`; over
REST the cell is the file's base64 text, which MLflow decodes because the column is `binary`:

    curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
      -d "{\\"dataframe_split\\": {\\"columns\\": [\\"image\\"], \\"data\\": [[\\"$(base64 -w0 person.jpg)\\"]]}}"

Each image is preprocessed as training fed it (harness.data.pipeline: JPEGs through the same
decode and resize, scaled to [0, 1], the run's image size); the model's own first layer then
applies the ledger's pixel encoding with the training run's mean (harness.data.pixels), so
nothing is computed from the images given here. The output: one row per image, for
every head (in the label catalog's order) two columns: `{head}` the predicted class name and
`{head}_prob` its probability. hvc: gender, gender_prob, image_quality, ..., emotion_prob.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
import pandas as pd

INPUT_COLUMN = "image"
PROB_SUFFIX = "_prob"
CARD_FILE = "card.json"
# Files a folder argument contributes; a file named explicitly is always tried.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
JPEG_MAGIC = b"\xff\xd8"


class BadImage(ValueError):
    """An input that cannot be predicted on: `where` (a path or a row) and the reason."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where, self.reason = where, reason


@dataclass(frozen=True)
class ModelCard:
    """What a logged model needs besides its weights, saved beside the .keras file: the heads
    and their class names (output order), the image size it was trained at, and where it came
    from (iteration, run, profile, data fingerprint, the selected epoch)."""

    dataset: str
    heads: dict
    image_size: int
    iteration: str
    run_id: str = ""
    profile: str = ""
    data: str = ""
    selected_epoch: Optional[int] = None
    batch_size: int = 32
    extra: dict = field(default_factory=dict)

    @classmethod
    def of(cls, iteration, run_id: str, profile: str, data: str, selected_epoch: Optional[int]) -> "ModelCard":
        from harness.core.labels import heads_for

        heads = {head: list(classes) for head, classes in heads_for(iteration.data.name).items()}
        return cls(dataset=iteration.data.name, heads=heads, image_size=int(iteration.data.image_size),
                   iteration=iteration.name, run_id=run_id, profile=profile, data=data,
                   selected_epoch=selected_epoch, batch_size=int(iteration.batch_size.eval))

    def columns(self) -> list[str]:
        """The output columns, in order: per head its label, then its probability."""
        return [name for head in self.heads for name in (head, head + PROB_SUFFIX)]

    def save(self, path: Union[str, Path]) -> Path:
        Path(path).write_text(json.dumps(asdict(self), indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "ModelCard":
        return cls(**json.loads(Path(path).read_text()))


def image_problem(contents: bytes) -> Optional[str]:
    """Why these bytes are no usable image (None when they are): empty, not an image, truncated
    or otherwise unreadable. PIL decodes the whole image, so a truncated file is caught here."""
    from PIL import Image, UnidentifiedImageError

    if not contents:
        return "empty file"
    try:
        with Image.open(io.BytesIO(contents)) as image:
            image.load()
    except UnidentifiedImageError:
        return "not an image (no known image format)"
    except OSError as exc:
        text = str(exc)
        return f"truncated image ({text})" if "truncated" in text.lower() else f"unreadable image ({text})"
    except (SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"unreadable image ({exc})"
    return None


def model_input(contents: bytes, size: int) -> np.ndarray:
    """Encoded image bytes -> (S, S, 3) float32 in [0, 1] as training preprocessed it: JPEGs
    through the pipeline's own decode, other formats decoded to RGB by PIL and then resized the
    same way. Raises ValueError with the reason for a bad image."""
    from harness.data.pipeline import jpeg_for_model, pixels_for_model

    problem = image_problem(contents)
    if problem:
        raise ValueError(problem)
    if contents[:2] == JPEG_MAGIC:
        try:
            return jpeg_for_model(contents, size)
        except Exception:  # a JPEG PIL reads but libjpeg refuses (CMYK, say): decode it with PIL
            pass
    from PIL import Image

    with Image.open(io.BytesIO(contents)) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return pixels_for_model(pixels, size)


class Predictor:
    """A loaded checkpoint and its card: encoded images in, one row per image out."""

    def __init__(self, model, card: ModelCard):
        self.model, self.card = model, card

    @classmethod
    def load(cls, keras_file: Union[str, Path], card_file: Union[str, Path]) -> "Predictor":
        """The .keras file loaded with safe_mode=True (no arbitrary code from the file runs) and
        without its optimizer; the harness's custom layers are registered by importing it."""
        import keras

        import harness.models.backbones  # noqa: F401  (registers the custom layers)

        model = keras.models.load_model(keras_file, compile=False, safe_mode=True)
        return cls(model, ModelCard.load(card_file))

    def predict_images(self, images: list[bytes], names: Optional[list[str]] = None) -> pd.DataFrame:
        """One row per image (the card's columns). A bad image raises BadImage naming it
        (by `names`, else its row number) and why."""
        if not images:
            return pd.DataFrame({column: [] for column in self.card.columns()})
        arrays = []
        for index, contents in enumerate(images):
            try:
                arrays.append(model_input(contents, self.card.image_size))
            except ValueError as exc:
                raise BadImage(names[index] if names else f"row {index}", str(exc)) from None
        return self.predict_arrays(np.stack(arrays))

    def predict_arrays(self, batch: np.ndarray) -> pd.DataFrame:
        """Preprocessed images (N, S, S, 3) in [0, 1] -> one row per image."""
        outputs = []
        step = max(1, self.card.batch_size)
        for start in range(0, len(batch), step):
            predicted = self.model.predict_on_batch(batch[start:start + step])
            if not isinstance(predicted, (dict, list, tuple)):  # a single-head model (CIFAR-10): one array
                predicted = [predicted]
            outputs.append(predicted if isinstance(predicted, dict) else dict(zip(self.model.output_names, predicted)))
        frame = {}
        for head, classes in self.card.heads.items():
            probs = np.concatenate([np.asarray(out[f"{head}_output"]) for out in outputs])
            best = probs.argmax(axis=1)
            frame[head] = np.asarray(classes, dtype=object)[best]
            frame[head + PROB_SUFFIX] = probs[np.arange(len(best)), best].astype(np.float64)
        return pd.DataFrame(frame, columns=self.card.columns())

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The pyfunc entry point: a DataFrame with an `image` column of bytes (or base64 text)."""
        if INPUT_COLUMN not in frame.columns:
            raise BadImage("input", f"needs a column '{INPUT_COLUMN}' holding encoded image bytes "
                                    f"(got columns {list(frame.columns)})")
        return self.predict_images([_as_bytes(value) for value in frame[INPUT_COLUMN]])


def _as_bytes(value) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        import base64
        import binascii

        try:
            return base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError):
            return b""
    return b""


def input_frame(images: Iterable[bytes]) -> pd.DataFrame:
    """The model's input for these encoded images (what an input example holds)."""
    return pd.DataFrame({INPUT_COLUMN: list(images)})


def example_image(table, rows) -> bytes:
    """One real image of the run's data, encoded, for the logged model's input example: the
    first validation row's file (hvc), or its pixels as PNG (in-memory data such as CIFAR-10)."""
    row = int(np.asarray(rows)[0])
    paths = getattr(table, "paths", None)
    if paths is not None:
        return Path(str(paths[row])).read_bytes()
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(table.images[row], dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class Inputs:
    """The image files a command line names, and the ones it named that cannot be read."""

    files: list[Path]
    missing: list[BadImage]


def collect(arguments: Iterable[str]) -> Inputs:
    """Files as given, folders expanded to the image files under them (sorted, hidden ones
    skipped). A path that does not exist is reported, not raised: the others still run."""
    files, missing = [], []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file():
            files.append(path)
        else:
            missing.append(BadImage(str(path), "no such file or folder"))
    return Inputs(files, missing)


def predict_files(predictor: Predictor, files: list[Path], chunk: int = 256) -> tuple[pd.DataFrame, list[BadImage]]:
    """(a row per good file with a `path` column first, the bad files with their reasons): one
    bad file never stops the others. Images are decoded and predicted `chunk` at a time, so a
    large folder never sits in memory whole."""
    frames, names, bad, arrays = [], [], [], []

    def flush():
        if arrays:
            frames.append(predictor.predict_arrays(np.stack(arrays)))
            arrays.clear()

    for path in files:
        try:
            arrays.append(model_input(path.read_bytes(), predictor.card.image_size))
            names.append(str(path))
        except OSError as exc:
            bad.append(BadImage(str(path), f"unreadable ({exc.strerror or exc})"))
        except ValueError as exc:
            bad.append(BadImage(str(path), str(exc)))
        if len(arrays) >= chunk:
            flush()
    flush()
    empty = pd.DataFrame({column: [] for column in predictor.card.columns()})
    frame = pd.concat(frames, ignore_index=True) if frames else empty
    frame.insert(0, "path", names)
    return frame, bad


def describe_row(row: pd.Series, heads: Iterable[str]) -> str:
    """One image's prediction on one line: `gender male 0.93 | age 25-35 0.61 | ...`."""
    return " | ".join(f"{head} {row[head]} {row[head + PROB_SUFFIX]:.2f}" for head in heads)


def as_json(frame: pd.DataFrame, heads: Iterable[str]) -> list[dict]:
    """[{path, heads: {head: {label, prob}}}] for `--json`."""
    heads = list(heads)
    return [{"path": row["path"],
             "heads": {head: {"label": row[head], "prob": round(float(row[head + PROB_SUFFIX]), 6)} for head in heads}}
            for _, row in frame.iterrows()]
