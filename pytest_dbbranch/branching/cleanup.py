"""Finding what crashed or finished runs left behind, and deleting only that.

Decisions are made from our tag alone (run, host, pid, kind, group, creation time), so the
reaper at session start, ``dbbranch gc`` and a user's script agree, and nothing without our
tag is ever a candidate.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from ..backends import Backend, BranchRecord, Tag
from ..server.process import pid_alive

log = logging.getLogger("pytest_dbbranch")

Cause = Literal["dead-run", "old", "expired", "stale-template", "half-built", "unused-source"]


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
    """Only provable on the machine that ran it: its process no longer exists."""
    return tag.host == (host or socket.gethostname()) and tag.pid > 0 and not alive(tag.pid)


def stale_templates(records: Iterable[BranchRecord]) -> Iterator[tuple[BranchRecord, BranchRecord]]:
    """The one rule for stale templates: a template is replaced once a newer sealed template
    of its group exists. Yields (stale, replacement)."""
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
    older_than: float | None = None,
    now: float | None = None,
    current_runs: Iterable[str] = (),
    include_kept: bool = False,
    host: str | None = None,
    alive: Callable[[int], bool] = pid_alive,
) -> list[Garbage]:
    """What may go: branches of dead runs (same host), branches older than ``older_than``,
    anything past its TTL, and templates replaced by a newer one of the same group.

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
        age = now - tag.created
        old = older_than is not None and age > older_than
        if tag.run in current:
            continue
        if record.expires_at is not None and record.expires_at <= now:
            found.append(Garbage(record, "expired", "past its TTL and still listed"))
            continue
        if tag.kind == "branch":
            if tag.kept and not include_kept and not old:
                continue
            if run_is_gone(tag, host=host, alive=alive):
                found.append(
                    Garbage(record, "dead-run", f"its run {tag.run} is gone (pid {tag.pid} on {tag.host})")
                )
            elif old:
                found.append(Garbage(record, "old", f"older than {_age(older_than or 0)}"))
        elif tag.kind == "template":
            if record.name in replaced:
                found.append(
                    Garbage(record, "stale-template", f"stale template, replaced by {replaced[record.name]}")
                )
            elif not tag.ready and (old or run_is_gone(tag, host=host, alive=alive)):
                found.append(Garbage(record, "half-built", "half-built template of a crashed build"))
        elif tag.kind == "source" and old and record.name not in parents_in_use:
            found.append(
                Garbage(
                    record,
                    "unused-source",
                    f"restored dump no template uses, older than {_age(older_than or 0)}",
                )
            )
    return found


def collect(backend: Backend, garbage: Iterable[Garbage]) -> tuple[list[Garbage], list[tuple[Garbage, str]]]:
    """Delete (the backend checks our tag again); returns what went and what failed, why."""
    deleted, failed = [], []
    for item in garbage:
        try:
            backend.drop(item.record.name)
        except Exception as exc:
            log.warning("pytest-dbbranch: could not delete %s: %s", item.record.name, exc)
            failed.append((item, str(exc)))
        else:
            deleted.append(item)
    return deleted, failed


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
