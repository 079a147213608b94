"""The rules of the catalog: validation, SKU uniqueness, keyset pages, and deletes that
queue the retirement of the product's stock for the relay (`products.retirements`)."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import grpc
from iso4217 import Currency
from sqlalchemy import Row, bindparam, delete, or_, select
from sqlalchemy.exc import IntegrityError

from invmesh.inventory.v1 import inventory_service_pb2, inventory_service_pb2_grpc
from mesh import paging
from mesh.context import require_verified_email
from mesh.db import Database, utcnow
from mesh.errors import AlreadyExists, InvalidArgument, NotFound
from mesh.outbox import OutboxRelay
from products.models import Product, RetiredProduct

log = logging.getLogger(__name__)

# The hot reads (get, batch_get, list) are Core selects of the table, rows with a Product's
# attributes; the point and batch reads are built once.
_PRODUCTS = Product.__table__
_PRODUCT_BY_ID = select(_PRODUCTS).where(_PRODUCTS.c.id == bindparam("id"))
_PRODUCTS_BY_ID = select(_PRODUCTS).where(_PRODUCTS.c.id.in_(bindparam("ids", expanding=True)))
ProductRow = Product | Row[Any]

MAX_BATCH = 500
MAX_SKU_CHARS = 64
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 5000
MAX_PRICE = Decimal("1e14")  # so minor units (up to 4 digits) fit a signed 64-bit integer


@dataclass(frozen=True, slots=True)
class Draft:
    """The editable fields of a product as the caller sent them."""

    sku: str
    name: str
    description: str
    price: str
    currency: str


@dataclass(frozen=True, slots=True)
class Fields:
    """The editable fields of a product, validated."""

    sku: str
    name: str
    description: str
    price_minor: int
    currency: str


def minor_digits(currency: str) -> int:
    try:
        exponent = Currency(currency).exponent
    except ValueError:
        exponent = None
    if exponent is None:
        raise InvalidArgument(
            f"currency must be an ISO-4217 code such as USD, not {currency!r}",
            field="currency",
            reason="INVALID_CURRENCY",
        )
    return exponent


def format_price(price_minor: int, currency: str) -> str:
    """Minor units as a decimal string with exactly the currency's minor digits: 1250 USD is "12.50"."""
    return f"{Decimal(price_minor).scaleb(-minor_digits(currency)):f}"


def validate(draft: Draft) -> Fields:
    sku, name, description, price = draft.sku.strip(), draft.name.strip(), draft.description, draft.price
    currency = draft.currency.strip().upper() or "USD"
    if not 1 <= len(sku) <= MAX_SKU_CHARS:
        raise InvalidArgument(
            f"sku is required, 1 to {MAX_SKU_CHARS} characters", field="sku", reason="INVALID_SKU"
        )
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise InvalidArgument(
            f"name is required, 1 to {MAX_NAME_CHARS} characters", field="name", reason="INVALID_NAME"
        )
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidArgument(
            f"description must be at most {MAX_DESCRIPTION_CHARS} characters",
            field="description",
            reason="INVALID_DESCRIPTION",
        )
    digits = minor_digits(currency)
    bad_price = InvalidArgument(
        f"price must be a non-negative decimal string with at most {digits} decimals for {currency}, "
        'like "12.50"',
        field="price",
        reason="INVALID_PRICE",
    )
    # Plain digits and one point only: no exponent, sign, NaN or infinity.
    if not price or not price.replace(".", "", 1).isdigit() or not price.isascii():
        raise bad_price
    try:
        amount = Decimal(price)
    except InvalidOperation:
        raise bad_price from None
    if -amount.as_tuple().exponent > digits:  # type: ignore[operator]
        raise bad_price
    if amount >= MAX_PRICE:
        raise InvalidArgument(f"price must be below {MAX_PRICE:f}", field="price", reason="INVALID_PRICE")
    return Fields(sku, name, description, int(amount.scaleb(digits)), currency)


class Catalog:
    def __init__(
        self,
        *,
        db: Database,
        inventory: inventory_service_pb2_grpc.InventoryServiceStub,
        stock_timeout: float,
        retirements: OutboxRelay[RetiredProduct],
    ) -> None:
        self._db = db
        self._inventory = inventory
        self._stock_timeout = stock_timeout
        self._retirements = retirements

    async def create(self, draft: Draft) -> Product:
        require_verified_email()
        fields = validate(draft)
        now = utcnow()
        product = Product(
            id=str(uuid.uuid4()),
            sku=fields.sku,
            name=fields.name,
            description=fields.description,
            price_minor=fields.price_minor,
            currency=fields.currency,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self._db.transaction() as session:
                session.add(product)
        except IntegrityError:
            raise _sku_taken(fields.sku) from None
        return product

    async def get(self, product_id: str) -> ProductRow:
        found = await self._db.fetch(_PRODUCT_BY_ID, {"id": product_id})
        if not found:
            raise _not_found(product_id)
        return found[0]

    async def batch_get(self, ids: Sequence[str]) -> Sequence[ProductRow]:
        if len(ids) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} ids per call", field="ids", reason="TOO_MANY_IDS")
        wanted = {i for i in ids if "\x00" not in i}  # no id holds NUL, and no database may be sent one
        return await self._db.fetch(_PRODUCTS_BY_ID, {"ids": list(wanted)})

    async def list(self, *, page_size: int, page_token: str, q: str) -> tuple[list[ProductRow], str]:
        size = paging.page_size(page_size)
        after = paging.decode_token(page_token, query=q)
        columns = _PRODUCTS.c
        query = select(_PRODUCTS).order_by(columns.created_at, columns.id).limit(size + 1)
        if q:
            pattern = "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            query = query.where(
                or_(columns.name.ilike(pattern, escape="\\"), columns.sku.ilike(pattern, escape="\\"))
            )
        if after is not None:
            try:
                created_at, last_id = dt.datetime.fromisoformat(after[0]), str(after[1])
                if created_at.tzinfo is None:
                    raise ValueError("naive datetime")
            except (IndexError, TypeError, ValueError):
                raise InvalidArgument(
                    "page_token is malformed", field="page_token", reason="INVALID_PAGE_TOKEN"
                ) from None
            query = query.where(
                or_(
                    columns.created_at > created_at,
                    (columns.created_at == created_at) & (columns.id > last_id),
                )
            )
        rows = list(await self._db.fetch(query))  # one SELECT through Core: pages are a hot read
        token = ""
        if len(rows) > size:
            last = rows[size - 1]
            token = paging.encode_token([last.created_at.isoformat(), last.id], query=q)
        return rows[:size], token

    async def update(self, product_id: str, draft: Draft) -> Product:
        require_verified_email()
        fields = validate(draft)
        try:
            async with self._db.transaction() as session:
                product = await session.get(Product, product_id, with_for_update=True)
                if product is None:
                    raise _not_found(product_id)
                product.sku, product.name, product.description = fields.sku, fields.name, fields.description
                product.price_minor, product.currency = fields.price_minor, fields.currency
                product.updated_at = utcnow()
        except IntegrityError:
            raise _sku_taken(fields.sku) from None
        return product

    async def delete(self, product_id: str) -> None:
        """Removes the product and, in the same transaction, queues the retirement of its
        inventory item (`products.retirements`). The retirement is delivered before the delete
        answers when inventory is up, so the item is gone at once; when it is not, the relay
        delivers it later: inventory being down delays the retirement but never the delete."""
        require_verified_email()
        async with self._db.transaction() as session:
            deleted = await session.execute(delete(Product).where(Product.id == product_id))
            if deleted.rowcount != 1:
                raise _not_found(product_id)
            session.add(RetiredProduct(id=product_id, next_attempt_at=self._retirements.held_for_writer()))
        await self._retirements.deliver_now(product_id)

    async def stock(self, product_ids: Sequence[str]) -> dict[str, int]:
        """Stock by product id, in one call; empty when inventory does not answer in time."""
        if not product_ids:
            return {}
        try:
            reply = await self._inventory.BatchGetInventoryItems(
                inventory_service_pb2.BatchGetInventoryItemsRequest(product_ids=list(product_ids)),
                timeout=self._stock_timeout,
            )
        except grpc.aio.AioRpcError as error:
            log.warning("answering without stock: inventory said %s", error.code().name)
            return {}
        return {item.product_id: item.quantity for item in reply.items}


def _not_found(product_id: str) -> NotFound:
    return NotFound(f"product {product_id} does not exist", reason="PRODUCT_NOT_FOUND")


def _sku_taken(sku: str) -> AlreadyExists:
    return AlreadyExists(f"a product with sku {sku} already exists", field="sku", reason="SKU_TAKEN")
