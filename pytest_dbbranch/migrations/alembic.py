"""A project's Alembic migrations as the plugin uses them: what shapes the schema (for the
fingerprint), the target's revisions, and upgrading a branch, checked to have landed on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..conninfo import ServerAddress
from ..errors import ConfigError, MigrationError
from ..progress import Progress
from .alembic_config import alembic_config, anchor_paths, settings_values
from .alembic_run import run
from .versions import revisions_since, version_rows


@dataclass
class AlembicMigrator:
    """An Alembic configuration and its script directory, loaded and checked once per run."""

    #: alembic.ini, or a pyproject.toml with [tool.alembic].
    ini_path: Path
    config: Any  # alembic.config.Config
    script: Any  # alembic.script.ScriptDirectory
    #: Environment variables set to the branch's URL while Alembic runs (``dbbranch_url_env``).
    url_env: tuple[str, ...] = ("DATABASE_URL",)

    @property
    def script_dir(self) -> Path:
        return Path(self.script.dir)

    @property
    def url_scheme(self) -> str:
        """The driver the project's own URL names (``postgresql+asyncpg`` for an async env.py),
        else psycopg 3, which the plugin brings."""
        configured = self.config.get_main_option("sqlalchemy.url") or ""
        scheme = configured.split("://", 1)[0]
        return scheme if scheme.startswith("postgresql+") else "postgresql+psycopg"

    def new_config(self, url: str) -> Any:
        """A fresh Config for one run (env.py may stash state on it; branches must not share),
        with ``sqlalchemy.url`` pointing at the branch."""
        from alembic.config import Config

        toml = getattr(self.config, "toml_file_name", None)
        if self.ini_path.suffix == ".toml":
            config = Config(toml_file=str(self.ini_path))
        elif toml:
            config = Config(str(self.ini_path), toml_file=toml)
        else:
            config = Config(str(self.ini_path))
        anchor_paths(config, self.ini_path.parent)
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        return config

    def files(self) -> list[Path]:
        """Everything under the script directory that can shape the schema."""
        out = []
        for path in sorted(self.script_dir.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                out.append(path)
        return out

    def settings_text(self) -> list[tuple[str, str]]:
        return settings_values(self.ini_path, self.config.config_ini_section)

    def lineage(self) -> tuple[str, ...]:
        """The chain's first revisions: what tells one project's history from another's,
        wherever it is checked out."""
        return tuple(sorted(rev.revision for rev in self.script.walk_revisions() if not rev.down_revision))

    def upgrade(self, address: ServerAddress, target: str, *, progress: Progress | None = None) -> None:
        """Bring the database at ``address`` to ``target`` in one transaction (per env.py),
        then check that it really is there."""
        order: list[str] = []
        if progress is not None:
            import psycopg

            with psycopg.connect(address.conninfo(), connect_timeout=10) as conn:
                order = [s.revision for s in revisions_since(self.script, version_rows(conn), target)]
        run(self, address, target, "upgrade", progress=progress, order=order)
        self.verify(address, target)

    def downgrade(self, address: ServerAddress, target: str) -> None:
        """Take the database at ``address`` back to ``target`` (used by the reversibility check)."""
        run(self, address, target, "downgrade")
        self.verify(address, target)

    def verify(self, address: ServerAddress, target: str) -> None:
        """Alembic reports success for whatever database env.py migrated: compare the
        branch's own version table with the target, so a migration that went elsewhere
        stops the run instead of sealing an unmigrated template."""
        import psycopg

        expected = set(self._ids(target))
        with psycopg.connect(address.conninfo(), connect_timeout=10) as conn:
            actual = set(version_rows(conn))
        if actual == expected:
            return
        held = ", ".join(sorted(actual)) or "no revision"
        names = ", ".join(self.url_env) or "none"
        raise MigrationError(
            f"Alembic finished, but the branch {address.dbname} is not at {target!r}: its version "
            f"table holds {held}, expected {', '.join(sorted(expected)) or 'no revision'}.\n"
            "  env.py most likely migrated another database: it takes its URL from somewhere else "
            "than the connection pytest-dbbranch hands over (config.attributes['connection']) or "
            "sqlalchemy.url.\n"
            f"  -> if env.py reads its URL from an environment variable, name it in dbbranch_url_env "
            f"(now: {names}); if it reads an application settings object, use the handed-over "
            "connection (README: 'Alembic: env.py'). Nothing was sealed; check the other database."
        )

    def _ids(self, target: str) -> tuple[str, ...]:
        if target == "base":
            return ()
        return tuple(sorted(rev.revision for rev in self.script.get_revisions(target) if rev is not None))

    def resolve(self, target: str, where: str) -> tuple[str, ...]:
        """Revision ids a target stands for; refuses ambiguous 'head' and unknown ids."""
        from alembic.util import CommandError

        heads = tuple(self.script.get_heads())
        if target == "head" and len(heads) > 1:
            raise MigrationError(
                f"{self.script_dir}: the Alembic script directory has {len(heads)} heads "
                f"({', '.join(sorted(heads))}); merge them with `alembic merge heads` or set "
                f"{where} to one of them"
            )
        try:
            revisions = self.script.get_revisions(target)
        except CommandError as exc:
            raise MigrationError(
                f"{where}: target revision {target!r} does not exist in {self.script_dir} ({exc})"
            ) from None
        return tuple(sorted(rev.revision for rev in revisions if rev is not None))


def load_alembic(
    ini_path: Path, where: str, *, url_env: tuple[str, ...] = ("DATABASE_URL",)
) -> AlembicMigrator:
    """Read the Alembic configuration and its script directory with errors that name the file."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    config = alembic_config(ini_path, where)
    try:
        script = ScriptDirectory.from_config(config)
    except CommandError as exc:
        raise ConfigError(f"{ini_path}: script_location is not usable: {exc}") from None
    if not (Path(script.dir) / "env.py").is_file():
        raise ConfigError(f"{ini_path}: no env.py in the script directory {script.dir}")
    try:
        for _revision in script.walk_revisions():
            pass
    except KeyError as exc:
        raise ConfigError(
            f"{ini_path}: the Alembic history in {script.dir} is broken: a down_revision names "
            f"{exc.args[0]!r}, which no revision file defines"
        ) from None
    except SyntaxError as exc:
        raise ConfigError(f"{ini_path}: {exc.filename}, line {exc.lineno}: {exc.msg}") from None
    except Exception as exc:
        raise ConfigError(
            f"{ini_path}: the Alembic history in {script.dir} cannot be read: {type(exc).__name__}: {exc}"
        ) from None
    return AlembicMigrator(ini_path=ini_path, config=config, script=script, url_env=url_env)
