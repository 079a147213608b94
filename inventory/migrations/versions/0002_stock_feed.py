"""The stock feed: each item's change count (`version`) and whether products has its latest.

Every existing item starts unpublished, so the feed reports all of them once after the upgrade.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "inventory_items", sa.Column("version", sa.BigInteger(), nullable=False, server_default="1")
    )
    op.add_column(
        "inventory_items", sa.Column("unpublished", sa.Boolean(), nullable=False, server_default=sa.true())
    )
    op.create_index(
        "ix_inventory_items_unpublished",
        "inventory_items",
        ["unpublished"],
        postgresql_where=sa.text("unpublished"),
        sqlite_where=sa.text("unpublished = 1"),
    )


def downgrade() -> None:
    op.drop_index("ix_inventory_items_unpublished", table_name="inventory_items")
    op.drop_column("inventory_items", "unpublished")
    op.drop_column("inventory_items", "version")
