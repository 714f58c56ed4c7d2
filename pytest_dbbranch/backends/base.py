"""The small protocol every backend implements, and the tag that marks what we created.

A backend knows how to fork, seal, describe, list and drop branches on one kind of server.
Everything else (templates, sources, naming, fixtures, keep-on-failure) is written once
against this protocol. Where backends differ in what they *can* do, they say so with
capability flags rather than the core asking which backend it has, so a new backend (Neon)
is one module plus one line in ``open_backend``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..conninfo import ServerAddress, connect_fresh
from ..names import run_key

if TYPE_CHECKING:
    import psycopg

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
    #: Templates that replace each other (same migrations config, source and target).
    group: str = ""
    ready: bool = False
    kept: bool = False
    created: float = field(default_factory=time.time)
    #: The machine (hostname) and process that created it.
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
    allows_connections: bool = True
    size_bytes: int | None = None
    #: When the service will delete it by itself (Lakebase TTL); None where nothing expires.
    expires_at: float | None = None

    @property
    def ready(self) -> bool:
        """Completion marker: a template or restored source is usable only once sealed."""
        if self.tag.kind == "branch":
            return True
        return self.tag.ready and not self.allows_connections


class Backend(Protocol):
    """Where branches live. Names passed in are already valid for every backend."""

    #: "postgres" or "lakebase": for messages and for the server key, never for decisions.
    kind: str
    #: Major server version, part of the template fingerprint.
    server_version: int
    #: Identifies the server (or project) for locks shared by processes on one machine.
    server_key: str
    #: Folder of the lock files that serialise builders on this machine.
    lock_folder: Path
    #: The role (identity) we act as: objects are keyed by it, since another role could not
    #: read what this one restores or migrates.
    role: str
    #: Seconds: the longest wait for one answer, or for another process building something.
    timeout: float

    # -- capabilities -----------------------------------------------------------------------

    #: True when ``lock`` excludes every process on every machine; otherwise concurrent
    #: builders are told apart by the create call's conflict (``fork`` raises).
    has_global_lock: bool
    #: Branches are cheap enough to fork ahead of the tests and hand out by ``rename``.
    warm_pool: bool
    #: Dump files can be restored into a branch of an empty parent.
    restores_dumps: bool
    #: Listing our branches is cheap, so the reaper may look at every run's at session start.
    cheap_listing: bool
    #: The server itself knows which runs are alive (``hold``/``is_held``), whatever machine or
    #: container they run in. Without it, a run is known dead only on its own host (pid).
    knows_liveness: bool

    @property
    def empty_parent(self) -> str:
        """The parent of a branch that starts empty (``template0``, the project's default
        branch)."""

    @property
    def source_point(self) -> str:
        """Appended to a source's identity in the fingerprint: what else decides its content
        (on Lakebase, the point in time the source branch is read at)."""

    def find_source(self, location: str, where: str) -> str:
        """The branch to fork for a named source, which must exist; ``where`` names the
        setting in the error otherwise. The source is protected from ``drop`` from now on."""

    def fork(self, name: str, parent: str, tag: Tag) -> None:
        """Create branch ``name`` as a copy of ``parent`` and tag it."""

    def seal(self, name: str, tag: Tag) -> None:
        """Freeze a built template: no more connections, completion marker set."""

    def describe(self, name: str) -> BranchRecord | None:
        """Our record of ``name``; None if it does not exist or is not ours."""

    def exists(self, name: str) -> bool:
        """Whether anything (ours or not) has this name."""

    def list_ours(self, *, sizes: bool = True) -> list[BranchRecord]:
        """Every branch, template and source this tool created on the server; ``sizes=False``
        where nobody shows them (a size reads every file of every database)."""

    def drop(self, name: str) -> None:
        """Drop ``name`` after checking our tag; a branch already gone is fine."""

    def rename(self, old: str, new: str) -> None:
        """Give a branch a new name (only where ``warm_pool`` is true)."""

    def spare_connections(self) -> int | None:
        """Client connections the server still accepts, None where unknown (only where
        ``warm_pool`` is true: the warm pool sizes itself by it)."""

    def retag(self, name: str, tag: Tag) -> None:
        """Replace the tag (for example to mark a branch kept)."""

    def address(self, name: str) -> ServerAddress:
        """How a client reaches branch ``name`` now (credentials may rotate, so ask again
        for every new connection)."""

    def refresh_credentials(self, name: str) -> bool:
        """Forget the credential of ``name`` after a refused login; False where credentials
        never rotate (then a refused login is final)."""

    def sibling(self) -> Backend:
        """Another backend on the same server with its own connection, for a background
        thread."""

    def lock(self, key: str) -> AbstractContextManager[None]:
        """A lock shared by every process using this server, held while building."""

    def hold(self, key: str) -> None:
        """Hold ``key`` (shared) for as long as this backend lives; it is released by the
        server when the process dies, wherever it ran."""

    def is_held(self, key: str) -> bool:
        """Whether some live process holds ``key``."""

    def claim(self, key: str) -> AbstractContextManager[bool]:
        """Exclusive hold of ``key`` for a ``with`` block, without waiting: False when a live
        process holds it (then whatever it protects must stay)."""

    def list_untagged(self) -> list[str]:
        """Names this tool generated that carry no tag (a kill between create and tag)."""

    def drop_untagged(self, name: str) -> None:
        """Drop such a leftover; refuses anything that is not one."""

    def close(self) -> None:
        """Release connections held by the backend."""


def run_lock(run_id: str) -> str:
    """Held by every process of a live run: the run is dead once nobody holds it."""
    return "run:" + run_key(run_id)


def use_lock(name: str) -> str:
    """Held by every process that may fork ``name`` (a template): it is not dropped then."""
    return "use:" + name


def build_lock(name: str) -> str:
    """Held by the one process building ``name``; free means nobody is building it."""
    return "build:" + name


def connect(backend: Backend, name: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open a connection to branch ``name``, with a fresh credential after a refused login."""
    conn: psycopg.Connection[Any] = connect_fresh(_BranchAddress(backend, name), **kwargs)
    return conn


class _BranchAddress:
    """One branch of a backend as an ``AddressSource``."""

    def __init__(self, backend: Backend, name: str) -> None:
        self.backend = backend
        self.name = name

    def current(self) -> ServerAddress:
        return self.backend.address(self.name)

    def refresh(self) -> bool:
        return self.backend.refresh_credentials(self.name)
