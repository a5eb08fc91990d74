"""A finished run's model in use: `harness register`, `models`, `predict`.

Owns: the predictor (`predict`: a checkpoint and its card -> one row per image, the
preprocessing and output columns), the serving side of the logged MLflow Model (`model`: its
input example and signature columns) and the registry commands (`registry`).
May import: harness.track (its `models` module logs, registers and loads through MLflow),
harness.ledger, harness.models, harness.data, harness.core; Keras and PIL when predicting.
"""
