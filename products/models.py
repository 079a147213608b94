"""The products database."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import Index, Numeric, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mesh.db import UtcDateTime


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UtcDateTime}


class Product(Base):
    __tablename__ = "products"
    # Keyset pagination walks (created_at, id).
    __table_args__ = (Index("ix_products_created_at_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    # Exact decimal, never a float: 4 places hold every ISO-4217 currency's minor unit.
    price: Mapped[Decimal] = mapped_column(Numeric(18, 4))
    currency: Mapped[str] = mapped_column(String(3))
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
