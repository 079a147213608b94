"""stock_levels: each product's stock as inventory last reported it, for reads.

Every existing product starts at 0 with version 0, below any version inventory reports, so
inventory's stock feed (which reports every existing item once after its own upgrade)
replaces it wherever the product has moved.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Written out rather than imported, so this revision stays as it was when the models change.
MYSQL_TABLE: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def upgrade() -> None:
    op.create_table(
        "stock_levels",
        sa.Column("product_id", sa.String(36), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("product_id"),
        **MYSQL_TABLE,
    )
    op.execute("INSERT INTO stock_levels (product_id, quantity, version) SELECT id, 0, 0 FROM products")


def downgrade() -> None:
    op.drop_table("stock_levels")
