"""Data access for the inventory app, written against a psycopg connection.

None of these functions commit: the caller owns the transaction.
"""

from typing import Any

import psycopg


def add_item(
    conn: psycopg.Connection[Any],
    *,
    sku: str,
    name: str,
    location_code: str,
    batch_number: int,
    serial_number: int,
    quantity: int = 0,
) -> int:
    """Insert an item and return its id."""
    row = conn.execute(
        """
        INSERT INTO items
            (sku, name, location_code, batch_number, serial_number, quantity)
        VALUES (%s, %s, %s, %s, %s, %s)
        RETURNING id
        """,
        (sku, name, location_code, batch_number, serial_number, quantity),
    ).fetchone()
    if row is None:  # pragma: no cover - INSERT ... RETURNING always yields a row
        raise RuntimeError("INSERT did not return an id")
    return int(row[0])


def stock_by_location(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Total quantity per location code; locations without items report 0."""
    rows = conn.execute(
        """
        SELECT l.code, coalesce(sum(i.quantity), 0)
        FROM locations AS l
        LEFT JOIN items AS i ON i.location_code = l.code
        GROUP BY l.code
        ORDER BY l.code
        """
    ).fetchall()
    return {code: int(total) for code, total in rows}


def move_item(conn: psycopg.Connection[Any], item_id: int, to_location: str) -> None:
    """Move an item to another location.

    Raises ``LookupError`` if the item does not exist, and lets psycopg's
    ``ForeignKeyViolation`` through if the location does not.
    """
    cur = conn.execute(
        "UPDATE items SET location_code = %s WHERE id = %s",
        (to_location, item_id),
    )
    if cur.rowcount == 0:
        raise LookupError(f"no item with id {item_id}")
