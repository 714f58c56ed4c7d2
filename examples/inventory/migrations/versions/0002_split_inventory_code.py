"""Split items.inventory_code into three columns (expand + backfill).

Adds ``location_code``, ``batch_number`` and ``serial_number`` as nullable
columns and fills them from ``inventory_code``:

    'WH01-B0042-S000123'  ->  'WH01', 42, 123

The old column stays in place so the previous application version keeps
working while this one rolls out. 0003 makes the new columns mandatory and
drops the old one.

Revision: 0002
Parent: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Refuse to guess: abort the migration if any code does not look like
# LOCATION-B<digits>-S<digits>, rather than writing half-parsed values.
CHECK_FORMAT = """
DO $check$
DECLARE
    bad bigint;
BEGIN
    SELECT count(*) INTO bad
    FROM items
    WHERE inventory_code !~ '^[A-Z0-9]+-B[0-9]{1,9}-S[0-9]{1,9}$';
    IF bad > 0 THEN
        RAISE EXCEPTION 'items: % row(s) have a malformed inventory_code', bad;
    END IF;
END
$check$
"""

BACKFILL = """
UPDATE items
SET location_code = split_part(inventory_code, '-', 1),
    batch_number  = CAST(substr(split_part(inventory_code, '-', 2), 2) AS integer),
    serial_number = CAST(substr(split_part(inventory_code, '-', 3), 2) AS integer)
WHERE location_code IS NULL
"""


def upgrade() -> None:
    op.add_column("items", sa.Column("location_code", sa.Text(), nullable=True))
    op.add_column("items", sa.Column("batch_number", sa.Integer(), nullable=True))
    op.add_column("items", sa.Column("serial_number", sa.Integer(), nullable=True))
    op.execute(CHECK_FORMAT)
    op.execute(BACKFILL)


def downgrade() -> None:
    op.drop_column("items", "serial_number")
    op.drop_column("items", "batch_number")
    op.drop_column("items", "location_code")
