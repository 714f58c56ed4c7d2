"""The small protocol every backend implements, and the tag that marks what we created.

A backend knows how to fork, seal, describe, list and drop branches on one kind of server.
Everything else (templates, naming, fixtures, keep-on-failure) is written once against this
protocol, so a new backend (Lakebase, Neon) is one module.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..conninfo import ServerAddress

if TYPE_CHECKING:
    from ..branching.sources import Source

TOOL = "pytest-dbbranch"

Kind = Literal["branch", "template", "source"]


@dataclass(frozen=True)
class Tag:
    """Written on every branch we create. Destructive operations read it back first: a
    database without our tag is never dropped, whatever its name looks like."""

    kind: Kind
    run: str
    parent: str
    fingerprint: str = ""
    project: str = ""
    ready: bool = False
    kept: bool = False
    created: float = field(default_factory=time.time)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    tool: str = TOOL

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def loads(cls, text: str | None) -> Tag | None:
        """None for anything that is not a tag of ours (absent, foreign comment, bad JSON)."""
        if not text:
            return None
        try:
            data: Any = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("tool") != TOOL:
            return None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError:
            return None

    def sealed(self) -> Tag:
        return replace(self, ready=True)


@dataclass(frozen=True)
class BranchRecord:
    """What a backend can tell about one of our branches without connecting to it."""

    name: str
    tag: Tag
    is_template: bool = False
    allows_connections: bool = True
    size_bytes: int | None = None
    #: When the service will delete it by itself (Lakebase TTL); None where nothing expires.
    expires_at: float | None = None

    @property
    def ready(self) -> bool:
        """Completion marker: a template is usable only once sealed."""
        if self.tag.kind == "branch":
            return True
        return self.tag.ready and not self.allows_connections


class Backend(Protocol):
    """Where branches live. Names passed in are already valid for every backend."""

    #: Major server version, part of the template fingerprint.
    server_version: int
    #: Identifies the server (or project) for lock files shared by workers on one machine.
    server_key: str
    #: "postgres" or "lakebase".
    kind: str
    #: True when ``lock`` excludes every process on every machine; otherwise concurrent
    #: builders are told apart by the create call's conflict (``fork`` raises).
    has_global_lock: bool

    def source_parent(self, source: Source, run_id: str) -> str:
        """The branch (or database) templates are forked from, preparing it if needed."""

    def fork(self, name: str, parent: str, tag: Tag) -> None:
        """Create branch ``name`` as a copy of ``parent`` and tag it."""

    def seal(self, name: str, tag: Tag) -> None:
        """Freeze a built template: no more connections, completion marker set."""

    def describe(self, name: str) -> BranchRecord | None:
        """Our record of ``name``; None if it does not exist or is not ours."""

    def exists(self, name: str) -> bool:
        """Whether anything (ours or not) has this name."""

    def list_ours(self) -> list[BranchRecord]:
        """Every branch, template and source this tool created on the server."""

    def drop(self, name: str) -> None:
        """Drop ``name`` after checking our tag; a branch already gone is fine."""

    def retag(self, name: str, tag: Tag) -> None:
        """Replace the tag (for example to mark a branch kept)."""

    def address(self, name: str) -> ServerAddress:
        """How a client reaches branch ``name`` now (credentials may rotate, so ask again
        for every new connection)."""

    def lock(self, key: str) -> AbstractContextManager[None]:
        """A lock shared by every process using this server, held while building."""

    def close(self) -> None:
        """Release connections held by the backend."""


def iter_stale_templates(records: list[BranchRecord], project: str, keep_name: str) -> Iterator[BranchRecord]:
    """Templates of the same project built from another fingerprint."""
    for record in records:
        same_project = record.tag.kind == "template" and record.tag.project == project
        if same_project and record.name != keep_name:
            yield record
