"""The production snapshot branches start from: a database on the server (forked, never
written to) or a dump file (restored once, by the build-once protocol, then reused)."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import psycopg
import pytest

from pytest_dbbranch.branching.manager import BranchManager
from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.errors import SourceError
from pytest_dbbranch.server.binaries import client
from pytest_dbbranch.settings import Settings
from tests.helpers import AlembicProject, create_database, databases, drop_database, our_branches, pg_dump
from tests.integration.support import MakeManager

SNAPSHOT = """
CREATE TABLE customers (id int PRIMARY KEY, name text);
INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 30) g;
"""


def count(manager: BranchManager, table: str) -> int:
    """Rows of ``table`` in a fresh branch, after a test that destroys it ran on another."""
    with manager.branch(node_id="t::test_destroy") as doomed:
        doomed.connection.execute(f"DROP TABLE {table} CASCADE")
        doomed.connection.commit()
    with manager.branch(node_id="t::test_count") as branch:
        row = branch.connection.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def test_plain_sql_dump_is_restored_once(
    make_manager: MakeManager, alembic_project: AlembicProject, settings: Settings
) -> None:
    """The dump is restored into a sealed source named by its content: a later run, even one
    that rebuilds the template, reuses it; a changed dump is another source."""
    url = str(settings.url)
    dump = alembic_project.root / "snapshot.sql"
    dump.write_text(SNAPSHOT)
    first = make_manager(source="snapshot.sql")
    assert count(first, "customers") == 30
    assert first.stats.sources_restored == 1
    sources = our_branches(url, "source")
    assert len(sources) == 1
    record = first.backend().describe(sources[0])
    assert record is not None and record.ready and not record.allows_connections

    again = make_manager(source="snapshot.sql", rebuild=True)
    assert count(again, "customers") == 30
    assert again.stats.sources_restored == 0
    assert again.stats.template_builds == 1 and alembic_project.runs == 2
    assert our_branches(url, "source") == sources

    dump.write_text(SNAPSHOT + "INSERT INTO customers VALUES (31, 'new');\n")
    changed = make_manager(source="snapshot.sql")
    assert count(changed, "customers") == 31
    assert changed.stats.sources_restored == 1
    assert len(our_branches(url, "source")) == 2
    assert our_branches(url) == []


def test_custom_format_dump(
    make_manager: MakeManager, alembic_project: AlembicProject, settings: Settings
) -> None:
    """A ``pg_dump -Fc`` archive goes through pg_restore instead of psql."""
    url = str(settings.url)
    scratch = "scratch_for_custom_dump"
    create_database(url, scratch, SNAPSHOT)
    try:
        (alembic_project.root / "prod.pgdump").write_bytes(pg_dump(url, scratch, "-Fc"))
    finally:
        drop_database(url, scratch)
    manager = make_manager(source="prod.pgdump")
    assert count(manager, "customers") == 30
    assert manager.stats.sources_restored == 1
    assert len(our_branches(url, "source")) == 1


def test_existing_database_source_is_never_written(make_manager: MakeManager, settings: Settings) -> None:
    """The source is only ever a parent: migrated templates and destructive tests leave its
    schema, data, comment and flags exactly as they were."""
    url = str(settings.url)
    source = "prod_snapshot_for_tests"
    create_database(url, source, SNAPSHOT)
    try:
        before = pg_dump(url, source)
        manager = make_manager(source=source)
        with manager.branch() as branch:
            row = branch.connection.execute(
                "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM widgets)"
            ).fetchone()
            assert row == (30, 1)
        assert count(manager, "customers") == 30
        assert pg_dump(url, source) == before
        assert databases(url)[source] is None, "the source must not be tagged"
        with psycopg.connect(url) as conn:
            flags = conn.execute(
                "SELECT datistemplate, datallowconn FROM pg_database WHERE datname = %s", (source,)
            ).fetchone()
        assert flags == (False, True)
    finally:
        drop_database(url, source)


def test_source_with_open_sessions_gives_a_clear_error(make_manager: MakeManager, settings: Settings) -> None:
    """PostgreSQL copies a database only while nobody is connected to it: the error says so
    and names the source, and no half-made template is left."""
    url = str(settings.url)
    source = "prod_busy"
    create_database(url, source)
    busy = psycopg.connect(url.rsplit("/", 1)[0] + "/" + source)
    try:
        with pytest.raises(SourceError, match="cannot fork 'prod_busy': other sessions are connected to it"):
            make_manager(source=source).template()
        assert our_branches(url, "template") == []
    finally:
        busy.close()
        drop_database(url, source)


def test_dump_path_resolves_against_the_root(make_manager: MakeManager, tmp_path: Path) -> None:
    """``file:`` and relative paths are read from the rootdir, whatever the working directory."""
    root = tmp_path / "elsewhere"
    (root / "dumps").mkdir(parents=True)
    (root / "dumps" / "prod.sql").write_text(SNAPSHOT)
    manager = make_manager(source="file:dumps/prod.sql", alembic_ini="none", root=root)
    with manager.branch() as branch:
        row = branch.connection.execute("SELECT count(*) FROM customers").fetchone()
    assert row == (30,)


def write_directory_dump(url: str, dbname: str, folder: Path) -> None:
    """``pg_dump -Fd``: a folder with ``toc.dat`` and one file per table."""
    address = ServerAddress.parse(url)
    argv = [client("pg_dump"), "-Fd", "-f", str(folder), "--no-owner", "--no-privileges"]
    subprocess.run([*argv, address.conninfo(dbname)], check=True, capture_output=True)


@pytest.mark.parametrize("name", ["snapshot.sql.gz", "prod.pgcustom", "snapshot_dir"])
def test_a_dump_is_known_by_its_content_whatever_its_name(
    make_manager: MakeManager, alembic_project: AlembicProject, settings: Settings, name: str
) -> None:
    """A gzip-compressed plain dump, a ``-Fc`` archive with a suffix of its own, a ``-Fd``
    folder: each is restored (the review got "source database ... does not exist" for the
    first two and "the source dump file ... does not exist" for the folder)."""
    url = str(settings.url)
    path = alembic_project.root / name
    scratch = "scratch_for_named_dump"
    create_database(url, scratch, SNAPSHOT)
    try:
        if name.endswith(".gz"):
            path.write_bytes(gzip.compress(pg_dump(url, scratch)))
        elif name.endswith(".pgcustom"):
            path.write_bytes(pg_dump(url, scratch, "-Fc"))
        else:
            write_directory_dump(url, scratch, path)
    finally:
        drop_database(url, scratch)
    manager = make_manager(source=name)
    assert count(manager, "customers") == 30
    assert manager.stats.sources_restored == 1
    assert len(our_branches(url, "source")) == 1


def test_a_dump_truncated_after_its_head_is_named_damaged(
    make_manager: MakeManager, alembic_project: AlembicProject, settings: Settings
) -> None:
    """A gzip dump cut short (an interrupted download): its start reads fine, so only the
    restore meets the end; the error still names the file, and nothing half-restored stays."""
    dump = gzip.compress("".join(f"CREATE TABLE t{i} (id int);\n" for i in range(3000)).encode())
    (alembic_project.root / "prod.sql.gz").write_bytes(dump[: len(dump) // 2])
    with pytest.raises(SourceError) as failure:
        make_manager(source="prod.sql.gz").template()
    message = str(failure.value)
    assert f"{alembic_project.root / 'prod.sql.gz'}" in message and "gzip" in message, message
    assert our_branches(str(settings.url), "source") == []


def test_a_failing_statement_early_in_a_large_dump_is_reported(
    make_manager: MakeManager, alembic_project: AlembicProject, settings: Settings
) -> None:
    """psql stops at the first error with most of the dump unread: the error is psql's
    message (the statement's), not the broken pipe left behind. (A disk that fills during a
    restore is this case: ``suites/test_disk.py``.)"""
    pad = "x" * 200
    (alembic_project.root / "snapshot.sql").write_text(
        "CREATE TABLE t (id int, pad text);\nSELECT no_such_function();\nCOPY t (id, pad) FROM stdin;\n"
        + "".join(f"{i}\t{pad}\n" for i in range(20_000))
        + "\\.\n"
    )
    with pytest.raises(SourceError) as failure:
        make_manager(source="snapshot.sql").template()
    message = str(failure.value)
    assert "restoring" in message and "function no_such_function() does not exist" in message, message
    assert our_branches(str(settings.url), "source") == []
