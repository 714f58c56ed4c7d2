"""What a Lakebase project holds of ours that no run needs any more.

A cancelled CI job (SIGKILL after the grace period, a lost runner) cannot delete its run's
branch, and every branch holds one of the project's few branch slots. ``dbbranch gc`` at the
start of a job removes what is provably dead, whatever machine made it:

- a run's branch whose run lock nobody holds (every process of a live run holds it in that
  branch, so it is free only when they are all gone);
- a test's own branch (isolation lakebase_branch) whose run's branch is gone or dead (its
  name carries the run);
- a template branch with no children that was never finished by a live builder, or that a
  newer ready one replaced, or that is older than ``lakebase_template_max_age``.

Names are checked first (ours carry a checksum), then marks, then liveness.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from .. import names
from ..backends import build_lock
from ..errors import DbBranchError
from .lakebase_run import MARK_GRACE, LakebaseRun


@dataclass(frozen=True)
class LakebaseGarbage:
    branch: str
    reason: str


def find_lakebase_garbage(run: LakebaseRun, *, older_than: float | None = None) -> list[LakebaseGarbage]:
    """Our branches of the project that can go (``run`` is only a handle on the project:
    its own branch, if any, is alive and left alone)."""
    api = run.api
    now = time.time()
    branches = api.list_branches()
    present = {b.id for b in branches}
    children: dict[str, int] = defaultdict(int)
    for branch in branches:
        if branch.source_branch:
            children[branch.source_branch.rsplit("/", 1)[-1]] += 1
    alive: dict[str, bool] = {}
    run_branches = [b.id for b in branches if names.generated_kind(b.id) == "run"]

    def run_alive(branch_id: str) -> bool:
        if branch_id not in alive:
            key = f"run:{_run_key(branch_id)}"
            alive[branch_id] = branch_id in present and _held(run, branch_id, key)
        return alive[branch_id]

    garbage: list[LakebaseGarbage] = []
    #: Ready template branches by group: the newest replaces the others of its group.
    ready_by_group: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for branch in sorted(branches, key=lambda b: b.id):
        kind = names.generated_kind(branch.id)
        age = now - (branch.create_time or now)
        if kind is None or branch.id == run.name or age < MARK_GRACE or not branch.ready:
            continue
        if kind == "run":
            if not run_alive(branch.id):
                garbage.append(LakebaseGarbage(branch.id, "its run ended: no process holds its run lock"))
        elif kind == "branch":
            runs = [r for r in run_branches if _run_key(r) == names.run_of(branch.id)]
            if not any(run_alive(r) for r in runs):
                garbage.append(LakebaseGarbage(branch.id, "a test's branch whose run ended"))
        elif kind == "template-branch":
            mark = run.mark_of(branch.id)
            if mark is not None and mark.ready:
                ready_by_group[mark.group or mark.key].append((branch.create_time or now, branch.id))
            if children[branch.id]:
                continue  # runs or tests fork from it
            if mark is None or not mark.ready:
                if not _held(run, branch.id, build_lock(branch.id)):
                    garbage.append(LakebaseGarbage(branch.id, "an unfinished build whose builder is gone"))
            elif age > run.config.template_max_age:
                garbage.append(LakebaseGarbage(branch.id, "older than dbbranch_lakebase_template_max_age"))
            elif older_than is not None and age > older_than:
                garbage.append(LakebaseGarbage(branch.id, f"older than {older_than:.0f}s"))
    chosen = {g.branch for g in garbage}
    for ready in ready_by_group.values():
        _, newest = max(ready)
        garbage += [
            LakebaseGarbage(old, f"replaced by {newest}")
            for _, old in ready
            if old != newest and not children[old] and old not in chosen
        ]
    return garbage


def _run_key(run_branch: str) -> str | None:
    match = names.RUN_BRANCH_RE.fullmatch(run_branch)
    return match.group("run") if match else None


def collect_lakebase(run: LakebaseRun, garbage: list[LakebaseGarbage]) -> list[tuple[str, str]]:
    """Delete (purged); returns the failures as (branch, error)."""
    failed = []
    for item in garbage:
        try:
            run.api.delete_branch(item.branch)
        except DbBranchError as exc:
            failed.append((item.branch, str(exc)))
    return failed


def _held(run: LakebaseRun, branch: str, key: str) -> bool:
    """Whether a live process holds ``key`` in ``branch``; a branch we cannot reach counts as
    held (deleting what may be in use is the one mistake gc must not make)."""
    return run.held(branch, key, unreachable=True)
