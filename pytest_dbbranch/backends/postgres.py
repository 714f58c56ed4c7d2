"""PostgreSQL backend: a branch is a database created with ``CREATE DATABASE … TEMPLATE``.

FILE_COPY beats WAL_LOG for small databases when the server runs without fsync, WAL_LOG wins
on a durable server (FILE_COPY forces two checkpoints); a DROP issued while the last backend
is still exiting waits a 100 ms retry tick, so we poll ``pg_stat_activity`` (≈0.3 ms) before
dropping. The figures are in the README's Performance section (``bench/run.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import psycopg
from psycopg import sql

from ..conninfo import AddressSource, ServerAddress, as_source, connect_fresh, describe_connect_error
from ..errors import (
    BranchExistsError,
    ConfigError,
    DbBranchError,
    NotOursError,
    ParentMissingError,
    ServerError,
    ServerLostError,
    SourceError,
)
from ..names import generated_kind
from .base import BranchRecord, Tag

_DESCRIBE = """
SELECT d.datname, shobj_description(d.oid, 'pg_database'), d.datistemplate, d.datallowconn
FROM pg_database d
"""


#: Seconds to connect before giving up: a frozen server or a lost network accepts nothing.
CONNECT_TIMEOUT = 10


def connect(
    address: ServerAddress | AddressSource, dbname: str | None = None, **kwargs: Any
) -> psycopg.Connection[Any]:
    """Connect with an error that says where we tried and what to fix, without the password.
    A source with rotating credentials gets one retry with a fresh one after a refused login."""
    source = as_source(address)
    try:
        conn: psycopg.Connection[Any] = connect_fresh(
            source, dbname, connect_timeout=CONNECT_TIMEOUT, **kwargs
        )
    except psycopg.OperationalError as exc:
        raise ServerError(describe_connect_error(source.current(), dbname, exc)) from None
    return conn


#: After the admin connection breaks, how long reconnecting may take (a restart, a
#: failover) before the server counts as lost for the rest of the run.
RECONNECT_SECONDS = 10.0
#: Default for one answer of the server (a statement, a builder's lock): see ``timeout``.
DEFAULT_TIMEOUT = 600.0


def advisory_key(text: str) -> int:
    """A stable signed 64-bit key; every process derives the same one from a name."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


#: Whether some session holds an advisory lock, by its (classid, objid) columns.
HELD_QUERY = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = %s"
    " AND objid = %s AND objsubid = 1 AND granted)"
)


def lock_held(conn: psycopg.Connection[Any], key: str) -> bool:
    """``is_held`` on a connection of one's own (a quick look at another server)."""
    row = conn.execute(HELD_QUERY, _lock_columns(advisory_key(key))).fetchone()
    return bool(row and row[0])


def _lock_columns(key: int) -> tuple[int, int]:
    """How ``pg_locks`` shows a bigint advisory key: (classid, objid), high and low halves."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


class PostgresBackend:
    """Branches as databases on one server, driven from one autocommit admin connection."""

    def __init__(
        self,
        address: ServerAddress | AddressSource,
        *,
        lock_folder: Path,
        strategy: str = "auto",
        reflink: bool = False,
        server_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        diagnose: Callable[[], str] | None = None,
    ) -> None:
        #: Asked again for every connection: on Lakebase the password is a token that expires.
        self._source = as_source(address)
        address = self._source.current()
        #: Longest wait for one statement, and for another builder's lock.
        self.timeout = timeout
        #: Says why the server may have gone (the embedded server's log tail).
        self._diagnose = diagnose
        self._lost: ServerLostError | None = None
        self._watchdog = _Watchdog()
        self.server_key = server_key or f"postgres:{address.host}:{address.port}"
        self.lock_folder = lock_folder
        self._mutex = threading.RLock()
        #: Shared session locks this backend holds for its process: the run's liveness and
        #: the templates it forks from. Taken again after a reconnect.
        self._held: set[str] = set()
        self._conn = connect(self._source, autocommit=True)
        self.server_version = self._conn.info.server_version // 10000
        row = self._conn.execute("SELECT current_user").fetchone()
        self.role: str = str(row[0]) if row else (address.user or "")
        self.reflink = reflink
        self._wanted_strategy = strategy
        self.file_copy_method: str | None = None
        self.strategy = self._pick_strategy(strategy)
        self._configure_session()

    # -- protocol ---------------------------------------------------------------------------

    kind = "postgres"
    has_global_lock = True
    knows_liveness = True
    warm_pool = True
    restores_dumps = True
    cheap_listing = True
    empty_parent = "template0"
    source_point = ""

    @property
    def _address(self) -> ServerAddress:
        return self._source.current()

    @property
    def server(self) -> ServerAddress:
        """The maintenance address (password included): for tools that need the server."""
        return self._address

    def find_source(self, location: str, where: str) -> str:
        if location == self._address.dbname:
            raise SourceError(
                f"{where}: the source database {location!r} is the one the server URL connects to; "
                "PostgreSQL copies a database only while nobody is connected to it, so point the URL "
                "at another database of the server (for example postgres)"
            )
        if not self.exists(location):
            raise SourceError(
                f"{where}: source database {location!r} does not exist on the server; create it "
                "(restore your production snapshot into it) or point dbbranch_source at a dump file"
            )
        return location

    def can_copy(self, name: str) -> bool:
        """Whether ``CREATE DATABASE ... TEMPLATE name`` is allowed to this role: PostgreSQL
        copies a database only for roles with its owner's privileges (superusers included),
        or any database marked as a template."""
        with self._mutex:
            row = self._exec(
                "SELECT d.datistemplate OR pg_has_role(current_user, d.datdba, 'USAGE')"
                " FROM pg_database d WHERE d.datname = %s",
                (name,),
            ).fetchone()
        return bool(row and row[0])

    def sibling(self) -> PostgresBackend:
        return PostgresBackend(
            self._source,
            lock_folder=self.lock_folder,
            strategy=self._wanted_strategy,
            reflink=self.reflink,
            server_key=self.server_key,
            timeout=self.timeout,
            diagnose=self._diagnose,
        )

    def refresh_credentials(self, name: str) -> bool:
        return self._source.refresh()

    def address(self, name: str) -> ServerAddress:
        return dataclasses.replace(self._address, dbname=name)

    def fork(self, name: str, parent: str, tag: Tag) -> None:
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(parent)
        )
        if self.strategy is not None:
            statement += sql.SQL(" STRATEGY {}").format(sql.SQL(self.strategy))
        with self._mutex:
            try:
                self._exec(statement)
            except psycopg.errors.DuplicateDatabase:
                raise BranchExistsError(f"database {name!r} already exists") from None
            except psycopg.errors.InvalidCatalogName:
                raise ParentMissingError(f"cannot fork {parent!r}: it does not exist (any more)") from None
            except psycopg.errors.ObjectInUse as exc:
                raise SourceError(
                    f"cannot fork {parent!r}: other sessions are connected to it "
                    f"({exc.diag.message_detail or exc}). PostgreSQL copies a database only "
                    "while nobody is connected to it; close those sessions"
                ) from None
            except psycopg.errors.InsufficientPrivilege as exc:
                raise ServerError(
                    f"cannot create database {name!r} from {parent!r}: {exc}. The role "
                    f"{self._address.user or '(default)'} needs CREATEDB and must own "
                    f"{parent!r} (or it must be a template database)"
                ) from None
            except psycopg.errors.DiskFull as exc:
                raise ServerError(self._disk_full(f"cannot create database {name!r}", exc)) from None
            try:
                self._comment(name, tag)
            except BaseException:
                self._drop_now(name)
                raise

    def seal(self, name: str, tag: Tag) -> None:
        ident = sql.Identifier(name)
        # One plain connection after the migrations rebuilds the relation cache init file,
        # which every fork then inherits: their first connection is 2-4 ms cheaper.
        with connect(self._source, name) as warm:
            warm.execute("SELECT count(*) FROM pg_class").fetchone()
        with self._mutex:
            self._wait_idle(name)
            self._exec(sql.SQL("ALTER DATABASE {} IS_TEMPLATE true").format(ident))
            self._exec(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident))
            # The ready flag goes last: it is the completion marker readers trust.
            self._comment(name, tag.sealed())

    def describe(self, name: str) -> BranchRecord | None:
        with self._mutex:
            row = self._exec(_DESCRIBE + " WHERE d.datname = %s", (name,)).fetchone()
        return _record(row) if row else None

    def exists(self, name: str) -> bool:
        with self._mutex:
            cur = self._exec("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cur.fetchone() is not None

    def list_ours(self, *, sizes: bool = True) -> list[BranchRecord]:
        size = (
            "CASE WHEN has_database_privilege(d.oid, 'CONNECT') THEN pg_database_size(d.oid) END"
            if sizes
            else "NULL::bigint"
        )
        query = (
            "SELECT d.datname, shobj_description(d.oid, 'pg_database'), d.datistemplate,"
            f" d.datallowconn, {size} FROM pg_database d ORDER BY d.datname"
        )
        for attempt in range(5):
            try:
                with self._mutex:
                    rows = self._exec(query).fetchall()
                break
            except psycopg.errors.UndefinedObject:
                # A database was dropped while its size was read (another run's teardown,
                # our own warm pool): read the catalog again.
                if attempt == 4:
                    raise
        records = [_record(row[:4], size=row[4]) for row in rows]
        return [r for r in records if r is not None]

    def list_untagged(self) -> list[str]:
        """Databases of this role with a name this tool generates but no tag: what a kill
        between ``CREATE DATABASE`` and ``COMMENT`` leaves."""
        with self._mutex:
            rows = self._exec(
                "SELECT d.datname, shobj_description(d.oid, 'pg_database') FROM pg_database d"
                " WHERE pg_get_userbyid(d.datdba) = current_user ORDER BY d.datname"
            ).fetchall()
        return [name for name, comment in rows if generated_kind(name) and Tag.loads(comment) is None]

    def drop_untagged(self, name: str) -> None:
        """Drop a leftover found by ``list_untagged``; anything else is refused."""
        with self._mutex:
            row = self._exec(_DESCRIBE + " WHERE d.datname = %s", (name,)).fetchone()
            if row is None:
                return
            if not generated_kind(name) or Tag.loads(row[1]) is not None:
                raise NotOursError(
                    f"refusing to drop database {name!r}: it is not an untagged leftover of ours"
                )
            self._drop_now(name, is_template=bool(row[2]))

    def hold(self, key: str) -> None:
        with self._mutex:
            if key not in self._held:
                self._exec("SELECT pg_advisory_lock_shared(%s)", (advisory_key(key),))
                self._held.add(key)

    def is_held(self, key: str) -> bool:
        with self._mutex:
            row = self._exec(HELD_QUERY, _lock_columns(advisory_key(key))).fetchone()
        return bool(row and row[0])

    @contextmanager
    def claim(self, key: str) -> Iterator[bool]:
        """Exclusive, without waiting: False while any live process holds ``key`` (this one
        included: a session's own locks never conflict, so that is checked first)."""
        if key in self._held:
            yield False
            return
        with self._mutex:
            row = self._exec("SELECT pg_try_advisory_lock(%s)", (advisory_key(key),)).fetchone()
        got = bool(row and row[0])
        try:
            yield got
        finally:
            if got:
                with self._mutex:
                    self._exec("SELECT pg_advisory_unlock(%s)", (advisory_key(key),))

    def drop(self, name: str) -> None:
        with self._mutex:
            row = self._exec(_DESCRIBE + " WHERE d.datname = %s", (name,)).fetchone()
            if row is None:
                return
            if _record(row) is None:
                raise NotOursError(
                    f"refusing to drop database {name!r}: it carries no pytest-dbbranch tag, "
                    "so this tool did not create it"
                )
            self._drop_now(name, is_template=bool(row[2]))

    def spare_connections(self) -> int | None:
        """Client connections the server still accepts (``max_connections`` less the slots
        reserved for superusers and the connections open now): how much a warm pool may add."""
        with self._mutex:
            row = self._exec(
                "SELECT current_setting('max_connections')::int"
                " - current_setting('superuser_reserved_connections')::int"
                " - coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0)"
                " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
            ).fetchone()
        return int(row[0]) if row else 0

    def rename(self, old: str, new: str) -> None:
        """Give a pool branch its test's name: a catalog update, nothing is copied."""
        with self._mutex:
            self._exec(
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
            )

    def current_database(self) -> str:
        with self._mutex:
            row = self._exec("SELECT current_database()").fetchone()
        return str(row[0]) if row else self._address.dbname

    def retag(self, name: str, tag: Tag) -> None:
        with self._mutex:
            self._comment(name, tag)

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Session advisory lock on its own connection, so that it dies with the process;
        waiting for it ends after ``timeout`` (a builder that hangs holds nobody for ever)."""
        self._check_lost()
        conn = connect(self._source, autocommit=True)
        try:
            conn.execute(
                sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(self.timeout * 1000)}ms"))
            )
            try:
                conn.execute("SELECT pg_advisory_lock(%s)", (advisory_key(key),))
            except psycopg.errors.LockNotAvailable:
                raise DbBranchError(
                    f"waited {self.timeout:.0f}s for another process building {key.split(':', 1)[-1]}; "
                    "it may hang (dbbranch list shows who builds what; dbbranch_timeout sets the wait)"
                ) from None
            yield
        finally:
            conn.close()

    def close(self) -> None:
        with self._mutex:
            self._watchdog.stop()
            self._conn.close()

    # -- helpers ----------------------------------------------------------------------------

    def _configure_session(self) -> None:
        if self.file_copy_method:
            # Size-independent copies on XFS/Btrfs: the files are cloned, not read and written.
            self._conn.execute(sql.SQL("SET file_copy_method = {}").format(sql.SQL(self.file_copy_method)))

    def _exec(self, query: Any, params: Any = None) -> psycopg.Cursor[Any]:
        """Execute on the admin connection, giving up after ``timeout`` (a frozen server never
        answers). If the server restarted under us (a crash, a failover, pg_ctl restart),
        reconnect for up to RECONNECT_SECONDS and try once more; after that the server
        counts as lost and every later call fails at once, pointing at the first error."""
        self._check_lost()
        try:
            return self._execute(query, params)
        except psycopg.OperationalError:
            if not self._conn.broken and not self._conn.closed:
                raise
        deadline = time.monotonic() + RECONNECT_SECONDS
        while True:
            try:
                self._conn = connect(self._source, autocommit=True)
                break
            except ServerError as exc:
                if time.monotonic() > deadline:
                    self._lose(str(exc))
                time.sleep(0.1)
        self._configure_session()
        for key in self._held:
            self._conn.execute("SELECT pg_advisory_lock_shared(%s)", (advisory_key(key),))
        return self._execute(query, params)

    def _execute(self, query: Any, params: Any) -> psycopg.Cursor[Any]:
        """One statement with a client-side deadline: the server's own timeouts cannot fire
        when it is frozen (SIGSTOP, a lost network), so a timer shuts the socket down."""
        conn = self._conn
        self._watchdog.arm(conn, self.timeout)
        try:
            return conn.execute(query, params)
        except psycopg.OperationalError as exc:
            if self._watchdog.fired:
                self._lose(f"no answer from the server within {self.timeout:.0f}s ({exc})")
            raise
        finally:
            self._watchdog.disarm()

    def _check_lost(self) -> None:
        if self._lost is not None:
            raise self._lost

    def _lose(self, reason: str) -> NoReturn:
        when = time.strftime("%H:%M:%S")
        message = (
            f"the server at {self._address.display_url()} was lost at {when}: {self._address.redact(reason)}"
        )
        tail = self._diagnose() if self._diagnose is not None else ""
        if tail:
            message += "\n  the embedded server's log ends with:\n    " + tail.replace("\n", "\n    ")
        self._lost = ServerLostError(
            message + "\n  (every later request of this run fails at once with this error)"
        )
        raise self._lost

    def _disk_full(self, what: str, exc: Exception) -> str:
        return (
            f"{what}: the disk holding the server's data is full ({exc}). Free space, or give the "
            "embedded server a larger folder (dbbranch_embedded_dir)"
        )

    def _pick_strategy(self, wanted: str) -> str | None:
        if wanted == "clone" and self.server_version < 18:
            raise ConfigError(
                f"dbbranch_strategy clone needs PostgreSQL 18 or newer (file_copy_method = clone); "
                f"this server is PostgreSQL {self.server_version}: use auto or file_copy"
            )
        if self.server_version < 15:
            return None
        clone = wanted == "clone" or (wanted == "auto" and self.reflink)
        if clone and self.server_version >= 18:
            self.file_copy_method = "clone"
            return "FILE_COPY"
        if wanted in ("file_copy", "clone"):
            return "FILE_COPY"
        if wanted == "wal_log":
            return "WAL_LOG"
        fsync = self._conn.execute("SHOW fsync").fetchone()
        return "FILE_COPY" if fsync and fsync[0] == "off" else "WAL_LOG"

    def _comment(self, name: str, tag: Tag) -> None:
        self._exec(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(tag.dumps()))
        )

    def _wait_idle(self, name: str, timeout: float = 2.0) -> None:
        """Wait for backends that are still exiting; FORCE handles the ones that are not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self._exec("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone()
            if not row or row[0] == 0:
                return
            time.sleep(0.001)

    def _drop_now(self, name: str, *, is_template: bool = False) -> None:
        ident = sql.Identifier(name)
        if is_template:
            self._exec(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(ident))
        self._wait_idle(name, timeout=0.5)
        force = sql.SQL(" WITH (FORCE)") if self.server_version >= 13 else sql.SQL("")
        self._exec(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident) + force)


def _record(row: Any, size: int | None = None) -> BranchRecord | None:
    tag = Tag.loads(row[1])
    if tag is None:
        return None
    return BranchRecord(name=row[0], tag=tag, allows_connections=bool(row[3]), size_bytes=size)


class _Watchdog:
    """One thread per backend that makes a statement blocked on a frozen server fail, by
    shutting the connection's socket down under it once its deadline passes. (The server's
    own timeouts cannot fire when it is frozen: SIGSTOP, a lost network.)"""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._conn: psycopg.Connection[Any] | None = None
        self._deadline = 0.0
        self._stopping = False
        self.fired = False
        self._thread: threading.Thread | None = None

    def arm(self, conn: psycopg.Connection[Any], timeout: float) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="dbbranch-watchdog", daemon=True)
                self._thread.start()
            self._conn, self._deadline, self.fired = conn, time.monotonic() + timeout, False
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._conn = None

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def _loop(self) -> None:
        with self._cond:
            while not self._stopping:
                if self._conn is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self.fired = True
                _shut_down(self._conn)
                self._conn = None


def _shut_down(conn: psycopg.Connection[Any]) -> None:
    """Make a statement blocked on a frozen server fail: shut the socket down under it."""
    import socket

    try:
        fd = conn.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, psycopg.Error):
        pass
