"""One live branch, as a user's test or script sees it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg

from ..backends import Backend, connect
from ..errors import DbBranchError, ServerError
from ..settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

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
        #: The warm pool that drops this branch in the background, if any.
        self.pool: WarmPool | None = None
        self.backend = backend
        self._upgrader = upgrader
        self._connection: psycopg.Connection[Any] | None = None
        self._engine: Engine | None = None
        self._extra: list[psycopg.Connection[Any]] = []

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
        if self._connection is None or self._connection.closed:
            self._connection = self.connect()
        return self._connection

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new connection to this branch; closed for you at teardown if still open."""
        try:
            conn = connect(self.backend, self.name, **kwargs)
        except psycopg.OperationalError as exc:
            # Our own error, without psycopg's frames: with ``pytest -l`` their locals would
            # show the conninfo, password included.
            address = self.backend.address(self.name)
            message = address.redact(str(exc)).strip()
            raise ServerError(
                f"cannot connect to branch {self.name} at {self.display_url}: {message}"
            ) from None
        self._extra.append(conn)
        return conn

    def engine(self, **kwargs: Any) -> Engine:
        """A SQLAlchemy engine (psycopg 3 driver) bound to this branch, disposed at teardown."""
        if self._engine is None:
            from sqlalchemy import create_engine

            self._engine = create_engine(self.sqlalchemy_url, **kwargs)
        return self._engine

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
        """Close every client resource we handed out."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        for conn in self._extra:
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
        self._extra.clear()
        self._connection = None


class RollbackBranch(Branch):
    """Isolation by transaction: the test shares its worker's branch and everything it does
    through ``connection`` is rolled back at teardown (0.2 ms instead of a fork).

    What it cannot isolate: commits (refused inside the transaction), work on other
    connections, sequences, and anything outside transactions. Pick it for large data where
    a copy is too slow; pick ``clone`` or ``branch`` for code that commits.
    """

    _transaction: Any = None
    #: The worker's long-lived connection to the shared branch: opening one per test would
    #: cost ten times the rollback itself.
    shared: psycopg.Connection[Any] | None = None

    @property
    def connection(self) -> psycopg.Connection[Any]:
        if self._connection is None or self._connection.closed:
            conn = self.shared
            if conn is None or conn.closed or conn.broken:
                conn = psycopg.connect(self.conninfo)
                self.shared = conn
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            self._transaction = conn.transaction(force_rollback=True)
            self._transaction.__enter__()
            self._connection = conn
        return self._connection

    def upgrade(self, revision: str = "head") -> None:
        raise DbBranchError(
            "upgrade() needs a branch of its own; rollback isolation shares the worker's branch "
            "(use isolation='branch' or 'clone' for this test)"
        )

    def close(self) -> None:
        """Roll back and keep the shared connection for the worker's next test."""
        conn = self._connection
        if self._transaction is not None and conn is not None and not conn.closed:
            try:
                self._transaction.__exit__(None, None, None)
            except psycopg.Error:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
        self._transaction = None
        self._connection = None
        super().close()
