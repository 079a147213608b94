"""retired_products: the outbox of product deletes, for the relay that retires inventory items.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Written out rather than imported, so this revision stays as it was when the models change.
MYSQL_TABLE: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def utc() -> sa.DateTime:
    """mesh.db.UtcDateTime's storage: naive UTC, with microseconds on MariaDB too."""
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "retired_products",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", utc(), nullable=False),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("created_at", utc(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        **MYSQL_TABLE,
    )
    op.create_index("ix_retired_products_due", "retired_products", ["next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_retired_products_due", table_name="retired_products")
    op.drop_table("retired_products")
