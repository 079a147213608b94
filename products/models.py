"""The products database."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mesh.db import NAMING_CONVENTION, TABLE_OPTIONS, UtcDateTime, utcnow


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UtcDateTime}


class Product(Base):
    __tablename__ = "products"
    # Keyset pagination walks (created_at, id).
    __table_args__ = (Index("ix_products_created_at_id", "created_at", "id"), TABLE_OPTIONS)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    # The price in the currency's minor units (cents for USD), an exact integer on every backend.
    # Not Numeric: SQLite has no decimal type, so SQLAlchemy binds Decimal as a float there and
    # 99999999999999.99 comes back as 99999999999999.98.
    price_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class RetiredProduct(Base):
    """The outbox of product deletes: each row is a product whose inventory item the relay
    has yet to retire (InventoryService.DeleteInventoryItem), deleted once it has."""

    __tablename__ = "retired_products"
    __table_args__ = (Index("ix_retired_products_due", "next_attempt_at"), TABLE_OPTIONS)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # the product's id
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class StockLevel(Base):
    """Each product's stock as inventory last reported it (ProductsService.UpdateStockLevels),
    so reads answer with stock without calling inventory. `version` is inventory's count of
    the item's changes: a report older than the one held changes nothing."""

    __tablename__ = "stock_levels"
    __table_args__ = (TABLE_OPTIONS,)

    product_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    quantity: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(BigInteger)


class ProductChange(Base):
    """The log of changes to what GetProduct answers, a product's fields or its stock: each
    products process reads it to drop what another replica changed from its cache
    (`products.change_watch`). Written in the change's own transaction."""

    __tablename__ = "product_changes"
    # AUTOINCREMENT: SQLite would otherwise number from 1 again once pruning empties the table.
    __table_args__ = (TABLE_OPTIONS | {"sqlite_autoincrement": True},)

    # SQLite numbers only an INTEGER primary key from the rowid.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    product_id: Mapped[str] = mapped_column(String(36))
    # The products process that wrote it, which dropped the product at its commit already.
    writer: Mapped[str] = mapped_column(String(32))
