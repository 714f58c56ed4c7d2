"""One live branch, as a user's test or script sees it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg

from ..backends import Backend, connect
from ..errors import DbBranchError, ServerError
from ..settings import Settings
from .clients import (
    AsyncSavepointConnection,
    SavepointConnection,
    async_engine,
    fresh_credentials,
    require_greenlet,
    run_async,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
    from sqlalchemy.orm import Session

    from .pool import WarmPool

#: Runs the migrations on a branch up to a revision (given by the manager that made it).
Upgrader = Callable[["Branch", str], None]


class Branch:
    """A branch's name and URLs, its connection, and a way to migrate it further.

    ``connection`` is opened on first use and closed (with any engine) before the branch
    is dropped, so teardown never has to terminate a session we opened ourselves.
    """

    def __init__(
        self,
        name: str,
        backend: Backend,
        settings: Settings,
        revision: str,
        *,
        upgrader: Upgrader,
    ) -> None:
        self.name = name
        self.revision = revision
        self.settings = settings
        self.failed = False
        #: The warm pool it came from, if any (told when its first connection went unused).
        self.pool: WarmPool | None = None
        #: The name it takes if it is kept: a pool branch runs under its pool name.
        self.readable_name = name
        self._adopted: psycopg.Connection[Any] | None = None
        self._connection_asked = False
        self.backend = backend
        self._upgrader = upgrader
        self._connection: psycopg.Connection[Any] | None = None
        self._engine: Engine | None = None
        self._extra: list[psycopg.Connection[Any]] = []
        self._async_connection: psycopg.AsyncConnection[Any] | None = None
        self._async_extra: list[psycopg.AsyncConnection[Any]] = []
        self._async_engine: AsyncEngine | None = None
        self._sessions: list[Session] = []
        self._async_sessions: list[AsyncSession] = []

    def __repr__(self) -> str:
        return f"<Branch {self.name} at {self.display_url}>"

    @property
    def conninfo(self) -> str:
        """libpq keyword string, password included: for connecting, not for printing."""
        return self.backend.address(self.name).conninfo()

    @property
    def url(self) -> str:
        return self.backend.address(self.name).url()

    @property
    def sqlalchemy_url(self) -> str:
        return self.backend.address(self.name).sqlalchemy_url()

    @property
    def display_url(self) -> str:
        """The URL with the password replaced by ``***``: safe for logs and reports."""
        return self.backend.address(self.name).display_url()

    @property
    def connection(self) -> psycopg.Connection[Any]:
        self._connection_asked = True
        if self._connection is None or self._connection.closed:
            self._connection = self.connect()
        return self._connection

    def adopt(self, conn: psycopg.Connection[Any]) -> None:
        """Use a connection opened ahead (by the warm pool) as ``connection``."""
        self._connection = self._adopted = conn
        self._extra.append(conn)

    @property
    def adopted_unused(self) -> bool:
        """A connection was opened ahead for this branch and the test never asked for it."""
        return self._adopted is not None and not self._connection_asked

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new connection to this branch; closed for you at teardown if still open."""
        try:
            conn = connect(self.backend, self.name, **kwargs)
        except psycopg.OperationalError as exc:
            error: DbBranchError = self._connect_error(exc)
        except ServerError as exc:
            error = exc
        else:
            self._extra.append(conn)
            return conn
        try:
            # Is the whole server gone? The backend then says so, with when and why (and a
            # stopped run fails its remaining tests at once) rather than this branch alone.
            self.backend.describe(self.name)  # every backend has it (Lakebase's own branches too)
        except DbBranchError as lost:
            raise lost from None
        raise error from None

    def _connect_error(self, exc: Exception) -> ServerError:
        """Our own error, raised without psycopg's frames: with ``pytest -l`` their locals
        would show the conninfo, password included."""
        message = self.backend.address(self.name).redact(str(exc)).strip()
        return ServerError(f"cannot connect to branch {self.name} at {self.display_url}: {message}")

    def engine(self, **kwargs: Any) -> Engine:
        """A SQLAlchemy engine (psycopg 3 driver) bound to this branch, disposed at teardown."""
        if self._engine is None:
            from sqlalchemy import create_engine

            self._engine = fresh_credentials(create_engine(self.sqlalchemy_url, **kwargs), self._password)
        return self._engine

    def _password(self) -> str | None:
        return self.backend.address(self.name).password

    @property
    def async_connection(self) -> psycopg.AsyncConnection[Any]:
        """An async psycopg connection to this branch, opened on first use, closed at teardown."""
        if self._async_connection is None or self._async_connection.closed:
            self._async_connection = self.connect_async()
        return self._async_connection

    def connect_async(self, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
        """A new async connection (opened outside any event loop; usable in the test's)."""
        try:
            conn = run_async(psycopg.AsyncConnection.connect(self.conninfo, **kwargs))
        except psycopg.OperationalError as exc:
            message = self.backend.address(self.name).redact(str(exc)).strip()
            raise ServerError(
                f"cannot connect to branch {self.name} at {self.display_url}: {message}"
            ) from None
        self._async_extra.append(conn)
        return conn

    def orm_session(self, **kwargs: Any) -> Session:
        """A SQLAlchemy ORM ``Session`` bound to ``engine()``, closed at teardown."""
        from sqlalchemy.orm import Session

        session = Session(bind=self.engine(), **kwargs)
        self._sessions.append(session)
        return session

    def async_engine(self, **kwargs: Any) -> AsyncEngine:
        """A SQLAlchemy ``AsyncEngine`` (psycopg 3 async) bound to this branch."""
        if self._async_engine is None:
            self._async_engine = fresh_credentials(
                async_engine(self.sqlalchemy_url, **kwargs), self._password
            )
        return self._async_engine

    def orm_async_session(self, **kwargs: Any) -> AsyncSession:
        """A SQLAlchemy ``AsyncSession`` bound to ``async_engine()``, closed at teardown."""
        require_greenlet()
        from sqlalchemy.ext.asyncio import AsyncSession

        session = AsyncSession(bind=self.async_engine(), **kwargs)
        self._async_sessions.append(session)
        return session

    def upgrade(self, revision: str = "head") -> None:
        """Run Alembic on this branch: seed rows at an old revision, upgrade, assert."""
        conn = self._connection
        in_transaction = psycopg.pq.TransactionStatus.INTRANS
        if conn is not None and not conn.closed and conn.info.transaction_status == in_transaction:
            raise DbBranchError(
                f"branch {self.name}: commit or roll back the open transaction on the "
                "fixture connection before upgrade(); its locks would block the migration"
            )
        self._upgrader(self, revision)
        self.revision = revision

    def close(self) -> None:
        """Close every client resource we handed out, sessions before their engines."""
        for session in self._sessions:
            with contextlib.suppress(Exception):
                session.close()
        self._sessions.clear()
        for async_session in self._async_sessions:
            with contextlib.suppress(Exception):
                run_async(async_session.close())
        self._async_sessions.clear()
        if self._async_engine is not None:
            with contextlib.suppress(Exception):
                run_async(self._async_engine.dispose())
            self._async_engine = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        for async_conn in self._async_extra:
            if not async_conn.closed:
                with contextlib.suppress(Exception):
                    run_async(async_conn.close())
        self._async_extra.clear()
        self._async_connection = None
        for conn in self._extra:
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
        self._extra.clear()
        self._connection = None


class RollbackBranch(Branch):
    """Isolation by transaction: the test shares its worker's branch, and everything it does
    through ``connection``, ``engine()`` and ``orm_session()`` (one connection) is rolled back
    at teardown (0.2 ms instead of a fork). ``commit()`` there releases a savepoint, so code
    that commits works; the async clients get a transaction of their own, rolled back too.

    What it cannot isolate: connections opened with ``connect()``, sequences, and anything
    outside transactions (``VACUUM``, ``CREATE DATABASE``). Pick it for large data where a copy
    is too slow; pick ``clone`` or ``branch`` for code that opens its own connections.
    """

    #: The worker's long-lived connection to the shared branch: opening one per test would
    #: cost ten times the rollback itself.
    shared: SavepointConnection | None = None

    @property
    def connection(self) -> psycopg.Connection[Any]:
        if self._connection is None or self._connection.closed:
            conn = self.shared
            if conn is None or conn.closed or conn.broken:
                conn = SavepointConnection.connect(self.conninfo)
                self.shared = conn
            conn.arm()
            self._connection = conn
        return self._connection

    def engine(self, **kwargs: Any) -> Engine:
        """An engine on the test's own transaction: its commits are savepoints too."""
        if self._engine is None:
            from sqlalchemy import create_engine
            from sqlalchemy.pool import StaticPool

            conn = self.connection
            self._engine = create_engine(
                "postgresql+psycopg://",
                creator=lambda: conn,
                poolclass=StaticPool,
                pool_reset_on_return=None,
                **kwargs,
            )
        return self._engine

    def connect_async(self, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
        async def open_armed() -> AsyncSavepointConnection:
            conn = await AsyncSavepointConnection.connect(self.conninfo, **kwargs)
            await conn.arm()
            return conn

        conn = run_async(open_armed())
        self._async_extra.append(conn)
        return conn

    def async_engine(self, **kwargs: Any) -> AsyncEngine:
        if self._async_engine is None:
            from sqlalchemy.pool import StaticPool

            conn = self.async_connection

            async def creator() -> psycopg.AsyncConnection[Any]:
                return conn

            self._async_engine = async_engine(
                "postgresql+psycopg://",
                async_creator=creator,
                poolclass=StaticPool,
                pool_reset_on_return=None,
                **kwargs,
            )
        return self._async_engine

    def upgrade(self, revision: str = "head") -> None:
        raise DbBranchError(
            "upgrade() needs a branch of its own; rollback isolation shares the worker's branch "
            "(use isolation='branch' or 'clone' for this test)"
        )

    def close(self) -> None:
        """Roll everything back; keep the shared connection for the worker's next test."""
        for async_conn in self._async_extra:
            if isinstance(async_conn, AsyncSavepointConnection) and not async_conn.closed:
                with contextlib.suppress(Exception):
                    run_async(async_conn.disarm())
        conn = self.shared
        if self._connection is not None and conn is not None and not conn.closed:
            try:
                conn.disarm()
            except psycopg.Error:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
        self._connection = None
        extra, self._extra = self._extra, []
        super().close()
        self._extra = extra
        for other in extra:
            if other is not conn and not other.closed:
                with contextlib.suppress(psycopg.Error):
                    other.close()
        self._extra.clear()
