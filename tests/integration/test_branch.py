"""``Branch`` and ``RollbackBranch``: what a test or script holds while it uses a branch."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy

from pytest_dbbranch.branching.branch import RollbackBranch
from pytest_dbbranch.errors import DbBranchError
from pytest_dbbranch.settings import Settings
from tests.helpers import SECRET, AlembicProject
from tests.integration.support import MakeManager


def sessions_on(url: str, dbname: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (dbname,)).fetchone()
    assert row is not None
    return int(row[0])


def idle_in_pool(engine: sqlalchemy.Engine) -> int:
    pool = engine.pool
    assert isinstance(pool, sqlalchemy.QueuePool)
    return pool.checkedin()


def test_release_closes_every_client_it_handed_out(make_manager: MakeManager, settings: Settings) -> None:
    """The fixture connection, extra ``connect()`` connections and the engine's pool are
    closed before the drop, so teardown never has to terminate a session of ours."""
    manager = make_manager()
    branch = manager.create()
    handed_out = [branch.connection, branch.connect(), branch.connect(autocommit=True)]
    engine = branch.engine()
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT current_database()")).scalar() == branch.name
    assert idle_in_pool(engine) == 1
    assert sessions_on(str(settings.url), branch.name) == 4
    manager.release(branch)
    assert all(conn.closed for conn in handed_out)
    assert idle_in_pool(engine) == 0, "the engine was not disposed"
    assert not manager.backend().exists(branch.name)


def test_upgrade_refuses_an_open_transaction_then_migrates(
    make_manager: MakeManager, alembic_project: AlembicProject
) -> None:
    """A branch at an old revision is seeded, then upgraded; an open transaction on the fixture
    connection would block the migration's locks, so upgrade() asks for a commit first."""
    manager = make_manager(revision="r1")
    with manager.branch() as branch:
        conn = branch.connection
        conn.execute("INSERT INTO widgets (name) VALUES ('old')")
        with pytest.raises(DbBranchError, match="commit or roll back the open transaction"):
            branch.upgrade("head")
        conn.commit()
        branch.upgrade("head")
        assert branch.revision == "head"
        rows = conn.execute("SELECT name, size FROM widgets ORDER BY id").fetchall()
        assert rows == [("old", 1), ("seed", 1)]
    assert alembic_project.runs == 2  # the r1 template, then this branch's upgrade


def test_upgrade_needs_an_alembic_ini(make_manager: MakeManager) -> None:
    """Without migrations there is nothing to upgrade with: the error names the setting."""
    with (
        make_manager(alembic_ini="none").branch() as branch,
        pytest.raises(DbBranchError, match=r"needs migrations"),
    ):
        branch.upgrade("head")


def test_rollback_branch_rolls_back_and_refuses_upgrade(make_manager: MakeManager) -> None:
    """What a test writes through the shared connection is gone for the next test; upgrade()
    would change the branch every test shares, so it is refused."""
    manager = make_manager(isolation="rollback")
    first = manager.create(node_id="t::test_first")
    assert isinstance(first, RollbackBranch)
    first.connection.execute("INSERT INTO widgets (name) VALUES ('rolled back')")
    with pytest.raises(DbBranchError, match="needs a branch of its own"):
        first.upgrade("head")
    manager.release(first)
    second = manager.create(node_id="t::test_second")
    assert second.name == first.name
    assert second.connection.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
    manager.release(second)


def test_urls_carry_the_password_only_where_a_client_needs_it(
    make_manager: MakeManager, secret_url: str
) -> None:
    """``url``, ``conninfo`` and ``sqlalchemy_url`` connect; ``display_url`` and the repr,
    which end up in logs and reports, hide the password."""
    with make_manager(url=secret_url).branch() as branch:
        for shown in (branch.display_url, repr(branch)):
            assert SECRET not in shown and "secretive:***@" in shown
        assert SECRET in branch.url
        with psycopg.connect(branch.url) as conn:
            assert conn.info.dbname == branch.name
        with psycopg.connect(branch.conninfo) as conn:
            assert conn.info.dbname == branch.name
        assert sqlalchemy.make_url(branch.sqlalchemy_url).database == branch.name
        assert branch.sqlalchemy_url.startswith("postgresql+psycopg://")
