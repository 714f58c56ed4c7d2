"""The production snapshot: existing database (never written), dump files (restored once)."""

from __future__ import annotations

import shutil

import psycopg
import pytest
from conftest import (
    EXAMPLE,
    AlembicProject,
    databases,
    drop_ours,
    our_branches,
    pg_dump,
    restore_snapshot,
    run_inner,
    write_tests,
)
from psycopg import sql

COUNT_TESTS = """
    def test_count(db_branch):
        assert db_branch.execute("SELECT count(*) FROM items").fetchone()[0] == 3000

    def test_destroy(db_branch):
        db_branch.execute("DELETE FROM items")
        db_branch.execute("DROP TABLE locations CASCADE")
        db_branch.commit()
"""


@pytest.fixture(autouse=True)
def _clean_server(embedded_url: str) -> None:
    drop_ours(embedded_url)


def _copy_example_migrations(pytester: pytest.Pytester) -> None:
    shutil.copytree(EXAMPLE / "migrations", pytester.path / "migrations")
    shutil.copytree(EXAMPLE / "inventory", pytester.path / "inventory")
    shutil.copy(EXAMPLE / "alembic.ini", pytester.path / "alembic.ini")


def test_plain_sql_dump_is_restored_once(pytester: pytest.Pytester, embedded_url: str) -> None:
    _copy_example_migrations(pytester)
    shutil.copy(EXAMPLE / "snapshot.sql", pytester.path / "snapshot.sql")
    pytester.makeini("[pytest]\ndbbranch_source = snapshot.sql\npythonpath = .\n")
    write_tests(pytester, "test_d", COUNT_TESTS)
    first = run_inner(pytester, embedded_url)
    first.assert_outcomes(passed=2)
    first.stdout.fnmatch_lines(["*1 source dumps restored*"])
    sources = our_branches(embedded_url, "source")
    assert len(sources) == 1
    second = run_inner(pytester, embedded_url, "--dbbranch-rebuild")
    second.assert_outcomes(passed=2)
    assert "source dumps restored" not in second.stdout.str()
    assert our_branches(embedded_url, "source") == sources
    # A changed dump is a different source: restored anew, a different template.
    with (pytester.path / "snapshot.sql").open("a") as dump:
        dump.write("\nUPDATE public.items SET quantity = quantity + 1 WHERE id = 1;\n")
    third = run_inner(pytester, embedded_url)
    third.assert_outcomes(passed=2)
    third.stdout.fnmatch_lines(["*1 source dumps restored*"])
    assert our_branches(embedded_url) == []


def test_custom_format_dump(pytester: pytest.Pytester, embedded_url: str, embedded_server) -> None:
    _copy_example_migrations(pytester)
    scratch = "scratch_for_custom_dump"
    try:
        restore_snapshot(embedded_server, scratch)
        (pytester.path / "prod.pgdump").write_bytes(pg_dump(embedded_url, scratch, "-Fc"))
    finally:
        with psycopg.connect(embedded_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(scratch)))
    write_tests(pytester, "test_d", COUNT_TESTS)
    result = run_inner(pytester, embedded_url, "--dbbranch-source", "prod.pgdump", "-o", "pythonpath=.")
    result.assert_outcomes(passed=2)
    assert len(our_branches(embedded_url, "source")) == 1


def test_existing_database_source_is_never_written(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    source = "prod_snapshot_for_tests"
    with psycopg.connect(embedded_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(source)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(source)))
    try:
        with psycopg.connect(embedded_url.rsplit("/", 1)[0] + "/" + source, autocommit=True) as conn:
            conn.execute("CREATE TABLE customers (id int PRIMARY KEY, name text)")
            conn.execute("INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 500) g")
        before = pg_dump(embedded_url, source)
        write_tests(
            pytester,
            "test_s",
            """
            def test_schema_was_migrated_on_the_branch(db_branch):
                assert db_branch.execute("SELECT count(*) FROM customers").fetchone()[0] == 500
                assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1

            def test_destroy(db_branch):
                db_branch.execute("DROP TABLE customers")
                db_branch.commit()
        """,
        )
        run_inner(pytester, embedded_url, "--dbbranch-source", source).assert_outcomes(passed=2)
        assert pg_dump(embedded_url, source) == before
        assert databases(embedded_url)[source] is None, "the source must not be tagged or altered"
        with psycopg.connect(embedded_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT datistemplate, datallowconn FROM pg_database WHERE datname = %s", (source,)
            ).fetchone()
        assert row == (False, True)
    finally:
        with psycopg.connect(embedded_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(source)))


def test_source_with_open_sessions_gives_a_clear_error(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    source = "prod_busy"
    with psycopg.connect(embedded_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(source)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(source)))
    busy = psycopg.connect(embedded_url.rsplit("/", 1)[0] + "/" + source)
    try:
        write_tests(pytester, "test_b", "def test_a(db_branch):\n    pass\n")
        result = run_inner(pytester, embedded_url, "--dbbranch-source", source)
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*cannot fork 'prod_busy': other sessions are connected to it*"])
        assert our_branches(embedded_url, "template") == []
    finally:
        busy.close()
        with psycopg.connect(embedded_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(source)))
