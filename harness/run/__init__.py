"""The use cases that train or evaluate: `harness run`, `eval`, `lr-find`, `reference`, `run --ray`.

Owns: the steps before anything is written (`prepare`), the console lines of a run (`console`),
a run end to end (`launch.run_iteration`), a run stopped by its surroundings (`halts`),
`evaluate` (harness eval), the LR range test (`lrfind`), the reference runs (`reference`), the
ledger as Ray tasks (`parallel`, ray imported only there) and `--repeats N` (`repeats`: N runs over
seeds on one split, each a launch.Variant).
May import: harness.serve (the logged model's input and outputs), harness.track, harness.train,
harness.ledger, harness.models, harness.data, harness.core.
"""
