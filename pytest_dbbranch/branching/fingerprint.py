"""What a migrated template depends on.

If any input changes, the template name changes, so a stale template is never used by
mistake and no invalidation protocol is needed: old ones are just garbage. Only content
counts (file contents and their paths relative to the project, never absolute paths), so the
same project checked out in three folders, or on three CI runners, shares one template.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from ..names import short_hash

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
