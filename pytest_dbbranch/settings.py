"""The one settings object, and the one rule for where each value comes from.

Precedence, highest first: marker or factory argument > command-line option > environment
variable > ini value (``[tool.pytest.ini_options]``, ``pytest.ini``, ``tox.ini``) > default.
Keeping a single resolver means the plugin, the ``dbbranch`` command line and a user's
script all agree on what a given environment means.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

KeepPolicy = Literal["never", "failed", "always"]
Strategy = Literal["auto", "file_copy", "wal_log"]

KEEP_CHOICES = ("never", "failed", "always")
STRATEGY_CHOICES = ("auto", "file_copy", "wal_log")


@dataclass(frozen=True)
class Spec:
    """Where one setting can be given, and how its text becomes a value."""

    name: str
    env: str
    ini: str
    help: str
    default: Any = None
    parse: Callable[[str, str], Any] = lambda v, _where: v or None
    choices: tuple[str, ...] | None = None
    flag: bool = False

    @property
    def option(self) -> str:
        return "--dbbranch-" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        return "dbbranch_" + self.name


def _parse_bool(value: str, where: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _choice(choices: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(value: str, where: str) -> str:
        text = value.strip().lower()
        if text not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


def _revision(value: str, where: str) -> str:
    text = value.strip()
    if not text:
        raise ConfigError(f"{where}: the target revision is empty (use 'head' or a revision id)")
    return text


SPECS: tuple[Spec, ...] = (
    Spec(
        "url",
        "DBBRANCH_URL",
        "dbbranch_url",
        "PostgreSQL server to branch on (postgresql://user:password@host:port/dbname). "
        "Unset: the plugin starts its own embedded server.",
    ),
    Spec(
        "source",
        "DBBRANCH_SOURCE",
        "dbbranch_source",
        "The production snapshot branches start from: a database name on the server, a "
        "dump file (plain SQL or pg_dump -Fc), or 'empty'. Default: empty.",
    ),
    Spec(
        "alembic_ini",
        "DBBRANCH_ALEMBIC_INI",
        "dbbranch_alembic_ini",
        "Path of alembic.ini. Default: alembic.ini in the rootdir if it exists, else no "
        "migrations; 'none' turns migrations off.",
    ),
    Spec(
        "revision",
        "DBBRANCH_REVISION",
        "dbbranch_revision",
        "Alembic revision the template is migrated to (default: head).",
        default="head",
        parse=_revision,
    ),
    Spec(
        "keep",
        "DBBRANCH_KEEP",
        "dbbranch_keep",
        "Keep branches after teardown: never, failed (of failed tests) or always.",
        default="never",
        parse=_choice(KEEP_CHOICES),
        choices=KEEP_CHOICES,
    ),
    Spec(
        "rebuild",
        "DBBRANCH_REBUILD",
        "dbbranch_rebuild",
        "Rebuild the migrated template even if a valid one exists.",
        default=False,
        parse=_parse_bool,
        flag=True,
    ),
    Spec(
        "strategy",
        "DBBRANCH_STRATEGY",
        "dbbranch_strategy",
        "CREATE DATABASE strategy: auto (FILE_COPY on a non-durable server, WAL_LOG "
        "otherwise), file_copy or wal_log.",
        default="auto",
        parse=_choice(STRATEGY_CHOICES),
        choices=STRATEGY_CHOICES,
    ),
    Spec(
        "embedded_dir",
        "DBBRANCH_EMBEDDED_DIR",
        "dbbranch_embedded_dir",
        "Folder for the embedded server's data (default: a folder under /dev/shm when it "
        "exists, else the temp folder).",
    ),
)

SPECS_BY_NAME = {spec.name: spec for spec in SPECS}

#: Settings a marker or a factory may change for one fixture.
OVERRIDABLE = ("url", "source", "alembic_ini", "revision", "keep")


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. ``root`` anchors relative paths (the pytest rootdir or the
    folder of the ini file), so a setting means the same from any working directory."""

    url: str | None = None
    source: str | None = None
    alembic_ini: str | None = None
    revision: str = "head"
    keep: KeepPolicy = "never"
    rebuild: bool = False
    strategy: Strategy = "auto"
    embedded_dir: str | None = None
    root: Path = field(default_factory=Path.cwd)
    #: Where each value came from, for error messages ("--dbbranch-source", "DBBRANCH_URL"...).
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def with_overrides(self, where: str, **values: Any) -> Settings:
        """Apply marker or factory arguments, the highest level of the precedence."""
        unknown = set(values) - set(OVERRIDABLE)
        if unknown:
            raise ConfigError(
                f"{where}: unknown argument(s) {', '.join(sorted(unknown))}; "
                f"accepted: {', '.join(OVERRIDABLE)}"
            )
        changes: dict[str, Any] = {}
        origins = dict(self.origins)
        for name, value in values.items():
            if value is None:
                continue
            spec = SPECS_BY_NAME[name]
            # Markers pass arbitrary objects (Path, int...): everything goes through the parser.
            changes[name] = spec.parse(str(value), where)
            origins[name] = where
        if not changes:
            return self
        return dataclasses.replace(self, origins=origins, **changes)

    def origin(self, name: str) -> str:
        """Human-readable name of the place this setting was taken from."""
        spec = SPECS_BY_NAME[name]
        return self.origins.get(name, f"{spec.option} / {spec.env} / ini {spec.ini}")

    def resolve_path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.root / path)

    def alembic_ini_path(self) -> Path | None:
        """None means: no migrations. Explicit paths are checked later, with a clear error."""
        if self.alembic_ini is not None:
            if self.alembic_ini.strip().lower() in ("none", "off", "false"):
                return None
            return self.resolve_path(self.alembic_ini)
        default = self.root / "alembic.ini"
        return default if default.is_file() else None


def resolve(
    *,
    options: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    ini: Mapping[str, Any] | None = None,
    root: Path | None = None,
) -> Settings:
    """Combine the sources by the documented precedence.

    ``options`` maps setting names to command-line values (None = not given), ``ini`` maps
    setting names to ini text (None or '' = not given).
    """
    options = options or {}
    env = env or {}
    ini = ini or {}
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for spec in SPECS:
        raw_option = options.get(spec.name)
        if raw_option is not None and raw_option is not False:
            where = spec.option
            values[spec.name] = spec.parse(raw_option, where) if isinstance(raw_option, str) else raw_option
            origins[spec.name] = where
            continue
        raw_env = env.get(spec.env)
        if raw_env is not None and raw_env != "":
            values[spec.name] = spec.parse(raw_env, f"environment variable {spec.env}")
            origins[spec.name] = f"environment variable {spec.env}"
            continue
        raw_ini = ini.get(spec.name)
        if raw_ini is not None and raw_ini != "" and raw_ini != []:
            text = raw_ini if isinstance(raw_ini, str) else " ".join(map(str, raw_ini))
            values[spec.name] = spec.parse(text, f"ini option {spec.ini}")
            origins[spec.name] = f"ini option {spec.ini}"
            continue
        values[spec.name] = spec.default
    return Settings(root=root or Path.cwd(), origins=origins, **values)
