"""Training one iteration (no MLflow, no YAML parsing: it gets the ledger's resolved Iteration;
TensorFlow is imported when training starts).

May import: harness.ledger (the Iteration it trains), harness.models, harness.data, harness.core.

    loop.py           the Runner: passes, LR schedules, early stopping, divergence, resume;
                      the Reporter protocol it reports to
    checkpoints.py    the run's work folder: RunState, weight snapshots, one atomic writer
    compile.py        compile_model, build_now, train_stream, val_stream: how any model is compiled, built and fed
    feature_cache.py  frozen-backbone features computed once, the neck and heads trained on them
"""

from harness.train.checkpoints import RunFolder, RunState, atomic_write
from harness.train.compile import build_now, compile_model, labels_for_model, lr_for_epoch, train_stream, val_stream
from harness.train.feature_cache import FeatureCache, FeatureInputs
from harness.train.loop import PassResult, Reporter, Runner, TrainingDiverged, set_seeds

__all__ = [
    "FeatureCache", "FeatureInputs", "PassResult", "Reporter", "RunFolder", "RunState", "Runner",
    "TrainingDiverged", "atomic_write", "build_now", "compile_model", "labels_for_model", "lr_for_epoch", "set_seeds",
    "train_stream", "val_stream",
]
