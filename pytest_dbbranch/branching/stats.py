"""Counters for the end-of-run summary; plain numbers so xdist workers can ship them home."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

_LOCK = threading.Lock()

#: A branch of a small template costs 10-40 ms (tmpfs, journaled ext4); above this the copy
#: is bound by the template's size (or by a slow disk).
SIZE_BOUND_MS = 150.0


@dataclass
class Stats:
    branches_created: int = 0
    branches_dropped: int = 0
    branches_kept: int = 0
    branches_reaped: int = 0
    template_hits: int = 0
    template_builds: int = 0
    sources_restored: int = 0
    pool_hits: int = 0
    pool_misses: int = 0
    fork_seconds: float = 0.0
    drop_seconds: float = 0.0
    migrate_seconds: float = 0.0
    #: Templates this run forked from on PostgreSQL, and how many of them by cloning files
    #: (PostgreSQL 18 ``file_copy_method = clone`` on a reflink file system).
    postgres_templates: int = 0
    cloned_templates: int = 0

    def increment(self, field_name: str, amount: int = 1) -> None:
        """For the warm pool's thread: ``+=`` on an attribute is not atomic across threads."""
        with _LOCK:
            setattr(self, field_name, getattr(self, field_name) + amount)

    def add_seconds(self, field_name: str, seconds: float) -> None:
        """For background threads, which must not race the test's own ``timed``."""
        with _LOCK:
            setattr(self, field_name, getattr(self, field_name) + seconds)

    @contextmanager
    def timed(self, field_name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, field_name, getattr(self, field_name) + time.perf_counter() - start)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def merge(self, other: dict[str, Any]) -> None:
        for item in fields(self):
            if item.name in other:
                setattr(self, item.name, getattr(self, item.name) + other[item.name])

    @property
    def used(self) -> bool:
        return any(getattr(self, item.name) for item in fields(self))

    def summary_lines(self) -> list[str]:
        created = self.branches_created
        avg_fork = 1000 * self.fork_seconds / created if created else 0.0
        dropped = self.branches_dropped
        avg_drop = 1000 * self.drop_seconds / dropped if dropped else 0.0
        return [
            f"branches: {created} created, {dropped} dropped, {self.branches_kept} kept"
            + (f", {self.branches_reaped} left by dead runs reaped" if self.branches_reaped else ""),
            f"time: forking {self.fork_seconds:.2f}s ({avg_fork:.1f} ms each), "
            f"migrating {self.migrate_seconds:.2f}s, dropping {self.drop_seconds:.2f}s "
            f"({avg_drop:.1f} ms each)",
            f"templates: {self.template_hits} cache hits, {self.template_builds} built"
            + (f", {self.sources_restored} source dumps restored" if self.sources_restored else "")
            + (
                f"; warm pool: {self.pool_hits} of {self.pool_hits + self.pool_misses} branches ready"
                if self.pool_hits + self.pool_misses
                else ""
            ),
            *self.copy_hint(avg_fork),
        ]

    def copy_hint(self, avg_fork_ms: float) -> list[str]:
        """When copies were slow: ``CREATE DATABASE`` copies every file of the template, so
        a large template (or a slow disk) makes every branch slow, unless files are cloned."""
        if avg_fork_ms < SIZE_BOUND_MS or self.postgres_templates == 0:
            return []
        if self.cloned_templates:
            return [
                f"branches took {avg_fork_ms:.0f} ms each although files were cloned (reflink): "
                "the template has many files, or the server is busy"
            ]
        return [
            f"branches took {avg_fork_ms:.0f} ms each to copy: a copy grows with the template's size. "
            "On PostgreSQL 18 a reflink file system makes it the same at any size: put the "
            "embedded server on XFS (reflink=1) or Btrfs (dbbranch_embedded_dir), or use "
            "dbbranch_strategy=clone on your own PostgreSQL 18 server there"
        ]
