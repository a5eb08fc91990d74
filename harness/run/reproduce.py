"""`harness reproduce RUN_ID [--strict] [--at-commit]`: train a past run's recorded config again.

The recorded config is the run's `config.yaml` (the iteration as it trained: ledger, profile,
`--set` and `--limit` applied), so neither the ledger's nor a profile's later edits change what
is trained; the data is the run's folder (harness.data_dir, or --data) and the seeds are the
config's. Before training it says what differs from the run: the commit (mlflow.source.git.commit),
the uncommitted diff (code/diff.patch), the packages (environment/requirements.txt; only the
changed ones are listed) and the data (its fingerprint). `--strict` refuses (exit 2) when anything
does. `--at-commit` checks the recorded commit out into a temporary git worktree, applies the
recorded diff, and trains there with that commit's own code (`python -m harness.cli run ...`);
the new run is then tagged from here. Either way the new run is tagged harness.reproduces=RUN_ID
and keeps the original's kind and overrides; the caller prints old vs new through `compare`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from harness.core.errors import InputError
from harness.core.records import (DIFF_ARTIFACT, KIND_ITERATION, KIND_VARIANT, REQUIREMENTS_ARTIFACT, TAG_DATA,
                                  TAG_DATA_DIR, TAG_GIT_DIRTY, TAG_KIND, TAG_LEDGER, TAG_REPRODUCES, RunRecord)

COMMIT_TAG = "mlflow.source.git.commit"


@dataclass
class Recorded:
    """What a run recorded about how it was made."""

    record: RunRecord
    experiment: str
    config: str
    requirements: Optional[str]
    diff: Optional[str]  # "" for a clean tree; None when the run could not say (logged before diffs were)

    @property
    def commit(self) -> Optional[str]:
        return self.record.tags.get(COMMIT_TAG)


@dataclass
class Differences:
    """One line per thing that differs now (empty: nothing), and the lines that only inform."""

    lines: list = field(default_factory=list)
    same: list = field(default_factory=list)


def read_recorded(store, run_id: str) -> Recorded:
    record, experiment = store.find(run_id)
    if record is None:
        raise InputError(f"reproduce: no run '{run_id}' (or unambiguous prefix of one) in {store.uri}")
    if record.tags.get(TAG_KIND) not in (KIND_ITERATION, KIND_VARIANT):
        raise InputError(f"reproduce: run {record.run_id[:8]} ({record.name}) is a "
                         f"{record.tags.get(TAG_KIND) or 'non-harness'} run; give the id of an iteration's run "
                         f"(`harness runs` lists them)")
    config = store.artifact_text(record.run_id, "config.yaml")
    if config is None:
        raise InputError(f"reproduce: run {record.run_id[:8]} logged no config.yaml")
    diff = store.artifact_text(record.run_id, DIFF_ARTIFACT)
    if diff is None:
        diff = "" if record.tags.get(TAG_GIT_DIRTY) == "false" else None
    return Recorded(record, experiment, config, store.artifact_text(record.run_id, REQUIREMENTS_ARTIFACT), diff)


def resolved_config(recorded: Recorded):
    import yaml

    from harness.ledger import LedgerError, validate_dict

    try:
        return validate_dict(yaml.safe_load(recorded.config))
    except (LedgerError, ValueError) as exc:
        raise InputError(f"reproduce: run {recorded.record.run_id[:8]}'s config.yaml no longer validates "
                         f"with this code ({str(exc).splitlines()[0]}); try --at-commit") from None


def differences(recorded: Recorded, data_fingerprint: str, at_commit: bool) -> Differences:
    """What differs between the run and a training now (here, or at its commit with --at-commit)."""
    from harness.track.provenance import code_state, parse_requirements, requirements

    found = Differences()
    now = code_state()
    short = (recorded.commit or "")[:10]
    if at_commit:
        found.same.append(f"code: commit {short} with its recorded diff (--at-commit)")
    elif not recorded.commit:
        found.lines.append("commit: the run recorded none (it ran outside a git checkout)")
    elif recorded.commit != now.commit:
        found.lines.append(f"commit: the run's {short}, now {(now.commit or 'no git checkout')[:10]} "
                           f"(--at-commit trains the run's)")
    else:
        found.same.append(f"commit {short}")
    if not at_commit:
        if recorded.diff is None:
            found.lines.append("diff: unknown (the run recorded whether its tree was dirty but not its diff)")
        elif recorded.diff != now.diff:
            what = ("the run's tree was clean" if not recorded.diff else
                    f"the run's diff has {recorded.diff.count(chr(10))} lines")
            found.lines.append(f"diff: {what}; the tree now " + (
                f"has {now.diff.count(chr(10))} lines of uncommitted changes" if now.diff else "is clean"))
        else:
            found.same.append("uncommitted diff" if recorded.diff else "a clean tree")
    if recorded.requirements is None:
        found.lines.append(f"packages: unknown (the run logged no {REQUIREMENTS_ARTIFACT})")
    else:
        old, new = parse_requirements(recorded.requirements), parse_requirements(requirements())
        changed = [f"{name} {old.get(name, '(none)')} -> {new.get(name, '(none)')}"
                   for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]
        if changed:
            found.lines.append(f"packages: {len(changed)} changed: " + ", ".join(changed))
        else:
            found.same.append(f"{len(old)} packages")
    recorded_data = recorded.record.tags.get(TAG_DATA, "")
    if recorded_data != data_fingerprint:
        found.lines.append(f"data: fingerprint {recorded_data or '(none)'} recorded, {data_fingerprint} now")
    else:
        found.same.append(f"data {data_fingerprint}")
    return found


def reproduce(run_id: str, *, tracking_uri: Optional[str] = None, work_dir: Optional[str] = None,
              data_dir: Optional[str] = None, strict: bool = False, at_commit: bool = False,
              system_metrics: Optional[bool] = None, log=print) -> tuple[int, str, Optional[str]]:
    """Train run `run_id` again; (exit code, the old run's id, the new run's id or None)."""
    from harness.data.source import open_dataset
    from harness.run.launch import check_places
    from harness.core.settings import work_dir as resolve_work_dir
    from harness.track.store import Store

    check_places(tracking_uri, resolve_work_dir(work_dir).root)
    store = Store(tracking_uri)
    recorded = read_recorded(store, run_id)
    record, iteration = recorded.record, resolved_config(recorded)
    data_dir = data_dir or record.tags.get(TAG_DATA_DIR) or None
    table, _ = open_dataset(iteration, data_dir)  # a data folder gone or changed: one line, nothing written
    found = differences(recorded, str(getattr(table, "fingerprint", "")), at_commit)
    log(f"reproduce {record.run_id[:8]} ({record.name}, profile {record.profile}, experiment {recorded.experiment}):")
    for line in found.lines:
        log(f"  differs: {line}")
    if found.same:
        log(f"  same: {', '.join(found.same)}")
    if strict and found.lines:
        raise InputError(f"reproduce {record.run_id[:8]}: --strict and {len(found.lines)} thing(s) differ "
                         f"({', '.join(line.split(':')[0] for line in found.lines)}); nothing trained")
    if at_commit:
        return _at_commit(store, recorded, iteration, data_dir, tracking_uri, work_dir, log)
    from harness.ledger import Ledger
    from harness.run.launch import run_iteration
    from harness.run.variant import Reproduction

    book = Ledger(path=Path(record.tags.get(TAG_LEDGER, "runs.yaml")), experiment=recorded.experiment, defaults={},
                  profiles={}, raw_iterations={})
    variant = Reproduction(record, iteration)
    code = run_iteration(book, iteration.name, profile=record.profile, data_dir=data_dir, tracking_uri=tracking_uri,
                         work_dir=work_dir, variant=variant, system_metrics=system_metrics, log=log)
    return code, record.run_id, variant.run_id


def _git(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _in_tree(path: str, root: Path, tree: Path) -> str:
    """A path the run recorded, as seen from the worktree: inside the checkout -> the same place
    in the worktree; elsewhere -> as it is (absolute)."""
    absolute = Path(path) if Path(path).is_absolute() else (Path.cwd() / path)
    try:
        return str(tree / absolute.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(absolute.resolve())


def _at_commit(store, recorded: Recorded, iteration, data_dir, tracking_uri, work_dir, log):
    """Train in a temporary worktree of the recorded commit, with the recorded diff applied."""
    from harness.core.settings import work_dir as resolve_work_dir
    from harness.ledger.overrides import Overrides
    from harness.core.records import TAG_OVERRIDES
    from harness.track.provenance import code_state

    record = recorded.record
    root = code_state().root
    if root is None:
        raise InputError("reproduce --at-commit: run it inside the project's git checkout")
    if not recorded.commit or _git("cat-file", "-e", f"{recorded.commit}^{{commit}}", cwd=root).returncode != 0:
        raise InputError(f"reproduce --at-commit: commit {recorded.commit or '(none recorded)'} is not in {root}")
    if recorded.diff is None:
        raise InputError(f"reproduce --at-commit: run {record.run_id[:8]} did not record its diff")
    tree = Path(tempfile.mkdtemp(prefix="harness-reproduce-"))
    added = _git("worktree", "add", "--detach", str(tree), recorded.commit, cwd=root)
    if added.returncode != 0:
        raise RuntimeError(f"git worktree add failed: {added.stderr.strip()}")
    try:
        if recorded.diff:
            patch = tree / ".harness-reproduce.patch"
            patch.write_text(recorded.diff)
            applied = _git("apply", "--binary", patch.name, cwd=tree)
            patch.unlink()
            if applied.returncode != 0:
                raise InputError(f"reproduce --at-commit: the recorded diff does not apply to {recorded.commit[:10]}: "
                                 f"{applied.stderr.strip().splitlines()[0] if applied.stderr.strip() else ''}")
        log(f"  training in a worktree of {recorded.commit[:10]}" + (" with the recorded diff" if recorded.diff else "")
            + f": {tree}")
        command = [sys.executable, "-m", "harness.cli", "run", iteration.name, "--fresh",
                   "--ledger", _in_tree(record.tags.get(TAG_LEDGER, "runs.yaml"), root, tree),
                   "--profile", record.profile, "--tracking-uri", store.uri,
                   "--work-dir", str(resolve_work_dir(work_dir).root.resolve())]
        if data_dir:
            command += ["--data", str(Path(data_dir).resolve())]
        if iteration.data.limit is not None:
            command += ["--limit", str(iteration.data.limit)]
        command += Overrides.from_tag(record.tags.get(TAG_OVERRIDES)).flags()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        started = int(time.time() * 1000)
        with subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as child:
            for line in child.stdout:
                log("  | " + line.rstrip("\n"))
        kind = record.tags.get(TAG_KIND, KIND_ITERATION)
        new = [r for r in store.runs(recorded.experiment, iteration.name, kind) if (r.start_time or 0) >= started]
        new_id = new[-1].run_id if new else None  # the oldest run it started (newest first)
        if new_id:
            store.set_tags(new_id, {TAG_REPRODUCES: record.run_id, "mlflow.source.name": "harness reproduce --at-commit"})
        return child.returncode, record.run_id, new_id
    finally:
        _git("worktree", "remove", "--force", str(tree), cwd=root)
