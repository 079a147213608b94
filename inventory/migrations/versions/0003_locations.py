"""Locations, stock per product and location, reservations, and the location of each movement.

Creates the DEFAULT location, puts every item's stock there (one `location_stock` row per
item, retired ones included, so each location's ledger replays to its balance), and names
DEFAULT on every movement already written.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

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
DEFAULT_LOCATION_ID = "00000000-0000-0000-0000-000000000001"


def utc() -> sa.DateTime:
    """mesh.db.UtcDateTime's storage: naive UTC, with microseconds on MariaDB too."""
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    locations = op.create_table(
        "locations",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", utc(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code", name="uq_locations_code"),
        **MYSQL_TABLE,
    )
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    op.bulk_insert(
        locations, [{"id": DEFAULT_LOCATION_ID, "code": "DEFAULT", "name": "Default", "created_at": now}]
    )
    op.create_table(
        "location_stock",
        sa.Column("product_id", sa.String(36), nullable=False),
        sa.Column("location_id", sa.String(36), nullable=False),
        sa.Column("on_hand", sa.Integer(), nullable=False),
        sa.Column("updated_at", utc(), nullable=True),
        sa.CheckConstraint("on_hand >= 0", name="ck_location_stock_on_hand_not_negative"),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["inventory_items.product_id"],
            name="fk_location_stock_product_id_inventory_items",
        ),
        sa.ForeignKeyConstraint(
            ["location_id"], ["locations.id"], name="fk_location_stock_location_id_locations"
        ),
        sa.PrimaryKeyConstraint("product_id", "location_id"),
        **MYSQL_TABLE,
    )
    op.create_index("ix_location_stock_location_id", "location_stock", ["location_id"])
    op.execute(
        sa.text(
            "INSERT INTO location_stock (product_id, location_id, on_hand, updated_at)"
            " SELECT product_id, :default, quantity, updated_at FROM inventory_items"
        ).bindparams(default=DEFAULT_LOCATION_ID)
    )
    op.create_table(
        "reservations",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("product_id", sa.String(36), nullable=False),
        sa.Column("location_id", sa.String(36), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("expires_at", utc(), nullable=False),
        sa.Column("reference", sa.String(200), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("request_fingerprint", sa.String(64), nullable=True),
        sa.Column("created_at", utc(), nullable=False),
        sa.Column("updated_at", utc(), nullable=False),
        sa.CheckConstraint("quantity > 0", name="ck_reservations_quantity_positive"),
        sa.CheckConstraint(
            "state IN ('ACTIVE', 'CONFIRMED', 'RELEASED', 'EXPIRED')", name="ck_reservations_state"
        ),
        sa.ForeignKeyConstraint(
            ["product_id"], ["inventory_items.product_id"], name="fk_reservations_product_id_inventory_items"
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("actor", "request_id", name="uq_reservations_actor_request_id"),
        **MYSQL_TABLE,
    )
    op.create_index(
        "ix_reservations_product_id_state_expires_at", "reservations", ["product_id", "state", "expires_at"]
    )
    op.create_index("ix_reservations_state_expires_at", "reservations", ["state", "expires_at"])
    op.create_index("ix_reservations_location_id_state", "reservations", ["location_id", "state"])
    # Every movement so far was at the one location there was (batch mode rebuilds the table on
    # SQLite, which cannot make a column NOT NULL in place).
    op.add_column("movements", sa.Column("location_id", sa.String(36), nullable=True))
    op.add_column("movements", sa.Column("transfer_id", sa.String(36), nullable=True))
    op.add_column("movements", sa.Column("reservation_id", sa.String(36), nullable=True))
    op.execute(sa.text("UPDATE movements SET location_id = :default").bindparams(default=DEFAULT_LOCATION_ID))
    with op.batch_alter_table("movements") as batch:
        batch.alter_column("location_id", existing_type=sa.String(36), nullable=False)
    op.create_index("ix_movements_transfer_id", "movements", ["transfer_id"])


def downgrade() -> None:
    op.drop_index("ix_movements_transfer_id", table_name="movements")
    with op.batch_alter_table("movements") as batch:
        batch.drop_column("reservation_id")
        batch.drop_column("transfer_id")
        batch.drop_column("location_id")
    op.drop_table("reservations")
    op.drop_table("location_stock")
    op.drop_table("locations")
