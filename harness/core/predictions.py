"""The per-example predictions artifact: what a run's selected checkpoint predicted for every
validation image, so that two runs can be compared image by image (harness.report.stats).

One JSON table per run, `predictions/val.json`, in the layout `mlflow.log_table` writes and
`mlflow.load_table` reads ({"columns": [...], "data": [[...], ...]}; pandas'
`read_json(orient="split")` reads it too). Columns, one row per validation image in the order the
run scored them:

    row                  the image's row in the dataset table (the CSV's kept rows, or the array index)
    image                its `image_path` as the CSV wrote it (hvc), else the row index as text
    {head}_true          the true class name
    {head}_pred          the predicted class name (argmax of the head's softmax)
    {head}_prob          the softmax probability of the predicted class

Class names rather than indices, so the file reads on its own in the MLflow UI's artifact view.
Written by harness.run.launch (iterations, sweep trials, variants) and harness.run.reference
(references), read by harness.track's readers without MLflow where the artifacts are a local folder.
Pure Python: numpy arrays are accepted (their items are converted), none is created.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

ARTIFACT = "predictions/val.json"
ROW, IMAGE = "row", "image"
TRUE, PRED, PROB = "true", "pred", "prob"


def column(head: str, part: str) -> str:
    return f"{head}_{part}"


def build(rows: Sequence, images: Sequence, heads: dict, labels: dict, predicted: dict,
          probability: Optional[dict] = None) -> dict:
    """The artifact's JSON: `heads` head -> class names; `labels`, `predicted` head -> class index
    per example; `probability` head -> the predicted class's probability per example (None for
    a predictor without one, e.g. the majority reference: written as null)."""
    names = list(heads)
    columns = [ROW, IMAGE] + [column(h, part) for h in names for part in (TRUE, PRED, PROB)]
    data = []
    for i, (row, image) in enumerate(zip(rows, images)):
        line = [int(row), str(image)]
        for head in names:
            classes = heads[head]
            prob = None if probability is None else round(float(probability[head][i]), 6)
            line += [classes[int(labels[head][i])], classes[int(predicted[head][i])], prob]
        data.append(line)
    return {"columns": columns, "data": data}


def image_names(table, rows) -> list[str]:
    """How each row's image is named in the artifact: the CSV's image_path, else the row index."""
    frame = getattr(table, "frame", None)
    if frame is not None and "image_path" in frame:
        values = frame["image_path"].to_numpy()
        return [str(values[int(r)]) for r in rows]
    return [str(int(r)) for r in rows]


@dataclass(frozen=True)
class Predictions:
    """A run's predictions read back: rows and images in scoring order; per head the true and
    predicted class names and the predicted class's probability (None where not logged)."""

    rows: tuple
    images: tuple
    true: dict  # head -> tuple of class names
    pred: dict
    prob: dict

    @property
    def heads(self) -> list[str]:
        return list(self.true)

    def same_images(self, other: "Predictions") -> bool:
        """Whether both runs scored the same images in the same order (the paired statistics need it)."""
        return self.rows == other.rows and self.images == other.images


def parse(document: dict) -> Predictions:
    """The artifact's JSON back as Predictions; ValueError when it is not one."""
    columns = list(document["columns"])
    index = {name: i for i, name in enumerate(columns)}
    if ROW not in index or IMAGE not in index:
        raise ValueError(f"not a predictions table: columns {columns[:4]}...")
    data = document["data"]
    heads = [c[: -len(TRUE) - 1] for c in columns if c.endswith("_" + TRUE)]

    def values(name: str) -> tuple:
        at = index[name]
        return tuple(line[at] for line in data)

    return Predictions(rows=values(ROW), images=values(IMAGE),
                       true={h: values(column(h, TRUE)) for h in heads},
                       pred={h: values(column(h, PRED)) for h in heads},
                       prob={h: values(column(h, PROB)) for h in heads})


def loads(text: str) -> Optional[Predictions]:
    """The artifact's text as Predictions; None when it is not one (a damaged or foreign file
    reads as a run without predictions: the table and compare show nothing for it, never fail)."""
    import json

    try:
        return parse(json.loads(text))
    except (ValueError, KeyError, TypeError, IndexError):
        return None
