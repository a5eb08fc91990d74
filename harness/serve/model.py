"""The run's MLflow Model from the serving side: what goes in (one real image, as the input
example) and what comes out (the signature's columns), from the predictor's own format.

harness.track.models holds the MLflow half (log, register, load) and never imports this package.
"""

from __future__ import annotations

from harness.serve.predict import PROB_SUFFIX, example_image, input_frame


def output_types(card) -> dict[str, str]:
    """The signature's outputs: each probability column a double, each label a string."""
    return {column: "double" if column.endswith(PROB_SUFFIX) else "string" for column in card.columns()}


def example_frame(table, rows):
    """One real validation image as the model's input example (a one-row `image` DataFrame)."""
    return input_frame([example_image(table, rows)])
