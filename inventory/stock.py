"""The rules of stock: movements, counts, the ledger, and retiring a deleted product.

A change locks the product's balance row (SELECT … FOR UPDATE; on SQLite the write
transaction is BEGIN IMMEDIATE), checks the rule, updates the balance and appends the
movement in one transaction. The product's existence is confirmed with the products
service (`inventory.product_check`, which remembers confirmations for a while) before that
transaction opens, so no lock is ever held across a remote call.

Two races end in a rolled-back transaction that is simply run again: a concurrent first
movement of the same product, or a retry of the same request, loses on a unique key
(IntegrityError); and on MariaDB, several transactions inserting the same new item can
deadlock on InnoDB's duplicate-key locks, where the database picks a loser
(TransactionConflict). No client sees either.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sqlalchemy import Integer, Row, String, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from inventory.models import Item, Movement
from inventory.product_check import ProductCheck, not_found
from mesh import paging
from mesh.context import current_identity, require_verified_email
from mesh.db import Database, UtcDateTime, table_of, utcnow
from mesh.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    TransactionConflict,
)

MAX_BATCH = 500
MAX_QUANTITY = 2**31 - 1
MAX_REASON_CHARS = 500
MAX_REFERENCE_CHARS = 200
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
T = TypeVar("T")
_ATTEMPTS = 5  # each race above is lost at most once or twice in practice
_RETRYABLE = (IntegrityError, TransactionConflict)
# Every movement's statements and the hot reads, built once, in Core: a balance's columns only.
_ITEMS = table_of(Item)
_BALANCE = (_ITEMS.c.product_id, _ITEMS.c.quantity, _ITEMS.c.updated_at)
_ITEM_IS = _ITEMS.c.product_id == bindparam("pid")
_BALANCE_OF = select(*_BALANCE, _ITEMS.c.retired_at).where(_ITEM_IS)
_RETIRED_AT = select(_ITEMS.c.retired_at).where(_ITEM_IS)
_BALANCES_OF = select(*_BALANCE).where(_ITEMS.c.product_id.in_(bindparam("pids", expanding=True)))
_LOCK_BALANCE = select(_ITEMS.c.quantity, _ITEMS.c.retired_at).where(_ITEM_IS).with_for_update()
# Every change of a balance counts one more `version` and leaves the item for the stock feed.
_CHANGED = {"version": _ITEMS.c.version + 1, "unpublished": True}
_NEW_BALANCE = insert(_ITEMS)  # version 1, unpublished: the columns' defaults
_SET_BALANCE = update(_ITEMS).where(_ITEM_IS).values(_CHANGED)  # and the columns the parameters name
_NEW_MOVEMENT = insert(table_of(Movement))
# An IN or OUT the rule allows, in one statement where the database can return the new balance
# (PostgreSQL, SQLite): the bounds keep the balance within 0..MAX_QUANTITY and are computed
# beforehand, so no integer column ever holds an out-of-range sum.
_MOVE_BALANCE = (
    update(_ITEMS)
    .where(
        _ITEM_IS,
        _ITEMS.c.retired_at.is_(None),
        _ITEMS.c.quantity.between(
            bindparam("lowest", type_=Integer()), bindparam("highest", type_=Integer())
        ),
    )
    .values(
        quantity=_ITEMS.c.quantity + bindparam("delta", type_=Integer()),
        updated_at=bindparam("now"),
        **_CHANGED,
    )
    .returning(_ITEMS.c.quantity)
)
# On PostgreSQL the conditional update and the movement it leads to are one statement, run
# without BEGIN or COMMIT (Database.write_alone): one round trip for the whole movement. It
# inserts nothing when the update matched nothing, and a duplicate request_id fails it whole.
_MOVEMENTS = table_of(Movement)
_MOVED = _MOVE_BALANCE.cte("moved")
_MOVE_AND_APPEND = (
    _MOVEMENTS.insert()
    .from_select(
        [
            "product_id",
            "type",
            "quantity",
            "balance_after",
            "reason",
            "reference",
            "actor",
            "request_id",
            "request_fingerprint",
            "created_at",
        ],
        select(
            bindparam("pid", type_=String()),
            bindparam("kind", type_=String()),
            bindparam("delta", type_=Integer()),
            _MOVED.c.quantity,
            bindparam("why", type_=String()),
            bindparam("ref", type_=String()),
            bindparam("actor_id", type_=String()),
            bindparam("key", type_=String()),
            bindparam("fingerprint", type_=String()),
            bindparam("now", type_=UtcDateTime()),
        ),
    )
    .returning(_MOVEMENTS.c.id, _MOVEMENTS.c.balance_after)
)


@dataclass(frozen=True, slots=True)
class Stock:
    """A product's balance as a read or a change left it."""

    product_id: str
    quantity: int
    updated_at: dt.datetime | None  # None if it never moved


@dataclass(frozen=True, slots=True)
class Recorded:
    movement: Movement
    stock: Stock


@dataclass(frozen=True, slots=True)
class Change:
    """What a client asked to change, with what identifies a retry of it."""

    product_id: str
    kind: str  # IN, OUT or ADJUSTMENT
    reason: str
    reference: str
    request_id: str | None
    fingerprint: str


def _change(product_id: str, kind: str, amount: int, reason: str, reference: str, request_id: str) -> Change:
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidArgument(
            f"reason must be at most {MAX_REASON_CHARS} characters", field="reason", reason="INVALID_REASON"
        )
    if len(reference) > MAX_REFERENCE_CHARS:
        raise InvalidArgument(
            f"reference must be at most {MAX_REFERENCE_CHARS} characters",
            field="reference",
            reason="INVALID_REFERENCE",
        )
    if request_id and not _REQUEST_ID.fullmatch(request_id):
        raise InvalidArgument(
            "request_id must be 1 to 64 letters, digits or . _ : -",
            field="request_id",
            reason="INVALID_REQUEST_ID",
        )
    body = json.dumps([product_id, kind, amount, reason, reference])
    return Change(
        product_id, kind, reason, reference, request_id or None, hashlib.sha256(body.encode()).hexdigest()
    )


def _require_product_id(product_id: str) -> None:
    if not product_id:
        raise InvalidArgument("product_id is required", field="product_id", reason="MISSING_PRODUCT_ID")


class Inventory:
    def __init__(self, *, db: Database, products: ProductCheck, changed: Callable[[], None]) -> None:
        """`changed` is called after each committed change of a balance (the stock feed's wake)."""
        self._db = db
        self._products = products
        self._changed = changed

    async def record(
        self, *, product_id: str, kind: str, quantity: int, reason: str, reference: str, request_id: str
    ) -> Recorded:
        """An entry (IN) or exit (OUT) of `quantity` units."""
        require_verified_email()
        _require_product_id(product_id)
        if kind not in ("IN", "OUT"):
            raise InvalidArgument(
                "type must be IN or OUT (set a count with PUT /inventory/{product_id})",
                field="type",
                reason="INVALID_MOVEMENT_TYPE",
            )
        if not 1 <= quantity <= MAX_QUANTITY:
            raise InvalidArgument("quantity must be at least 1", field="quantity", reason="INVALID_QUANTITY")
        change = _change(product_id, kind, quantity, reason, reference, request_id)
        delta = quantity if kind == "IN" else -quantity

        def apply(current: int) -> int:
            if current + delta < 0:
                raise FailedPrecondition(
                    f"cannot take out {quantity}: only {current} in stock",
                    reason="INSUFFICIENT_STOCK",
                    metadata={"available": str(current), "requested": str(quantity)},
                )
            if current + delta > MAX_QUANTITY:
                raise InvalidArgument(
                    "the stock would exceed its maximum", field="quantity", reason="INVALID_QUANTITY"
                )
            return delta

        return await self._change(change, apply, moves_by=delta)

    async def set_count(self, *, product_id: str, quantity: int, reason: str, request_id: str) -> Recorded:
        """Sets the stock to a counted `quantity`, recording the difference as an ADJUSTMENT."""
        require_verified_email()
        _require_product_id(product_id)
        if quantity < 0:
            raise InvalidArgument("quantity must be 0 or more", field="quantity", reason="INVALID_QUANTITY")
        change = _change(product_id, "ADJUSTMENT", quantity, reason, "", request_id)
        return await self._change(change, lambda current: quantity - current)

    async def get(self, product_id: str) -> Stock:
        _require_product_id(product_id)
        await self._products.confirm(product_id)
        found = await self._db.fetch(_BALANCE_OF, {"pid": product_id})
        if found and found[0].retired_at is not None:
            raise not_found(product_id)
        return _stock(found[0] if found else None, product_id)

    async def batch_get(self, product_ids: Sequence[str]) -> list[Stock]:
        """Stock of each id, 0 when it never moved; for the products service, so no existence check."""
        if len(product_ids) > MAX_BATCH:
            raise InvalidArgument(
                f"at most {MAX_BATCH} product_ids per call", field="product_ids", reason="TOO_MANY_IDS"
            )
        ids = list(dict.fromkeys(product_ids))
        rows = await self._db.fetch(_BALANCES_OF, {"pids": ids})
        items = {row.product_id: row for row in rows}
        return [_stock(items.get(pid), pid) for pid in ids]

    async def list_items(self, *, page_size: int, page_token: str) -> tuple[list[Stock], str]:
        size = paging.page_size(page_size)
        after = paging.decode_token(page_token, query="items")
        id_ = _ITEMS.c.product_id
        query = select(*_BALANCE).where(_ITEMS.c.retired_at.is_(None)).order_by(id_).limit(size + 1)
        if after is not None:
            query = query.where(id_ > _position(after, str))
        items = await self._db.fetch(query)
        token = paging.encode_token([items[size - 1].product_id], query="items") if len(items) > size else ""
        return [_stock(item, item.product_id) for item in items[:size]], token

    async def movements(
        self, *, product_id: str, page_size: int, page_token: str
    ) -> tuple[list[Movement], str]:
        """The ledger of a product, newest first."""
        _require_product_id(product_id)
        size = paging.page_size(page_size)
        after = paging.decode_token(page_token, query=product_id)
        await self._products.confirm(product_id)
        query = (
            select(Movement)
            .where(Movement.product_id == product_id)
            .order_by(Movement.id.desc())
            .limit(size + 1)
        )
        if after is not None:
            query = query.where(Movement.id < _position(after, int))
        async with self._db.session() as session:
            if await session.scalar(_RETIRED_AT, {"pid": product_id}):
                raise not_found(product_id)  # retired since this replica last confirmed it
            rows = list(await session.scalars(query))
        token = paging.encode_token([rows[size - 1].id], query=product_id) if len(rows) > size else ""
        return rows[:size], token

    async def retire(self, product_id: str) -> None:
        """The product was deleted: take its item out of reads, refuse new movements, keep the ledger.
        Only the products service's relay calls this (the method's access rule)."""
        _require_product_id(product_id)
        for attempt in range(_ATTEMPTS):
            try:
                async with self._db.transaction() as session:
                    item = await session.get(Item, product_id, with_for_update=True)
                    # A retired item has no stock to report: its product is gone from products.
                    if item is None:
                        session.add(
                            Item(product_id=product_id, quantity=0, retired_at=utcnow(), unpublished=False)
                        )
                    elif item.retired_at is None:
                        item.retired_at, item.unpublished = utcnow(), False
                self._products.forget(product_id)
                return
            except _RETRYABLE:
                if attempt == _ATTEMPTS - 1:
                    raise
                await _back_off(attempt)

    async def _change(
        self, change: Change, delta_for: Callable[[int], int], *, moves_by: int | None = None
    ) -> Recorded:
        actor = current_identity().subject
        for attempt in range(_ATTEMPTS):
            if change.request_id and (replay := await self._replay(actor, change)) is not None:
                return replay
            if attempt == 0:
                await self._products.confirm(change.product_id)
            try:
                recorded = None
                if moves_by is not None and self._db.autocommits:
                    recorded = await self._move_alone(actor, change, moves_by)
                if recorded is None:
                    async with self._db.write_connection() as conn:
                        recorded = await self._apply(conn, actor, change, delta_for, moves_by)
                self._changed()
                return recorded
            except _RETRYABLE:
                # Another transaction created this item, or stored this request_id, first: look again.
                if attempt == _ATTEMPTS - 1:
                    raise
                await _back_off(attempt)
        raise AssertionError("unreachable")

    async def _apply(
        self,
        conn: AsyncConnection,
        actor: str,
        change: Change,
        delta_for: Callable[[int], int],
        moves_by: int | None,
    ) -> Recorded:
        """Locks the balance row, checks the rule, writes the balance and the movement: Core
        statements, since this is every movement's path and the ORM's unit of work costs more.
        An IN or OUT (`moves_by`) first tries the one-statement conditional update; a first
        movement, a retired item or a change the rule refuses falls through to the locked read."""
        product_id, now = change.product_id, utcnow()
        # (Where the database autocommits, `_move_alone` has just tried the conditional update.)
        if moves_by is not None and conn.dialect.update_returning and not self._db.autocommits:
            bounds = {"lowest": max(0, -moves_by), "highest": min(MAX_QUANTITY, MAX_QUANTITY - moves_by)}
            moved = await conn.execute(
                _MOVE_BALANCE, {"pid": product_id, "delta": moves_by, "now": now, **bounds}
            )
            if (row := moved.first()) is not None:
                return await _append(conn, actor, change, moves_by, row.quantity, now)
        locked = (await conn.execute(_LOCK_BALANCE, {"pid": product_id})).first()
        if locked is not None and locked.retired_at is not None:
            raise not_found(product_id)
        current = locked.quantity if locked is not None else 0
        delta = delta_for(current)
        balance = current + delta
        state = {"quantity": balance, "updated_at": now}
        if locked is None:  # its first movement; a concurrent first one loses on the key, and retries
            await conn.execute(_NEW_BALANCE, {"product_id": product_id, **state})
        else:
            await conn.execute(_SET_BALANCE, {"pid": product_id, **state})
        return await _append(conn, actor, change, delta, balance, now)

    async def _move_alone(self, actor: str, change: Change, moves_by: int) -> Recorded | None:
        """An IN or OUT as one statement (`_MOVE_AND_APPEND`); None if the conditional update
        matched nothing (a first movement, a retired item, a change the rule refuses), for the
        locked path to decide."""
        now = utcnow()
        rows = await self._db.write_alone(
            _MOVE_AND_APPEND,
            {
                "pid": change.product_id,
                "delta": moves_by,
                "now": now,
                "lowest": max(0, -moves_by),
                "highest": min(MAX_QUANTITY, MAX_QUANTITY - moves_by),
                "kind": change.kind,
                "why": change.reason,
                "ref": change.reference,
                "actor_id": actor,
                "key": change.request_id,
                "fingerprint": change.fingerprint if change.request_id else None,
            },
        )
        if not rows:
            return None
        movement_id, balance = rows[0]
        values = _movement_values(actor, change, moves_by, balance, now)
        return Recorded(Movement(id=movement_id, **values), Stock(change.product_id, balance, now))

    async def _replay(self, actor: str, change: Change) -> Recorded | None:
        """The first result of a request_id already used by this actor, or None if it is new."""
        async with self._db.session() as session:
            first = await session.scalar(
                select(Movement).where(Movement.actor == actor, Movement.request_id == change.request_id)
            )
        if first is None:
            return None
        if first.request_fingerprint != change.fingerprint:
            raise AlreadyExists(
                f"request_id {change.request_id} was already used for a different request",
                field="request_id",
                reason="REQUEST_ID_REUSED",
            )
        return Recorded(first, Stock(first.product_id, first.balance_after, first.created_at))


async def _append(
    conn: AsyncConnection, actor: str, change: Change, delta: int, balance: int, now: dt.datetime
) -> Recorded:
    """Appends the movement that took the balance to `balance`."""
    values = _movement_values(actor, change, delta, balance, now)
    inserted = await conn.execute(_NEW_MOVEMENT, values)
    movement = Movement(id=cast("Row[Any]", inserted.inserted_primary_key)[0], **values)
    return Recorded(movement, Stock(change.product_id, balance, now))


def _movement_values(
    actor: str, change: Change, delta: int, balance: int, now: dt.datetime
) -> dict[str, Any]:
    return {
        "product_id": change.product_id,
        "type": change.kind,
        "quantity": delta,
        "balance_after": balance,
        "reason": change.reason,
        "reference": change.reference,
        "actor": actor,
        "request_id": change.request_id,
        "request_fingerprint": change.fingerprint if change.request_id else None,
        "created_at": now,
    }


async def _back_off(attempt: int) -> None:
    """A short random pause, so transactions that collided do not collide again in step."""
    await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))


def _position(after: list[Any], kind: type[T]) -> T:
    """The one keyset value of a page token, of the expected type."""
    if len(after) != 1 or type(after[0]) is not kind:
        raise InvalidArgument("page_token is malformed", field="page_token", reason="INVALID_PAGE_TOKEN")
    return after[0]


def _stock(item: Item | Row[Any] | None, product_id: str) -> Stock:
    if item is None:
        return Stock(product_id, 0, None)
    return Stock(item.product_id, item.quantity, item.updated_at)
