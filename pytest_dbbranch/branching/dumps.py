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

import psycopg

from ..backends import Backend
from ..conninfo import ServerAddress
from ..errors import SourceError
from ..server.binaries import client

Format = Literal["plain", "gzip", "custom", "directory", "tar"]

GOOD_DUMP = (
    "make the dump with `pg_dump --no-owner --no-privileges -f snapshot.sql DBNAME` (without "
    "-C/--create and -c/--clean) or `pg_dump -Fc`"
)

#: psql meta-commands a dump of one database may contain.
_ALLOWED_META = {"restrict", "unrestrict", "set", "unset", "encoding", "echo", "pset", "qecho"}
#: Statements that act on the server or on other databases, never on the one restored.
_FORBIDDEN = re.compile(
    r"(?:^|;)\s*(?P<what>(?:CREATE|DROP|ALTER)\s+(?:DATABASE|ROLE|USER|GROUP|TABLESPACE|SUBSCRIPTION)"
    r"|ALTER\s+SYSTEM|DROP\s+OWNED|REASSIGN\s+OWNED|CHECKPOINT)\b",
    re.IGNORECASE,
)
_COPY_START = re.compile(r"^\s*COPY\b.*\bFROM\s+stdin\s*;\s*$", re.IGNORECASE)
_COPY_ELSEWHERE = re.compile(r"^\s*COPY\b.*\b(?:FROM|TO)\s+(?:PROGRAM\b|')", re.IGNORECASE)
_SET = re.compile(r"^\s*SET\s+(?:SESSION\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*(?:=|TO)\s", re.IGNORECASE)
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


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


class Gate:
    """Reads a psql script line by line: passes what acts on the current database, drops
    ``SET`` lines the server cannot take, refuses the rest (``UnsafeDump``)."""

    def __init__(self, *, known_settings: set[str], where: str, path: Path) -> None:
        self.known = {name.lower() for name in known_settings}
        self.where = where
        self.path = path
        self.line_number = 0
        self._in_copy = False
        self._dollar: str | None = None
        self._in_quote = False
        self.dropped: list[str] = []

    def lines(self, raw: Iterable[bytes]) -> Iterator[bytes]:
        for line in raw:
            self.line_number += 1
            if self._in_copy:
                if line.rstrip(b"\r\n") == b"\\.":
                    self._in_copy = False
                yield line
                continue
            text = line.decode("utf-8", errors="replace")
            code = self._code_of(text)
            if code is None:  # wholly inside a quoted string or a function body
                yield line
                continue
            stripped = code.strip()
            if stripped.startswith("\\"):
                self._check_meta(stripped)
                yield line
                continue
            self._check_statement(code, text)
            setting = _SET.match(code)
            if setting and setting.group(1).lower() not in self.known:
                self.dropped.append(setting.group(1))
                continue
            if _COPY_START.match(code):
                self._in_copy = True
            yield line

    def _code_of(self, text: str) -> str | None:
        """The parts of a line outside string literals and dollar-quoted bodies, tracking
        quotes that span lines. None when the whole line is inside one."""
        out: list[str] = []
        i = 0
        started_inside = self._in_quote or self._dollar is not None
        while i < len(text):
            if self._dollar is not None:
                end = text.find(self._dollar, i)
                if end < 0:
                    break
                i = end + len(self._dollar)
                self._dollar = None
                continue
            if self._in_quote:
                end = text.find("'", i)
                if end < 0:
                    break
                if text.startswith("''", end):
                    i = end + 2
                    continue
                i = end + 1
                self._in_quote = False
                continue
            char = text[i]
            if char == "-" and text.startswith("--", i):
                break
            if char == "'":
                self._in_quote = True
                i += 1
                continue
            if char == "$":
                match = _DOLLAR.match(text, i)
                if match:
                    self._dollar = match.group(0)
                    i = match.end()
                    continue
            out.append(char)
            i += 1
        code = "".join(out)
        if started_inside and not code.strip():
            return None
        return code

    def _check_meta(self, stripped: str) -> None:
        command = stripped[1:].split(None, 1)[0] if len(stripped) > 1 else ""
        if command.lower() not in _ALLOWED_META:
            self._refuse(f"the psql command \\{command}")

    def _check_statement(self, code: str, text: str) -> None:
        match = _FORBIDDEN.search(code)
        if match:
            self._refuse(f"{' '.join(match.group('what').split()).upper()} ({text.strip()[:80]})")
        if _COPY_ELSEWHERE.match(code):
            self._refuse(f"a COPY that reads or writes outside the dump ({text.strip()[:80]})")

    def _refuse(self, what: str) -> None:
        raise UnsafeDump(
            f"{self.where}: {self.path} line {self.line_number} has {what}, which acts on more than "
            f"the database it is restored into; nothing was restored from it. {GOOD_DUMP}"
        )


def restore(path: Path, backend: Backend, dbname: str, where: str) -> None:
    """Restore ``path`` into ``dbname`` (one of ours, just forked from an empty parent)."""
    form = detect_format(path, where)
    address = backend.address(dbname)
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
