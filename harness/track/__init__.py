"""MLflow, and only here (import-linter checks it): stores, the tracker, readers, URIs, leases.

Owns: where the runs are (`uris`: the one tracking-URI resolver, SQLite-URI parser and
`mlflow server` command line), what MLflow's errors mean for a run (`failures`), the store
(`store.Store`: begin, start, runs), the layout of a run's tags and params (`layout`), the
training run's events (`tracker.RunTracker`), runs written whole (`finished`), a sweep's parent
run (`sweeprun`), the readers (`reader.MlflowReader`; `fast_store`: a SQLite store read without
MLflow; `store_check`: damaged or locked), the MLflow Model and registry (`models`), leases
(`leases`), a server's probe and HTTP retries (`remote`), the logged plots (`plots`), and the
`Tracker` / `RunReader` Protocols (`protocols`).
May import: harness.train (its one atomic writer), harness.ledger, harness.models, harness.data,
harness.core; mlflow, sqlalchemy, matplotlib. Never harness.serve: the MLflow Model's code file
names the predictor as text. Nothing MLflow leaves the package: callers get RunRecords.
"""
