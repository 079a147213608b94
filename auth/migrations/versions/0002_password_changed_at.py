"""users.password_changed_at: access tokens issued before it no longer work at the auth service.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    utc = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    with op.batch_alter_table("users") as users:
        users.add_column(sa.Column("password_changed_at", utc, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as users:
        users.drop_column("password_changed_at")
