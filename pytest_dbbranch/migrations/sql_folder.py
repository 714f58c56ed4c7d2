"""A folder of SQL files named as Flyway names them (``dbbranch_migrations = sql:FOLDER``), run
with Flyway's semantics, so that a branch of a production database Flyway migrates continues
the same ``flyway_schema_history`` and ends with the schema Flyway would give it.

- ``V<version>__<description>.sql`` run once each, in version order, each in its own
  transaction together with its history row; ``R__<description>.sql`` after them, again
  whenever its checksum changes; ``U<version>__<description>.sql`` (Flyway Teams' undo) for
  downgrades, recorded as ``UNDO_SQL`` rows as Flyway Teams records them (not by deleting the
  versioned row): the history then reads the same to Flyway and to us, and shows what happened.
- Before anything runs, the history is validated as Flyway validates it (``flyway_rules``), so
  a branch never silently differs from what production will get.

The project's Flyway configuration file is not read: Flyway's defaults apply (prefixes,
``__``, the table ``flyway_schema_history`` in the current schema, ``outOfOrder=false``).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..conninfo import ServerAddress
from ..errors import ConfigError, MigrationError
from ..progress import Progress
from .base import Revision
from .flyway_rules import (
    HISTORY_TABLE,
    History,
    Row,
    Script,
    Statement,
    Version,
    abbreviate,
    history_problems,
    placeholder_values,
    read_folder,
)

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

#: The target "base": below every version.
_BASE = Version((-1,), "base")

_CREATE_HISTORY = """
CREATE TABLE {table} (
    installed_rank integer NOT NULL, version varchar(50), description varchar(200) NOT NULL,
    type varchar(20) NOT NULL, script varchar(1000) NOT NULL, checksum integer,
    installed_by varchar(100) NOT NULL, installed_on timestamp NOT NULL DEFAULT now(),
    execution_time integer NOT NULL, success boolean NOT NULL,
    CONSTRAINT {pk} PRIMARY KEY (installed_rank)
);
CREATE INDEX {index} ON {table} (success)
"""
_INSERT = (
    "INSERT INTO {table} (installed_rank, version, description, type, script, checksum, installed_by,"
    " execution_time, success) SELECT coalesce(max(installed_rank), 0) + 1, %s, %s, %s, %s, %s,"
    " left(current_user, 100), %s, %s FROM {table}"
)


class SqlFolderMigrator:
    kind = "sql"

    def __init__(self, folder: Path, scripts: list[Script], paths: list[Path]) -> None:
        self.folder = folder
        #: Every .sql and .sql.conf file, migrations or not: all can change what runs.
        self.paths = paths
        by_kind = {kind: [s for s in scripts if s.name.kind == kind] for kind in "VUR"}
        #: Versioned migrations in version order.
        self.versioned = dict(sorted((v, s) for s in by_kind["V"] if (v := s.name.version)))
        self.undo = {v: s for s in by_kind["U"] if (v := s.name.version)}
        #: In description order: the order Flyway applies them in.
        self.repeatable = sorted(by_kind["R"], key=lambda s: s.name.description)

    @property
    def description(self) -> str:
        return f"the SQL migrations folder {self.folder}"

    @property
    def can_downgrade(self) -> bool:
        return bool(self.undo)

    @property
    def versions(self) -> list[Version]:
        return list(self.versioned)

    def files(self) -> list[tuple[str, Path]]:
        return [(f"sql/{path.relative_to(self.folder).as_posix()}", path) for path in self.paths]

    def settings_text(self) -> list[tuple[str, str]]:
        return [("folder", self.folder.name)]

    def lineage(self) -> tuple[str, ...]:
        """The first migration's file name: the same wherever the project is checked out, and
        different from another project's history."""
        return (self.versioned[self.versions[0]].path.name,) if self.versions else ()

    def heads(self) -> list[str]:
        return [self.versions[-1].text] if self.versions else []

    def revisions(self) -> list[Revision]:
        out: list[Revision] = []
        for version in self.versions:
            script, down = self.versioned[version], (out[-1].id,) if out else ()
            out.append(
                Revision(version.text, script.path, script.name.description, down, version in self.undo)
            )
        return out

    def resolve(self, target: str, where: str) -> tuple[str, ...]:
        limit = self._limit(target, where)
        if limit is _BASE or not self.versions:
            return ()
        return ((limit or self.versions[-1]).text,)

    def _limit(self, target: str, where: str) -> Version | None:
        """The newest version ``target`` allows (None for "head": every one), as its file writes it."""
        if target in ("head", "base"):
            return None if target == "head" else _BASE
        version = Version.parse(target)
        script = self.versioned.get(version) if version else None
        if script is None:
            raise MigrationError(
                f"{where}: target version {target!r} does not exist in {self.folder} (newest: "
                f"{', '.join(v.text for v in self.versions[-3:]) or 'none'}); use 'head' or the version of "
                "a V<version>__<description>.sql file"
            )
        return script.name.version

    def applied(self, address: ServerAddress) -> tuple[str, ...]:
        """Versions the history records (as their files write them), and those up to a baseline."""
        with self._connect(address) as conn:
            table, _values = _open_history(conn, create=False)
            history = _history(conn, table)
        done = {version for version in self.versions if version in history.applied}
        done.update(version for version in self.versions if history.below_baseline(version))
        done.update(version for version in history.applied if version not in self.versioned)
        return tuple(version.text for version in sorted(done))

    def pending(self, applied: tuple[str, ...], target: str) -> list[Revision]:
        """Versioned migrations only: whether a repeatable one runs depends on the checksum
        the branch records, which ``applied`` does not carry."""
        limit = self._limit(target, "pending()")
        done = {Version.parse(item) for item in applied}
        return [
            revision
            for version, revision in zip(self.versions, self.revisions(), strict=True)
            if version not in done and (limit is None or version <= limit)
        ]

    def upgrade(self, address: ServerAddress, target: str, *, progress: Progress | None = None) -> None:
        """Validate the branch's history against the files, then apply what is pending and the
        repeatable migrations whose checksum changed, one transaction each."""
        progress = progress or Progress()
        limit = self._limit(target, "the upgrade target")
        with self._connect(address) as conn:
            table, values = _open_history(conn, create=True)
            assert table is not None  # created when missing
            history = self._validated(conn, table)
            plan = [self.versioned[version] for version in self._missing(history, limit)]
            if limit is not _BASE:
                plan += [
                    script
                    for script in self.repeatable
                    if (row := history.repeatable.get(script.name.description)) is None
                    or row.checksum != script.history_checksum(values)
                ]
            try:
                for number, script in enumerate(plan, start=1):
                    progress.begin(f"migrating to {target}: {script.name.label} ({number} of {len(plan)})")
                    _run(conn, table, script, values, address, f"upgrading a branch to {target!r}")
            finally:
                progress.end()
            missing = self._missing(_history(conn, table), limit)
        if missing:
            raise MigrationError(
                f"the SQL migrations finished, but {HISTORY_TABLE} in the branch {address.dbname} does not "
                f"record version(s) {', '.join(v.text for v in missing)} as applied: a migration in "
                f"{self.folder} changes the history table itself"
            )

    def downgrade(self, address: ServerAddress, target: str) -> None:
        """Run the undo migrations of the applied versions above ``target``, newest first; all
        of them must exist before any runs."""
        limit = self._limit(target, "the downgrade target")
        cannot = f"cannot downgrade the branch {address.dbname} to {target!r}"
        with self._connect(address) as conn:
            table, values = _open_history(conn, create=False)
            if table is None or limit is None:
                return  # nothing applied, or nothing above the target
            history = self._validated(conn, table)
            if history.baseline is not None and limit < history.baseline:
                raise MigrationError(f"{cannot}: the source's history starts at baseline {history.baseline}")
            doomed = sorted((version for version in history.applied if version > limit), reverse=True)
            lacking = [self.versioned[v].path.name for v in doomed if v not in self.undo]
            if lacking:
                raise MigrationError(
                    f"{cannot}: no undo migration (U<version>__<description>.sql) for {', '.join(lacking)}"
                    f" in {self.folder}"
                )
            for version in doomed:
                _run(conn, table, self.undo[version], values, address, f"downgrading a branch to {target!r}")
            left = [version for version in _history(conn, table).applied if version > limit]
        if left:
            raise MigrationError(f"the undo migrations finished, but {HISTORY_TABLE} still records {left[0]}")

    def _missing(self, history: History, limit: Version | None) -> list[Version]:
        return [
            version
            for version in self.versions
            if (limit is None or version <= limit)
            and version not in history.applied
            and not history.below_baseline(version)
        ]

    def _validated(self, conn: psycopg.Connection[Any], table: sql.Composable) -> History:
        history = _history(conn, table)
        problems = history_problems(history, self.versioned, self.repeatable, self.folder)
        if problems:
            error = MigrationError(
                f"the SQL migrations in {self.folder} do not match the source's history ({HISTORY_TABLE}):\n"
                + "\n".join(f"  - {text}" for text, _ in problems)
            )
            error.location = next(((str(path), 1) for _, path in problems if path is not None), None)
            raise error
        return history

    def _connect(self, address: ServerAddress) -> psycopg.Connection[Any]:
        import psycopg

        try:
            return psycopg.connect(address.conninfo(), autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise MigrationError(
                f"cannot connect to {address.display_url()} to migrate it: {address.redact(str(exc)).strip()}"
            ) from None


def _run(
    conn: psycopg.Connection[Any],
    table: sql.Composable,
    script: Script,
    values: dict[str, str],
    address: ServerAddress,
    doing: str,
) -> None:
    """One script and its history row, in one transaction unless the script runs outside one
    (then a failure is recorded as a failed row, as Flyway records it)."""
    import psycopg
    from psycopg import sql

    version = script.name.version
    row = (
        version.text if version else None,
        abbreviate(script.name.description, 200),
        "UNDO_SQL" if script.name.kind == "U" else "SQL",
        abbreviate(script.script, 1000, left=True),
        script.history_checksum(values),
    )
    insert = sql.SQL(_INSERT).format(table=table)
    started = time.perf_counter()
    current: Statement | None = None
    text = ""
    try:
        with conn.transaction() if script.transactional else contextlib.nullcontext():
            for current in script.statements:
                text = script.executable(current, values)
                if current.copy_data is None:
                    conn.execute(text)
                else:
                    with conn.cursor() as cursor, cursor.copy(text) as copy:
                        copy.write(current.copy_data)
            current = None
            conn.execute(insert, (*row, int((time.perf_counter() - started) * 1000), True))
    except psycopg.Error as exc:
        if not script.transactional and current is not None:
            with contextlib.suppress(psycopg.Error):
                conn.execute(insert, (*row, int((time.perf_counter() - started) * 1000), False))
        raise _failure(script, (current, text) if current else None, exc, address, doing) from None


def _open_history(
    conn: psycopg.Connection[Any], *, create: bool
) -> tuple[sql.Composable | None, dict[str, str]]:
    """The history table in the current schema (created if asked and missing, else None),
    and the values of Flyway's built-in placeholders on this connection."""
    from psycopg import sql

    found = conn.execute("SELECT current_schema(), current_user, current_database()").fetchone()
    schema, user, database = found or (None, "", "")
    if schema is None:
        raise MigrationError(f"no schema of the search_path exists: there is nowhere to keep {HISTORY_TABLE}")
    values = placeholder_values(schema, user, database)
    table = sql.Identifier(schema, HISTORY_TABLE)
    found_in = [
        row[0]
        for row in conn.execute(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relname = %s AND c.relkind IN ('r', 'p') ORDER BY 1",
            (HISTORY_TABLE,),
        ).fetchall()
    ]
    if schema in found_in:
        return table, values
    if found_in:
        # Flyway configured with another schema ran the migrations with that schema first on
        # the search_path: starting a second history here would run them all again.
        raise MigrationError(
            f"the source keeps {HISTORY_TABLE} in the schema {found_in[0]}, not in {schema}, the current "
            f"schema, where Flyway's defaults and pytest-dbbranch keep it: make {found_in[0]} the current "
            f"schema of the role (ALTER ROLE ... SET search_path = {found_in[0]}, public), as Flyway's "
            "defaultSchema setting does while it migrates"
        )
    if not create:
        return None, values
    names = {"pk": sql.Identifier(f"{HISTORY_TABLE}_pk"), "index": sql.Identifier(f"{HISTORY_TABLE}_s_idx")}
    with conn.transaction():
        conn.execute(sql.SQL(_CREATE_HISTORY).format(table=table, **names))
    return table, values


def _history(conn: psycopg.Connection[Any], table: sql.Composable | None) -> History:
    from psycopg import sql

    if table is None:
        return History()
    query = sql.SQL("SELECT installed_rank, version, description, type, script, checksum, success FROM {}")
    try:
        return History.replay(Row(*values) for values in conn.execute(query.format(table)).fetchall())
    except ValueError as exc:
        raise MigrationError(f"{HISTORY_TABLE}: {exc}") from None


def _failure(
    script: Script, failed: tuple[Statement, str] | None, exc: Exception, address: ServerAddress, doing: str
) -> MigrationError:
    """Which file and line, which statement (``failed``: as written, and as it ran), and the
    server's own words: what a CI log reader needs to fix the migration without running it
    again by hand. The server's position counts characters in the statement as it ran, whose
    placeholders' values hold no line breaks: its line is the file's."""
    diag = getattr(exc, "diag", None)
    position = getattr(diag, "statement_position", None)
    offset = int(position) - 1 if position and failed else None
    line = failed[0].line + failed[1].count("\n", 0, offset or 0) if failed else 1
    kind = "undo migration" if script.name.kind == "U" else "migration"
    lines = [f"SQL {kind} failed at {script.name.label} ({doing}).", f"  file: {script.path}, line {line}"]
    if failed is not None:
        lines.append(f"  statement: {_excerpt(failed[1], offset)}")
    message = getattr(diag, "message_primary", None) or str(exc)
    lines.append(f"  error: {type(exc).__name__}: {address.redact(message).strip()}")
    if context := getattr(diag, "context", None):
        lines.append(f"  context: {address.redact(context.splitlines()[0])}")
    if failed is not None and not script.transactional:
        lines.append("  (the script runs outside a transaction: the statements before this one stay applied)")
    if type(exc).__name__ == "InsufficientPrivilege":
        lines.append(
            f"  -> not a fault of the migration: the role {address.user or '(default)'} lacks a privilege "
            "on an object another role owns (the copy keeps the owners of its source)."
        )
    else:
        lines.append("  -> fix that migration.")
    error = MigrationError("\n".join(lines))
    error.location = (str(script.path), line)
    return error


def _excerpt(text: str, offset: int | None, width: int = 240) -> str:
    """The statement on one line; a long one cut around the position the server named."""
    if len(text) <= 2 * width or offset is None:
        flat = " ".join(text.split())
        return flat if len(flat) <= 2 * width else flat[: 2 * width] + " ..."
    start, end = max(0, offset - width), offset + width
    while 0 < start < offset and not text[start - 1].isspace():
        start += 1  # from a word's start
    return ("... " if start else "") + " ".join(text[start:end].split()) + (" ..." if end < len(text) else "")


def load_sql_folder(folder: Path, where: str) -> SqlFolderMigrator:
    """Read the folder's migrations; every problem a run would meet later is reported now."""
    if not folder.is_dir():
        raise ConfigError(f"{where}: the SQL migrations folder {folder} does not exist")
    scripts, paths, problems = read_folder(folder)
    if problems:
        raise ConfigError(
            f"{where}: the SQL migrations in {folder}:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return SqlFolderMigrator(folder, scripts, paths)
