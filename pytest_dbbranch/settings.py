"""The one settings object, and the one rule for where each value comes from.

Precedence, highest first: marker or factory argument > command-line option > environment
variable > ini value (``[tool.pytest.ini_options]``, ``pytest.ini``, ``tox.ini``) > default.
Keeping a single resolver means the plugin, the ``dbbranch`` command line and a user's
script all agree on what a given environment means.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

KeepPolicy = Literal["never", "failed", "always"]
Strategy = Literal["auto", "file_copy", "wal_log", "clone"]

Isolation = Literal["branch", "clone", "rollback"]
BackendName = Literal["auto", "postgres", "lakebase"]

KEEP_CHOICES = ("never", "failed", "always")
STRATEGY_CHOICES = ("auto", "file_copy", "wal_log", "clone")
ISOLATION_CHOICES = ("branch", "clone", "rollback")
BACKEND_CHOICES = ("auto", "postgres", "lakebase")


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


def parse_duration(value: str, where: str) -> int:
    """Seconds from '90', '90s', '30m', '1h' or '7d'."""
    text = value.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    factor = units.get(text[-1:], 0)
    number = text[:-1] if factor else text
    try:
        seconds = int(float(number) * (factor or 1))
    except ValueError:
        raise ConfigError(f"{where}: expected a duration such as 900, 15m, 1h or 7d, got {value!r}") from None
    if seconds <= 0:
        raise ConfigError(f"{where}: the duration must be positive, got {value!r}")
    return seconds


def _count(value: str, where: str, minimum: int = 1) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise ConfigError(f"{where}: expected a whole number, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{where}: must be at least {minimum}, got {value!r}")
    return number


def _port(value: str, where: str) -> int:
    number = _count(value, where)
    if number > 65535:
        raise ConfigError(f"{where}: {value!r} is not a port number")
    return number


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
        "CREATE DATABASE strategy: auto (FILE_COPY with reflink clones where the embedded "
        "server's data folder supports them, FILE_COPY on a non-durable server, WAL_LOG on a "
        "durable one), file_copy, wal_log, or clone (FILE_COPY with file_copy_method=clone, "
        "PostgreSQL 18+).",
        default="auto",
        parse=_choice(STRATEGY_CHOICES),
        choices=STRATEGY_CHOICES,
    ),
    Spec(
        "isolation",
        "DBBRANCH_ISOLATION",
        "dbbranch_isolation",
        "How a function-scope test is isolated: branch (its own branch of the template), clone "
        "(CREATE DATABASE inside a per-worker branch; fast on Lakebase) or rollback (a transaction "
        "rolled back at teardown).",
        default="branch",
        parse=_choice(ISOLATION_CHOICES),
        choices=ISOLATION_CHOICES,
    ),
    Spec(
        "module_isolation",
        "DBBRANCH_MODULE_ISOLATION",
        "dbbranch_module_isolation",
        "The same choice for module-scope branches.",
        default="branch",
        parse=_choice(ISOLATION_CHOICES),
        choices=ISOLATION_CHOICES,
    ),
    Spec(
        "pool_size",
        "DBBRANCH_POOL_SIZE",
        "dbbranch_pool_size",
        "Function-scope branches each worker forks ahead in the background on PostgreSQL: a "
        "number (0 = off) or auto (2 while xdist workers < CPU cores, else off: measured on 2 "
        "cores, the pool only helps when a core is free for it).",
        default=None,
        parse=lambda value, where: (
            None if value.strip().lower() == "auto" else _count(value, where, minimum=0)
        ),
    ),
    Spec(
        "check_migrations",
        "DBBRANCH_CHECK_MIGRATIONS",
        "dbbranch_check_migrations",
        "Add the migration checks (single head, applies, idempotent, reversible, models match) "
        "as test items.",
        default=False,
        parse=_parse_bool,
        flag=True,
    ),
    Spec(
        "models",
        "DBBRANCH_MODELS",
        "dbbranch_models",
        "SQLAlchemy MetaData (or declarative base) the migrated schema must match, as "
        "'package.module:metadata'; enables the models-match check.",
    ),
    Spec(
        "schema_diff",
        "DBBRANCH_SCHEMA_DIFF",
        "dbbranch_schema_diff",
        "Write the schema difference between the source and the migrated template to this file.",
    ),
    Spec(
        "diff_format",
        "DBBRANCH_DIFF_FORMAT",
        "dbbranch_diff_format",
        "Format of the schema diff: markdown or json.",
        default="markdown",
        parse=_choice(("markdown", "json")),
        choices=("markdown", "json"),
    ),
    Spec(
        "backend",
        "DBBRANCH_BACKEND",
        "dbbranch_backend",
        "Where branches live: postgres, lakebase, or auto (lakebase when a Lakebase project is set).",
        default="auto",
        parse=_choice(BACKEND_CHOICES),
        choices=BACKEND_CHOICES,
    ),
    Spec(
        "lakebase_project",
        "DBBRANCH_LAKEBASE_PROJECT",
        "dbbranch_lakebase_project",
        "Lakebase project id (projects/<id>); authentication is databricks-sdk's own "
        "(DATABRICKS_* variables, ~/.databrickscfg).",
    ),
    Spec(
        "lakebase_profile",
        "DBBRANCH_LAKEBASE_PROFILE",
        "dbbranch_lakebase_profile",
        "Profile of ~/.databrickscfg to authenticate with.",
    ),
    Spec(
        "lakebase_source_time",
        "DBBRANCH_LAKEBASE_SOURCE_TIME",
        "dbbranch_lakebase_source_time",
        "Branch the source at this point in time (RFC 3339), instead of its current state.",
    ),
    Spec(
        "lakebase_ttl",
        "DBBRANCH_LAKEBASE_TTL",
        "dbbranch_lakebase_ttl",
        "TTL of test branches, so a crashed run's branches expire on their own (default 1h).",
        default=3600,
        parse=parse_duration,
    ),
    Spec(
        "lakebase_template_ttl",
        "DBBRANCH_LAKEBASE_TEMPLATE_TTL",
        "dbbranch_lakebase_template_ttl",
        "TTL of migrated template branches, reused across runs until then (default 7d).",
        default=7 * 86400,
        parse=parse_duration,
    ),
    Spec(
        "lakebase_budget",
        "DBBRANCH_LAKEBASE_BUDGET",
        "dbbranch_lakebase_budget",
        "Most Lakebase branches this machine's workers hold at once (default 6; projects allow "
        "about 10 unarchived branches).",
        default=6,
        parse=_count,
    ),
    Spec(
        "lakebase_port",
        "DBBRANCH_LAKEBASE_PORT",
        "dbbranch_lakebase_port",
        "PostgreSQL port of Lakebase endpoints (5432; the emulator prints its own).",
        default=5432,
        parse=_port,
    ),
    Spec(
        "lakebase_sslmode",
        "DBBRANCH_LAKEBASE_SSLMODE",
        "dbbranch_lakebase_sslmode",
        "sslmode for Lakebase connections (default require).",
        default="require",
    ),
    Spec(
        "lakebase_database",
        "DBBRANCH_LAKEBASE_DATABASE",
        "dbbranch_lakebase_database",
        "Database to connect to on each Lakebase branch (default databricks_postgres).",
        default="databricks_postgres",
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
OVERRIDABLE = ("url", "source", "alembic_ini", "revision", "keep", "isolation")


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
    pool_size: int | None = None
    check_migrations: bool = False
    models: str | None = None
    schema_diff: str | None = None
    diff_format: str = "markdown"
    isolation: Isolation = "branch"
    module_isolation: Isolation = "branch"
    backend: BackendName = "auto"
    lakebase_project: str | None = None
    lakebase_profile: str | None = None
    lakebase_source_time: str | None = None
    lakebase_ttl: int = 3600
    lakebase_template_ttl: int = 7 * 86400
    lakebase_budget: int = 6
    lakebase_port: int = 5432
    lakebase_sslmode: str = "require"
    lakebase_database: str = "databricks_postgres"
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

    @property
    def backend_name(self) -> str:
        if self.backend == "auto":
            return "lakebase" if self.lakebase_project else "postgres"
        return self.backend

    def effective_pool_size(self) -> int:
        """``auto``: a pool only when a CPU core is left for its background thread."""
        if self.pool_size is not None:
            return self.pool_size
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
        return 2 if workers < (os.cpu_count() or 1) else 0

    def isolation_for(self, scope: str) -> Isolation:
        if scope == "function":
            return self.isolation
        if scope == "module":
            return self.module_isolation
        return "branch"

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
