"""The one settings object, and the one rule for where each value comes from.

Precedence, highest first: marker or factory argument > command-line option > environment
variable > ini value (``[tool.pytest.ini_options]``, ``pytest.ini``, ``tox.ini``) > default.
Keeping a single resolver means the plugin, the ``dbbranch`` command line and a user's
script all agree on what a given environment means.

Each setting is declared once, as a field of ``Settings`` with its help and parser; the
option, environment and ini names, the choices and the list of settings a marker may
change are derived from that declaration, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .conninfo import redact_text
from .errors import ConfigError

KeepPolicy = Literal["never", "failed", "always"]
Strategy = Literal["auto", "file_copy", "wal_log", "clone"]
Isolation = Literal["branch", "clone", "rollback", "lakebase_branch"]
BackendName = Literal["auto", "postgres", "lakebase"]
DiffFormat = Literal["markdown", "json"]
CheckData = Literal["hash", "count", "off"]

Parser = Callable[[str, str], Any]


def _text(value: str, where: str) -> str | None:
    return value.strip() or None


def _parse_bool(value: str, where: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


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


#: More pre-forked branches than this only multiply disk use: each is a full copy.
MAX_POOL_SIZE = 16


def _pool_size(value: str, where: str) -> int | None:
    if value.strip().lower() == "auto":
        return None
    size = _count(value, where, minimum=0)
    if size > MAX_POOL_SIZE:
        raise ConfigError(
            f"{where}: a warm pool of {size} branches would hold {size} copies of the template at "
            f"once; at most {MAX_POOL_SIZE} (2 is plenty: the pool only has to stay ahead of one test)"
        )
    return size


#: How long the embedded server outlives a local run when nothing says otherwise.
DEFAULT_EMBEDDED_IDLE = 900


def _idle(value: str, where: str) -> int:
    """Seconds, a duration (15m), or 0/off: stop with the run."""
    if value.strip().lower() in ("0", "off", "no", "false", "none"):
        return 0
    return parse_duration(value, where)


def _on_ci() -> bool:
    """The ``CI`` variable every CI service sets: there no run comes back to reuse a server."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def _names(value: str, where: str) -> str:
    """Environment variable names, comma or space separated; 'none' for none."""
    names = [name for name in re.split(r"[,\s]+", value.strip()) if name]
    if [n.lower() for n in names] == ["none"] or not names:
        return "none"
    bad = [name for name in names if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)]
    if bad:
        raise ConfigError(f"{where}: {', '.join(map(repr, bad))} is not an environment variable name")
    return ",".join(names)


def _globs(value: str, where: str) -> str | None:
    patterns = [p for p in re.split(r"[,\s]+", value.strip()) if p]
    return ",".join(patterns) or None


def _revision(value: str, where: str) -> str:
    text = value.strip()
    if not text:
        raise ConfigError(f"{where}: the target revision is empty (use 'head' or a revision id)")
    return text


def _migrations(value: str, where: str) -> str:
    text = value.strip()
    kind, _, rest = text.partition(":")
    if text.lower() in ("auto", "alembic", "none"):
        return text.lower()
    if kind == "sql" and rest.strip():
        return f"sql:{rest.strip()}"
    if kind == "callable" and re.fullmatch(r"[\w.]+:[\w.]+", rest.strip()):
        return f"callable:{rest.strip()}"
    raise ConfigError(
        f"{where}: expected auto, alembic, none, sql:FOLDER or callable:package.module:function, "
        f"got {value!r}"
    )


def setting(
    default: Any,
    help: str,
    parse: Parser = _text,
    *,
    flag: bool = False,
    overridable: bool = False,
    secret: bool = False,
) -> Any:
    """Declare a setting: its default, the help text of its option, and how text becomes a
    value. ``overridable``: a marker or ``branch_fixture`` may change it for one fixture.
    ``secret``: the value may hold a password, so it never appears in a repr."""
    meta = {"help": help, "parse": parse, "flag": flag, "overridable": overridable}
    return field(default=default, repr=not secret, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. ``root`` anchors relative paths (the pytest rootdir or the
    folder of the ini file), so a setting means the same from any working directory.

    Built directly (a user's script), every value is checked as if it came from an option."""

    url: str | None = setting(
        None,
        "PostgreSQL server to branch on (postgresql://user:password@host:port/dbname). "
        "Unset: the plugin starts its own embedded server.",
        overridable=True,
        secret=True,
    )
    source: str | None = setting(
        None,
        "The production snapshot branches start from: a database name on the server, a dump "
        "file (plain SQL or pg_dump -Fc), or 'empty'. Default: empty.",
        overridable=True,
    )
    alembic_ini: str | None = setting(
        None,
        "Path of alembic.ini. Default: alembic.ini in the rootdir if it exists, else no "
        "migrations; 'none' turns migrations off.",
        overridable=True,
    )
    migrations: str = setting(
        "auto",
        "The migration tool: alembic (the Alembic configuration of dbbranch_alembic_ini), "
        "sql:FOLDER (versioned SQL files named as Flyway names them, V<version>__<title>.sql "
        "and R__<title>.sql), callable:package.module:function (your own function, called with "
        "the branch's URL and the target), or none. Default auto: alembic when an Alembic "
        "configuration is found, else none.",
        _migrations,
        overridable=True,
    )
    revision: str = setting(
        "head",
        "Revision the template is migrated to (default: head, the newest).",
        _revision,
        overridable=True,
    )
    url_env: str = setting(
        "DATABASE_URL",
        "Environment variables set to the branch's URL while Alembic runs in process, for "
        "env.py files that read their URL from the environment (each keeps the scheme of its "
        "current value); comma or space separated, 'none' for none.",
        _names,
    )
    fingerprint_files: str | None = setting(
        None,
        "Files outside the Alembic script folder that migrations import (globs relative to the "
        "rootdir, comma or space separated): their content is part of the template fingerprint.",
        _globs,
    )
    keep: KeepPolicy = setting(
        "never", "Keep branches after teardown: never, failed (of failed tests) or always.", overridable=True
    )
    isolation: Isolation = setting(
        "branch",
        "How a function-scope test is isolated: branch (its own copy of the template; on "
        "Lakebase a database inside the run's branch), clone (the same, kept for older "
        "configurations), rollback (a transaction rolled back at teardown) or lakebase_branch "
        "(on Lakebase only: a Lakebase branch of its own, with its own compute and a short "
        "TTL). A marker or branch_fixture(isolation=...) sets it for the scope of the fixture "
        "it applies to.",
        overridable=True,
    )
    module_isolation: Isolation = setting("branch", "The same choice for module-scope branches.")
    rebuild: bool = setting(
        False, "Rebuild the migrated template even if a valid one exists.", _parse_bool, flag=True
    )
    strategy: Strategy = setting(
        "auto",
        "CREATE DATABASE strategy: auto (FILE_COPY with reflink clones where the embedded "
        "server's data folder supports them, FILE_COPY on a non-durable server, WAL_LOG on a "
        "durable one), file_copy, wal_log, or clone (FILE_COPY with file_copy_method=clone, "
        "PostgreSQL 18+).",
    )
    pool_size: int | None = setting(
        None,
        "Function-scope branches each worker forks ahead in the background on PostgreSQL: a "
        "number (0 = off) or auto (2 while xdist workers <= CPU cores, else off: measured on 2 "
        "cores at -n 2, the pool halves the time a test waits for its branch).",
        _pool_size,
    )
    check_migrations: bool = setting(
        False,
        "Add the migration checks (single head, applies, idempotent, reversible, models match) "
        "as test items.",
        _parse_bool,
        flag=True,
    )
    downgrades_optional: bool = setting(
        False,
        "Revisions may lack a downgrade (a team policy of forward-only fixes): the reversible "
        "check lists them and checks the others, instead of failing.",
        _parse_bool,
        flag=True,
    )
    check_data: CheckData = setting(
        "hash",
        "What the reversible and idempotent checks compare besides the schema: hash (row "
        "counts and a hash of the rows of every table), count (row counts) or off.",
    )
    models: str | None = setting(
        None,
        "SQLAlchemy MetaData (or declarative base) the migrated schema must match, as "
        "'package.module:metadata'; enables the models-match check.",
    )
    schema_diff: str | None = setting(
        None, "Write the schema difference between the source and the migrated template to this file."
    )
    diff_format: DiffFormat = setting("markdown", "Format of the schema diff: markdown or json.")
    backend: BackendName = setting(
        "auto", "Where branches live: postgres, lakebase, or auto (lakebase when a Lakebase project is set)."
    )
    lakebase_project: str | None = setting(
        None,
        "Lakebase project id (projects/<id>); authentication is databricks-sdk's own "
        "(DATABRICKS_* variables, ~/.databrickscfg).",
    )
    lakebase_profile: str | None = setting(None, "Profile of ~/.databrickscfg to authenticate with.")
    lakebase_source_time: str | None = setting(
        None, "Branch the source at this point in time (RFC 3339), instead of its current state."
    )
    lakebase_run_ttl: int = setting(
        3600,
        "TTL of the run's Lakebase branch, extended by a heartbeat while the run lives, so a "
        "cancelled job's branch expires this long after its last beat (default 1h).",
        parse_duration,
    )
    lakebase_ttl: int = setting(
        900,
        "TTL of a test's own Lakebase branch (isolation lakebase_branch) (default 15m).",
        parse_duration,
    )
    lakebase_template_max_age: int = setting(
        7 * 86400,
        "How old a Lakebase copy of the source with its migrated templates may be before a run "
        "makes a fresh one from the moving source (default 7d).",
        parse_duration,
    )
    lakebase_limit: int = setting(
        10,
        "Unarchived branches the Lakebase project allows (default 10): a test's own branch "
        "waits for room instead of being refused.",
        _count,
    )
    lakebase_port: int = setting(
        5432, "PostgreSQL port of Lakebase endpoints (5432; the emulator prints its own).", _port
    )
    lakebase_sslmode: str = setting("require", "sslmode for Lakebase connections (default require).")
    lakebase_database: str = setting(
        "databricks_postgres",
        "Database to connect to on each Lakebase branch (default databricks_postgres).",
    )
    timeout: int = setting(
        600,
        "Longest wait for one answer of the server (a statement, a connection) and for another "
        "process building the same template, before the run stops with an error (default 10m).",
        parse_duration,
    )
    embedded_dir: str | None = setting(
        None,
        "Folder for the embedded server's data (default: a folder under /dev/shm when it exists, "
        "else the temp folder).",
    )
    embedded_idle: int = setting(
        DEFAULT_EMBEDDED_IDLE,
        "How long the embedded server stays up after the last run leaves, so the next run "
        "attaches to it instead of starting one (seconds or a duration such as 15m; 0 = stop "
        f"with the run; default {DEFAULT_EMBEDDED_IDLE // 60}m, or 0 when the CI variable is set).",
        _idle,
    )
    root: Path = field(default_factory=Path.cwd)
    #: Where each value came from, for error messages ("--dbbranch-source", "DBBRANCH_URL"...).
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for spec in SPECS:
            value = getattr(self, spec.name)
            where = self.origins.get(spec.name, f"Settings({spec.name}=...)")
            if value is not None and value != spec.default:
                value = spec.parse(_as_text(value), where)
                object.__setattr__(self, spec.name, value)
            if value is None and spec.default is not None:
                raise ConfigError(f"{where}: a value is required (default: {spec.default})")

    def with_overrides(self, where: str, *, scope: str = "function", **values: Any) -> Settings:
        """Apply marker or factory arguments, the highest level of the precedence. ``isolation``
        means the isolation of the fixture's own scope."""
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
            target = name
            if name == "isolation" and scope != "function":
                if scope != "module" and str(value) != "branch":
                    raise ConfigError(
                        f"{where}: isolation={value!r} applies to function and module scope only; "
                        f"a {scope}-scope branch is always a branch of its own"
                    )
                target = "module_isolation" if scope == "module" else "isolation"
            # Markers pass arbitrary objects (Path, int...): everything goes through the parser.
            changes[target] = SPECS_BY_NAME[target].parse(_as_text(value), where)
            origins[target] = where
        if not changes:
            return self
        return dataclasses.replace(self, origins=origins, **changes)

    def origin(self, name: str) -> str:
        """Human-readable name of the place this setting was taken from."""
        spec = SPECS_BY_NAME[name]
        return self.origins.get(name, f"{spec.option} / {spec.env} / ini {spec.ini}")

    @property
    def effective_backend(self) -> str:
        if self.backend == "auto":
            return "lakebase" if self.lakebase_project else "postgres"
        return self.backend

    def effective_pool_size(self) -> int:
        """``auto``: a pool unless the workers already outnumber the cores. At -n 2 on 2
        cores it still pays (the forks overlap pytest's own work between tests); with more
        workers than cores its thread only competes with theirs."""
        if self.pool_size is not None:
            return self.pool_size
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
        return 2 if workers <= (os.cpu_count() or 1) else 0

    def effective_embedded_idle(self) -> int:
        """Unless set: keep the server for a local rerun, never on CI (no run comes back)."""
        given = "embedded_idle" in self.origins or self.embedded_idle != DEFAULT_EMBEDDED_IDLE
        return self.embedded_idle if given or not _on_ci() else 0

    def isolation_for(self, scope: str) -> Isolation:
        if scope == "function":
            return self.isolation
        if scope == "module":
            return self.module_isolation
        return "branch"

    def resolve_path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.root / path)

    @property
    def url_env_names(self) -> tuple[str, ...]:
        return () if self.url_env == "none" else tuple(self.url_env.split(","))

    def fingerprint_paths(self) -> list[Path]:
        """The files ``fingerprint_files`` names; a pattern that matches nothing is a mistake."""
        found: set[Path] = set()
        for pattern in (self.fingerprint_files or "").split(","):
            if not pattern:
                continue
            matches = [p for p in self.root.glob(pattern) if p.is_file()]
            if not matches:
                raise ConfigError(
                    f"{self.origin('fingerprint_files')}: {pattern!r} matches no file under {self.root}"
                )
            found.update(matches)
        return sorted(found)

    def alembic_ini_path(self) -> Path | None:
        """None means: no migrations. Explicit paths are checked later, with a clear error.
        Unset: ``alembic.ini`` in the root, else a ``pyproject.toml`` there with a
        ``[tool.alembic]`` table (Alembic 1.16+)."""
        if self.alembic_ini is not None:
            if self.alembic_ini.strip().lower() in ("none", "off", "false"):
                return None
            return self.resolve_path(self.alembic_ini)
        ini = self.root / "alembic.ini"
        if ini.is_file():
            return ini
        pyproject = self.root / "pyproject.toml"
        if pyproject.is_file() and "[tool.alembic]" in pyproject.read_text(errors="replace"):
            return pyproject
        return None

    def __repr__(self) -> str:
        """Shown by ``pytest -l`` and in junit XML: never with a password."""
        shown = ", ".join(
            f"{spec.name}={redact_text(str(getattr(self, spec.name)), None)!r}"
            for spec in SPECS
            if getattr(self, spec.name) != spec.default
        )
        return f"Settings({shown})"


@dataclass(frozen=True)
class Spec:
    """Where one setting can be given, and how its text becomes a value (derived from the
    ``Settings`` field that declares it)."""

    name: str
    help: str
    default: Any
    parse: Parser
    choices: tuple[str, ...] | None = None
    flag: bool = False
    overridable: bool = False

    @property
    def option(self) -> str:
        return "--dbbranch-" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        return "dbbranch_" + self.name

    @property
    def env(self) -> str:
        return "DBBRANCH_" + self.name.upper()

    @property
    def ini(self) -> str:
        return "dbbranch_" + self.name

    @property
    def ini_type(self) -> Any:
        """What a TOML configuration may give besides text: a boolean for a flag, a number
        for a count or a duration (pytest 9.2+ checks values against it)."""
        if self.flag:
            return bool | str
        if self.parse in (_count, _port, _pool_size, _idle, parse_duration):
            return int | str
        return None


def _choice(choices: tuple[str, ...]) -> Parser:
    def parse(value: str, where: str) -> str:
        text = value.strip().lower()
        if text not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _specs() -> tuple[Spec, ...]:
    hints = typing.get_type_hints(Settings)
    specs = []
    for item in dataclasses.fields(Settings):
        if "help" not in item.metadata:
            continue
        hint = hints[item.name]
        choices = tuple(map(str, typing.get_args(hint))) if typing.get_origin(hint) is Literal else None
        parse = _choice(choices) if choices else item.metadata["parse"]
        specs.append(
            Spec(
                name=item.name,
                help=item.metadata["help"],
                default=item.default,
                parse=parse,
                choices=choices,
                flag=item.metadata["flag"],
                overridable=item.metadata["overridable"],
            )
        )
    return tuple(specs)


SPECS: tuple[Spec, ...] = _specs()
SPECS_BY_NAME = {spec.name: spec for spec in SPECS}

#: Settings a marker or a factory may change for one fixture.
OVERRIDABLE: tuple[str, ...] = tuple(spec.name for spec in SPECS if spec.overridable)


def resolve(
    *,
    options: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    ini: Mapping[str, Any] | None = None,
    root: Path | None = None,
    option_names: Mapping[str, str] | None = None,
) -> Settings:
    """Combine the sources by the documented precedence.

    ``options`` maps setting names to command-line values (None = not given), ``ini`` maps
    setting names to ini text (None or '' = not given). ``option_names`` says how a command
    line other than pytest's spells an option, for messages (``dbbranch``'s ``--url``).
    """
    option_names = option_names or {}
    options = options or {}
    env = env or {}
    ini = ini or {}
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for spec in SPECS:
        raw_option = options.get(spec.name)
        if raw_option is not None and raw_option is not False:
            where = option_names.get(spec.name, spec.option)
            values[spec.name] = spec.parse(raw_option, where) if isinstance(raw_option, str) else raw_option
            origins[spec.name] = where
            continue
        raw_env = env.get(spec.env)
        if spec.name == "url" and raw_env is not None and not raw_env.strip():
            raise ConfigError(
                f"environment variable {spec.env} is set but empty (an unset CI secret?): give the "
                "server URL, or unset the variable to let the plugin start its own server"
            )
        if raw_env is not None and raw_env != "":
            values[spec.name] = spec.parse(raw_env, f"environment variable {spec.env}")
            origins[spec.name] = f"environment variable {spec.env}"
            continue
        raw_ini = ini.get(spec.name)
        if raw_ini is not None and raw_ini != "" and raw_ini != []:
            # A TOML table gives booleans and numbers as such, a list for an array.
            text = " ".join(map(str, raw_ini)) if isinstance(raw_ini, list) else _as_text(raw_ini)
            values[spec.name] = spec.parse(text, f"ini option {spec.ini}")
            origins[spec.name] = f"ini option {spec.ini}"
            continue
        values[spec.name] = spec.default
    return Settings(root=root or Path.cwd(), origins=origins, **values)
