"""Where branches live. ``open_backend`` is the one place that knows every backend; the rest
of the package talks to the ``Backend`` protocol and reads its capability flags."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..conninfo import ServerAddress
from ..names import short_hash
from ..settings import Settings
from .base import Backend, BranchRecord, Tag, build_lock, connect, run_lock, use_lock

if TYPE_CHECKING:
    from ..server.embedded import EmbeddedServer
    from .lakebase import LakebaseConfig

__all__ = [
    "Backend",
    "BranchRecord",
    "Tag",
    "backend_key",
    "build_lock",
    "connect",
    "lakebase_config",
    "open_backend",
    "run_lock",
    "use_lock",
]


def backend_key(settings: Settings) -> tuple[str, str | None]:
    """Settings that lead to the same backend share one instance (and one admin connection)."""
    kind = settings.effective_backend
    return kind, settings.lakebase_project if kind == "lakebase" else settings.url


def open_backend(
    settings: Settings,
    *,
    lock_root: Path,
    embedded: Callable[[], tuple[ServerAddress, EmbeddedServer]],
) -> Backend:
    """A backend for these settings. ``embedded`` leases the plugin's own server, called only
    when PostgreSQL is wanted and no URL is given; ``lock_root`` holds lock files shared by
    the processes of this machine."""
    if settings.effective_backend == "lakebase":
        raise ValueError(
            "a Lakebase run's backend is the PostgreSQL backend inside its branch: see LakebaseRun"
        )

    from .postgres import PostgresBackend

    if settings.url:
        address = ServerAddress.parse(settings.url, settings.origin("url"))
        key = f"postgres:{address.host}:{address.port}"
        folder = lock_root / short_hash(key, 10)
        return PostgresBackend(
            address,
            lock_folder=_made(folder),
            strategy=settings.strategy,
            server_key=key,
            timeout=settings.timeout,
        )
    address, server = embedded()
    return PostgresBackend(
        address,
        lock_folder=_made(server.home / "locks"),
        strategy=settings.strategy,
        reflink=server.reflink,
        server_key=f"embedded:{server.home}",
        timeout=settings.timeout,
        diagnose=server.log_tail,
    )


def lakebase_config(settings: Settings) -> LakebaseConfig:
    from .lakebase import LakebaseConfig

    return LakebaseConfig(
        project=settings.lakebase_project or "",
        profile=settings.lakebase_profile,
        port=settings.lakebase_port,
        sslmode=settings.lakebase_sslmode,
        database=settings.lakebase_database,
        run_ttl=settings.lakebase_run_ttl,
        test_ttl=settings.lakebase_ttl,
        template_max_age=settings.lakebase_template_max_age,
        source_time=settings.lakebase_source_time,
        limit=settings.lakebase_limit,
        timeout=settings.timeout,
    )


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
