"""`harness run ITER --repeats N` (or `repeats: N` in the ledger, which `--all` honours): N
ordinary runs of one iteration with seeds seed, seed+1, ..., seed+N-1, on the same split (the
split seed is left alone), so that they are paired image by image and their spread is the
seed noise harness.report.stats needs.

Each repeat is a `launch.Variant` whose only change is the seed: kind `iteration` (the table's
row is the repeat with the ledger's own seed; harness.report.trust gathers the rest), tagged
`harness.group` (one id for the N) and `harness.repeat` ("k/N"), named `ITER repeat k/N`,
leased and resumable like any run. On a rerun a finished repeat is skipped and a killed one
resumed, each decided alone, so killing repeat 2 of 3 and giving the same command again trains
only repeat 2 (resumed) and 3. The group id is a pure function of the iteration's config under
the profile and N, so the rerun finds the same group; `--fresh` starts a new group.
"""

from __future__ import annotations

import time
from typing import Optional

from harness.core.records import (FINISHED, KIND_ITERATION, NEW, RESUME, SKIP, TAG_GROUP, TAG_KIND, TAG_REPEAT,
                                  UNFINISHED, Decision)
from harness.track.leases import lines


def group_id(name: str, base_sha: str, repeats: int, fresh: bool = False) -> str:
    """`ITER-<config sha>-xN` (a fresh group gets the time too, so it never joins the old one)."""
    return f"{name}-{base_sha}-x{repeats}" + (f"-{int(time.time())}" if fresh else "")


class Repeat:
    """Repeat k of N of one iteration (a harness.run.launch.Variant)."""

    def __init__(self, experiment: str, name: str, seed: int, k: int, n: int, group: str, fresh: bool = False):
        self.experiment, self.iteration, self.k, self.n, self.fresh = experiment, name, k, n, fresh
        self.seed = seed + k - 1
        self.changes = {"seed": self.seed}
        self.run_name = f"{name} repeat {k}/{n}"
        self.tags = {TAG_KIND: KIND_ITERATION, TAG_GROUP: group, TAG_REPEAT: f"{k}/{n}"}
        self.run_id: Optional[str] = None

    def decide(self, store, iteration, resumable) -> Decision:
        """SKIP this repeat's finished run, RESUME its unfinished one (unless --fresh), else NEW;
        refused like any run while another process holds a live lease on the iteration."""
        taken_over = store.check_leases(self.experiment, iteration.name)
        for run in store.runs(self.experiment, iteration.name):  # newest first
            if run.tags.get(TAG_GROUP) != self.tags[TAG_GROUP] or run.tags.get(TAG_REPEAT) != self.tags[TAG_REPEAT] \
                    or run.config_sha != iteration.config_sha():
                continue
            if run.status == FINISHED:
                return Decision(SKIP, run, f"{self.run_name}: already finished (run {run.run_id[:8]}, seed "
                                           f"{self.seed}), skipping")
            if run.status in UNFINISHED and resumable(run.run_id) and not self.fresh:
                return Decision(RESUME, run, lines(taken_over, f"{self.run_name}: resuming unfinished run "
                                                               f"{run.run_id[:8]} (seed {self.seed})"))
        return Decision(NEW, None, lines(taken_over, f"{self.run_name}: seed {self.seed}, group {self.tags[TAG_GROUP]}"))

    def watch(self, tracker):
        self.run_id = tracker.run_id
        return tracker


def repeats_of(book, name: str, profile: Optional[str], flag: Optional[int], fresh: bool = False) -> list[Repeat]:
    """The repeats `harness run` trains for `name`: `--repeats N` if given, else the ledger's
    `repeats`; [] for one run (the ordinary path)."""
    written = book.resolve(name, profile)
    n = flag if flag is not None else written.repeats
    if n <= 1:
        return []
    group = group_id(name, written.config_sha(), n, fresh)
    return [Repeat(book.experiment, name, written.seed, k, n, group, fresh) for k in range(1, n + 1)]
