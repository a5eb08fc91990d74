"""The vocabulary every other package speaks; the bottom layer.

Owns: errors and exit codes (`errors`), settings (default ledger, tracking URI, work dir:
`settings`), stop signals (`signals`), the metric contract (`metrics`: every metric name, the
primary head, the run summary), the label catalog (`labels`: datasets, heads, class order,
majority rates), plain run records and tag names (`records`), the per-example predictions
artifact's layout (`predictions`), quiet output (`quiet`), the checks
of where a run writes (`guards`), test-only fault points (`faults`) and process control
(`process`: loopback, ports, PIDs, health checks).
May import: nothing of the harness. Pure Python at module level (TensorFlow, Keras, scikit-learn
only inside the few functions that need them).
"""
