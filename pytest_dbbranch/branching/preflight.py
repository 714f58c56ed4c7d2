"""What can be known wrong about the settings before any server is asked: checked once, at
the start of a run, so a typo is one usage error instead of the same error for every test."""

from __future__ import annotations

from ..conninfo import ServerAddress
from ..errors import ConfigError
from ..migrations import NO_MIGRATIONS, load_migrator
from ..server.embedded import check_base_dir
from ..settings import Settings
from .fingerprint import cached_summary
from .sources import parse_source

LIBPQ_MISSING = (
    "pytest-dbbranch cannot load psycopg ({error}). psycopg needs libpq: install "
    "'pytest-dbbranch[binary]' (psycopg with its own libpq) or the PostgreSQL client "
    "library of your system (libpq5, postgresql-libs)"
)


def check(settings: Settings) -> None:
    """Raise the ``DbBranchError`` a run with these settings would meet first, if any can be
    found without a server: libpq, the URL's form, the embedded folder and binaries, the
    source, the Alembic configuration and target, the fingerprint globs."""
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise ConfigError(LIBPQ_MISSING.format(error=exc)) from None
    if settings.url:
        ServerAddress.parse(settings.url, settings.origin("url"))
    elif settings.effective_backend == "postgres":
        folder = settings.resolve_path(settings.embedded_dir) if settings.embedded_dir else None
        check_base_dir(folder, settings.origin("embedded_dir"))
    parse_source(settings)
    # Skipped when the migrations passed it before and have not changed since (no Alembic import).
    if cached_summary(settings) is None:
        migrator = load_migrator(settings)
        if migrator is not None:
            migrator.resolve(settings.revision, settings.origin("revision"))
        elif settings.revision != "head":
            raise ConfigError(
                NO_MIGRATIONS.format(where=settings.origin("revision"), revision=settings.revision)
            )
    settings.fingerprint_paths()
