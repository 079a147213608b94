"""The movement feed and reorder points.

Each movement gets its place in the feed (`seq`) once it is committed, from the one row of
`movement_feed` that hands them out in commit order, and keeps the reorder point its location
had when it was recorded, on which the feed judges low stock. Movements already written take
their id as their place, in the order they were written, and no reorder point. Each product's
stock at a location gets a reorder point (0: none).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Written out rather than imported, so this revision stays as it was when the models change.
MYSQL_TABLE: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def upgrade() -> None:
    op.add_column("movements", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.add_column("movements", sa.Column("reorder_point", sa.Integer(), nullable=True))
    op.execute(sa.text("UPDATE movements SET seq = id"))
    # The feed's order, and where the sequencer finds the movements still without a place (NULL).
    op.create_index("ix_movements_seq", "movements", ["seq"], unique=True)
    op.create_index("ix_movements_product_id_seq", "movements", ["product_id", "seq"])
    feed = op.create_table(
        "movement_feed",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        **MYSQL_TABLE,
    )
    last = op.get_bind().execute(sa.text("SELECT COALESCE(MAX(id), 0) FROM movements")).scalar_one()
    op.bulk_insert(feed, [{"id": 1, "last_seq": last}])
    op.add_column(
        "location_stock", sa.Column("reorder_point", sa.Integer(), nullable=False, server_default="0")
    )


def downgrade() -> None:
    with op.batch_alter_table("location_stock") as batch:
        batch.drop_column("reorder_point")
    op.drop_table("movement_feed")
    op.drop_index("ix_movements_product_id_seq", table_name="movements")
    op.drop_index("ix_movements_seq", table_name="movements")
    with op.batch_alter_table("movements") as batch:
        batch.drop_column("reorder_point")
        batch.drop_column("seq")
