"""The clients a branch hands out besides its psycopg connection: async connections,
SQLAlchemy engines and ORM sessions, sync and async, and what rollback isolation does to them.

Async clients are opened outside any event loop (fixtures are set up before the test's loop
exists, and pytest-asyncio and anyio make a loop per test): psycopg's async connection and
SQLAlchemy's async engine are not bound to the loop that made them, so a private loop in a
helper thread opens and closes them.

In rollback isolation a test's work lives in one transaction of the worker's shared
connection, rolled back at teardown. ``commit()`` and ``rollback()`` there act on a savepoint
inside that transaction, so application code that commits (an ORM ``session.commit()``, a
repository calling ``conn.commit()``) runs as it would, and nothing reaches the next test.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg

from ..errors import ConfigError

T = TypeVar("T")

SAVEPOINT = "dbbranch_test"

ASYNC_EXTRA = (
    "SQLAlchemy's asyncio support needs greenlet: install 'pytest-dbbranch[async]' (or sqlalchemy[asyncio])"
)


def fresh_credentials(engine: Any, password: Callable[[], str | None]) -> Any:
    """Give every connection a SQLAlchemy pool opens the password valid *now*: a URL holds
    one token, and a pool opens connections long after the URL was made (Lakebase tokens
    last an hour, and a test suite may last longer). ``password`` is called per connect."""
    from sqlalchemy import event

    target = getattr(engine, "sync_engine", engine)

    def on_connect(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        current = password()
        if current is not None:
            cparams["password"] = current

    event.listen(target, "do_connect", on_connect)
    return engine


def run_async(awaitable: Awaitable[T]) -> T:
    """Run a coroutine to completion on a private loop in a helper thread: fixture setup
    and teardown may happen while another loop runs in this thread."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(_await(awaitable))
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, name="dbbranch-async")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]  # type: ignore[no-any-return]


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


class SavepointConnection(psycopg.Connection[Any]):
    """A connection whose commit and rollback stay inside one outer transaction."""

    _armed = False

    def arm(self) -> None:
        """Begin the test's transaction and its savepoint."""
        if self.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            super().rollback()
        self.execute(f"SAVEPOINT {SAVEPOINT}")
        self._armed = True

    def commit(self) -> None:
        if not self._armed:
            return super().commit()
        if self.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            # As PostgreSQL does with COMMIT in a failed transaction: it rolls back.
            self.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
            return None
        self.execute(f"RELEASE SAVEPOINT {SAVEPOINT}")
        self.execute(f"SAVEPOINT {SAVEPOINT}")
        return None

    def rollback(self) -> None:
        if not self._armed:
            return super().rollback()
        self.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
        return None

    def disarm(self) -> None:
        """Roll the whole test's transaction back."""
        self._armed = False
        super().rollback()


class AsyncSavepointConnection(psycopg.AsyncConnection[Any]):
    """The same for an async connection of a test in rollback isolation (its own
    transaction: it does not see the sync connection's uncommitted writes, nor they its)."""

    _armed = False

    async def arm(self) -> None:
        await self.execute(f"SAVEPOINT {SAVEPOINT}")
        self._armed = True

    async def commit(self) -> None:
        if not self._armed:
            return await super().commit()
        if self.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            await self.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
            return None
        await self.execute(f"RELEASE SAVEPOINT {SAVEPOINT}")
        await self.execute(f"SAVEPOINT {SAVEPOINT}")
        return None

    async def rollback(self) -> None:
        if not self._armed:
            return await super().rollback()
        await self.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
        return None

    async def disarm(self) -> None:
        self._armed = False
        await super().rollback()


def async_engine(url: str, **kwargs: Any) -> Any:
    """``create_async_engine`` with a message naming the extra when greenlet is missing."""
    from sqlalchemy.ext.asyncio import create_async_engine

    try:
        return create_async_engine(url, **kwargs)
    except ValueError as exc:
        if "greenlet" in str(exc):
            raise ConfigError(ASYNC_EXTRA) from None
        raise


def require_greenlet() -> None:
    if importlib.util.find_spec("greenlet") is None:
        raise ConfigError(ASYNC_EXTRA)
