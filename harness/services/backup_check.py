"""`harness server --check` and a backup's own check: a backup's manifest, dump and artifacts
against their checksums; the server's store against its artifact folders.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Optional

from harness.core.errors import InputError
from harness.services.folder import ServerFolder
from harness.services.snapshot import ARTIFACT_SCHEME, DUMP, FORMAT, MANIFEST, _last_line, _query, _scalar, artifact_folders, backups_in, expected_revision, known_revisions, mlflow_version, pg_tool, sha256_of, target


# --------------------------------------------------------------------------- verify


def _one_backup(path: Path) -> Path:
    path = path.expanduser().resolve()
    if not path.exists():
        raise InputError(f"harness server: {path}: no such backup folder")
    if not path.is_dir():
        raise InputError(f"harness server: {path}: is a file, not a backup folder")
    if not (path / MANIFEST).exists():
        inside = backups_in(path)
        if inside:
            raise InputError(f"harness server: {path} holds {len(inside)} backups; name one, e.g. the newest: "
                             f"{inside[-1]}")
        raise InputError(f"harness server: {path}: no {MANIFEST}, so not a harness backup")
    return path


def problems_of(path: Path, deep: bool = True) -> tuple[list[str], Optional[dict]]:
    """What is wrong with the backup in `path` (one line each; empty when whole) and its manifest."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return [f"{path / MANIFEST}: damaged, not a whole manifest ({type(exc).__name__}: {exc})"], None
    needed = ("format", "created", "mlflow_version", "alembic_revision", "counts", "files")
    missing = [key for key in needed if key not in manifest] if isinstance(manifest, dict) else list(needed)
    if missing or not isinstance(manifest.get("files"), dict) or DUMP not in manifest["files"]:
        return [f"{path / MANIFEST}: damaged, lacks {', '.join(missing) or 'the dump entry'}"], None
    if manifest["format"] != FORMAT:
        return [f"{path / MANIFEST}: backup format {manifest['format']}, this harness reads {FORMAT}"], None
    problems = []
    listed = manifest["files"]
    for name, entry in sorted(listed.items()):
        file = path / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            problems.append(f"{path / MANIFEST}: names a file outside the backup: {name}")
        elif not file.is_file():
            problems.append(f"{file}: missing (the manifest lists it)")
        elif file.stat().st_size != entry.get("bytes"):
            problems.append(f"{file}: {file.stat().st_size:,} bytes, the manifest says {entry.get('bytes'):,} "
                            "(damaged or changed since the backup)")
        elif deep and sha256_of(file)[0] != entry.get("sha256"):
            problems.append(f"{file}: checksum differs from the manifest (damaged or changed since the backup)")
    for root, _, names in os.walk(path):
        for name in names:
            relative = (Path(root) / name).relative_to(path).as_posix()
            if relative != MANIFEST and relative not in listed:
                problems.append(f"{path / relative}: not in the manifest (added since the backup)")
    revision = manifest["alembic_revision"]
    if revision not in known_revisions():
        problems.append(f"{path}: schema revision {revision} (MLflow {manifest['mlflow_version']}) is unknown to "
                        f"this MLflow {mlflow_version()}: restore it with that MLflow or a newer one")
    if not problems and deep:
        listing = subprocess.run([pg_tool("pg_restore"), "--list", str(path / DUMP)], capture_output=True, text=True)
        if listing.returncode != 0:
            problems.append(f"{path / DUMP}: pg_restore cannot read it: {_last_line(listing.stderr)}")
    return problems, manifest


def check_backup(path: Path, log=print) -> int:
    path = _one_backup(path)
    problems, manifest = problems_of(path)
    for line in problems:
        log(line)
    if problems:
        return 2
    c = manifest["counts"]
    log(f"ok: {path} ({manifest['created']}, MLflow {manifest['mlflow_version']}, schema "
        f"{manifest['alembic_revision']}): {c['runs']} runs, {c['artifact_files']} artifact files, "
        f"{len(manifest['files'])} checksums match")
    return 0


# --------------------------------------------------------------------------- live check


def has_artifacts(kind: Optional[str], status: str) -> bool:
    """Whether a run must have an artifact folder (MLflow records no such thing): the harness's
    iteration, trial and sweep runs log config.yaml / space.yaml when they open, its pass runs
    eval.json and the checkpoint when they finish. References, LR range tests and runs other
    tools logged may have none."""
    return kind in ("iteration", "trial", "sweep") or (kind == "pass" and status == "FINISHED")


def check_server(folder: ServerFolder, external: Optional[str], log=print) -> int:
    """One line per problem of the live server (schema revision, runs without their artifact
    folder, artifact folders no run names), or "ok"; exit 1 when there are problems."""
    with target(folder, external) as where:
        conn = where.db.connect()
        try:
            conn.set_session(readonly=True, autocommit=False)
            cur = conn.cursor()
            revision = _scalar(cur, "SELECT version_num FROM alembic_version")
            runs = _query(cur, "SELECT r.run_uuid, r.name, r.experiment_id, r.artifact_uri, r.status, t.value "
                               "FROM runs r LEFT JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'harness.kind' "
                               "WHERE r.lifecycle_stage = 'active' ORDER BY r.start_time") or []
            named = artifact_folders(cur)
            experiments = {str(e) for (e,) in _query(cur, "SELECT experiment_id FROM experiments") or []}
            conn.rollback()
        finally:
            conn.close()
    problems = []
    head = expected_revision()
    if revision != head:
        problems.append(f"schema at revision {revision}, this MLflow {mlflow_version()} expects {head}"
                        + (": take a backup, then `mlflow db upgrade`" if revision in known_revisions() else
                           ": a newer MLflow wrote it; use that MLflow (or restore a backup made before)"))
    root = folder.artifacts
    for run_id, name, experiment_id, uri, status, kind in runs:
        if uri and uri.startswith(ARTIFACT_SCHEME) and has_artifacts(kind, status):
            relative = uri[len(ARTIFACT_SCHEME):].strip("/")
            if not (root / relative).is_dir():
                problems.append(f"run {run_id} ({name}, experiment {experiment_id}): no artifact folder {root / relative}")
    if root.is_dir():
        for experiment in sorted(root.iterdir()):
            if not experiment.is_dir() or experiment.name not in experiments:
                problems.append(f"orphan artifact folder {experiment}: no experiment {experiment.name} in the database")
                continue
            for child in sorted(experiment.iterdir()):
                candidates = sorted(child.iterdir()) if child.name == "models" and child.is_dir() else [child]
                for folder_ in candidates:
                    if folder_.relative_to(root).as_posix() not in named:
                        problems.append(f"orphan artifact folder {folder_}: no run or model in the database names it")
    for line in problems:
        log(line)
    if not problems:
        expected = sum(has_artifacts(kind, status) for *_, status, kind in runs)
        log(f"ok: {len(runs)} runs, the {expected} that log artifacts each with its folder; no orphan folders; "
            f"schema {revision} "
            f"(MLflow {mlflow_version()})")
    return 1 if problems else 0
