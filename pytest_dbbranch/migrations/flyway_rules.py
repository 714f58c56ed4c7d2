"""Flyway's rules, as pytest-dbbranch applies them to a folder of SQL files, kept apart from
the code that talks to the server so they can be tested without one: what a file name declares,
how versions order, the checksum the history table keeps, a script's configuration file,
placeholders, the statements a script holds, and how Flyway reads its history table.

Scripts run statement by statement, as Flyway runs them: a failing statement is then known
exactly, and the statements PostgreSQL refuses inside a transaction can be recognised.

Flyway skips a file whose name it cannot read as a migration without a word; here such a name
is an error (as with Flyway's ``validateMigrationNaming=true``), because a migration that
silently never runs gives tests a schema production does not have.
"""

from __future__ import annotations

import os
import re
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: Flyway's default history table, in the current schema.
HISTORY_TABLE = "flyway_schema_history"

# -- names and versions -------------------------------------------------------------------------

_VERSION = re.compile(r"[0-9]+(?:[._][0-9]+)*")
#: Flyway's callback events (beforeMigrate, afterEachMigrate, ...): scripts, but not migrations.
_CALLBACK = re.compile(r"(?:before|after)[A-Z]\w*|createSchema")
_LOOKS_VERSIONED = re.compile(r"[vVuUrR][\d._]")


class BadName(ValueError):
    """A file name that looks like a migration but is not one Flyway would run."""


@dataclass(frozen=True, order=True)
class Version:
    """A migration version. Parts compare as numbers (1.10 after 1.9); leading zeros and
    trailing zero parts do not count (001 is 1, 1.0 is 1), as Flyway compares them."""

    key: tuple[int, ...]
    #: As Flyway writes it in the history table: the file's version, underscores as dots.
    text: str = field(compare=False)

    @classmethod
    def parse(cls, raw: str) -> Version | None:
        if not _VERSION.fullmatch(raw):
            return None
        text = raw.replace("_", ".")
        parts = [int(part) for part in text.split(".")]
        while len(parts) > 1 and parts[-1] == 0:
            parts.pop()
        return cls(tuple(parts), text)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class ScriptName:
    #: "V" versioned, "U" undo (Flyway Teams), "R" repeatable.
    kind: str
    version: Version | None
    #: The words of the name, underscores as spaces (the history's description).
    description: str

    @property
    def label(self) -> str:
        return f"{self.kind}{self.version or ''} {self.description}"


def parse_name(filename: str) -> ScriptName | None:
    """What a file's name declares; None for a .sql file whose name nobody would take for a
    migration (Flyway ignores those too). ``BadName`` says what is wrong with a name that looks
    like a migration but would be skipped."""
    if not filename.lower().endswith(".sql"):
        return None
    stem = filename[: -len(".sql")]
    kind, (head, separator, tail) = stem[:1], stem[1:].partition("__")
    if _CALLBACK.fullmatch(stem.partition("__")[0]):
        raise BadName(
            "this is a Flyway callback (run around migrate, not recorded in the history); "
            "pytest-dbbranch does not run callbacks: move it out of the folder or make it a migration"
        )
    if kind in ("V", "U"):
        example = f"{kind}1.2__add_orders.sql"
        if not separator:
            raise BadName(f"no '__' (two underscores) between version and description, as in {example}")
        version = Version.parse(head)
        if version is None:
            raise BadName(f"{head!r} is not a version: numbers separated by '.' or '_', as in {example}")
        if not tail.strip("_ "):
            raise BadName(f"the description after '__' is empty, as in {example}")
        return ScriptName(kind, version, tail.replace("_", " "))
    if kind == "R":
        if not separator or head:
            raise BadName("a repeatable migration is named R__<description>.sql, with no version")
        if not tail.strip("_ "):
            raise BadName("the description after 'R__' is empty")
        return ScriptName(kind, None, tail.replace("_", " "))
    if _LOOKS_VERSIONED.match(stem):
        raise BadName(f"the prefix must be the upper-case letter {kind.upper()!r}")
    if stem[:1].isdigit():
        raise BadName("a versioned migration starts with 'V', as in V1__create_table.sql")
    if "__" in stem:
        raise BadName("it has '__' but does not start with V (versioned), U (undo) or R (repeatable)")
    return None


# -- checksum -------------------------------------------------------------------------------------


def checksum(text: str) -> int:
    """Flyway's checksum: CRC-32 over the UTF-8 bytes of each line without its terminator
    (``\\n``, ``\\r\\n`` or ``\\r``), a leading byte-order mark dropped, as a signed 32-bit
    integer. Feeding the lines one after another into one CRC equals one CRC over the text with
    every CR and LF removed, so line endings never change it."""
    if text.startswith("\ufeff"):
        text = text[1:]
    value = zlib.crc32(text.replace("\r", "").replace("\n", "").encode("utf-8"))
    return value - (1 << 32) if value >= (1 << 31) else value


# -- script configuration (<script>.sql.conf) and placeholders --------------------------------


@dataclass(frozen=True)
class ScriptConfig:
    #: None: decided from the statements (Flyway's default).
    execute_in_transaction: bool | None = None
    encoding: str = "utf-8"
    placeholder_replacement: bool = True


def parse_script_config(text: str) -> ScriptConfig:
    """A script configuration file (Java properties). Keys Flyway knows but we cannot honour,
    and keys it does not know, are errors: either would change what runs without a word."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        match = re.fullmatch(r"([^=:\s]+)\s*[=:]\s*(.*)", line)
        if not match:
            raise ValueError(f"line {number}: expected key=value, got {line!r}")
        values[match.group(1)] = match.group(2).strip()
    flags: dict[str, bool] = {}
    for key in ("executeInTransaction", "placeholderReplacement"):
        if key in values:
            value = values.pop(key).lower()
            if value not in ("true", "false"):
                raise ValueError(f"{key} must be true or false, got {value!r}")
            flags[key] = value == "true"
    encoding = values.pop("encoding", "utf-8")
    if "shouldExecute" in values:
        raise ValueError("shouldExecute (a Flyway Teams setting) is not supported by pytest-dbbranch")
    if values:
        raise ValueError(
            f"unknown setting {sorted(values)[0]!r} (known: executeInTransaction, encoding, "
            "placeholderReplacement)"
        )
    return ScriptConfig(
        flags.get("executeInTransaction"), encoding, flags.get("placeholderReplacement", True)
    )


_PLACEHOLDER = re.compile(r"\$\{([^}\r\n]*)\}")
#: Flyway's built-in placeholders (names compare case-insensitively). Placeholders of the
#: project's own Flyway configuration are not read: a script using one is refused.
BUILT_IN_PLACEHOLDERS = (
    "flyway:defaultSchema",
    "flyway:user",
    "flyway:database",
    "flyway:timestamp",
    "flyway:filename",
    "flyway:workingDirectory",
    "flyway:table",
    "flyway:environment",
)
_BUILT_IN = {name.lower() for name in BUILT_IN_PLACEHOLDERS}


def unknown_placeholders(text: str) -> list[tuple[int, str]]:
    """(line, placeholder) of each ``${name}`` that is not one of Flyway's built-in ones."""
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(0))
        for match in _PLACEHOLDER.finditer(text)
        if match.group(1).lower() not in _BUILT_IN
    ]


def placeholder_values(schema: str, user: str, database: str) -> dict[str, str]:
    """Flyway's built-in placeholders (but the file name, which is each script's own)."""
    return {
        "flyway:defaultschema": schema,
        "flyway:user": user,
        "flyway:database": database,
        "flyway:timestamp": time.strftime("%Y-%m-%d %H:%M:%S"),
        "flyway:workingdirectory": os.getcwd(),
        "flyway:table": HISTORY_TABLE,
        "flyway:environment": "default",
    }


def replace_placeholders(text: str, values: dict[str, str]) -> str:
    """``${flyway:...}`` replaced by ``values`` (keyed by lower-case name)."""
    return _PLACEHOLDER.sub(lambda match: values.get(match.group(1).lower(), match.group(0)), text)


# -- statements -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    #: From its first token to its semicolon (comments before it excluded).
    sql: str
    #: Where ``sql`` starts in the file: character offset and line (1-based).
    offset: int
    line: int
    #: The rows that follow ``COPY ... FROM STDIN`` in the file, up to the ``\\.`` line.
    copy_data: str | None = None

    @property
    def simplified(self) -> str:
        return " ".join(self.sql.rstrip().rstrip(";").split()).upper()


_WORD = re.compile(r"[^\W\d]\w*")
_DOLLAR_TAG = re.compile(r"\$(?:[^\W\d]\w*)?\$")
_COPY_FROM_STDIN = re.compile(r"COPY\b.*\bFROM STDIN\b")


def split_statements(text: str) -> list[Statement]:
    """The statements of a script, split at semicolons outside quotes, dollar quotes, comments
    (nested, as PostgreSQL nests them) and ``BEGIN ATOMIC ... END`` function bodies."""
    out: list[Statement] = []
    lines = _LineCounter(text)
    i, n = 0, len(text)
    start: int | None = None
    atomic = 0
    previous = ""
    while i < n:
        char = text[i]
        if char.isspace():
            i += 1
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            i = _comment_end(text, i)
        else:
            if start is None:
                start = i
            if char == ";" and not atomic:
                statement = Statement(text[start : i + 1], start, lines.line_at(start))
                i += 1
                if _COPY_FROM_STDIN.match(statement.simplified):
                    statement, i = _with_copy_data(text, statement, i)
                out.append(statement)
                start, previous = None, ""
            elif char == "'":
                escapes = text[i - 1 : i] in ("e", "E") and not _is_word_char(text[i - 2 : i - 1])
                i = _string_end(text, i, escapes)
            elif char == '"':
                end = text.find('"', i + 1)
                while end >= 0 and text.startswith('""', end):
                    end = text.find('"', end + 2)
                i = n if end < 0 else end + 1
            elif char == "$" and not _is_word_char(text[i - 1 : i]) and (tag := _DOLLAR_TAG.match(text, i)):
                end = text.find(tag.group(0), tag.end())
                i = n if end < 0 else end + len(tag.group(0))
            elif word := _WORD.match(text, i):
                upper = word.group(0).upper()
                if (upper == "ATOMIC" and previous == "BEGIN") or (atomic and upper == "CASE"):
                    atomic += 1
                elif atomic and upper == "END":
                    atomic -= 1
                previous, i = upper, word.end()
            else:
                i += 1
    if start is not None:
        out.append(Statement(text[start:].rstrip(), start, lines.line_at(start)))
    return out


class _LineCounter:
    """Line numbers of increasing offsets without rescanning the text each time."""

    def __init__(self, text: str) -> None:
        self.text, self.offset, self.line = text, 0, 1

    def line_at(self, offset: int) -> int:
        self.line += self.text.count("\n", self.offset, offset)
        self.offset = offset
        return self.line


def _is_word_char(char: str) -> bool:
    return bool(char) and (char.isalnum() or char in "_$")


def _comment_end(text: str, i: int) -> int:
    depth = 0
    while i < len(text):
        if text.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif text.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    return i


def _string_end(text: str, i: int, escapes: bool) -> int:
    i += 1
    while i < len(text):
        char = text[i]
        if char == "\\" and escapes:
            i += 2
        elif char == "'":
            if text.startswith("''", i):
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return i


def _with_copy_data(text: str, statement: Statement, i: int) -> tuple[Statement, int]:
    """The rows of an in-line ``COPY ... FROM STDIN``: from the line after the statement up to
    a line holding only ``\\.`` (as pg_dump writes them, and as Flyway reads them)."""
    line_end = text.find("\n", i)
    if line_end < 0:
        return Statement(statement.sql, statement.offset, statement.line, ""), len(text)
    rows: list[str] = []
    position = line_end + 1
    while position < len(text):
        end = text.find("\n", position)
        end = len(text) if end < 0 else end
        line = text[position:end]
        position = end + 1
        if line.rstrip("\r") == "\\.":
            break
        rows.append(line.rstrip("\r") + "\n")
    data = "".join(rows)
    return Statement(statement.sql, statement.offset, statement.line, data), min(position, len(text))


# -- transactions ---------------------------------------------------------------------------------

#: Statements PostgreSQL refuses inside a transaction block: Flyway's list for PostgreSQL 12 and
#: later, plus REINDEX ... CONCURRENTLY and DETACH PARTITION ... CONCURRENTLY.
_NON_TRANSACTIONAL = re.compile(
    r"(?:(?:CREATE|DROP)(?: UNIQUE)? INDEX CONCURRENTLY"
    r"|(?:CREATE|DROP) (?:DATABASE|TABLESPACE|SUBSCRIPTION)\b"
    r"|ALTER SYSTEM\b"
    r"|REINDEX\b.*\bCONCURRENTLY\b"
    r"|REINDEX(?: \(.*?\))?(?: VERBOSE)? (?:SCHEMA|DATABASE|SYSTEM)\b"
    r"|VACUUM\b"
    r"|DISCARD ALL\b"
    r"|ALTER TABLE\b.*\bDETACH PARTITION\b.*\bCONCURRENTLY\b)"
)
#: Statements that would end the transaction a migration runs in, before its history row.
_TRANSACTION_CONTROL = re.compile(r"(?:BEGIN|START TRANSACTION|COMMIT|END|ABORT|ROLLBACK(?! TO\b))\b")


def needs_no_transaction(statement: Statement) -> bool:
    return bool(_NON_TRANSACTIONAL.match(statement.simplified))


def controls_transaction(statement: Statement) -> bool:
    return bool(_TRANSACTION_CONTROL.match(statement.simplified))


#: The first-line opt-out of the transaction, for scripts that have no .sql.conf.
NO_TRANSACTION_COMMENT = re.compile(r"\s*--\s*dbbranch:\s*no-transaction\s*", re.IGNORECASE)


# -- scripts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Script:
    path: Path
    #: Relative to the folder, with '/': the history's ``script`` column.
    script: str
    name: ScriptName
    text: str
    checksum: int
    statements: tuple[Statement, ...]
    transactional: bool
    #: Whether it holds ``${flyway:...}`` placeholders to replace.
    placeholders: bool

    def executable(self, statement: Statement, values: dict[str, str]) -> str:
        """The statement as it runs: placeholders replaced (values from ``placeholder_values``)."""
        if not self.placeholders:
            return statement.sql
        return replace_placeholders(statement.sql, {**values, "flyway:filename": self.path.name})

    def history_checksum(self, values: dict[str, str]) -> int:
        """Flyway checksums a repeatable migration after replacing its placeholders, so that new
        values apply it again; the others as written."""
        if self.name.kind != "R" or not self.placeholders:
            return self.checksum
        return checksum(replace_placeholders(self.text, {**values, "flyway:filename": self.path.name}))


def read_script(folder: Path, path: Path, name: ScriptName) -> Script:
    """A script with what running it needs; ``ValueError`` for what would make it run
    otherwise than Flyway runs it. Whether it runs in a transaction is decided from its
    statements, unless its .sql.conf (or a first line ``-- dbbranch: no-transaction``) says."""
    conf = path.with_name(path.name + ".conf")
    try:
        config = parse_script_config(conf.read_text()) if conf.is_file() else ScriptConfig()
    except ValueError as exc:
        raise ValueError(f"its configuration {conf.name}: {exc}") from None
    try:
        text = path.read_bytes().decode(config.encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise ValueError(
            f"cannot be read as {config.encoding} ({exc}); set encoding= in {conf.name}"
        ) from None
    statements = tuple(split_statements(text.removeprefix("\ufeff")))  # Flyway drops a BOM too
    explicit = config.execute_in_transaction
    if NO_TRANSACTION_COMMENT.fullmatch(text.lstrip("\ufeff").split("\n", 1)[0].rstrip("\r")):
        explicit = False
    outside = [statement for statement in statements if needs_no_transaction(statement)]
    if explicit is None and outside and len(outside) < len(statements):
        raise ValueError(
            f"line {outside[0].line}: {outside[0].simplified[:60]} cannot run inside a transaction, the "
            "other statements run in one (Flyway refuses such a mix too): move it to a migration of its "
            f"own, or run the whole script outside a transaction (executeInTransaction=false in {conf.name}, "
            "or '-- dbbranch: no-transaction' as its first line)"
        )
    transactional = not outside if explicit is None else explicit
    control = next((s for s in statements if controls_transaction(s)), None) if transactional else None
    if control is not None:
        raise ValueError(
            f"line {control.line}: {control.simplified[:40]} would end the transaction the migration runs "
            "in, before its history row: remove it (each migration runs in a transaction of its own), or "
            "run the script outside a transaction ('-- dbbranch: no-transaction' as its first line)"
        )
    unknown = unknown_placeholders(text) if config.placeholder_replacement else []
    if unknown:
        raise ValueError(
            f"line {unknown[0][0]}: placeholder {unknown[0][1]}: only Flyway's built-in placeholders "
            "(${flyway:user}, ...) are replaced, the project's Flyway configuration is not read; if it is "
            f"not a placeholder, set placeholderReplacement=false in {conf.name}"
        )
    return Script(
        path=path,
        script=path.relative_to(folder).as_posix(),
        name=name,
        text=text,
        checksum=checksum(text),
        statements=statements,
        transactional=transactional,
        placeholders=config.placeholder_replacement and bool(_PLACEHOLDER.search(text)),
    )


def read_folder(folder: Path) -> tuple[list[Script], list[Path], list[str]]:
    """The migrations of a folder and its subfolders (Flyway scans them too), every .sql and
    .sql.conf file in it, and every problem a run would meet later, found now and all at once."""
    paths = sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith((".sql", ".sql.conf"))),
        key=lambda path: path.relative_to(folder).as_posix(),
    )
    problems: list[str] = []
    found: dict[tuple[str, Version | str], Script] = {}
    for path in paths:
        if path.name.lower().endswith(".conf"):
            if not path.with_name(path.name[: -len(".conf")]).is_file():
                problems.append(f"{path}: configures {path.name[: -len('.conf')]}, which does not exist")
            continue
        try:
            name = parse_name(path.name)
            if name is None:
                continue
            script = read_script(folder, path, name)
        except BadName as exc:
            problems.append(f"{path}: not a migration name Flyway runs: {exc}")
            continue
        except ValueError as exc:
            problems.append(f"{path}: {exc}")
            continue
        key = (name.kind, name.version or name.description)
        if key in found:
            what = {"V": "migrations with version", "U": "undo migrations for version"}.get(name.kind)
            problems.append(
                f"{found[key].path} and {path}: two {what or 'repeatable migrations named'} {key[1]}; "
                "Flyway refuses both"
            )
        found[key] = script
    for (kind, version), script in found.items():
        if kind == "U" and ("V", version) not in found:
            problems.append(f"{script.path}: undoes version {version}, which no versioned migration defines")
    if paths and not found:
        problems.append("none of its .sql files is named as a migration (V<version>__<description>.sql)")
    return list(found.values()), paths, problems


# -- the history table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    rank: int
    version: str | None
    description: str
    type: str
    script: str
    checksum: int | None
    success: bool


@dataclass
class History:
    """The history table as Flyway reads it, row by row in ``installed_rank`` order: an undo
    (or a repair's DELETE row) takes back what an earlier row applied."""

    applied: dict[Version, Row] = field(default_factory=dict)
    #: The latest row of each repeatable migration, by description.
    repeatable: dict[str, Row] = field(default_factory=dict)
    #: Versions up to a baseline count as applied, with no row of their own.
    baseline: Version | None = None
    failed: list[Row] = field(default_factory=list)

    @classmethod
    def replay(cls, rows: Iterable[Row]) -> History:
        history = cls()
        for row in sorted(rows, key=lambda row: row.rank):
            kind, version = row.type.upper(), Version.parse(row.version) if row.version else None
            if row.version and version is None:
                raise ValueError(f"row {row.rank} has version {row.version!r}, which is not a version")
            if kind == "SCHEMA":  # the row of the schema Flyway created: nothing to compare
                continue
            if not row.success:
                history.failed.append(row)
            elif version is None:
                if kind == "DELETE":
                    history.repeatable.pop(row.description, None)
                else:
                    history.repeatable[row.description] = row
            elif kind == "DELETE" or kind.startswith("UNDO"):
                history.applied.pop(version, None)
            elif "BASELINE" in kind:
                history.baseline = max(version, history.baseline or version)
            else:
                history.applied[version] = row
        return history

    def below_baseline(self, version: Version) -> bool:
        return self.baseline is not None and version <= self.baseline


def abbreviate(text: str, limit: int, *, left: bool = False) -> str:
    """Flyway's way of fitting a long description (or script path) into its column."""
    if len(text) <= limit:
        return text
    return "..." + text[len(text) - limit + 3 :] if left else text[: limit - 3] + "..."


def history_problems(
    history: History, versioned: dict[Version, Script], repeatable: Iterable[Script], folder: Path
) -> list[tuple[str, Path | None]]:
    """Flyway's validate: what stops a migrate before anything runs, with the file at fault.
    Every applied migration must still be in the folder as it was applied, no migration may
    be pending below the newest applied one (``outOfOrder=false``), and no row may have failed."""
    problems: list[tuple[str, Path | None]] = []
    recorded = "is recorded as applied to the source, but no file in"
    for row in history.failed:
        problems.append(
            (
                f"{row.script} failed when it was applied (installed_rank {row.rank}, success "
                "= false): Flyway refuses to migrate until `flyway repair` has removed that row",
                None,
            )
        )
    for version, row in history.applied.items():
        script = versioned.get(version)
        if script is None:
            problems.append((f"version {row.version} ({row.script}) {recorded} {folder} defines it", None))
        elif row.checksum != script.checksum or row.type.upper() != "SQL":
            problems.append(
                (
                    f"{script.path}: changed after it was applied to the source (checksum "
                    f"{script.checksum}, the history records {row.checksum} for version "
                    f"{row.version}, type {row.type}): undo the edit and add a new migration",
                    script.path,
                )
            )
        elif row.description != abbreviate(script.name.description, 200):
            problems.append(
                (
                    f"{script.path}: its description is not {row.description!r}, as when it "
                    "was applied to the source: rename the file back",
                    script.path,
                )
            )
    known = {script.name.description for script in repeatable}
    for description, row in history.repeatable.items():
        if description not in known:
            problems.append((f"repeatable migration {row.script} {recorded} {folder} defines it", None))
    newest = max(history.applied, default=None)
    for version, script in versioned.items():
        if (
            newest is not None
            and version < newest
            and version not in history.applied
            and not history.below_baseline(version)
        ):
            problems.append(
                (
                    f"{script.path}: version {version} is pending below {newest}, the newest "
                    "version applied to the source, and Flyway does not apply migrations out of "
                    f"order: give it a version above {newest}",
                    script.path,
                )
            )
    return problems
