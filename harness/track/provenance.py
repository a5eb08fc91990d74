"""What a run needs to be reproduced, beside its config and data fingerprint: the code and the packages.

Every new parent run logs `environment/requirements.txt` (name==version of every distribution the
running interpreter sees: `pip freeze`'s list, read with importlib.metadata instead of a pip
subprocess; `make bench` row (d) times both) and, when the git tree has uncommitted changes to tracked files,
`code/diff.patch` (`git diff HEAD`, binary changes included), tagged `harness.git_dirty=true`;
the commit is MLflow's own `mlflow.source.git.commit` tag. Untracked files are not in the diff.
`harness reproduce` (harness.run.reproduce) reads them back and says what differs now.
"""

from __future__ import annotations

import site
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional

from harness.core.records import DIFF_ARTIFACT, REQUIREMENTS_ARTIFACT, TAG_GIT_DIRTY

COMMIT_TAG = "mlflow.source.git.commit"


def _install_paths() -> list[str]:
    """sys.path without the folders nested inside a site-packages directory.

    Some packages put their vendored copies on sys.path once imported (Ray adds
    `site-packages/ray/thirdparty_files`, with colorama's dist-info in it). pip freeze does not
    list those, and neither may we: a run's requirements must not depend on what was imported first.
    """
    roots = [Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()] if p]
    kept = []
    for entry in sys.path:
        where = Path(entry or ".").resolve()
        if not any(root in where.parents for root in roots):
            kept.append(entry)
    return kept


def requirements() -> str:
    """`pip freeze` of this interpreter: one `name==version` a line, sorted by name."""
    found = {}
    for dist in metadata.distributions(path=_install_paths()):
        name = dist.metadata.get("Name")
        if name:
            found.setdefault(name.lower().replace("_", "-"), f"{name}=={dist.version}")
    return "".join(line + "\n" for _, line in sorted(found.items()))


def parse_requirements(text: str) -> dict[str, str]:
    """normalized name -> version of a requirements.txt (`name==version` lines; others skipped)."""
    out = {}
    for line in (text or "").splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and name and not name.startswith("#"):
            out[name.lower().replace("_", "-")] = version
    return out


def _git(cwd: Optional[Path], *args: str) -> Optional[subprocess.CompletedProcess]:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done if done.returncode == 0 else None


@dataclass(frozen=True)
class CodeState:
    """The git checkout a process runs in: commit, and the diff of its uncommitted changes."""

    commit: Optional[str] = None  # None outside a git checkout
    diff: str = ""  # `git diff HEAD` ("" for a clean tree)
    root: Optional[Path] = None

    @property
    def dirty(self) -> bool:
        return bool(self.diff)

    def tags(self) -> dict:
        return {COMMIT_TAG: self.commit, TAG_GIT_DIRTY: str(self.dirty).lower()} if self.commit else {}


def code_state(cwd: Optional[Path] = None) -> CodeState:
    head = _git(cwd, "rev-parse", "HEAD")
    if head is None:
        return CodeState()
    root = _git(cwd, "rev-parse", "--show-toplevel")
    diff = _git(cwd, "diff", "HEAD", "--binary")
    return CodeState(head.stdout.decode().strip(), diff.stdout.decode(errors="replace") if diff else "",
                     Path(root.stdout.decode().strip()) if root else None)


@dataclass
class Provenance:
    """A process's code and packages, measured once (`seconds`), logged on each new parent run."""

    code: CodeState
    requirements: str
    seconds: float = 0.0
    artifacts: dict = field(default_factory=dict)

    @classmethod
    def now(cls, cwd: Optional[Path] = None) -> "Provenance":
        start = time.perf_counter()
        code, reqs = code_state(cwd), requirements()
        found = cls(code, reqs)
        found.artifacts = {REQUIREMENTS_ARTIFACT: reqs, **({DIFF_ARTIFACT: code.diff} if code.dirty else {})}
        found.seconds = time.perf_counter() - start
        return found

    def tags(self) -> dict:
        return self.code.tags()

    def log(self, client, run_id: str) -> None:
        for path, text in self.artifacts.items():
            client.log_text(run_id, text, path)
