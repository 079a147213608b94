"""product_changes: the log of changes to what GetProduct answers, read by every products
process to drop another replica's changes from its cache.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
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
    op.create_table(
        "product_changes",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False, autoincrement=True
        ),
        sa.Column("product_id", sa.String(36), nullable=False),
        sa.Column("writer", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,  # never numbers from 1 again once pruning empties the table
        **MYSQL_TABLE,
    )


def downgrade() -> None:
    op.drop_table("product_changes")
