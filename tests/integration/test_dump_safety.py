"""A dump source acts on the plugin's own database and on nothing else, with real pg_dump
output on the embedded server.

``pg_dump -C -c`` writes ``DROP DATABASE victim`` and ``CREATE DATABASE victim``; psql obeys
them on the user's server, so restoring such a dump "into" a branch would replace the
user's database of that name. Every dump goes through the gate instead: archives are turned
into a script without ``-C``, scripts are checked before psql sees them. What is refused
leaves every database as it was and nothing of ours behind; what is legitimate (including
SQL that merely mentions the forbidden words) restores.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from pytest_dbbranch import names
from pytest_dbbranch.branching.dumps import UnsafeDump
from pytest_dbbranch.branching.manager import BranchManager
from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.settings import Settings
from tests.helpers import create_database, databases, drop_database
from tests.integration.support import MakeManager, dump_to

VICTIM = "victim"


def tables(url: str, dbname: str) -> set[str]:
    with psycopg.connect(ServerAddress.parse(url).conninfo(dbname)) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {name for (name,) in rows}


def not_ours(url: str) -> set[str]:
    """The server's databases that this tool did not make (the user's)."""
    return {name for name in databases(url) if not names.is_ours(name)}


def rows_in_branch(manager: BranchManager, query: str) -> list[tuple[object, ...]]:
    with manager.branch() as branch:
        return list(branch.connection.execute(query).fetchall())


@pytest.fixture
def victim(settings: Settings) -> Iterator[str]:
    """A user's database on the same server, with an ``accounts`` table of 20 rows."""
    url = str(settings.url)
    create_database(
        url,
        VICTIM,
        "CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL)",
        "INSERT INTO accounts SELECT g, 'owner ' || g FROM generate_series(1, 20) g",
    )
    yield VICTIM
    drop_database(url, VICTIM)


def test_dumps_that_reach_beyond_our_database_are_refused(
    make_manager: MakeManager, settings: Settings, victim: str
) -> None:
    """``pg_dump -C -c`` of ``victim`` (a table ``precious`` was added after the dump: a
    restore would lose it), ``pg_dump -C`` of a database since dropped (a restore would
    create it again), and a script that ``\\connect``s to ``postgres``: each is refused with
    its line, no database of the user changes or appears, nothing of ours is left."""
    url = str(settings.url)
    root = settings.root
    dump_to(url, victim, root / "clean_create.sql", "-C", "-c")
    create_database(url, "departed", "CREATE TABLE gone (id int)")
    dump_to(url, "departed", root / "create_only.sql", "-C")
    drop_database(url, "departed")
    (root / "connect.sql").write_text(
        "CREATE TABLE harmless (id int);\n\\connect postgres\nCREATE TABLE stolen (id int);\n"
    )
    with psycopg.connect(ServerAddress.parse(url).conninfo(victim), autocommit=True) as conn:
        conn.execute("CREATE TABLE precious (id int)")

    before = (not_ours(url), tables(url, victim), tables(url, "postgres"))
    assert "precious" in before[1]
    for dump, refused in (
        ("clean_create.sql", "DROP DATABASE"),
        ("create_only.sql", "CREATE DATABASE"),
        ("connect.sql", "line 2 has the psql command \\connect"),
    ):
        with pytest.raises(UnsafeDump) as error:
            make_manager(source=dump, alembic_ini="none").template()
        assert refused in str(error.value), dump
        assert f"{root / dump} line " in str(error.value)
        assert (not_ours(url), tables(url, victim), tables(url, "postgres")) == before, dump
        assert [name for name in databases(url) if names.is_ours(name)] == [], dump


def test_archives_restore_into_our_database_only(
    make_manager: MakeManager, settings: Settings, victim: str
) -> None:
    """``-Fc`` and ``-Ft`` archives of a ``-C`` dump carry the CREATE DATABASE entry; the
    gate's ``pg_restore -f -`` leaves it out, so the data lands in our source and ``victim``
    is untouched. The format is read from the content: the suffixes here are misleading."""
    url = str(settings.url)
    dump_to(url, victim, settings.root / "custom.sql", "-C", "-Fc")
    dump_to(url, victim, settings.root / "tarball.dump", "-C", "-Ft")
    with psycopg.connect(ServerAddress.parse(url).conninfo(victim), autocommit=True) as conn:
        conn.execute("INSERT INTO accounts VALUES (21, 'after the dump')")
    user_databases = not_ours(url)
    for dump in ("custom.sql", "tarball.dump"):
        manager = make_manager(source=dump, alembic_ini="none")
        assert rows_in_branch(manager, "SELECT count(*), max(id) FROM accounts") == [(20, 20)], dump
        assert manager.stats.sources_restored == 1
    assert not_ours(url) == user_databases
    with psycopg.connect(ServerAddress.parse(url).conninfo(victim)) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (21,)


def test_directory_archive_restores(make_manager: MakeManager, settings: Settings, victim: str) -> None:
    """A ``pg_dump -Fd`` folder is a dump source like a file: named by ``file:`` (or a path
    with a slash), restored through the same gate."""
    url = str(settings.url)
    dump_to(url, victim, settings.root / "snapshot_dir", "-Fd")
    for source in ("file:snapshot_dir", "./snapshot_dir"):
        manager = make_manager(source=source, alembic_ini="none")
        assert rows_in_branch(manager, "SELECT count(*) FROM accounts") == [(20,)], source


LEGIT = r"""
CREATE TABLE notes (id int PRIMARY KEY, body text);
INSERT INTO notes VALUES
    (1, 'DROP DATABASE victim;'),
    (2, E'line one\n\\connect postgres\nCHECKPOINT'),
    (3, 'it''s fine; CREATE ROLE nobody');
COMMENT ON TABLE notes IS 'never CREATE DATABASE from a test';
CREATE FUNCTION provision(name text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    -- what the production app would run, never the restore
    RETURN format('CREATE DATABASE %I', name);
END
$$;
"""


def test_legitimate_dump_mentioning_forbidden_words_restores(
    make_manager: MakeManager, settings: Settings
) -> None:
    """A function body that builds ``CREATE DATABASE``, a table comment and rows (in COPY
    data) that mention ``DROP DATABASE``, ``\\connect`` and ``CHECKPOINT``: all data, all
    restored as they were."""
    url = str(settings.url)
    create_database(url, "legit_source", LEGIT)
    try:
        dump_to(url, "legit_source", settings.root / "legit.sql", "--no-owner", "--no-privileges")
    finally:
        drop_database(url, "legit_source")
    manager = make_manager(source="legit.sql", alembic_ini="none")
    with manager.branch() as branch:
        conn = branch.connection
        assert conn.execute("SELECT provision('x')").fetchone() == ("CREATE DATABASE x",)
        assert conn.execute("SELECT body FROM notes ORDER BY id").fetchall() == [
            ("DROP DATABASE victim;",),
            ("line one\n\\connect postgres\nCHECKPOINT",),
            ("it's fine; CREATE ROLE nobody",),
        ]
        assert conn.execute("SELECT obj_description('notes'::regclass)").fetchone() == (
            "never CREATE DATABASE from a test",
        )


def test_quoted_identifiers_with_an_apostrophe_restore(make_manager: MakeManager, settings: Settings) -> None:
    """pg_dump quotes a table named ``owner's notes``: ``COPY public."owner's notes" ... FROM
    stdin;``. The quote inside the identifier is not the start of a string, so the COPY data
    that follows is data, and the dump restores."""
    url = str(settings.url)
    create_database(
        url,
        "apostrophe_source",
        """CREATE TABLE "owner's notes" (id int, body text)""",
        """INSERT INTO "owner's notes" VALUES (1, 'first'), (2, 'it''s second')""",
        "CREATE TABLE later (id int)",
        "INSERT INTO later VALUES (7)",
    )
    try:
        dump_to(url, "apostrophe_source", settings.root / "apostrophe.sql", "--no-owner", "--no-privileges")
    finally:
        drop_database(url, "apostrophe_source")
    manager = make_manager(source="apostrophe.sql", alembic_ini="none")
    with manager.branch() as branch:
        conn = branch.connection
        assert conn.execute("""SELECT body FROM "owner's notes" ORDER BY id""").fetchall() == [
            ("first",),
            ("it's second",),
        ]
        assert conn.execute("SELECT id FROM later").fetchall() == [(7,)]
