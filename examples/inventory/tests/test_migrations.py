"""Testing the migrations themselves on a copy of production data.

``@pytest.mark.dbbranch(revision=...)`` stops the function-scoped branch at an
older revision. The test seeds data the way the old schema expects it, then
calls ``db_branch_info.upgrade()`` and checks what the migrations made of it.

``branch_fixture()`` declares a reusable fixture pinned to a revision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from pytest_dbbranch import Branch, branch_fixture

if TYPE_CHECKING:
    from conftest import SnapshotFacts

Conn = psycopg.Connection[Any]

# One branch at 0001, shared by the tests of this module.
legacy_db = branch_fixture(scope="module", revision="0001")


def current_revision(conn: Conn) -> str:
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert row is not None
    return str(row[0])


def item_columns(conn: Conn) -> set[str]:
    rows = conn.execute(
        """
        SELECT column_name
        FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name = 'items'
        """
    ).fetchall()
    return {name for (name,) in rows}


def parse_inventory_code(code: str) -> tuple[str, int, int]:
    """'WH01-B0042-S000123' -> ('WH01', 42, 123), done in Python on purpose
    so the SQL in migration 0002 is checked against an independent parser."""
    location, batch, serial = code.split("-")
    assert batch.startswith("B") and serial.startswith("S"), code
    return location, int(batch[1:]), int(serial[1:])


@pytest.mark.dbbranch(revision="0001")
def test_split_fills_every_row(
    db_branch: Conn, db_branch_info: Branch, snapshot_facts: SnapshotFacts
) -> None:
    assert current_revision(db_branch) == "0001"

    # Two extra rows on top of the snapshot, one with numbers wider than the
    # usual B0000 / S000000 padding.
    db_branch.execute(
        """
        INSERT INTO items (sku, name, quantity, inventory_code) VALUES
            ('SKU-00500', 'Cable reel model 500', 2, 'WH03-B0007-S000042'),
            ('SKU-00501', 'Pallet jack model 501', 1, 'WH05-B12345-S1234567')
        """
    )
    rows = db_branch.execute("SELECT id, inventory_code FROM items").fetchall()
    expected = {item_id: parse_inventory_code(code) for item_id, code in rows}
    assert len(expected) == snapshot_facts.item_count + 2

    # upgrade() migrates over its own connection: commit first, so it sees the
    # seed rows and our open transaction cannot block its ALTER TABLE.
    db_branch.commit()
    db_branch_info.upgrade("head")

    # Our next statement starts a new transaction, which sees the new schema.
    assert current_revision(db_branch) == snapshot_facts.head_revision
    assert "inventory_code" not in item_columns(db_branch)
    rows = db_branch.execute("SELECT id, location_code, batch_number, serial_number FROM items").fetchall()
    actual = {item_id: (loc, batch, serial) for item_id, loc, batch, serial in rows}
    assert actual == expected


@pytest.mark.dbbranch(revision="0002")
def test_rows_written_by_old_code_during_rollout_are_split(db_branch: Conn, db_branch_info: Branch) -> None:
    assert current_revision(db_branch) == "0002"
    # 0002 already split every snapshot row ...
    row = db_branch.execute("SELECT count(*) FROM items WHERE location_code IS NULL").fetchone()
    assert row == (0,)

    # ... but until 0003 the previous app version may still insert rows that
    # only carry inventory_code.
    row = db_branch.execute(
        """
        INSERT INTO items (sku, name, quantity, inventory_code)
        VALUES ('SKU-00012', 'Wall bracket model 12', 5, 'WH04-B0031-S120001')
        RETURNING id
        """
    ).fetchone()
    assert row is not None
    straggler_id = row[0]
    db_branch.commit()

    db_branch_info.upgrade("0003")

    row = db_branch.execute(
        "SELECT location_code, batch_number, serial_number FROM items WHERE id = %s",
        (straggler_id,),
    ).fetchone()
    assert row == ("WH04", 31, 120_001)


def test_legacy_branch_still_has_inventory_code(legacy_db: Branch) -> None:
    conn = legacy_db.connection
    try:
        assert current_revision(conn) == "0001"
        columns = item_columns(conn)
        assert "inventory_code" in columns
        assert "location_code" not in columns
    finally:
        conn.rollback()


def test_legacy_branch_has_snapshot_codes(legacy_db: Branch) -> None:
    conn = legacy_db.connection
    try:
        row = conn.execute("SELECT inventory_code FROM items WHERE id = 1").fetchone()
        assert row == ("WH02-B0001-S000037",)
    finally:
        conn.rollback()
