"""Migration tools behind one small interface (``Migrator``): Alembic by default, a folder of
versioned SQL files named as Flyway names them, or a function of the user's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..settings import Settings
    from .base import Migrator


NO_MIGRATIONS = (
    "{where}: revision {revision!r} is set but there are no migrations (no alembic.ini found; "
    "set dbbranch_alembic_ini or dbbranch_migrations)"
)


def load_migrator(settings: Settings) -> Migrator | None:
    """The migrator the settings name, loaded and checked (None: no migrations)."""
    choice = settings.migrations
    where = settings.origin("migrations")
    if choice == "none":
        return None
    if choice.startswith("sql:"):
        from .sql_folder import load_sql_folder

        return load_sql_folder(settings.resolve_path(choice[4:]), where)
    if choice.startswith("callable:"):
        from .custom import load_callable

        return load_callable(choice[len("callable:") :], settings, where)
    ini = settings.alembic_ini_path()
    if ini is None:
        if choice == "alembic":
            raise ConfigError(
                f"{where}: migrations = alembic, but no Alembic configuration was found in "
                f"{settings.root} (alembic.ini, or [tool.alembic] in pyproject.toml); set "
                "dbbranch_alembic_ini"
            )
        return None
    from .alembic import load_alembic

    return load_alembic(ini, settings.origin("alembic_ini"), url_env=settings.url_env_names)
