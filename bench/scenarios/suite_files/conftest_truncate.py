"""TRUNCATE between tests, no plugin: one database and one connection for the whole session.

The session fixture forks the migrated template once; after every test the fixture empties
every application table (``alembic_version`` stays) with ``TRUNCATE … RESTART IDENTITY
CASCADE``. Note the semantic difference: later tests start from empty tables, not from the
snapshot's rows. Copied into a generated suite as ``conftest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql


@pytest.fixture(scope="session")
def truncate_session() -> Iterator[tuple[psycopg.Connection[Any], sql.Composed]]:
    admin_info = os.environ["BENCH_ADMIN_CONNINFO"]
    name = f"bench_truncate_{os.getpid()}"
    with psycopg.connect(admin_info, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(os.environ["BENCH_TEMPLATE"])
            )
        )
    conn = psycopg.connect(psycopg.conninfo.make_conninfo(admin_info, dbname=name))
    try:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
            " ORDER BY tablename"
        ).fetchall()
        conn.commit()
        tables = sql.SQL(", ").join(sql.Identifier("public", table) for (table,) in rows)
        statement = sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(tables)
        yield conn, statement
    finally:
        conn.close()
        with psycopg.connect(admin_info, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def truncate_db(
    truncate_session: tuple[psycopg.Connection[Any], sql.Composed],
) -> Iterator[psycopg.Connection[Any]]:
    conn, statement = truncate_session
    yield conn
    conn.rollback()
    conn.execute(statement)
    conn.commit()
