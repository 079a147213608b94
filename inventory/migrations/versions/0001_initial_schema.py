"""The initial inventory schema: a balance row per product and the ledger of movements.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
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
        "inventory_items",
        sa.Column("product_id", sa.String(36), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("updated_at", utc(), nullable=True),
        sa.Column("retired_at", utc(), nullable=True),
        sa.CheckConstraint("quantity >= 0", name="ck_inventory_items_quantity_not_negative"),
        sa.PrimaryKeyConstraint("product_id"),
        **MYSQL_TABLE,
    )
    op.create_table(
        "movements",
        # 64-bit on the servers; SQLite auto-increments only a column declared INTEGER (64-bit there).
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("product_id", sa.String(36), nullable=False),
        sa.Column("type", sa.String(10), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("balance_after", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("reference", sa.String(200), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("request_fingerprint", sa.String(64), nullable=True),
        sa.Column("created_at", utc(), nullable=False),
        sa.CheckConstraint("balance_after >= 0", name="ck_movements_balance_not_negative"),
        sa.CheckConstraint("type IN ('IN', 'OUT', 'ADJUSTMENT')", name="ck_movements_type"),
        sa.ForeignKeyConstraint(
            ["product_id"], ["inventory_items.product_id"], name="fk_movements_product_id_inventory_items"
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("actor", "request_id", name="uq_movements_actor_request_id"),
        **MYSQL_TABLE,
    )
    op.create_index("ix_movements_product_id_id", "movements", ["product_id", "id"])


def downgrade() -> None:
    op.drop_table("movements")
    op.drop_table("inventory_items")
