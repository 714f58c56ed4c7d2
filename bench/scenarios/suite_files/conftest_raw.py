"""Raw SQL floor, no plugin: one CREATE DATABASE … TEMPLATE … STRATEGY FILE_COPY per test.

The fixture does the least a database-per-test fixture can do: fork the migrated template,
connect, and at teardown close and DROP DATABASE. Copied into a generated suite as
``conftest.py``; configured by ``BENCH_ADMIN_CONNINFO`` and ``BENCH_TEMPLATE``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

_numbers = itertools.count()


@pytest.fixture(scope="session")
def raw_admin() -> Iterator[psycopg.Connection[Any]]:
    conn = psycopg.connect(os.environ["BENCH_ADMIN_CONNINFO"], autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def raw_db(raw_admin: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    name = f"bench_raw_{os.getpid()}_{next(_numbers)}"
    raw_admin.execute(
        sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
            sql.Identifier(name), sql.Identifier(os.environ["BENCH_TEMPLATE"])
        )
    )
    conn = psycopg.connect(psycopg.conninfo.make_conninfo(os.environ["BENCH_ADMIN_CONNINFO"], dbname=name))
    try:
        yield conn
    finally:
        conn.close()
        raw_admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
