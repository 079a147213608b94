"""The inventory database. A balance row per product (the row that writers lock, holding the
total on hand), a balance per product and location, the reservations that promise part of
it, the locations, and the ledger of movements; each balance always equals the sum of its
movements."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mesh.db import NAMING_CONVENTION, TABLE_OPTIONS, BigIntegerKey, UtcDateTime, utcnow


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UtcDateTime}


class Item(Base):
    __tablename__ = "inventory_items"
    __table_args__ = (
        CheckConstraint("quantity >= 0", name="ck_inventory_items_quantity_not_negative"),
        # The stock feed's queue: only the few rows it has yet to report (partial where supported).
        Index(
            "ix_inventory_items_unpublished",
            "unpublished",
            postgresql_where=text("unpublished"),
            sqlite_where=text("unpublished = 1"),  # as SQLAlchemy writes the test
        ),
        TABLE_OPTIONS,
    )

    product_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    quantity: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime | None]
    # Set when the product is deleted: the item leaves every read, its ledger stays for audit.
    retired_at: Mapped[dt.datetime | None]
    # One more on every change of `quantity`; the stock feed reports it with the quantity.
    version: Mapped[int] = mapped_column(BigInteger, default=1, server_default="1")
    # The stock feed has yet to report this quantity to the products service.
    unpublished: Mapped[bool] = mapped_column(default=True, server_default=true())


# The location a request that names none uses; the migration that brought locations creates it.
DEFAULT_LOCATION_ID = "00000000-0000-0000-0000-000000000001"
DEFAULT_LOCATION_CODE = "DEFAULT"


class Location(Base):
    __tablename__ = "locations"
    __table_args__ = (UniqueConstraint("code", name="uq_locations_code"), TABLE_OPTIONS)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    code: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class LocationStock(Base):
    """A product's units on hand at one location. Its item's `quantity` is the sum of these."""

    __tablename__ = "location_stock"
    __table_args__ = (
        CheckConstraint("on_hand >= 0", name="ck_location_stock_on_hand_not_negative"),
        Index("ix_location_stock_location_id", "location_id"),
        TABLE_OPTIONS,
    )

    product_id: Mapped[str] = mapped_column(ForeignKey("inventory_items.product_id"), primary_key=True)
    # A location is deleted with its (empty) stock rows, so a movement cannot add one after.
    location_id: Mapped[str] = mapped_column(ForeignKey("locations.id"), primary_key=True)
    on_hand: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime | None]
    # The stock here is low at or below this; 0: no reorder point.
    reorder_point: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Reservation(Base):
    """Units promised at a location until `expires_at`: an ACTIVE reservation counts against
    what is available only while `expires_at` is ahead, whether or not the sweeper has marked
    it EXPIRED yet."""

    __tablename__ = "reservations"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="ck_reservations_quantity_positive"),
        CheckConstraint(
            "state IN ('ACTIVE', 'CONFIRMED', 'RELEASED', 'EXPIRED')", name="ck_reservations_state"
        ),
        UniqueConstraint("actor", "request_id", name="uq_reservations_actor_request_id"),
        # What a product's availability sums, and the sweeper's scan.
        Index("ix_reservations_product_id_state_expires_at", "product_id", "state", "expires_at"),
        Index("ix_reservations_state_expires_at", "state", "expires_at"),
        Index("ix_reservations_location_id_state", "location_id", "state"),
        TABLE_OPTIONS,
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    product_id: Mapped[str] = mapped_column(ForeignKey("inventory_items.product_id"))
    location_id: Mapped[str] = mapped_column(String(36))
    quantity: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(10))
    expires_at: Mapped[dt.datetime]
    reference: Mapped[str] = mapped_column(String(200), default="")
    actor: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Movement(Base):
    __tablename__ = "movements"
    __table_args__ = (
        CheckConstraint("balance_after >= 0", name="ck_movements_balance_not_negative"),
        CheckConstraint("type IN ('IN', 'OUT', 'ADJUSTMENT')", name="ck_movements_type"),
        # A client's idempotency key is its own: one user's key never collides with another's.
        UniqueConstraint("actor", "request_id", name="uq_movements_actor_request_id"),
        Index("ix_movements_product_id_id", "product_id", "id"),
        Index("ix_movements_transfer_id", "transfer_id"),
        # The feed's order, and where the sequencer finds the movements still without a place (NULL).
        Index("ix_movements_seq", "seq", unique=True),
        Index("ix_movements_product_id_seq", "product_id", "seq"),
        TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(BigIntegerKey, primary_key=True, autoincrement=True)
    product_id: Mapped[str] = mapped_column(ForeignKey("inventory_items.product_id"))
    type: Mapped[str] = mapped_column(String(10))
    quantity: Mapped[int] = mapped_column(Integer)  # signed: + in, - out
    balance_after: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(500), default="")
    reference: Mapped[str] = mapped_column(String(200), default="")
    actor: Mapped[str] = mapped_column(String(64))
    # The actor's email as its token gave it then, as the ledger is an audit record: "" for a
    # service, and for movements recorded before it was kept.
    actor_email: Mapped[str] = mapped_column(String(320), default="", server_default="")
    request_id: Mapped[str | None] = mapped_column(String(64))
    # SHA-256 of what the request asked for, to tell a retry from a reused key.
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Where the stock moved; no foreign key, so the ledger outlives a deleted location.
    location_id: Mapped[str] = mapped_column(String(36), default=DEFAULT_LOCATION_ID)
    # The transfer this movement is half of (its OUT carries the request_id), if any.
    transfer_id: Mapped[str | None] = mapped_column(String(36))
    # The reservation this OUT confirmed, if any.
    reservation_id: Mapped[str | None] = mapped_column(String(36))
    # The reorder point at its location when it was recorded (0: none; NULL before they existed):
    # the feed's low-stock signals are judged on it.
    reorder_point: Mapped[int | None] = mapped_column(Integer)
    # Its place in the movement feed, given once it is committed (`inventory.sequencer`).
    seq: Mapped[int | None] = mapped_column(BigInteger)


class MovementFeed(Base):
    """The one row (id 1) that hands out the feed's places: the last one given."""

    __tablename__ = "movement_feed"
    __table_args__ = (TABLE_OPTIONS,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(BigInteger)
