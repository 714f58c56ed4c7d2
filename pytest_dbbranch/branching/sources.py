"""The production snapshot every branch starts from.

Three kinds: an existing database (forked, never written to), a dump file (restored once
into a database named by the file's hash, then reused by every later run), or nothing (the
backend's empty parent, ``template0`` on PostgreSQL). The source is only ever the *parent*
of a fork.

Grammar of ``dbbranch_source``: ``empty``/``none``/unset; ``db:NAME`` or a bare name is a
database (a Lakebase branch); ``file:PATH``, anything containing ``/`` or ending in a dump
suffix is a dump file, resolved against the rootdir.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..backends import Backend, Tag, use_lock
from ..errors import SourceError
from ..names import short_hash, source_name
from ..progress import Progress
from ..settings import Settings
from .dumps import copy_database, detect_format, restore
from .sealing import ensure_sealed
from .stats import Stats

_DUMP_SUFFIXES = (".sql", ".dump", ".pgdump", ".backup", ".psql", ".gz", ".tar")


@dataclass(frozen=True)
class Source:
    kind: Literal["empty", "database", "dump"]
    #: database name, or dump path
    location: str
    #: what the fingerprint hashes: name for databases, content hash for dumps
    identity: str
    where: str

    @property
    def label(self) -> str:
        """Names the source the same way in every checkout: a database by name, a dump by
        its file name (not its folder)."""
        return Path(self.location).name if self.kind == "dump" else self.location


def parse_source(settings: Settings) -> Source:
    raw = (settings.source or "").strip()
    where = settings.origin("source")
    if raw.lower() in ("", "empty", "none"):
        return Source("empty", "", "empty", where)
    if raw.startswith("db:"):
        return Source("database", raw[3:], "database:" + raw[3:], where)
    path = settings.resolve_path(raw.removeprefix("file:"))
    # A file (or a pg_dump -Fd folder) that exists is a dump, whatever its name ends in.
    if path.exists():
        detect_format(path, where)
        return Source("dump", str(path), "dump:" + content_hash(path), where)
    if raw.startswith("file:") or "/" in raw or raw.lower().endswith(_DUMP_SUFFIXES):
        raise SourceError(f"{where}: the source dump file {path} does not exist")
    return Source("database", raw, "database:" + raw, where)


def content_hash(path: Path) -> str:
    """SHA-256 of a dump file, or of every file of a dump folder with its relative name."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def resolve_parent(
    source: Source, backend: Backend, *, run_id: str, stats: Stats, progress: Progress | None = None
) -> str:
    """Name of the branch templates are forked from, restoring a dump once when needed."""
    if source.kind == "empty":
        return backend.empty_parent
    if source.kind == "database":
        found = backend.find_source(source.location, source.where)
        can_copy = getattr(backend, "can_copy", None)
        if can_copy is None or can_copy(found):
            return found
        # PostgreSQL copies a database only for its owner (or a superuser): a CI role that
        # may read production but does not own it (Lakebase's databricks_postgres) gets a
        # dumped copy of its own, made once and sealed like a restored dump.
        name = source_name(short_hash(f"copy:{source.identity}|{backend.role}|{backend.source_point}", 64))

        def copy() -> None:
            with (progress or Progress()).step(f"copying database {found} (not ours to fork) into {name}"):
                copy_database(backend, found, name, source.where)

        return _sealed_source(source, backend, name, copy, run_id=run_id, stats=stats)
    if not backend.restores_dumps:
        raise SourceError(
            f"{source.where}: a dump file cannot be the source on {backend.kind}; restore it into "
            "a branch and name that branch as the source"
        )
    # Keyed by role too: another role could not read the tables this one restores.
    name = source_name(short_hash(f"{source.identity}|{backend.role}", 64))

    def restore() -> None:
        _restore(source, backend, name, progress or Progress())

    return _sealed_source(source, backend, name, restore, run_id=run_id, stats=stats)


def _sealed_source(
    source: Source, backend: Backend, name: str, build: Callable[[], None], *, run_id: str, stats: Stats
) -> str:
    """A source database of ours (a restored dump, a copy of a database we may not fork),
    filled once by ``build`` and sealed, then held so no other run drops it under us."""
    built = ensure_sealed(
        backend,
        name,
        tag=Tag(kind="source", run=run_id, parent="", fingerprint=source.identity),
        parent=lambda: backend.empty_parent,
        build=build,
        run_id=run_id,
    )
    stats.sources_restored += int(built)
    backend.hold(use_lock(name))
    return name


def _restore(source: Source, backend: Backend, name: str, progress: Progress) -> None:
    path = Path(source.location)
    size = (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )
    shown = f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.0f} kB"
    with progress.step(f"restoring {path.name} ({shown})"):
        restore(path, backend, name, source.where)
