"""Function-scoped branches: each test gets its own copy of the snapshot.

``db_branch`` is a psycopg connection (autocommit off) to a brand-new
database cloned from snapshot.sql and migrated to head. Tests may commit,
delete or even drop tables: the branch is thrown away afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from inventory.models import Item, metadata
from inventory.repository import add_item, move_item, stock_by_location
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from pytest_dbbranch import Branch

if TYPE_CHECKING:
    from conftest import SnapshotFacts

Conn = psycopg.Connection[Any]


def count_items(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM items").fetchone()
    assert row is not None
    return int(row[0])


# --- the snapshot, migrated -------------------------------------------------


def test_branch_is_at_head(db_branch: Conn, snapshot_facts: SnapshotFacts) -> None:
    row = db_branch.execute("SELECT version_num FROM alembic_version").fetchone()
    assert row == (snapshot_facts.head_revision,)


def test_branch_info_describes_the_same_database(db_branch: Conn, db_branch_info: Branch) -> None:
    assert db_branch_info.connection is db_branch
    # Backend-neutral: on PostgreSQL the database is named after the branch, on Lakebase every
    # branch has its own endpoint and the same database name.
    assert db_branch.info.dbname == conninfo_to_dict(db_branch_info.conninfo)["dbname"]
    here = db_branch.execute("SELECT current_database()").fetchone()
    with db_branch_info.connect() as other:
        assert other.execute("SELECT current_database()").fetchone() == here


# --- application code against real data -------------------------------------


def test_stock_by_location_on_snapshot(db_branch: Conn, snapshot_facts: SnapshotFacts) -> None:
    assert stock_by_location(db_branch) == snapshot_facts.stock_by_location


def test_add_item(db_branch: Conn, snapshot_facts: SnapshotFacts) -> None:
    before = stock_by_location(db_branch)

    item_id = add_item(
        db_branch,
        sku="SKU-00241",
        name="Torque wrench model 241",
        location_code="WH03",
        batch_number=31,
        serial_number=111_037,
        quantity=4,
    )

    # Every branch starts from the snapshot's sequence position (3000).
    assert item_id == snapshot_facts.item_count + 1
    after = stock_by_location(db_branch)
    assert after == {**before, "WH03": before["WH03"] + 4}


def test_move_item(db_branch: Conn) -> None:
    row = db_branch.execute("SELECT location_code, quantity FROM items WHERE id = 1").fetchone()
    assert row is not None
    old_location, quantity = row
    assert old_location != "WH05"
    before = stock_by_location(db_branch)

    move_item(db_branch, 1, "WH05")

    after = stock_by_location(db_branch)
    assert after[old_location] == before[old_location] - quantity
    assert after["WH05"] == before["WH05"] + quantity


def test_move_item_to_unknown_location_is_rejected(db_branch: Conn) -> None:
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        move_item(db_branch, 1, "WH99")


def test_move_unknown_item(db_branch: Conn) -> None:
    with pytest.raises(LookupError):
        move_item(db_branch, 999_999, "WH01")


# --- isolation ---------------------------------------------------------------
# Both tests commit, and both first check that they start from the untouched
# snapshot, so they pass in any order (and under pytest-xdist).


def test_isolation_insert_and_commit(db_branch: Conn, snapshot_facts: SnapshotFacts) -> None:
    assert count_items(db_branch) == snapshot_facts.item_count

    for serial in (900_001, 900_002, 900_003):
        add_item(
            db_branch,
            sku="SKU-00007",
            name="Air filter model 7",
            location_code="WH01",
            batch_number=31,
            serial_number=serial,
            quantity=1,
        )
    db_branch.commit()

    assert count_items(db_branch) == snapshot_facts.item_count + 3


def test_isolation_delete_and_commit(db_branch: Conn, snapshot_facts: SnapshotFacts) -> None:
    assert count_items(db_branch) == snapshot_facts.item_count

    db_branch.execute("DELETE FROM items WHERE location_code = 'WH01'")
    db_branch.commit()

    assert count_items(db_branch) == snapshot_facts.item_count - 600


def test_uncommitted_rows_are_invisible_to_other_connections(
    db_branch: Conn, db_branch_info: Branch, snapshot_facts: SnapshotFacts
) -> None:
    add_item(
        db_branch,
        sku="SKU-00001",
        name="Hex bolt model 1",
        location_code="WH02",
        batch_number=31,
        serial_number=900_100,
    )
    with db_branch_info.connect() as other:
        assert count_items(other) == snapshot_facts.item_count
        db_branch.commit()
        # READ COMMITTED: the next statement sees the committed row.
        assert count_items(other) == snapshot_facts.item_count + 1


# --- destructive tests --------------------------------------------------------
# pytest runs these in file order: the table is dropped (and committed) first,
# and the next test still finds it, because it runs on a new branch.


def test_destructive_1_drop_items_table(db_branch: Conn) -> None:
    db_branch.execute("DROP TABLE items CASCADE")
    db_branch.commit()

    row = db_branch.execute("SELECT to_regclass('public.items')").fetchone()
    assert row == (None,)


def test_destructive_2_items_table_is_back(db_branch: Conn, snapshot_facts: SnapshotFacts) -> None:
    row = db_branch.execute("SELECT to_regclass('public.items')").fetchone()
    assert row is not None and row[0] is not None
    assert count_items(db_branch) == snapshot_facts.item_count


# --- SQLAlchemy -----------------------------------------------------------------


def test_models_match_migrated_schema(db_branch_engine: Engine) -> None:
    with db_branch_engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    assert differences == []


def test_orm_reads_split_columns(db_branch_engine: Engine) -> None:
    with Session(db_branch_engine) as session:
        item = session.get(Item, 1)
        assert item is not None
        assert item.inventory_code == "WH02-B0001-S000037"

        in_wh01 = session.scalar(select(func.count()).select_from(Item).where(Item.location_code == "WH01"))
        assert in_wh01 == 600
