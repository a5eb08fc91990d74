"""Kept for the MLflow Models logged before the track/ package existed: their code file runs
`from harness.tracking import HarnessModel` and `HarnessModel()`. New models name
harness.track.models directly. Nothing in the harness imports this module."""

from harness.serve.predict import Predictor
from harness.track.models import HarnessModel as _HarnessModel


class HarnessModel(_HarnessModel):
    """The pyfunc model of an older run: the same adapter over harness.serve.predict.Predictor."""

    def __init__(self):
        super().__init__(Predictor.load)
