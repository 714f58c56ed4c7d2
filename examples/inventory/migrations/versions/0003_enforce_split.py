"""Make the split columns mandatory and drop items.inventory_code (contract).

Rows written by the previous application version between 0002 and this
revision still only have ``inventory_code``; they are backfilled first, the
same way 0002 did it.

Downgrade rebuilds ``inventory_code`` from the three columns, zero-padding the
batch to 4 digits and the serial to 6 digits (longer numbers are kept whole).

Revision: 0003
Parent: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Copied from 0002 on purpose: a migration must not import another one.
BACKFILL_STRAGGLERS = """
UPDATE items
SET location_code = split_part(inventory_code, '-', 1),
    batch_number  = CAST(substr(split_part(inventory_code, '-', 2), 2) AS integer),
    serial_number = CAST(substr(split_part(inventory_code, '-', 3), 2) AS integer)
WHERE location_code IS NULL
   OR batch_number IS NULL
   OR serial_number IS NULL
"""

REBUILD_INVENTORY_CODE = """
UPDATE items
SET inventory_code = format(
    '%s-B%s-S%s',
    location_code,
    lpad(batch_number::text, greatest(4, length(batch_number::text)), '0'),
    lpad(serial_number::text, greatest(6, length(serial_number::text)), '0')
)
"""


def upgrade() -> None:
    op.execute(BACKFILL_STRAGGLERS)
    op.alter_column("items", "location_code", existing_type=sa.Text(), nullable=False)
    op.alter_column("items", "batch_number", existing_type=sa.Integer(), nullable=False)
    op.alter_column("items", "serial_number", existing_type=sa.Integer(), nullable=False)
    op.create_foreign_key(
        "fk_items_location_code_locations",
        "items",
        "locations",
        ["location_code"],
        ["code"],
    )
    op.create_index("ix_items_location_batch", "items", ["location_code", "batch_number"])
    op.drop_column("items", "inventory_code")


def downgrade() -> None:
    op.add_column("items", sa.Column("inventory_code", sa.Text(), nullable=True))
    op.execute(REBUILD_INVENTORY_CODE)
    op.alter_column("items", "inventory_code", existing_type=sa.Text(), nullable=False)
    op.drop_index("ix_items_location_batch", table_name="items")
    op.drop_constraint("fk_items_location_code_locations", "items", type_="foreignkey")
    op.alter_column("items", "serial_number", existing_type=sa.Integer(), nullable=True)
    op.alter_column("items", "batch_number", existing_type=sa.Integer(), nullable=True)
    op.alter_column("items", "location_code", existing_type=sa.Text(), nullable=True)
