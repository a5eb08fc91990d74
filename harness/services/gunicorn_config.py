"""Gunicorn settings for the team server's `mlflow server` (`--gunicorn-opts "--config python:<this>"`).

Why gunicorn and this file rather than MLflow's default uvicorn: a worker that answers a search
of 500 runs builds some 54,000 SQLAlchemy objects, and with CPython's default collection
threshold (700) about half of that request's time went to the cyclic garbage collector rescanning
them (an in-process search of 500 runs on PostgreSQL: 1.2-1.9 s, 0.6-0.7 s with the threshold
below; `harness runs` over 500 runs on the team server 2.7 s against 1.0-1.7 s; README, "A team
server").
uvicorn has no hook that runs in its workers; gunicorn's `post_worker_init` does, after the
worker has imported MLflow's app, so the app's own objects are frozen out of every collection.

Threads (`gthread`): a sync worker answers one request at a time, and a team logs from many
processes at once; with threads each worker keeps several in flight, as uvicorn's threadpool did.
The timeout lets one slow artifact upload (a 100 MB checkpoint over a slow link) finish.
Imports nothing from harness or MLflow: gunicorn reads it before loading the app.
"""

import gc

worker_class = "gthread"
threads = 8
timeout = 600
# On SIGTERM (`harness server --stop`) a thread worker waits this long for its open connections
# (a client retries what was cut off: the run waits for the server, tests/test_faults_server.py);
# gunicorn's default of 30 s held every stop for those 30 s while a client kept one alive.
graceful_timeout = 2
# One line per request in the server's log (uvicorn's default, gunicorn's is none): who called what
# (docs/scaling.md counts a run's requests in it).
accesslog = "-"
# gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl):
# two servers on one machine (a team server and a test's) would take it from each other.
control_socket_disable = True

# Collect the youngest generation after 50,000 net allocations instead of 700.
GC_THRESHOLDS = (50_000, 20, 20)


def post_worker_init(worker):
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
