"""Restoring a dump into the plugin's own database, and into nothing else.

A plain dump is a psql script: ``pg_dump -C -c`` writes ``DROP DATABASE``, ``CREATE
DATABASE`` and ``\\connect``, which would drop and recreate the user's database of that name
on the same server; ``pg_dumpall`` writes roles; a hand-made file may ``\\connect`` anywhere
or run shell commands. So every dump goes through one gate: archives are turned into a
script by ``pg_restore -f -`` (which never creates or connects anywhere by itself), and the
script is read statement by statement, refusing anything that reaches beyond the database
being restored, before psql sees it. The same pass drops ``SET`` lines for settings the
server does not know, so a dump made (or converted) by a newer pg_dump restores into an
older server.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import subprocess
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Literal

from ..backends import Backend
from ..conninfo import ServerAddress
from ..errors import SourceError
from ..server.binaries import client
from .tls_relay import tls_relay

Format = Literal["plain", "gzip", "custom", "directory", "tar"]

GOOD_DUMP = (
    "make the dump with `pg_dump --no-owner --no-privileges -f snapshot.sql DBNAME` (without "
    "-C/--create and -c/--clean) or `pg_dump -Fc`"
)

#: psql meta-commands a dump of one database may contain.
_ALLOWED_META = {"restrict", "unrestrict", "set", "unset", "encoding", "echo", "pset", "qecho"}
#: Statements that act on the server or on other databases, never on the one restored.
#: Matched against a whole statement whose literals, identifiers and comments are blanked.
_FORBIDDEN = re.compile(
    r"^(?P<what>(?:CREATE|DROP|ALTER)\s+(?:DATABASE|ROLE|USER(?!\s+MAPPING\b)|GROUP|TABLESPACE|SUBSCRIPTION)"
    r"|ALTER\s+SYSTEM|DROP\s+OWNED|REASSIGN\s+OWNED|CHECKPOINT)\b",
    re.IGNORECASE,
)
_COPY_STDIN = re.compile(r"^COPY\b.*\bFROM\s+STDIN\b", re.IGNORECASE)
_COPY_ELSEWHERE = re.compile(r"^COPY\b.*\b(?:FROM|TO)\s+(?:PROGRAM\b|')", re.IGNORECASE)
_SET = re.compile(r"^SET\s+(?:SESSION\s+|LOCAL\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*(?:=|TO\b)", re.IGNORECASE)
_CONFORMING_OFF = re.compile(r"^SET\s+(?:SESSION\s+)?standard_conforming_strings\s*(?:=|TO)\s*'?off", re.I)
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
#: Where something other than plain code may start, in psql's lexer.
_SPECIAL = re.compile(r"--|/\*|[';\\\"$]")
_QUOTE_END = re.compile(r"'")
_ESCAPED_QUOTE_END = re.compile(r"\\.|'", re.DOTALL)
_COMMENT_EDGE = re.compile(r"/\*|\*/")


class UnsafeDump(SourceError):
    """The dump would act on more than the database it is restored into."""


def detect_format(path: Path, where: str) -> Format:
    """What kind of dump ``path`` is, from its content (never from its suffix)."""
    if path.is_dir():
        if (path / "toc.dat").is_file():
            return "directory"
        raise SourceError(f"{where}: {path} is a folder but not a pg_dump -Fd archive (no toc.dat in it)")
    with path.open("rb") as handle:
        head = handle.read(4096)
    if head.startswith(b"PGDMP"):
        return "custom"
    if head.startswith(b"\x1f\x8b"):
        with gzip.open(path, "rb") as unpacked:
            try:
                inner = unpacked.read(4096)
            except (OSError, EOFError, zlib.error) as exc:
                raise SourceError(f"{where}: {path} is a damaged gzip file ({exc})") from None
        if b"\x00" not in inner and _looks_like_sql(inner):
            return "gzip"
        raise SourceError(f"{where}: {path} is gzip-compressed but not a plain SQL dump; {GOOD_DUMP}")
    if head[257:262] == b"ustar" and b"toc.dat" in head[:100]:
        return "tar"
    if b"\x00" not in head and _looks_like_sql(head):
        return "plain"
    raise SourceError(f"{where}: {path} is neither a plain SQL dump nor a pg_dump archive; {GOOD_DUMP}")


def _looks_like_sql(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    upper = text.upper()
    keywords = ("CREATE ", "INSERT ", "SET ", "COPY ", "SELECT ", "BEGIN", "ALTER ", "--", "\\")
    return any(word in upper for word in keywords)


Mode = Literal["code", "quote", "escaped", "ident", "dollar", "comment"]


def _word_char(char: str) -> bool:
    return char.isalnum() or char in "_$"


class Gate:
    """Reads a psql script as psql's lexer does (quoted strings, quoted identifiers,
    dollar-quoted bodies, comments, COPY data) and checks each whole statement before any
    line of it reaches psql: passes what acts on the current database, drops a ``SET`` of a
    setting the server cannot take, refuses the rest (``UnsafeDump``).

    It guards against dumps made with the wrong options and scripts made by hand, not against
    SQL written to attack: a function body the dump defines runs with the restoring role's
    rights, like any migration would.
    """

    def __init__(self, *, known_settings: set[str], where: str, path: Path) -> None:
        self.known = {name.lower() for name in known_settings}
        self.where = where
        self.path = path
        self.line_number = 0
        self.dropped: list[str] = []
        self._mode: Mode = "code"
        self._dollar = ""
        self._depth = 0
        self._conforming = True
        self._in_copy = False
        self._copy_next = False
        self._statement: list[str] = []
        self._statement_line = 0
        self._statement_text = ""
        self._line_text = ""
        self._done: list[str] = []
        self._held: list[bytes] = []

    def lines(self, raw: Iterable[bytes]) -> Iterator[bytes]:
        for line in raw:
            self.line_number += 1
            if self._in_copy:
                if line.rstrip(b"\r\n") == b"\\.":
                    self._in_copy = False
                yield line
                continue
            self._held.append(line)
            self._line_text = line.decode("utf-8", errors="replace")
            self._scan(self._line_text)
            if self._mode == "code" and not self._pending():
                yield from self._release()
        if self._pending():  # psql runs a last statement that lacks its semicolon
            self._end_statement()
        yield from self._release()

    def _pending(self) -> bool:
        return any(part.strip() for part in self._statement)

    def _release(self) -> Iterator[bytes]:
        """Hand psql the held lines: every statement in them has been checked."""
        held, done = self._held, self._done
        self._held, self._done = [], []
        if len(done) == 1 and (setting := _SET.match(done[0])) is not None:
            name = setting.group(1).lower()
            # A name with a dot is a custom setting, which every server accepts.
            if "." not in name and name not in self.known:
                self.dropped.append(setting.group(1))
                held = []
        yield from held
        if self._copy_next:
            self._copy_next = False
            self._in_copy = True

    def _add(self, code: str) -> None:
        if code.strip() and not self._pending():
            self._statement_line = self.line_number
            self._statement_text = self._line_text
        self._statement.append(code)

    def _scan(self, text: str) -> None:
        i, size = 0, len(text)
        while i < size:
            if self._mode == "code":
                match = _SPECIAL.search(text, i)
                if match is None:
                    self._add(text[i:])
                    return
                self._add(text[i : match.start()])
                token, i = match.group(), match.end()
                before = text[match.start() - 1] if match.start() else " "
                if token == "--":
                    self._add(" ")
                    return
                if token == "/*":
                    self._mode, self._depth = "comment", 1
                    self._add(" ")
                elif token == "'":
                    prefix = text[match.start() - 2] if match.start() > 1 else " "
                    escaped = before in "eE" and not _word_char(prefix)
                    self._mode = "escaped" if escaped or not self._conforming else "quote"
                    self._add("'?'")
                elif token == '"':
                    self._mode = "ident"
                    self._add('"?"')
                elif token == "$":
                    tag = _DOLLAR.match(text, match.start())
                    if tag is not None and not _word_char(before):
                        self._mode, self._dollar, i = "dollar", tag.group(), tag.end()
                        self._add("$?$")
                    else:
                        self._add("$")
                elif token == ";":
                    self._end_statement()
                else:  # a backslash: psql takes the rest of the line as a meta-command
                    self._check_meta(text[match.start() :].strip())
                    return
            elif self._mode in ("quote", "escaped"):
                pattern = _ESCAPED_QUOTE_END if self._mode == "escaped" else _QUOTE_END
                while (end := pattern.search(text, i)) is not None and end.group() != "'":
                    i = end.end()
                if end is None:
                    return
                if text.startswith("''", end.start()):
                    i = end.start() + 2
                    continue
                self._mode, i = "code", end.end()
            elif self._mode == "ident":
                end_at = text.find('"', i)
                if end_at < 0:
                    return
                if text.startswith('""', end_at):
                    i = end_at + 2
                    continue
                self._mode, i = "code", end_at + 1
            elif self._mode == "dollar":
                end_at = text.find(self._dollar, i)
                if end_at < 0:
                    return
                self._mode, i = "code", end_at + len(self._dollar)
            else:  # a block comment, which nests in PostgreSQL
                edge = _COMMENT_EDGE.search(text, i)
                if edge is None:
                    return
                self._depth += 1 if edge.group() == "/*" else -1
                i = edge.end()
                if self._depth == 0:
                    self._mode = "code"

    def _end_statement(self) -> None:
        code = " ".join("".join(self._statement).split())
        self._statement = []
        if not code:
            return
        self._check_statement(code)
        self._done.append(code)
        if _CONFORMING_OFF.match(code):
            self._conforming = False
        elif code.lower().startswith("set") and "standard_conforming_strings" in code.lower():
            self._conforming = True
        if _COPY_STDIN.match(code):
            self._copy_next = True

    def _check_meta(self, stripped: str) -> None:
        command = re.split(r"[\s\\]", stripped[1:], maxsplit=1)[0] if len(stripped) > 1 else ""
        if command.lower() not in _ALLOWED_META:
            self._refuse(f"the psql command \\{command}", self.line_number)

    def _check_statement(self, code: str) -> None:
        match = _FORBIDDEN.match(code)
        if match:
            what = " ".join(match.group("what").split()).upper()
            self._refuse(f"{what} ({self._statement_text.strip()[:80]})")
        if _COPY_ELSEWHERE.match(code):
            self._refuse(
                f"a COPY that reads or writes outside the dump ({self._statement_text.strip()[:80]})"
            )

    def _refuse(self, what: str, line: int | None = None) -> None:
        raise UnsafeDump(
            f"{self.where}: {self.path} line {line or self._statement_line} has {what}, which acts "
            f"on more than the database it is restored into; nothing was restored from it. {GOOD_DUMP}"
        )


def restore(path: Path, backend: Backend, dbname: str, where: str) -> None:
    """Restore ``path`` into ``dbname`` (one of ours, just forked from an empty parent)."""
    with tls_relay(backend.address(dbname)) as address:
        _restore_at(path, address, dbname, where)


def _restore_at(path: Path, address: ServerAddress, dbname: str, where: str) -> None:
    import psycopg

    form = detect_format(path, where)
    with psycopg.connect(address.conninfo(), connect_timeout=10) as conn:
        known = {row[0] for row in conn.execute("SELECT name FROM pg_settings").fetchall()}
    gate = Gate(known_settings=known, where=where, path=path)
    env = _client_env(address, dbname)
    with tempfile.TemporaryFile() as psql_errors, tempfile.TemporaryFile() as producer_errors:
        consumer = subprocess.Popen(
            [client("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=psql_errors,
            env=env,
        )
        producer: subprocess.Popen[bytes] | None = None
        try:
            assert consumer.stdin is not None
            if form in ("plain", "gzip"):
                opener = gzip.open if form == "gzip" else open
                try:
                    with opener(path, "rb") as source:
                        _pump(gate.lines(source), consumer.stdin)
                except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
                    raise SourceError(
                        f"{where}: {path} is a damaged gzip file ({exc or type(exc).__name__}); "
                        "nothing was restored from it"
                    ) from None
            else:
                argv = [client("pg_restore"), "--no-owner", "--no-privileges", "-f", "-", str(path)]
                producer = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=producer_errors, env=env)
                assert producer.stdout is not None
                _pump(gate.lines(producer.stdout), consumer.stdin)
                if producer.wait() != 0:
                    raise SourceError(f"{where}: reading {path} failed:\n{_tail(producer_errors, address)}")
            with contextlib.suppress(BrokenPipeError):  # psql stopped early: its message says why
                consumer.stdin.close()
            if consumer.wait() != 0:
                raise SourceError(f"{where}: restoring {path} failed:\n{_tail(psql_errors, address)}")
        except BaseException:
            for process in (consumer, producer):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
            raise


def copy_database(backend: Backend, source: str, dbname: str, where: str) -> None:
    """Copy database ``source`` into ``dbname`` (ours, just forked from an empty parent) with
    pg_dump, for a role that may read the source but not fork it. The dump goes through the
    same gate as a dump file, so nothing in it reaches another database."""
    with (
        tls_relay(backend.address(source)) as address,
        tempfile.TemporaryDirectory(prefix="dbbranch-copy-") as folder,
    ):
        target = Path(folder) / f"{source}.dump"
        with tempfile.TemporaryFile() as errors:
            done = subprocess.run(
                [client("pg_dump"), "-Fc", "--no-owner", "--no-acl", "-f", str(target)],
                stdout=subprocess.DEVNULL,
                stderr=errors,
                env=_client_env(address, source),
                check=False,
            )
            if done.returncode != 0:
                raise SourceError(f"{where}: pg_dump of database {source!r} failed: {_tail(errors, address)}")
        restore(target, backend, dbname, where)


def _pump(lines: Iterator[bytes], sink: IO[bytes]) -> None:
    try:
        for line in lines:
            sink.write(line)
    except BrokenPipeError:
        pass  # psql stopped at an error; its exit code and message say which


def _tail(handle: IO[bytes], address: ServerAddress) -> str:
    handle.seek(0)
    text = handle.read().decode("utf-8", errors="replace").strip()
    return address.redact(text)[-2000:]


def _client_env(address: ServerAddress, dbname: str) -> dict[str, str]:
    conn = address.kwargs()
    env = dict(os.environ)
    env.update(
        PGHOST=str(conn.get("host", "")),
        PGPORT=str(conn.get("port", "")),
        PGUSER=str(conn.get("user", "")),
        PGDATABASE=dbname,
    )
    if address.password:
        env["PGPASSWORD"] = address.password
    for key, value in address.options:
        if key == "sslmode":
            env["PGSSLMODE"] = value
    return env
