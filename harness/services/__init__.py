"""Long-running processes: the team tracking server (`harness server`) and the UI (`harness ui`).

Owns: the server's folder and state (`folder`), its PostgreSQL cluster (`postgres`), the
server command (`server`: start, stop, exposure checks; `gunicorn_config`: the settings its
`mlflow server` runs under), its backups (`backup`: --backup and
--restore; `backup_check`: --check; `snapshot`: the database side) and the MLflow UI (`ui`). Process
control itself (ports, PIDs, health checks, loopback) is harness.core.process; the `mlflow
server` command line is harness.track.uris.mlflow_server_command.
May import: harness.track, harness.core. No MLflow import (MLflow runs as a child process).
"""
