"""Time and size of `harness server --backup` (and `--check DIR`, `--restore DIR`) over 500 runs.

    .venv/bin/python bench/bench_backup.py [--runs 500] [--checkpoint-kib 1024]

A throwaway server (harness.server, durable PostgreSQL defaults, `mlflow server` with 2 workers,
127.0.0.1, a temporary folder) is filled through its REST API with RUNS parent runs laid out as
`harness run` logs them (bench/bench_table.populate: params, 10 epochs of every head's metrics,
the summary), and each run gets the small artifacts a harness run logs (config.yaml, eval.json,
model_summary.txt, environment/requirements.txt) plus one random file of --checkpoint-kib KiB
standing in for its checkpoint (real checkpoints are the run's own size: the copy is file by
file, so scale by the MiB/s printed). Then each command runs once in a fresh process, as typed.
Not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.core.process import free_port, running_pid, stop_pid
from harness.services.folder import ServerFolder
from harness.services import server  # noqa: E402


def add_artifacts(url: str, checkpoint_kib: int, folder: Path) -> int:
    """The small artifacts of a harness run, and a stand-in checkpoint, on every run."""
    from mlflow import MlflowClient

    client = MlflowClient(url)
    requirements = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    files = 0
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=50000):
        run_id = run.info.run_id
        client.log_text(run_id, json.dumps(run.data.params, indent=1), "config.yaml")
        client.log_dict(run_id, {k: v for k, v in run.data.metrics.items() if k.startswith("selected")}, "eval.json")
        client.log_text(run_id, "Model: functional\n" + "layer  output  params\n" * 60, "model_summary.txt")
        client.log_text(run_id, requirements, "environment/requirements.txt")
        files += 4
        if checkpoint_kib:
            stand_in = folder / "best.keras"
            stand_in.write_bytes(os.urandom(checkpoint_kib * 1024))
            client.log_artifact(run_id, str(stand_in), "checkpoint")
            files += 1
    return files


def timed(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return seconds, done.stdout.strip().splitlines()[0]


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--checkpoint-kib", type=int, default=1024)
    args = parser.parse_args(argv)
    from bench.bench_table import populate

    root = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    root.chmod(0o755)  # as root, PostgreSQL runs as `postgres`, who must enter the folder
    folder = ServerFolder(root / "server")
    folder.root.mkdir()
    try:
        team = server.start(folder, port=free_port(), db_port=free_port(), workers=2,
                            log=lambda *_: None)
        started = time.perf_counter()
        populate(team.url, args.runs)
        files = add_artifacts(team.url, args.checkpoint_kib, root)
        filled = time.perf_counter() - started
        backups = root / "backups"
        backup_s, line = timed(["server", "--dir", str(folder.root), "--backup", str(backups)])
        [made] = list(backups.iterdir())
        manifest = json.loads((made / "manifest.json").read_text())
        dump = (made / "mlflow.dump").stat().st_size
        artifacts = manifest["counts"]["artifact_bytes"]
        check_s, _ = timed(["server", "--check", str(made)])
        live_s, _ = timed(["server", "--dir", str(folder.root), "--check"])
        stop_pid(running_pid(folder.mlflow_pid, "mlflow"), "mlflow", 15, group=True)
        folder.mlflow_pid.unlink(missing_ok=True)
        restore_s, _ = timed(["server", "--dir", str(folder.root), "--restore", str(made)])
        c = manifest["counts"]
        print(f"store: {c['runs']} runs, {c['metrics']:,} metric rows, {c['params']:,} params, {files} artifact files "
              f"(checkpoint stand-in {args.checkpoint_kib} KiB each); filled through the REST API in {filled:.0f} s\n")
        print("| command | wall s | size |")
        print("|:--|--:|:--|")
        print(f"| `harness server --backup DIR` | {backup_s:.1f} | {size_of(made) / 2**20:.1f} MiB: dump "
              f"{dump / 2**20:.1f} MiB + artifacts {artifacts / 2**20:.1f} MiB ({c['artifact_files']} files) |")
        print(f"| `harness server --check DIR` (every checksum, pg_restore --list) | {check_s:.1f} | |")
        print(f"| `harness server --check` (live: schema, {c['runs']} run folders, orphans) | {live_s:.1f} | |")
        print(f"| `harness server --restore DIR` (server stopped) | {restore_s:.1f} | |")
        print(f"\n{line}")
    finally:
        server.stop(folder, log=lambda *_: None)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
