"""Finding what crashed or finished runs left behind, and deleting only that.

Decisions are made from our tag (run, kind, group, creation time) and from what the server
knows about live runs, so the reaper at session start, ``dbbranch gc`` and a user's script
agree, and nothing without our tag or our generated name is ever a candidate. Where the
server keeps session locks (PostgreSQL), a run is alive while one of its processes holds its
run lock, wherever it runs: another machine, another container, another PID namespace.
Elsewhere a run is known dead only on its own host, by its pid.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from .. import names
from ..backends import Backend, BranchRecord, Tag, build_lock, run_lock, use_lock
from ..server.process import pid_alive

log = logging.getLogger("pytest_dbbranch")

Cause = Literal[
    "dead-run", "old", "expired", "stale-template", "unused-template", "half-built", "unused-source"
]

#: Whether the run that wrote a tag is alive.
RunAlive = Callable[[Tag], bool]


@dataclass(frozen=True)
class Garbage:
    record: BranchRecord
    #: Why it may go, for programs (the reaper takes only ``dead-run``).
    cause: Cause
    #: The same for people.
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.record.name,
            "kind": self.record.tag.kind,
            "run": self.record.tag.run,
            "cause": self.cause,
            "reason": self.reason,
        }


def run_is_gone(tag: Tag, *, host: str | None = None, alive: Callable[[int], bool] = pid_alive) -> bool:
    """Without server-side liveness, only provable on the machine that ran it."""
    return tag.host == (host or socket.gethostname()) and tag.pid > 0 and not alive(tag.pid)


def liveness(backend: Backend) -> RunAlive:
    """How to tell a live run on this backend."""
    if backend.knows_liveness:
        return lambda tag: backend.is_held(run_lock(tag.run))
    return lambda tag: not run_is_gone(tag)


def in_use(backend: Backend) -> Callable[[str], bool]:
    """Whether a live run may still fork the template or source ``name``."""
    return lambda name: backend.is_held(use_lock(name))


def stale_templates(records: Iterable[BranchRecord]) -> Iterator[tuple[BranchRecord, BranchRecord]]:
    """The one rule for stale templates: a template is replaced once a newer sealed template
    of its group exists. Yields (stale, replacement). Whether a live run still forks from it
    is decided when it is dropped (``collect``)."""
    records = list(records)
    newest: dict[str, BranchRecord] = {}
    for record in records:
        if record.tag.kind == "template" and record.tag.ready:
            best = newest.get(record.tag.group)
            if best is None or record.tag.created > best.tag.created:
                newest[record.tag.group] = record
    for record in records:
        best = newest.get(record.tag.group)
        if best is None or record.tag.kind != "template" or best.name == record.name:
            continue
        # Only what is older: a template still being built is never "replaced" by an
        # older sealed one.
        if record.tag.created < best.tag.created:
            yield record, best


def find_garbage(
    records: Iterable[BranchRecord],
    *,
    run_alive: RunAlive,
    in_use: Callable[[str], bool] = lambda name: False,
    older_than: float | None = None,
    now: float | None = None,
    current_runs: Iterable[str] = (),
    include_kept: bool = False,
) -> list[Garbage]:
    """What may go: branches of dead runs, branches older than ``older_than``, anything past
    its TTL, templates replaced by a newer one of their group, templates and restored dumps
    unused for longer than ``older_than``, half-built templates whose builder is gone.

    Kept branches (``--dbbranch-keep``, ``dbbranch create``) go only with ``include_kept`` or
    once older than ``older_than``. Branches of ``current_runs`` never go.
    """
    now = time.time() if now is None else now
    records = list(records)
    current = set(current_runs)
    replaced = {stale.name: best.name for stale, best in stale_templates(records)}
    parents_in_use = {r.tag.parent for r in records if r.tag.kind == "template"}
    found: list[Garbage] = []
    for record in records:
        tag = record.tag
        old = older_than is not None and now - tag.created > older_than
        if tag.run in current or (tag.kind != "branch" and in_use(record.name)):
            continue
        if record.expires_at is not None and record.expires_at <= now:
            found.append(Garbage(record, "expired", "past its TTL and still listed"))
        elif tag.kind == "branch":
            if tag.kept and not include_kept and not old:
                continue
            if not run_alive(tag):
                found.append(Garbage(record, "dead-run", f"its run {tag.run} is gone"))
            elif old:
                found.append(Garbage(record, "old", f"older than {_age(older_than or 0)}"))
        elif tag.kind == "template":
            if record.name in replaced:
                reason = f"stale template, replaced by {replaced[record.name]}"
                found.append(Garbage(record, "stale-template", reason))
            elif not tag.ready and not run_alive(tag):
                found.append(Garbage(record, "half-built", "half-built template of a crashed build"))
            elif tag.ready and old:
                found.append(
                    Garbage(record, "unused-template", f"template older than {_age(older_than or 0)}")
                )
        elif tag.kind == "source" and record.name not in parents_in_use:
            # The dump changed (or its templates went): nothing forks from it any more.
            found.append(Garbage(record, "unused-source", "restored dump no template uses"))
    return found


def find_orphans(backend: Backend) -> list[str]:
    """Untagged databases with our generated names whose maker is provably gone: a branch
    whose run holds no run lock, a template or source nobody is building. Only where the
    server knows liveness; elsewhere nothing can be proven and nothing is listed."""
    if not backend.knows_liveness:
        return []
    found = []
    for name in backend.list_untagged():
        run = names.run_of(name)
        owner = f"run:{run}" if run else build_lock(name)
        if not backend.is_held(owner):
            found.append(name)
    return found


def collect(backend: Backend, garbage: Iterable[Garbage]) -> tuple[list[Garbage], list[tuple[Garbage, str]]]:
    """Delete (the backend checks our tag again); returns what went and what failed, why.

    A template or restored source goes only while no live process holds it (``use_lock``),
    checked under an exclusive claim so that no run can start forking from it meanwhile;
    one in use is left alone, which is not a failure.
    """
    deleted, failed = [], []
    for item in garbage:
        try:
            if item.record.tag.kind in ("template", "source"):
                with backend.claim(use_lock(item.record.name)) as free:
                    if not free:
                        log.info("pytest-dbbranch: %s is in use by a live run; left", item.record.name)
                        continue
                    backend.drop(item.record.name)
            else:
                backend.drop(item.record.name)
        except Exception as exc:
            log.warning("pytest-dbbranch: could not delete %s: %s", item.record.name, exc)
            failed.append((item, str(exc)))
        else:
            deleted.append(item)
    return deleted, failed


def collect_orphans(backend: Backend, orphans: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    deleted, failed = [], []
    for name in orphans:
        try:
            backend.drop_untagged(name)
        except Exception as exc:
            log.warning("pytest-dbbranch: could not delete the untagged leftover %s: %s", name, exc)
            failed.append((name, str(exc)))
        else:
            deleted.append(name)
    return deleted, failed


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
