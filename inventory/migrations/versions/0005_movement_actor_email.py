"""The email of each movement's author, as its token gave it when the movement was recorded.

Movements already written keep an empty one: who recorded them is their `actor` alone.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("movements", sa.Column("actor_email", sa.String(320), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("movements") as batch:
        batch.drop_column("actor_email")
