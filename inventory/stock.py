"""The rules of stock: movements, counts, the ledger, and retiring a deleted product.

A change locks the product's balance row (SELECT … FOR UPDATE; on SQLite the write
transaction is BEGIN IMMEDIATE), checks the stock rule (`next_balance`), updates the balance
and appends the movement in one transaction; an IN or OUT first tries a conditional UPDATE
whose bounds (`balances_allowing`) admit exactly the balances that rule accepts. The
product's existence is confirmed with the products service (`inventory.product_check`, which
remembers confirmations for a while) before that transaction opens, so no lock is ever held
across a remote call.

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

from prometheus_client import Counter
from sqlalchemy import Integer, Row, String, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from inventory.models import Item, Movement
from inventory.product_check import ProductCheck, not_found
from invmesh.api.v1 import access_pb2
from mesh import paging
from mesh.access import holds_role
from mesh.context import current_identity, require_verified_email
from mesh.db import Database, UtcDateTime, table_of, utcnow
from mesh.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TransactionConflict,
    Violations,
)

MAX_BATCH = 500
MAX_STOCK = 2**31 - 1  # a balance is a signed 32-bit column on every database
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
# An IN or OUT the stock rule allows, in one statement where the database can return the new
# balance (PostgreSQL, SQLite): `balances_allowing` bounds the current balance, so the UPDATE
# matches only where `next_balance` would accept, and no column ever holds an out-of-range sum.
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
class Ledger:
    """A page of a product's movements."""

    movements: list[Movement]
    next_page_token: str
    retired: bool  # the product was deleted: the ledger is kept for audit


@dataclass(frozen=True, slots=True)
class Recorded:
    movement: Movement
    stock: Stock


# The movement types and what each does to a balance.
IN, OUT, ADJUSTMENT = "IN", "OUT", "ADJUSTMENT"
# Movements written (a request_id sent again writes none), by type; label children bound once.
MOVEMENTS_TOTAL = Counter("invmesh_movements_total", "Stock movements recorded, by type.", ["type"])
_MOVEMENTS_WRITTEN = {kind: MOVEMENTS_TOTAL.labels(kind) for kind in (IN, OUT, ADJUSTMENT)}


@dataclass(frozen=True, slots=True)
class Change:
    """What a client asked to change, with what identifies a retry of it."""

    product_id: str
    kind: str  # IN, OUT or ADJUSTMENT
    units: int  # moved in (IN) or out (OUT), or counted (ADJUSTMENT)
    reason: str
    reference: str
    request_id: str | None
    fingerprint: str

    @property
    def fixed_delta(self) -> int | None:
        """What an IN or OUT adds to any balance; None for a count, whose delta depends on it."""
        return {IN: self.units, OUT: -self.units}.get(self.kind)

    def delta_from(self, balance: int) -> int:
        """What this change adds to `balance`: a count sets it to `units`."""
        fixed = self.fixed_delta
        return self.units - balance if fixed is None else fixed


# The stock rule, for every write path: a balance stays within 0..MAX_STOCK.


def next_balance(balance: int, delta: int) -> int:
    """`balance` moved by `delta`, or the refusal of the stock rule."""
    moved = balance + delta
    if moved < 0:
        raise FailedPrecondition(
            f"cannot take out {-delta}: only {balance} in stock",
            reason="INSUFFICIENT_STOCK",
            metadata={"available": str(balance), "requested": str(-delta)},
        )
    if moved > MAX_STOCK:
        raise InvalidArgument(
            f"the stock would be {moved}, above its maximum of {MAX_STOCK}",
            field="quantity",
            reason="INVALID_QUANTITY",
        )
    return moved


def balances_allowing(delta: int) -> tuple[int, int]:
    """The lowest and highest balance that `next_balance` moves by `delta` without refusing:
    the bounds of the one-statement conditional UPDATE."""
    return max(0, -delta), min(MAX_STOCK, MAX_STOCK - delta)


def _checked_change(
    problems: Violations,
    *,
    product_id: str,
    kind: str,
    units: int,
    reason: str,
    reference: str,
    request_id: str,
) -> Change:
    """The request as a Change; otherwise one INVALID_ARGUMENT naming every bad field, those
    the caller found (`problems`) included."""
    with problems.collect():
        _require_product_id(product_id)
    lowest = 0 if kind == ADJUSTMENT else 1
    if not lowest <= units <= MAX_STOCK:
        problems.add("quantity", f"quantity must be {lowest} to {MAX_STOCK}", "INVALID_QUANTITY")
    if len(reason) > MAX_REASON_CHARS:
        problems.add("reason", f"reason must be at most {MAX_REASON_CHARS} characters", "INVALID_REASON")
    if len(reference) > MAX_REFERENCE_CHARS:
        problems.add(
            "reference", f"reference must be at most {MAX_REFERENCE_CHARS} characters", "INVALID_REFERENCE"
        )
    if request_id and not _REQUEST_ID.fullmatch(request_id):
        problems.add(
            "request_id", "request_id must be 1 to 64 letters, digits or . _ : -", "INVALID_REQUEST_ID"
        )
    problems.check()
    body = json.dumps([product_id, kind, units, reason, reference])
    return Change(
        product_id=product_id,
        kind=kind,
        units=units,
        reason=reason,
        reference=reference,
        request_id=request_id or None,
        fingerprint=hashlib.sha256(body.encode()).hexdigest(),
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
        problems = Violations()
        if kind not in (IN, OUT):
            problems.add(
                "type",
                "type must be IN or OUT (a count is set with PUT /inventory/{product_id})",
                "INVALID_MOVEMENT_TYPE",
            )
        change = _checked_change(
            problems,
            product_id=product_id,
            kind=kind,
            units=quantity,
            reason=reason,
            reference=reference,
            request_id=request_id,
        )
        return await self._apply(change)

    async def set_count(self, *, product_id: str, quantity: int, reason: str, request_id: str) -> Recorded:
        """Sets the stock to a counted `quantity`, recording the difference as an ADJUSTMENT."""
        require_verified_email()
        change = _checked_change(
            Violations(),
            product_id=product_id,
            kind=ADJUSTMENT,
            units=quantity,
            reason=reason,
            reference="",
            request_id=request_id,
        )
        return await self._apply(change)

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
        size, after = paging.page_request(page_size, page_token, query="items")
        id_ = _ITEMS.c.product_id
        query = select(*_BALANCE).where(_ITEMS.c.retired_at.is_(None)).order_by(id_).limit(size + 1)
        if after is not None:
            query = query.where(id_ > _position(after, str))
        items = await self._db.fetch(query)
        token = paging.encode_token([items[size - 1].product_id], query="items") if len(items) > size else ""
        return [_stock(item, item.product_id) for item in items[:size]], token

    async def movements(self, *, product_id: str, page_size: int, page_token: str) -> Ledger:
        """A page of the product's ledger, newest first. A deleted product's ledger stays
        readable to staff and admins, for audit, marked retired; viewers are told it does not
        exist, as they are by every other read."""
        problems = Violations()
        with problems.collect():
            _require_product_id(product_id)
        with problems.collect():
            size, after = paging.page_request(page_size, page_token, query=product_id)
        problems.check()
        auditor = holds_role(current_identity(), access_pb2.ROLE_STAFF)
        deleted = False
        try:
            await self._products.confirm(product_id)
        except NotFound:
            if not auditor:
                raise
            deleted = True
        query = (
            select(Movement)
            .where(Movement.product_id == product_id)
            .order_by(Movement.id.desc())
            .limit(size + 1)
        )
        if after is not None:
            query = query.where(Movement.id < _position(after, int))
        async with self._db.session() as session:
            item = (await session.execute(_RETIRED_AT, {"pid": product_id})).first()
            # An item whose product the products service no longer knows had a product, deleted
            # since: its retirement may still be on its way. Without an item, it never moved.
            retired = deleted or (item is not None and item.retired_at is not None)
            # A viewer is refused a product retired since this replica last confirmed it.
            if (retired and not auditor) or (deleted and item is None):
                raise not_found(product_id)
            rows = list(await session.scalars(query))
        token = paging.encode_token([rows[size - 1].id], query=product_id) if len(rows) > size else ""
        return Ledger(rows[:size], token, retired)

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

    async def _apply(self, change: Change) -> Recorded:
        """Applies `change` under the stock rule, by the shortest path the database offers: on
        PostgreSQL an IN or OUT is one statement without BEGIN (`_move_alone`); on SQLite it is
        a conditional UPDATE … RETURNING in the write transaction (`_write`); a count, a first
        movement, whatever those leave undecided, and every change on MariaDB (no UPDATE …
        RETURNING) take the locked read (`_write`)."""
        actor = current_identity().subject
        for attempt in range(_ATTEMPTS):
            if change.request_id and (replay := await self._replay(actor, change)) is not None:
                return replay
            if attempt == 0:
                await self._products.confirm(change.product_id)
            try:
                recorded = None
                if change.fixed_delta is not None and self._db.autocommits:
                    recorded = await self._move_alone(actor, change, change.fixed_delta)
                if recorded is None:
                    async with self._db.write_connection() as conn:
                        recorded = await self._write(conn, actor, change)
                self._changed()
                _MOVEMENTS_WRITTEN[change.kind].inc()
                return recorded
            except _RETRYABLE:
                # Another transaction created this item, or stored this request_id, first: look again.
                if attempt == _ATTEMPTS - 1:
                    raise
                await _back_off(attempt)
        raise AssertionError("unreachable")

    async def _write(self, conn: AsyncConnection, actor: str, change: Change) -> Recorded:
        """Writes the balance and the movement in `conn`'s transaction: Core statements, since
        this is every movement's path and the ORM's unit of work costs more. An IN or OUT first
        tries the conditional update; a first movement, a retired item or a change the rule
        refuses falls through to the locked read, which decides by `next_balance`."""
        product_id, now = change.product_id, utcnow()
        fixed_delta = change.fixed_delta
        # (Where the database autocommits, `_move_alone` has just tried the conditional update.)
        if fixed_delta is not None and conn.dialect.update_returning and not self._db.autocommits:
            moved = await conn.execute(_MOVE_BALANCE, _move_parameters(product_id, fixed_delta, now))
            if (row := moved.first()) is not None:
                return await _append(conn, actor, change, fixed_delta, row.quantity, now)
        locked = (await conn.execute(_LOCK_BALANCE, {"pid": product_id})).first()
        if locked is not None and locked.retired_at is not None:
            raise not_found(product_id)
        balance = locked.quantity if locked is not None else 0
        delta = change.delta_from(balance)
        moved_to = next_balance(balance, delta)
        state = {"quantity": moved_to, "updated_at": now}
        if locked is None:  # its first movement; a concurrent first one loses on the key, and retries
            await conn.execute(_NEW_BALANCE, {"product_id": product_id, **state})
        else:
            await conn.execute(_SET_BALANCE, {"pid": product_id, **state})
        return await _append(conn, actor, change, delta, moved_to, now)

    async def _move_alone(self, actor: str, change: Change, delta: int) -> Recorded | None:
        """An IN or OUT as one statement (`_MOVE_AND_APPEND`); None if the conditional update
        matched nothing (a first movement, a retired item, a change the rule refuses), for the
        locked read to decide."""
        now = utcnow()
        rows = await self._db.write_alone(
            _MOVE_AND_APPEND,
            {
                **_move_parameters(change.product_id, delta, now),
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
        values = _movement_values(actor, change, delta, balance, now)
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


def _move_parameters(product_id: str, delta: int, now: dt.datetime) -> dict[str, Any]:
    """The parameters of the conditional update (`_MOVE_BALANCE`) moving a balance by `delta`."""
    lowest, highest = balances_allowing(delta)
    return {"pid": product_id, "delta": delta, "now": now, "lowest": lowest, "highest": highest}


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
