"""The inventory database. A balance row per product (the row that writers lock) and the
ledger of movements; the balance always equals the sum of the item's movements."""

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


class Movement(Base):
    __tablename__ = "movements"
    __table_args__ = (
        CheckConstraint("balance_after >= 0", name="ck_movements_balance_not_negative"),
        CheckConstraint("type IN ('IN', 'OUT', 'ADJUSTMENT')", name="ck_movements_type"),
        # A client's idempotency key is its own: one user's key never collides with another's.
        UniqueConstraint("actor", "request_id", name="uq_movements_actor_request_id"),
        Index("ix_movements_product_id_id", "product_id", "id"),
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
    request_id: Mapped[str | None] = mapped_column(String(64))
    # SHA-256 of what the request asked for, to tell a retry from a reused key.
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
