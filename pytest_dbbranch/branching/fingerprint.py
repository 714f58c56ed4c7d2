"""What a migrated template depends on.

If any input changes, the template name changes, so a stale template is never used by
mistake and no invalidation protocol is needed: old ones are just garbage. Only content
counts (file contents and their paths relative to the project, never absolute paths), so the
same project checked out in three folders, or on three CI runners, shares one template.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..names import short_hash

if TYPE_CHECKING:
    from ..settings import Settings

#: Bump when the way templates are built changes incompatibly.
FORMAT = "dbbranch-template-v2"


def fingerprint(
    *,
    source_identity: str,
    revisions: Iterable[str],
    server_version: int,
    role: str = "",
    files: Iterable[tuple[str, Path]] = (),
    ini_values: Iterable[tuple[str, str]] = (),
) -> str:
    """``files`` are (path relative to the project, path) pairs; ``ini_values`` are the
    migration configuration's values that can shape the schema."""
    digest = hashlib.sha256()

    def feed(label: str, value: bytes) -> None:
        digest.update(label.encode() + b"\0" + len(value).to_bytes(8, "big") + value)

    feed("format", FORMAT.encode())
    feed("source", source_identity.encode())
    feed("server", str(server_version).encode())
    feed("role", role.encode())
    feed("target", ",".join(sorted(revisions)).encode())
    for key, value in sorted(ini_values):
        feed("ini:" + key, value.encode())
    for relative, path in sorted(files):
        feed("file:" + relative, path.read_bytes())
    return digest.hexdigest()


def template_group(*parts: str) -> str:
    """Groups templates that replace each other: the same migration history (its first
    revisions), source and target, for one role."""
    return short_hash("\0".join(parts), 10)


# -- what the migrations say, remembered between runs ---------------------------------------
#
# Reading the migrations means importing Alembic (and SQLAlchemy): ≈0.3 s, more than
# everything else a rerun with a warm template does. What they contribute to the fingerprint
# (their files, configuration values, lineage and the target's revisions) is therefore kept
# in a small file, valid while every file it came from and every folder that could gain a
# new one look exactly as they did (modification time and size; names in the folders).


@dataclass(frozen=True)
class MigrationsSummary:
    """What a template's name needs from the migrations, without loading them."""

    files: tuple[tuple[str, str], ...]
    ini_values: tuple[tuple[str, str], ...]
    lineage: tuple[str, ...]
    revisions: tuple[str, ...]
    #: False when the settings name no migrations (a template of the source alone).
    present: bool = True

    def file_pairs(self) -> list[tuple[str, Path]]:
        return [(relative, Path(path)) for relative, path in self.files]


def _cache_folder() -> Path:
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"pytest-dbbranch-{user}" / "migrations-cache"


def _summary_key(settings: Settings) -> str | None:
    """Everything but the files that decides what the migrations are; None when a user's
    function provides them (its result may depend on anything)."""
    if settings.migrations.startswith("callable:"):
        return None
    ini = "" if settings.migrations.startswith("sql:") else str(settings.alembic_ini_path())
    parts = [FORMAT, sys.prefix, str(settings.root), settings.migrations, ini, settings.revision]
    parts.append(settings.url_env)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _file_stamp(path: Path) -> list[Any]:
    info = path.stat()
    return [str(path), info.st_mtime_ns, info.st_size]


def _folder_stamp(folder: Path) -> list[Any]:
    try:
        names = sorted(n for n in os.listdir(folder) if n != "__pycache__" and not n.endswith(".pyc"))
    except OSError:
        names = []
    return [str(folder), names]


def _stamps(files: Iterable[Path], config: Iterable[Path], roots: Iterable[Path]) -> dict[str, Any]:
    """Files by time and size; every folder under ``roots`` (and each migration file's own)
    by the names in it, so a new or removed migration anywhere below shows. The folder of a
    configuration file is not watched: other files come and go there (logs, caches)."""
    files = sorted(set(files))
    watched = {path.parent for path in files}
    files = sorted(set(files) | set(config))
    for root in roots:
        for folder, subfolders, _ in os.walk(root):
            subfolders[:] = [name for name in subfolders if name != "__pycache__"]
            watched.add(Path(folder))
    return {"files": [_file_stamp(p) for p in files], "folders": [_folder_stamp(f) for f in sorted(watched)]}


def cached_summary(settings: Settings) -> MigrationsSummary | None:
    """The summary an earlier run saved for these settings, if nothing it read has changed."""
    key = _summary_key(settings)
    if key is None:
        return None
    try:
        entry = json.loads((_cache_folder() / f"{key}.json").read_text())
        stamps = entry["stamps"]
        for path, mtime, size in stamps["files"]:
            if _file_stamp(Path(path)) != [path, mtime, size]:
                return None
        for folder, names in stamps["folders"]:
            if _folder_stamp(Path(folder)) != [folder, names]:
                return None
        data = entry["summary"]
        return MigrationsSummary(
            files=tuple((a, b) for a, b in data["files"]),
            ini_values=tuple((a, b) for a, b in data["ini_values"]),
            lineage=tuple(data["lineage"]),
            revisions=tuple(data["revisions"]),
            present=bool(data["present"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


#: A file modified this recently may change again within the same timestamp tick: such a
#: summary is not saved (the next run saves it), as git does with its index.
RACY_SECONDS = 2.0


def remember_summary(
    settings: Settings, summary: MigrationsSummary, *, config_files: Iterable[Path], roots: Iterable[Path]
) -> None:
    """Save ``summary`` for the next run. ``config_files`` are files read besides the
    migration files (alembic.ini); ``roots`` are the folders a new migration would appear in."""
    key = _summary_key(settings)
    if key is None:
        return
    try:
        stamps = _stamps([p for _, p in summary.file_pairs()], config_files, roots)
        newest = max((mtime for _, mtime, _ in stamps["files"]), default=0)
        if time.time_ns() - newest < RACY_SECONDS * 1e9:
            return
        folder = _cache_folder()
        folder.mkdir(parents=True, exist_ok=True)
        entry = {"stamps": stamps, "summary": dataclasses.asdict(summary)}
        staging = folder / f"{key}.{os.getpid()}.tmp"
        staging.write_text(json.dumps(entry))
        staging.replace(folder / f"{key}.json")
    except OSError:
        pass  # a cache: the next run reads the migrations again
