"""What a migrated template depends on.

If any input changes, the template name changes, so a stale template is never used by
mistake and no invalidation protocol is needed: old ones are just garbage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from ..names import short_hash

#: Bump when the way templates are built changes incompatibly.
FORMAT = "dbbranch-template-v1"


def fingerprint(
    *,
    source_identity: str,
    revisions: Iterable[str],
    server_version: int,
    alembic_files: Iterable[tuple[str, Path]] = (),
    alembic_ini: Path | None = None,
) -> str:
    digest = hashlib.sha256()

    def feed(label: str, value: bytes) -> None:
        digest.update(label.encode() + b"\0" + len(value).to_bytes(8, "big") + value)

    feed("format", FORMAT.encode())
    feed("source", source_identity.encode())
    feed("server", str(server_version).encode())
    feed("target", ",".join(sorted(revisions)).encode())
    if alembic_ini is not None:
        feed("ini", alembic_ini.read_bytes())
    for relative, path in sorted(alembic_files):
        feed("file:" + relative, path.read_bytes())
    return digest.hexdigest()


def template_group(*parts: str) -> str:
    """Groups templates that replace each other (same ini, source location, target)."""
    return short_hash("\0".join(parts), 10)
