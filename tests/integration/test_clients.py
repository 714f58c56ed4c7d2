"""The clients a branch hands out besides its psycopg connection (async connections, SQLAlchemy
engines, ORM sessions sync and async), in branch and in rollback isolation.

In rollback isolation a test's writes live in one transaction of the worker's connection.
Application code calls ``commit()``: there it releases a savepoint, so the code runs as it
would and nothing reaches the next test. That is the promise tested here, for every client;
the fixtures built on these methods are tested in an inner run (``tests/suites/test_readme.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text

from pytest_dbbranch.branching.branch import Branch
from tests.integration.support import MakeManager


def widgets(branch: Branch) -> int:
    row = branch.connection.execute("SELECT count(*) FROM widgets").fetchone()
    assert row is not None
    return int(row[0])


def test_rollback_isolation_orm_and_engine_commits_stay_in_the_test(make_manager: MakeManager) -> None:
    """ORM session and engine share the test's connection: their commits are visible to the
    psycopg connection at once, a rollback after an error returns to the last commit (as a
    real transaction would), and the next test starts from the template again."""
    manager = make_manager(isolation="rollback")
    first = manager.create(node_id="t::test_first")
    session = first.orm_session()
    session.execute(text("INSERT INTO widgets (name) VALUES ('orm')"))
    session.commit()
    with first.engine().begin() as conn:
        conn.execute(text("INSERT INTO widgets (name) VALUES ('engine')"))
    assert widgets(first) == 3
    with pytest.raises(Exception, match="nope"):
        session.execute(text("INSERT INTO nope VALUES (1)"))
    session.rollback()
    assert session.execute(text("SELECT count(*) FROM widgets")).scalar() == 3
    first.connection.execute("INSERT INTO widgets (name) VALUES ('psycopg')")
    first.connection.commit()
    assert widgets(first) == 4
    manager.release(first)

    second = manager.create(node_id="t::test_second")
    assert second.name == first.name, "rollback isolation shares the worker's branch"
    assert widgets(second) == 1
    assert second.orm_session().execute(text("SELECT count(*) FROM widgets")).scalar() == 1
    manager.release(second)


def test_rollback_isolation_async_clients_stay_in_the_test(make_manager: MakeManager) -> None:
    """The async connection and AsyncSession get a transaction of their own (they cannot share
    a sync connection), with the same savepoint commits, rolled back at teardown too. The
    test's own event loop uses them, as pytest-asyncio's or anyio's would."""
    pytest.importorskip("greenlet", reason="AsyncSession needs greenlet: pip install -e '.[test]'")
    manager = make_manager(isolation="rollback")
    first = manager.create(node_id="t::test_async")

    async def write() -> Any:
        conn = first.async_connection
        await conn.execute("INSERT INTO widgets (name) VALUES ('async')")
        await conn.commit()
        session = first.orm_async_session()
        await session.execute(text("INSERT INTO widgets (name) VALUES ('async orm')"))
        await session.commit()
        return (await session.execute(text("SELECT count(*) FROM widgets"))).scalar()

    assert asyncio.run(write()) == 3
    manager.release(first)
    second = manager.create(node_id="t::test_after")

    async def count() -> Any:
        cursor = await second.async_connection.execute("SELECT count(*) FROM widgets")
        return await cursor.fetchone()

    assert asyncio.run(count()) == (1,)
    assert widgets(second) == 1
    manager.release(second)


def test_branch_isolation_clients_see_one_database_and_are_closed(make_manager: MakeManager) -> None:
    """In a branch of its own every client reaches the same database: what the ORM session
    commits, the psycopg and the async connection read. Release closes them all (async ones
    from outside any loop) before the branch is dropped."""
    manager = make_manager()
    branch = manager.create(node_id="t::test_clients")
    session = branch.orm_session()
    session.execute(text("INSERT INTO widgets (name) VALUES ('orm')"))
    session.commit()
    assert widgets(branch) == 2

    async def read() -> Any:
        cursor = await branch.async_connection.execute("SELECT count(*) FROM widgets")
        return await cursor.fetchone()

    assert asyncio.run(read()) == (2,)
    handed_out = [branch.connection, branch.async_connection]
    manager.release(branch)
    assert all(conn.closed for conn in handed_out)
    assert not manager.backend().exists(branch.name)
