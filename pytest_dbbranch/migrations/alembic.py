"""A project's Alembic migrations as the plugin uses them (the default ``Migrator``): what
shapes the schema (for the fingerprint), the target's revisions, and upgrading a branch,
checked to have landed on it."""

from __future__ import annotations

import ast
import inspect
import io
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..conninfo import ServerAddress
from ..errors import ConfigError, MigrationError
from ..progress import Progress
from .alembic_config import alembic_config, anchor_paths, settings_values
from .alembic_run import logging_kept, run
from .base import Revision
from .versions import revisions_since, version_rows

#: What in an env.py suggests it picks its version folders itself, at run time.
_PICKS_FOLDERS = re.compile(r"version_locations|script_location|ScriptDirectory|\.script\b")


@dataclass
class AlembicMigrator:
    """An Alembic configuration and its script directory, loaded and checked once per run."""

    kind = "alembic"
    can_downgrade = True

    #: alembic.ini, or a pyproject.toml with [tool.alembic].
    ini_path: Path
    config: Any  # alembic.config.Config
    script: Any  # alembic.script.ScriptDirectory
    #: Environment variables set to the branch's URL while Alembic runs (``dbbranch_url_env``).
    url_env: tuple[str, ...] = ("DATABASE_URL",)
    #: Why the version folders env.py picks at run time could not be learned, if it tried.
    discovery_error: str | None = field(default=None, repr=False)

    @property
    def description(self) -> str:
        return f"the Alembic configuration {self.ini_path}"

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

    @property
    def version_folders(self) -> list[Path]:
        return [Path(folder) for folder in self.script._version_locations]

    def files(self) -> list[tuple[str, Path]]:
        """Everything under the script directory, and under version folders outside it, that
        can shape the schema; named relative to those folders so that another checkout of
        the same project gets the same names."""
        out: dict[Path, str] = {}
        roots = [("scripts", self.script_dir)] + [
            (f"versions{i}", folder) for i, folder in enumerate(self.version_folders)
        ]
        for label, root in roots:
            if not root.is_dir():
                continue
            for path in sorted(root.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                    out.setdefault(path, f"{label}/{path.relative_to(root)}")
        return sorted(((name, path) for path, name in out.items()), key=lambda pair: pair[0])

    def settings_text(self) -> list[tuple[str, str]]:
        return settings_values(self.ini_path, self.config.config_ini_section)

    def lineage(self) -> tuple[str, ...]:
        """The chain's first revisions: what tells one project's history from another's,
        wherever it is checked out."""
        return tuple(sorted(rev.revision for rev in self.script.walk_revisions() if not rev.down_revision))

    def heads(self) -> list[str]:
        return sorted(self.script.get_heads())

    def revisions(self) -> list[Revision]:
        return [_revision(script) for script in reversed(list(self.script.walk_revisions()))]

    def applied(self, address: ServerAddress) -> tuple[str, ...]:
        import psycopg

        with psycopg.connect(address.conninfo(), connect_timeout=10) as conn:
            return version_rows(conn)

    def pending(self, applied: tuple[str, ...], target: str) -> list[Revision]:
        return [_revision(script) for script in revisions_since(self.script, applied, target)]

    def upgrade(self, address: ServerAddress, target: str, *, progress: Progress | None = None) -> None:
        """Bring the database at ``address`` to ``target`` in one transaction (per env.py),
        then check that it really is there."""
        order: list[str] = []
        if progress is not None:
            import psycopg

            with psycopg.connect(address.conninfo(), connect_timeout=10) as conn:
                order = [s.revision for s in revisions_since(self.script, version_rows(conn), target)]
        run(self, address, target, "upgrade", progress=progress, order=order)
        self.verify(address, target, exact=False)

    def downgrade(self, address: ServerAddress, target: str) -> None:
        """Take the database at ``address`` back to ``target`` (used by the reversibility check)."""
        run(self, address, target, "downgrade")
        self.verify(address, target)

    def verify(self, address: ServerAddress, target: str, *, exact: bool = True) -> None:
        """Alembic reports success for whatever database env.py migrated: compare the
        branch's own version table with the target, so a migration that went elsewhere
        stops the run instead of sealing an unmigrated template."""
        import psycopg

        expected = set(self._ids(target))
        with psycopg.connect(address.conninfo(), connect_timeout=10) as conn:
            actual = set(version_rows(conn))
        # After an upgrade, heads of other branches of the history may stay beside the target.
        if actual == expected or (not exact and expected and expected <= actual):
            return
        held = ", ".join(sorted(actual)) or "no revision"
        known = {script.revision for script in self.script.walk_revisions()}
        if actual - known:
            raise MigrationError(
                f"Alembic finished, but the branch {address.dbname} records revisions "
                f"({', '.join(sorted(actual - known))}) that no file in the version folders "
                f"pytest-dbbranch read ({', '.join(map(str, self.version_folders))}) defines: "
                "env.py picks other version folders at run time"
                + (
                    f", and running it offline to learn them failed ({self.discovery_error})"
                    * bool(self.discovery_error)
                )
                + ".\n  -> name the folders in version_locations of the Alembic configuration, "
                "so every tool reads the same history."
            )
        names = ", ".join(self.url_env) or "none"
        raise MigrationError(
            f"Alembic finished, but the branch {address.dbname} is not at {target!r}: its version "
            f"table holds {held}, expected {', '.join(sorted(expected)) or 'no revision'}.\n"
            "  env.py most likely migrated another database: it takes its URL from somewhere else "
            "than the connection pytest-dbbranch hands over (config.attributes['connection']) or "
            "sqlalchemy.url.\n"
            f"  -> if env.py reads its URL from an environment variable, name it in dbbranch_url_env "
            f"(now: {names}); if it reads an application settings object, use the handed-over "
            "connection (README: 'Alembic: env.py'). Check the other database: it was migrated."
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


def _revision(script: Any) -> Revision:
    down = script.down_revision
    downs = tuple(down) if isinstance(down, tuple | list) else ((down,) if down else ())
    return Revision(
        id=script.revision,
        path=Path(script.path),
        title=(script.doc or "").strip(),
        down=downs,
        has_downgrade=has_downgrade(script),
    )


def has_downgrade(script: Any) -> bool:
    """A downgrade() that is missing or only passes (or raises) cannot undo anything."""
    function = getattr(script.module, "downgrade", None)
    if function is None:
        return False
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return True
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.FunctionDef) else []
    meaningful = [
        node
        for node in body
        if not isinstance(node, ast.Pass | ast.Raise)
        and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
    ]
    return bool(meaningful)


def downgrade_line(path: Path) -> int:
    """The line of a revision file's ``def downgrade`` (1 when it has none)."""
    try:
        text = path.read_text().splitlines()
    except OSError:
        return 1
    for number, line in enumerate(text, start=1):
        if line.lstrip().startswith("def downgrade"):
            return number
    return 1


def _discover(migrator: AlembicMigrator) -> None:
    """Some env.py files pick the version folders themselves (``context.script.
    version_locations = ...``, from application settings). Run env.py once offline with
    nothing to migrate and adopt the folders it left, so heads, revisions, the fingerprint
    and the checks see the history Alembic really runs."""
    env_text = (migrator.script_dir / "env.py").read_text(errors="replace")
    if not _PICKS_FOLDERS.search(env_text) and list(migrator.script.walk_revisions()):
        return
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    # An address that cannot be reached without any network: env.py learns nothing from it.
    config = migrator.new_config("postgresql+psycopg://dbbranch-discovery@/none?host=/nonexistent")
    script = ScriptDirectory.from_config(config)
    before = list(script.version_locations or [])
    try:
        with (
            logging_kept(),
            EnvironmentContext(
                config, script, fn=lambda rev, context: [], as_sql=True, output_buffer=io.StringIO()
            ),
        ):
            script.run_env()
    except (Exception, SystemExit) as exc:  # env.py may refuse offline mode, after choosing folders
        migrator.discovery_error = f"{type(exc).__name__}: {exc}"[:300]
    # Alembic builds its script directory before env.py runs, so only a change env.py makes
    # to that object (not to the configuration) changes what Alembic runs.
    if list(script.version_locations or []) != before:
        migrator.script = script


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
    migrator = AlembicMigrator(ini_path=ini_path, config=config, script=script, url_env=url_env)
    _discover(migrator)
    return migrator
