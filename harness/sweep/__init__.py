"""`harness sweep ITER`: Optuna trials of an iteration, each trained as a run, and `--promote`.

Owns: the plan and the command (`plan`), a trial as a run variant whose tracker also reports
to Optuna (`trial`), the worker loop (`worker`), which trial next under the study lock
(`claims`), and the study storage and its locks (`storage`: SQLite file lock or PostgreSQL
advisory lock).
May import: harness.run (a trial is `launch.run_iteration` with a Variant), harness.track,
harness.ledger (the search space lives in harness.ledger.space), harness.core; optuna.
"""
