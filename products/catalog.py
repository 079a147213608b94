"""The rules of the catalog: validation, SKU uniqueness, keyset pages, deletes that queue the
retirement of the product's stock for the relay (`products.retirements`), and the stock
levels that inventory's stock feed reports (`inventory.stock_feed`), which reads carry."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from cachetools import TTLCache
from iso4217 import Currency
from sqlalchemy import (
    BindParameter,
    Executable,
    Row,
    bindparam,
    case,
    delete,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.dml import ReturningInsert

from mesh import paging
from mesh.context import require_verified_email
from mesh.db import Database, rowcount, table_of, utcnow
from mesh.direct import prepared
from mesh.errors import AlreadyExists, InvalidArgument, NotFound, Violations
from mesh.messages import fields_in_mask
from mesh.outbox import OutboxRelay
from products.models import Product, ProductChange, RetiredProduct, StockLevel

# The hot reads (get, batch_get, list) are Core selects of the table, rows with a Product's
# attributes; get and list add `stock` from stock_levels in the same SELECT. The point and
# batch reads are built once.
_PRODUCTS = table_of(Product)
_LEVELS = table_of(StockLevel)
_WITH_STOCK = select(_PRODUCTS, _LEVELS.c.quantity.label("stock")).outerjoin(
    _LEVELS, _LEVELS.c.product_id == _PRODUCTS.c.id
)
_PRODUCT_BY_ID = prepared(_WITH_STOCK.where(_PRODUCTS.c.id == bindparam("id")))
_PRODUCTS_BY_ID = select(_PRODUCTS).where(_PRODUCTS.c.id.in_(bindparam("ids", expanding=True)))
_STOCK_OF = select(_LEVELS.c.quantity).where(_LEVELS.c.product_id == bindparam("id"))
_LOG_CHANGES = insert(table_of(ProductChange))  # in every write to what GetProduct answers

# The writes that need nothing read first. A new product is three rows: PostgreSQL inserts
# them in one statement, without BEGIN; the others in one transaction run in one step
# (`Database.write_steps`). A full replacement (PUT without a mask) is an UPDATE … RETURNING
# with the product's stock: on PostgreSQL with its change logged in the same statement, on
# SQLite followed by the log's INSERT, in one step. MariaDB has no UPDATE … RETURNING: it
# reads and replaces through the ORM.
_FIELDS: dict[str, BindParameter[Any]] = {
    "sku": bindparam("new_sku"),
    "name": bindparam("new_name"),
    "description": bindparam("new_description"),
    "price_minor": bindparam("new_price_minor"),
    "currency": bindparam("new_currency"),
    "updated_at": bindparam("now"),
}
_NEW_PRODUCT = insert(_PRODUCTS).values(id=bindparam("pid"), created_at=bindparam("now"), **_FIELDS)
# Never moved: 0, at a version below any inventory reports.
_NEW_LEVEL = insert(_LEVELS).values(product_id=bindparam("pid"), quantity=0, version=0)
_LOG_CHANGE = _LOG_CHANGES.values(product_id=bindparam("pid"), writer=bindparam("writer"))
_CREATE_ALONE: ReturningInsert[tuple[Any]] = prepared(
    _LOG_CHANGE.add_cte(_NEW_PRODUCT.cte("created"), _NEW_LEVEL.cte("stocked"))
    # A row to fetch: Database.write_alone answers rows.
    .returning(literal_column("1"))
)
_REPLACE = update(_PRODUCTS).where(_PRODUCTS.c.id == bindparam("pid")).values(_FIELDS)
_REPLACE_HELD = _REPLACE.returning(
    *_PRODUCTS.c,
    select(_LEVELS.c.quantity).where(_LEVELS.c.product_id == _PRODUCTS.c.id).scalar_subquery().label("stock"),
)
_REPLACED = _REPLACE.returning(*_PRODUCTS.c).cte("replaced")
_REPLACE_ALONE = prepared(
    select(
        _REPLACED,
        select(_LEVELS.c.quantity)
        .where(_LEVELS.c.product_id == _REPLACED.c.id)
        .scalar_subquery()
        .label("stock"),
    ).add_cte(
        _LOG_CHANGES.from_select(["product_id", "writer"], select(_REPLACED.c.id, bindparam("writer"))).cte(
            "logged"
        )
    )
)
ProductRow = Product | Row[Any]

MAX_BATCH = 500
CACHED = 10_000  # products kept in memory for GetProduct; the least recently read go first
CACHED_PAGE_BYTES = 2_000_000  # of ListProducts answers kept in memory, in all (a page of 20: about 3 kB)
MAX_SKU_CHARS = 64
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 5000
MAX_PRICE = Decimal("1e14")  # so minor units (up to 4 digits) fit a signed 64-bit integer
EDITABLE_FIELDS = ("sku", "name", "description", "price", "currency")  # a Draft's, for update masks
_IGNORED_IN_MASK = frozenset({"id", "stock", "created_at", "updated_at"})


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


def _draft_of(product: Product) -> Draft:
    """The product's editable fields as a client would send them."""
    return Draft(
        sku=product.sku,
        name=product.name,
        description=product.description,
        price=format_price(product.price_minor, product.currency),
        currency=product.currency,
    )


def validate(draft: Draft) -> Fields:
    """The draft's fields, checked; otherwise one INVALID_ARGUMENT naming every bad field."""
    sku, name, description = draft.sku.strip(), draft.name.strip(), draft.description
    currency = draft.currency.strip().upper() or "USD"
    problems = Violations()
    if not 1 <= len(sku) <= MAX_SKU_CHARS:
        problems.add("sku", f"sku is required, 1 to {MAX_SKU_CHARS} characters", "INVALID_SKU")
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        problems.add("name", f"name is required, 1 to {MAX_NAME_CHARS} characters", "INVALID_NAME")
    if len(description) > MAX_DESCRIPTION_CHARS:
        problems.add(
            "description",
            f"description must be at most {MAX_DESCRIPTION_CHARS} characters",
            "INVALID_DESCRIPTION",
        )
    digits = None
    with problems.collect():
        digits = minor_digits(currency)
    price_minor = 0
    with problems.collect():
        price_minor = _price_in_minor_units(draft.price, currency, digits)
    problems.check()
    return Fields(sku, name, description, price_minor, currency)


def _price_in_minor_units(price: str, currency: str, digits: int | None) -> int:
    """The price in minor units; with no `digits` (the currency is unknown), only its form is checked."""
    decimals = f" with at most {digits} decimals for {currency}" if digits is not None else ""
    bad_price = InvalidArgument(
        f'price must be a non-negative decimal string{decimals}, like "12.50"',
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
    if digits is not None and -amount.as_tuple().exponent > digits:  # type: ignore[operator]
        raise bad_price
    if amount >= MAX_PRICE:
        raise InvalidArgument(f"price must be below {MAX_PRICE:f}", field="price", reason="INVALID_PRICE")
    return int(amount.scaleb(digits or 0))


class Catalog:
    def __init__(
        self,
        *,
        db: Database,
        retirements: OutboxRelay[RetiredProduct],
        cache_seconds: float,
        answer_product: Callable[[Row[Any]], bytes],
        answer_page: Callable[[Sequence[Row[Any]], str], bytes],
        cache_size: int = CACHED,
        page_cache_bytes: int = CACHED_PAGE_BYTES,
    ) -> None:
        """GetProduct and ListProducts answer from memory for `cache_seconds` after a read (see
        `get`). What `get` and `list` return, and keep, is the answer itself: `answer_product`
        of a product's row, `answer_page` of a page's rows and next token (the servicer's
        response, serialized), made once per read of the database, so a read from memory
        costs no conversion, and a product kept costs its bytes, not a row of objects."""
        self._db = db
        self._retirements = retirements
        self._answer_product = answer_product
        self._answer_page = answer_page
        self._upsert_levels = _upsert_levels(db.backend)
        self._cache: TTLCache[str, bytes] | None = (
            TTLCache(cache_size, cache_seconds) if cache_seconds > 0 else None
        )
        # ListProducts pages by (page size, page token, query); any change drops them all.
        self._pages: TTLCache[tuple[int, str, str], bytes] | None = (
            TTLCache(page_cache_bytes, cache_seconds, getsizeof=len) if cache_seconds > 0 else None
        )
        self._writes = 0  # changes committed or learnt of, so a read that overlapped one is not kept
        self.writer = uuid.uuid4().hex  # this process, in the change log

    async def create(self, draft: Draft) -> Product:
        require_verified_email()
        fields = validate(draft)
        values = {"pid": str(uuid.uuid4()), "now": utcnow(), **self._field_values(fields)}
        try:
            if self._db.autocommits:
                await self._db.write_alone(_CREATE_ALONE, values)
            else:
                await self._db.write_steps(lambda conn: _insert_new(conn, values))
        except IntegrityError:
            raise _sku_taken(fields.sku) from None
        self.forget([values["pid"]])  # a new row on every page after it
        return Product(
            id=values["pid"],
            sku=fields.sku,
            name=fields.name,
            description=fields.description,
            price_minor=fields.price_minor,
            currency=fields.currency,
            created_at=values["now"],
            updated_at=values["now"],
        )

    async def get(self, product_id: str) -> bytes:
        """The answer for the product with its stock, from memory if this process read it lately. Its own
        writes and stock reports drop what they change once committed, another replica's once
        the change watch reads them from the log (`products.change_watch`), and a read that
        either overlapped is not kept, so this process never answers with what it replaced."""
        cache = self._cache
        if cache is not None and (answer := cache.get(product_id)) is not None:
            return answer
        writes = self._writes
        found = await self._db.fetch(_PRODUCT_BY_ID, {"id": product_id})
        if not found:
            raise _not_found(product_id)
        answer = self._answer_product(found[0])
        if cache is not None and writes == self._writes:
            cache[product_id] = answer
        return answer

    async def batch_get(self, ids: Sequence[str]) -> Sequence[ProductRow]:
        if len(ids) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} ids per call", field="ids", reason="TOO_MANY_IDS")
        wanted = {i for i in ids if "\x00" not in i}  # no id holds NUL, and no database may be sent one
        return await self._db.fetch(_PRODUCTS_BY_ID, {"ids": list(wanted)})

    async def list(self, *, page_size: int, page_token: str, q: str) -> bytes:
        """The answer for a page of products with their stock, from memory if this process read
        it lately: kept as GetProduct's answers are, and all dropped at any change to any product."""
        size, after = paging.page_request(page_size, page_token, query=q)
        key = (size, page_token, q)
        if self._pages is not None and (answer := self._pages.get(key)) is not None:
            return answer
        writes = self._writes
        columns = _PRODUCTS.c
        query = _WITH_STOCK.order_by(columns.created_at, columns.id).limit(size + 1)
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
        answer = self._answer_page(rows[:size], token)
        if self._pages is not None and writes == self._writes and len(answer) <= self._pages.maxsize:
            self._pages[key] = answer
        return answer

    async def update(
        self, product_id: str, draft: Draft, *, mask: Sequence[str] | None = None
    ) -> tuple[ProductRow, int | None]:
        """The product as updated, and its stock: the fields `mask` names take the draft's
        values, the others keep theirs (AIP-134); without a mask, all take the draft's."""
        require_verified_email()
        updating = fields_in_mask(
            mask, editable=EDITABLE_FIELDS, ignored=_IGNORED_IN_MASK, resource="product"
        )
        if len(updating) == len(EDITABLE_FIELDS) and self._db.backend in ("postgresql", "sqlite"):
            return await self._replace(product_id, validate(draft))
        try:
            async with self._db.transaction() as session:
                product = await session.get(Product, product_id, with_for_update=True)
                if product is None:
                    raise _not_found(product_id)
                stock = await session.scalar(_STOCK_OF, {"id": product_id})
                if not updating:
                    return product, stock
                kept = _draft_of(product)
                fields = validate(replace(kept, **{name: getattr(draft, name) for name in updating}))
                product.sku, product.name, product.description = fields.sku, fields.name, fields.description
                product.price_minor, product.currency = fields.price_minor, fields.currency
                product.updated_at = utcnow()
                session.add(self._logged(product_id))
        except IntegrityError:
            raise _sku_taken(fields.sku) from None
        self.forget([product_id])
        return product, stock

    async def _replace(self, product_id: str, fields: Fields) -> tuple[Row[Any], int | None]:
        """Every editable field replaced, which needs nothing read first (`_REPLACE_ALONE`,
        `_REPLACE_HELD`)."""
        values = {"pid": product_id, "now": utcnow(), **self._field_values(fields)}
        try:
            if self._db.autocommits:
                rows = await self._db.write_alone(_REPLACE_ALONE, values)
            else:
                rows = await self._db.write_steps(lambda conn: _replace_logged(conn, values))
        except IntegrityError:
            raise _sku_taken(fields.sku) from None
        if not rows:
            raise _not_found(product_id)
        self.forget([product_id])
        return rows[0], rows[0].stock

    async def delete(self, product_id: str) -> None:
        """Removes the product and, in the same transaction, queues the retirement of its
        inventory item (`products.retirements`). The retirement is delivered before the delete
        answers when inventory is up, so the item is gone at once; when it is not, the relay
        delivers it later: inventory being down delays the retirement but never the delete."""
        require_verified_email()
        async with self._db.transaction() as session:
            deleted = await session.execute(delete(Product).where(Product.id == product_id))
            if rowcount(deleted) != 1:
                raise _not_found(product_id)
            await session.execute(delete(StockLevel).where(StockLevel.product_id == product_id))
            session.add(RetiredProduct(id=product_id, next_attempt_at=self._retirements.held_for_writer()))
            session.add(self._logged(product_id))
        self.forget([product_id])
        await self._retirements.deliver_now(product_id)

    async def record_levels(self, levels: Sequence[Level]) -> None:
        """Keeps each product's stock as inventory reported it, unless a newer report is held.
        Only inventory's stock feed calls this (the method's access rule)."""
        if len(levels) > MAX_BATCH:
            raise InvalidArgument(
                f"at most {MAX_BATCH} levels per call", field="levels", reason="TOO_MANY_LEVELS"
            )
        newest: dict[str, Level] = {}
        for level in levels:
            if not 1 <= len(level.product_id) <= 36 or "\x00" in level.product_id:
                raise InvalidArgument(
                    "each level needs a product_id of 1 to 36 characters",
                    field="levels.product_id",
                    reason="INVALID_STOCK_LEVEL",
                )
            if level.quantity < 0 or level.version < 1:
                raise InvalidArgument(
                    "each level needs a quantity of 0 or more and a version of 1 or more",
                    field="levels",
                    reason="INVALID_STOCK_LEVEL",
                )
            if level.product_id not in newest or newest[level.product_id].version < level.version:
                newest[level.product_id] = level
        if not newest:
            return
        rows = [{"product_id": p, "quantity": v.quantity, "version": v.version} for p, v in newest.items()]
        logged = [{"product_id": p, "writer": self.writer} for p in newest]

        def upsert_logged(conn: Connection) -> None:
            conn.execute(self._upsert_levels, rows)
            conn.execute(_LOG_CHANGES, logged)

        await self._db.write_steps(upsert_logged)
        self.forget(newest)

    def _logged(self, product_id: str) -> ProductChange:
        return ProductChange(product_id=product_id, writer=self.writer)

    def _field_values(self, fields: Fields) -> dict[str, Any]:
        """The parameters of `_FIELDS`, and the change log's writer."""
        return {
            "new_sku": fields.sku,
            "new_name": fields.name,
            "new_description": fields.description,
            "new_price_minor": fields.price_minor,
            "new_currency": fields.currency,
            "writer": self.writer,
        }

    def forget(self, product_ids: Iterable[str]) -> None:
        """Products changed by a commit, this process's or another replica's: GetProduct reads
        them again, every page is read again, and a read in flight now is not kept."""
        self._writes += 1
        if self._pages is not None:
            self._pages.clear()
        if self._cache is not None:
            for product_id in product_ids:
                self._cache.pop(product_id, None)


@dataclass(frozen=True, slots=True)
class Level:
    """A product's stock as inventory reported it."""

    product_id: str
    quantity: int
    version: int


def _insert_new(conn: Connection, values: dict[str, Any]) -> None:
    for statement in (_NEW_PRODUCT, _NEW_LEVEL, _LOG_CHANGE):
        conn.execute(statement, values)


def _replace_logged(conn: Connection, values: dict[str, Any]) -> Sequence[Row[Any]]:
    rows = conn.execute(_REPLACE_HELD, values).all()
    if rows:
        conn.execute(_LOG_CHANGE, values)
    return rows


def _upsert_levels(backend: str) -> Executable:
    """INSERT of stock levels that, on a product already held, takes a level only if it is newer."""
    table = _LEVELS
    if backend in ("postgresql", "sqlite"):
        insert = postgresql.insert if backend == "postgresql" else sqlite.insert
        stmt = insert(table)
        return stmt.on_conflict_do_update(
            index_elements=[table.c.product_id],
            set_={"quantity": stmt.excluded.quantity, "version": stmt.excluded.version},
            where=table.c.version < stmt.excluded.version,
        )
    mysql_stmt = mysql.insert(table)
    newer = mysql_stmt.inserted.version > table.c.version
    # MariaDB assigns in order: quantity is decided before version changes.
    return mysql_stmt.on_duplicate_key_update(
        {
            "quantity": case((newer, mysql_stmt.inserted.quantity), else_=table.c.quantity),
            "version": case((newer, mysql_stmt.inserted.version), else_=table.c.version),
        }
    )


def _not_found(product_id: str) -> NotFound:
    return NotFound(f"product {product_id} does not exist", reason="PRODUCT_NOT_FOUND")


def _sku_taken(sku: str) -> AlreadyExists:
    return AlreadyExists(f"a product with sku {sku} already exists", field="sku", reason="SKU_TAKEN")
