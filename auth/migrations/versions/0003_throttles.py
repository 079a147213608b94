"""Abuse counters: failed logins and verification re-sends per account and per client address.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

MYSQL_TABLE: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def utc() -> sa.DateTime:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "throttles",
        sa.Column("key", sa.String(80), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("window_ends_at", utc(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
        **MYSQL_TABLE,
    )
    op.create_index("ix_throttles_window_ends_at", "throttles", ["window_ends_at"])


def downgrade() -> None:
    op.drop_table("throttles")
