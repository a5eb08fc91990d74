"""The MLflow Model of a run and the model registry: log, register, list versions, load.

The pyfunc face only: what the model runs (the predictor: preprocessing, heads, output columns) is
harness.serve.predict, which this module never imports. The model's code file names both.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.model import PythonModel
from mlflow.tracking import MlflowClient


from harness.core.errors import InputError
from harness.core.records import (TAG_DATA,
                                  TAG_DATA_DIR, TAG_ITERATION, TAG_PROFILE,
                                  TAG_SYNTHETIC, ModelVersionRecord, RunRecord)
from harness.core.settings import TRACKING_URI_ENV

if TYPE_CHECKING:  # an annotation only: the store imports this module
    from harness.track.store import Store


# --------------------------------------------------------------------------- the model as an MLflow Model

MODEL_NAME = "model"  # the logged model's name in its run
KERAS_ARTIFACT = "model.keras"
CARD_ARTIFACT = "card.json"
# Models from code (MLflow's way that pickles nothing): loading the model runs this file, which
# hands MLflow a HarnessModel; the harness package travels with the model as code_paths.
MODEL_CODE_FILE = "harness_model.py"
# The file names the predictor (harness.serve.predict) as text: this module never imports it.
MODEL_CODE = ('"""The ledger harness\'s pyfunc model: MLflow runs this file to obtain it."""\n'
              "import mlflow\n\nfrom harness.serve.predict import Predictor\nfrom harness.track.models import HarnessModel\n\n"
              "mlflow.models.set_model(HarnessModel(Predictor.load))\n")


class HarnessModel(PythonModel):
    """The pyfunc face of a predictor (harness.serve.predict.Predictor): `load(keras_file, card_file)`
    builds it from the model's two artifacts (the .keras file, loaded with safe_mode=True, and its
    card); `predict` takes a DataFrame with an `image` column of encoded image bytes and returns
    one row per image with every head's label and probability (columns documented in
    harness/serve/predict.py). A thin adapter: the logic lives where MLflow is not imported."""

    def __init__(self, load: Callable):
        self.load = load

    def load_context(self, context):
        self.predictor = self.load(context.artifacts[KERAS_ARTIFACT], context.artifacts[CARD_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.predictor.predict_frame(model_input)


def log_model(client: MlflowClient, experiment_id: str, run_id: str, iteration: str, checkpoint: Path, card,
              example: pd.DataFrame, outputs: dict[str, str], step: int = 0) -> str:
    """A checkpoint as an MLflow Model `model` of a run: the .keras file and the card
    (harness.serve.predict.ModelCard) as artifacts, loaded by HarnessModel; a signature (the
    example's one binary column in; `outputs`, column -> MLflow type, out), one real image as
    input example (MLflow checks at logging that it predicts), explicit pip requirements
    (inferring them loads the model in a subprocess: the slow part of mlflow.keras.log_model).
    `step` links that epoch's metrics to the model page. Returns the models:/ URI."""
    import tempfile

    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        card_file = card.save(Path(tmp) / CARD_ARTIFACT)
        code_file = Path(tmp) / MODEL_CODE_FILE
        code_file.write_text(MODEL_CODE)
        with _tracking_uri(client.tracking_uri, experiment_id):
            info = Model.log(
                artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run_id, step=step,
                python_model=str(code_file), artifacts={KERAS_ARTIFACT: str(checkpoint), CARD_ARTIFACT: str(card_file)},
                code_paths=[str(Path(__file__).resolve().parents[1])], signature=_signature(example, outputs),
                input_example=example, pip_requirements=_pip_requirements(),
                tags={TAG_ITERATION: iteration},
            )
    return info.model_uri


def _signature(example: pd.DataFrame, outputs: dict[str, str]):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = [ColSpec("binary", column) for column in example.columns]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec(kind, name) for name, kind in outputs.items()]))


def _pip_requirements() -> list[str]:
    """What the model needs to load, pinned to what trained it (the harness code itself travels
    with the model as code_paths)."""
    from importlib import metadata

    def installed(*names):
        for name in names:
            try:
                return f"{name}=={metadata.version(name)}"
            except metadata.PackageNotFoundError:
                continue
        return None

    wanted = [("mlflow",), ("keras",), ("tensorflow", "tensorflow-cpu"), ("numpy",), ("pandas",), ("pillow",),
              ("pydantic",), ("pyyaml",)]
    return [pin for names in wanted if (pin := installed(*names))]


@contextmanager
def _tracking_uri(uri: str, experiment_id: Optional[str] = None):
    """MLflow's global tracking URI (and, given, its active experiment) set for the calls that
    only read those (model logging, registering, loading models:/ URIs), then put back. Without
    the experiment a logged model would land in experiment 0, under ./mlruns of the current
    folder. MLflow writes $MLFLOW_TRACKING_URI when the global changes: restored too."""
    saved = {name: os.environ.get(name) for name in (TRACKING_URI_ENV, "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
    if experiment_id is not None:
        os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
        os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[TRACKING_URI_ENV])
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _registry(store: "Store") -> MlflowClient:
    """A client whose model registry is this store (SQLite or server alike)."""
    return MlflowClient(tracking_uri=store.uri, registry_uri=store.uri)


def model_uri(store: "Store", run_id: str) -> Optional[str]:
    """The models:/ URI of the MLflow Model a run logged (the newest), or None."""
    outputs = store._client.get_run(run_id).outputs
    models = list(outputs.model_outputs) if outputs is not None else []
    return f"models:/{models[-1].model_id}" if models else None


def register(store: "Store", name: str, run: RunRecord, alias: Optional[str] = None) -> ModelVersionRecord:
    """A new version of registered model `name` (created on first use) from the run's logged
    model, tagged with the run's iteration, data and profile; `alias` (champion, say) moved to it."""
    if alias is not None and alias_problem(alias):
        raise InputError(f"--alias {alias}: {alias_problem(alias)}")
    uri = model_uri(store, run.run_id)
    if uri is None:
        raise InputError(f"{run.iteration}: run {run.run_id} logged no MLflow Model (it finished before models were "
                         f"logged); train it again with --fresh")
    tags = {key: run.tags[key] for key in (TAG_ITERATION, TAG_DATA, TAG_DATA_DIR, TAG_PROFILE, TAG_SYNTHETIC)
            if key in run.tags}
    with _tracking_uri(store.uri):
        version = mlflow.register_model(uri, name, tags=tags)
    client = _registry(store)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return _version_record(client.get_model_version(name, version.version), run)


def alias_problem(alias: str) -> Optional[str]:
    """Why the registry would refuse `alias` (its rules in MLflow 3.17: letters, digits, `_` and
    `-`, at most 255 characters, not `latest` nor a version name like v3), checked before a
    version is written; None if it is fine."""
    if not re.fullmatch(r"[\w\-]{1,255}", alias):
        return "an alias is 1-255 letters, digits, underscores (_) or dashes (-)"
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        return "reserved by the MLflow registry (latest and v<number> name versions)"
    return None


def model_versions(store: "Store", name: str) -> list[ModelVersionRecord]:
    """Every version of registered model `name`, newest first, each with its run ([] if none)."""
    client = _registry(store)
    try:
        aliases = client.get_registered_model(name).aliases or {}
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    records = []
    for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
        try:
            run = store.run(version.run_id) if version.run_id else None
        except MlflowException:
            run = None
        # search_model_versions leaves out aliases on some stores; the registered model has them
        named = tuple(sorted(alias for alias, number in aliases.items() if str(number) == str(version.version)))
        records.append(_version_record(version, run, named))
    return records


def _version_record(version, run: Optional[RunRecord], aliases: Optional[tuple] = None) -> ModelVersionRecord:
    aliases = aliases if aliases is not None else tuple(version.aliases or ())
    return ModelVersionRecord(name=version.name, version=str(version.version), aliases=aliases,
                              run_id=version.run_id or "", created=version.creation_timestamp,
                              tags=dict(version.tags or {}), run=run)


def load_predictor(store: "Store", uri: str):
    """The harness.predict.Predictor inside an MLflow Model (models:/NAME@ALIAS, models:/NAME/3,
    models:/m-..., runs:/...), loaded through pyfunc as any MLflow user would load it."""
    import mlflow.pyfunc

    with _tracking_uri(store.uri):
        try:
            model = mlflow.pyfunc.load_model(uri)
        except MlflowException as exc:
            raise InputError(f"{uri}: no such model in {store.uri} ({exc.message.splitlines()[0]})") from None
    return model.unwrap_python_model().predictor
