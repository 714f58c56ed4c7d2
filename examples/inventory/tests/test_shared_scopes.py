"""Module- and session-scoped branches: one database for several tests.

Creating a branch is cheap, but not free. Tests that only read, or that are
meant to build on each other, can share one with ``db_branch_module`` (one
branch per test module) or ``db_branch_session`` (one for the whole run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from inventory.repository import stock_by_location

from pytest_dbbranch import Branch

if TYPE_CHECKING:
    from conftest import SnapshotFacts

Conn = psycopg.Connection[Any]


# --- module scope ---------------------------------------------------------------
# The tests of this module share one branch. What they share is set up once, by a
# module fixture, never by another test: they pass in any order and on any xdist
# worker (a worker that runs only one of them makes its own module branch).


@pytest.fixture(scope="module")
def pop_up_store(db_branch_module: Conn) -> Conn:
    """The module's branch with a new, empty location: WH06."""
    db_branch_module.execute("INSERT INTO locations (code, name) VALUES ('WH06', 'Antwerp pop-up store')")
    db_branch_module.commit()
    return db_branch_module


def test_module_new_location_is_listed(pop_up_store: Conn) -> None:
    stock = stock_by_location(pop_up_store)
    assert stock["WH06"] == 0
    pop_up_store.rollback()


def test_module_new_location_is_there_once(pop_up_store: Conn) -> None:
    row = pop_up_store.execute("SELECT count(*) FROM locations WHERE code = 'WH06'").fetchone()
    assert row == (1,)
    pop_up_store.rollback()


def test_function_branch_does_not_see_module_branch(
    db_branch: Conn,
    db_branch_info: Branch,
    db_branch_module_info: Branch,
) -> None:
    assert db_branch_info.name != db_branch_module_info.name
    assert "WH06" not in stock_by_location(db_branch)


# --- session scope --------------------------------------------------------------
# Shared by every test module in the run, so only read from it.


def test_session_branch_read_only(
    db_branch_session: Conn,
    db_branch_session_info: Branch,
    snapshot_facts: SnapshotFacts,
) -> None:
    try:
        row = db_branch_session.execute("SELECT version_num FROM alembic_version").fetchone()
        assert row == (snapshot_facts.head_revision,)
        assert db_branch_session_info.connection is db_branch_session
        assert stock_by_location(db_branch_session) == snapshot_facts.stock_by_location
    finally:
        # end the read transaction instead of leaving it open for the session
        db_branch_session.rollback()
