"""Roles never share what they cannot read, on the machine's PostgreSQL (two CREATEDB,
non-superuser roles made for the test and dropped after it).

A restored dump and a migrated template belong to the role that made them: another role may
fork a template database, but its copy keeps the first role's tables, which it cannot read.
So sources and templates are keyed by role, and when a role does end up migrating a copy of
somebody else's tables, the error says whose privilege is missing, not "fix that migration".
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.errors import MigrationError
from tests.helpers import SECRET, SYSTEM_ADMIN_URL, AlembicProject, our_branches
from tests.integration.support import MakeManager

pytestmark = pytest.mark.system_server

SNAPSHOT = """
CREATE TABLE customers (id int PRIMARY KEY, name text);
INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 12) g;
"""


@pytest.fixture
def roles() -> Iterator[list[str]]:
    """URLs of two CREATEDB, non-superuser roles; their databases and the roles go after."""
    names = [f"dbbranch_role{i}_{uuid.uuid4().hex[:6]}" for i in (1, 2)]
    admin = ServerAddress.parse(SYSTEM_ADMIN_URL)
    with psycopg.connect(SYSTEM_ADMIN_URL, autocommit=True) as conn:
        for name in names:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEDB NOSUPERUSER PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(SECRET)
                )
            )
    try:
        yield [
            ServerAddress(
                host=admin.host, port=admin.port, user=name, password=SECRET, dbname="postgres"
            ).url()
            for name in names
        ]
    finally:
        with psycopg.connect(SYSTEM_ADMIN_URL, autocommit=True) as conn:
            owned = conn.execute(
                "SELECT d.datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba"
                " WHERE r.rolname = ANY(%s)",
                (names,),
            ).fetchall()
            for (database,) in owned:
                ident = sql.Identifier(database)
                conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(ident))
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident))
            for name in names:
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_each_role_gets_its_own_source_and_template(
    roles: list[str], make_manager: MakeManager, alembic_project: AlembicProject
) -> None:
    """Role 1 and role 2 use the same checkout and the same dump: each restores its own
    source and builds its own template (names differ), and role 2's branches are readable."""
    (alembic_project.root / "snapshot.sql").write_text(SNAPSHOT)
    first, second = (make_manager(url=url, source="snapshot.sql") for url in roles)
    first.template()
    with second.branch() as branch:
        row = branch.connection.execute(
            "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM widgets)"
        ).fetchone()
    assert row == (12, 1)
    for manager in (first, second):
        assert (manager.stats.sources_restored, manager.stats.template_builds) == (1, 1)
    made = [(our_branches(url, "source"), our_branches(url, "template")) for url in roles]
    assert [len(names) for pair in made for names in pair] == [1, 1, 1, 1]
    assert made[0][0] != made[1][0] and made[0][1] != made[1][1]


def test_forking_another_roles_tables_is_not_blamed_on_the_migration(
    roles: list[str], make_manager: MakeManager, alembic_project: AlembicProject
) -> None:
    """Role 2's source is a template database role 1 owns: the fork works, the migration
    cannot alter role 1's table. The error names role 2 and the missing privilege."""
    owner, other = roles
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute("CREATE DATABASE shared_snapshot")
    with psycopg.connect(ServerAddress.parse(owner).conninfo("shared_snapshot"), autocommit=True) as conn:
        conn.execute(SNAPSHOT)
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute("ALTER DATABASE shared_snapshot IS_TEMPLATE true")
    alembic_project.add("r3", "r2", "ALTER TABLE customers ADD COLUMN tier int")

    with pytest.raises(MigrationError) as failed:
        make_manager(url=other, source="shared_snapshot").template()
    message = str(failed.value)
    role = ServerAddress.parse(other).user
    assert "at revision r3" in message and "InsufficientPrivilege" in message
    assert f"not a fault of the migration: the role {role} lacks a privilege" in message
    assert "fix that migration" not in message
    assert SECRET not in message
    assert our_branches(other, "template") == []


def test_a_source_the_role_may_read_but_not_fork_is_copied_into_one_of_its_own(
    roles: list[str], make_manager: MakeManager, alembic_project: AlembicProject
) -> None:
    """Lakebase's layout: production (databricks_postgres) belongs to the project owner, the
    CI role may read it but PostgreSQL refuses it ``CREATE DATABASE ... TEMPLATE`` of it.
    The plugin dumps it once into a sealed copy the CI role owns, so its migrations may alter
    the tables; the owner's database is left as it was."""
    owner, other = roles
    other_role = ServerAddress.parse(other).user
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute("CREATE DATABASE owners_production")
    production = ServerAddress.parse(owner).conninfo("owners_production")
    with psycopg.connect(production, autocommit=True) as conn:
        conn.execute(SNAPSHOT)
        conn.execute(
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(other_role))
        )
    alembic_project.add("r3", "r2", "ALTER TABLE customers ADD COLUMN tier int DEFAULT 1")

    manager = make_manager(url=other, source="db:owners_production")
    with manager.branch() as branch:
        row = branch.connection.execute("SELECT count(*), min(tier) FROM customers").fetchone()
    assert row == (12, 1)
    assert manager.stats.sources_restored == 1
    copies = our_branches(other, "source")
    assert len(copies) == 1
    # A second run finds the sealed copy and the template: nothing is dumped again.
    again = make_manager(url=other, source="db:owners_production")
    again.template()
    assert (again.stats.sources_restored, again.stats.template_builds) == (0, 0)
    with psycopg.connect(production) as conn:
        columns = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'customers'"
            ).fetchall()
        ]
    assert "tier" not in columns
