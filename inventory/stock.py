"""The rules of stock: movements, counts, transfers, the ledger, and retiring a deleted product.

Stock is kept per product and location (`location_stock`), with the product's total on hand in
its item row (`inventory_items.quantity`, what the stock feed reports), and active reservations
(`inventory.reservations`) promise part of it: what is available at a location is its on-hand
less the reservations there that are ACTIVE and not yet past `expires_at`, counted at the time
of the write, whether or not the sweeper has marked the expired ones.

Every change of a product's stock or reservations takes the same locks in the same order
(`lock_product`): its item row, then its stock rows by location id (SELECT … FOR UPDATE; on
SQLite the write transaction is BEGIN IMMEDIATE); then it reads the active reservations,
checks the stock rule (`next_balance`), and writes the balances and the movement or
reservation in that one transaction. The item row serialises every writer of the product, so
the reservations it sums cannot change under it. (On PostgreSQL an IN, and a count that does
not lower the stock, is first tried as one statement that takes the same locks in the same
order, `_MOVE_IN_ALONE` and `_COUNT_ALONE`, and changes nothing unless it can decide alone.)
The product's existence is confirmed with the products service
(`inventory.product_check`, which remembers confirmations for a while) before that
transaction opens, so no lock is ever held across a remote call.

Two races end in a rolled-back transaction that is simply run again: a concurrent first
movement of the same product (or at the same location), or a retry of the same request, loses
on a unique key (IntegrityError); and on MariaDB, several transactions inserting the same new
item can deadlock on InnoDB's duplicate-key locks, where the database picks a loser
(TransactionConflict). No client sees either.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import random
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from prometheus_client import Counter
from sqlalchemy import (
    CTE,
    ColumnElement,
    FromClause,
    Integer,
    Row,
    Select,
    String,
    and_,
    bindparam,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from inventory.models import DEFAULT_LOCATION_ID, Item, Location, LocationStock, Movement, Reservation
from inventory.product_check import ProductCheck, not_found
from inventory.sequencer import LAST_PLACE
from invmesh.api.v1 import access_pb2
from mesh import paging
from mesh.access import holds_role
from mesh.context import current_identity, require_verified_email
from mesh.db import Database, UtcDateTime, json_array, json_object_agg, sqlstate, table_of, utcnow
from mesh.direct import prepared
from mesh.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TransactionConflict,
    Violations,
)
from mesh.tokens import Identity

MAX_BATCH = 500
MAX_STOCK = 2**31 - 1  # a balance is a signed 32-bit column on every database
MAX_REASON_CHARS = 500
MAX_REFERENCE_CHARS = 200
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
T = TypeVar("T")
ATTEMPTS = 5  # each race above is lost at most once or twice in practice
RETRYABLE = (IntegrityError, TransactionConflict)
# The statements of every write and the hot reads, built once, in Core.
_ITEMS = table_of(Item)
_LEVELS = table_of(LocationStock)
_RESERVATIONS = table_of(Reservation)
_LOCATIONS = table_of(Location)
_BALANCE = (_ITEMS.c.product_id, _ITEMS.c.quantity, _ITEMS.c.updated_at)
_ITEM_IS = _ITEMS.c.product_id == bindparam("pid")
_RETIRED_AT = select(_ITEMS.c.retired_at).where(_ITEM_IS)
_LOCK_BALANCE = (
    select(_ITEMS.c.quantity, _ITEMS.c.updated_at, _ITEMS.c.retired_at).where(_ITEM_IS).with_for_update()
)
_LOCK_LEVELS = (
    select(_LEVELS.c.location_id, _LEVELS.c.on_hand, _LEVELS.c.reorder_point)
    .where(_LEVELS.c.product_id == bindparam("pid"))
    .order_by(_LEVELS.c.location_id)
    .with_for_update()
)


def _low(levels: FromClause) -> ColumnElement[bool]:
    """`is_low` in SQL, on a row of `location_stock` (or an alias of it)."""
    return and_(levels.c.reorder_point > 0, levels.c.on_hand <= levels.c.reorder_point)


def _figures_of(levels: FromClause) -> Any:
    """Each location's [on_hand, reorder_point] as one JSON object by location id: one
    aggregate where two (stock, reorder points) cost the database a second pass over the rows
    and the service a second JSON value to decode (`_listed`)."""
    return json_object_agg(levels.c.location_id, json_array(levels.c.on_hand, levels.c.reorder_point))


# An item's figures at each location, read with the item's row (on their own alias, so that they
# never correlate with a join of the levels in the listing).
_LEVEL_OF = _LEVELS.alias("level_of")
_LEVELS_BY_LOCATION = (
    select(_figures_of(_LEVEL_OF))
    .where(_LEVEL_OF.c.product_id == _ITEMS.c.product_id)
    .scalar_subquery()
    .label("levels")
)
# The item is low at some location (`low_stock` of ListInventoryItems and of a batch).
_LOW_AT = _LEVELS.alias("low_at")
_LOW_SOMEWHERE = (
    select(_LOW_AT.c.product_id).where(_LOW_AT.c.product_id == _ITEMS.c.product_id, _low(_LOW_AT)).exists()
)
_BALANCES_OF = select(*_BALANCE, _LOW_SOMEWHERE.label("low_stock")).where(
    _ITEMS.c.product_id.in_(bindparam("pids", expanding=True))
)
# What active reservations hold, per product and location: ACTIVE and not yet expired.
_HOLDING = and_(_RESERVATIONS.c.state == "ACTIVE", _RESERVATIONS.c.expires_at > bindparam("now"))
_RESERVED_OF = (
    select(_RESERVATIONS.c.product_id, _RESERVATIONS.c.location_id, func.sum(_RESERVATIONS.c.quantity))
    .where(_RESERVATIONS.c.product_id.in_(bindparam("pids", expanding=True)), _HOLDING)
    .group_by(_RESERVATIONS.c.product_id, _RESERVATIONS.c.location_id)
)
LOCATION_EXISTS = prepared(select(_LOCATIONS.c.id).where(_LOCATIONS.c.id == bindparam("loc")))
# What the item's active reservations hold, read with its row in the listing: each reservation's
# [location, units], as one JSON object by reservation id (summed by location in Python: a sum
# by location per item needs a derived table correlated with the item, which MariaDB lacks).
_HOLDS_OF_ITEM = (
    select(
        json_object_agg(_RESERVATIONS.c.id, json_array(_RESERVATIONS.c.location_id, _RESERVATIONS.c.quantity))
    )
    .where(_RESERVATIONS.c.product_id == _ITEMS.c.product_id, _HOLDING)
    .scalar_subquery()
    .label("holds")
)


def _listing(at_location: bool, low_stock: bool, after: bool) -> Select[Any]:
    """ListInventoryItems' page of `size` items by product id (after `after`, if given), at
    location `loc` (with that location's stock only) if `at_location`, only those low there
    (or anywhere) if `low_stock`."""
    id_ = _ITEMS.c.product_id
    query = (
        select(*_BALANCE, _LEVELS_BY_LOCATION, _HOLDS_OF_ITEM)
        .where(_ITEMS.c.retired_at.is_(None))
        .order_by(id_)
        .limit(bindparam("size", type_=Integer()))
    )
    if at_location:
        query = query.join(_LEVELS, _LEVELS.c.product_id == id_).where(
            _LEVELS.c.location_id == bindparam("loc")
        )
        if low_stock:
            query = query.where(_low(_LEVELS))
    elif low_stock:
        query = query.where(_LOW_SOMEWHERE)
    if after:
        query = query.where(id_ > bindparam("after", type_=String()))
    return prepared(query)


# Built once, as every hot statement is: a statement built per call pays for its cache key too.
_LISTINGS = {
    (at_location, low_stock, after): _listing(at_location, low_stock, after)
    for at_location in (False, True)
    for low_stock in (False, True)
    for after in (False, True)
}
# Every change of a balance counts one more `version` and leaves the item for the stock feed.
_CHANGED = {"version": _ITEMS.c.version + 1, "unpublished": True}
# So does a new reservation, with no balance to publish (see `_COUNT_MOVED`): its lock is then
# this UPDATE, where the database can answer one (`lock_product`).
_NEW_VERSION = update(_ITEMS).where(_ITEM_IS).values(version=_ITEMS.c.version + 1)
_LOCK_AS_NEW_VERSION = _NEW_VERSION.returning(_ITEMS.c.quantity, _ITEMS.c.updated_at, _ITEMS.c.retired_at)
_NEW_BALANCE = insert(_ITEMS)  # version 1, unpublished: the columns' defaults, unless given
_SET_BALANCE = update(_ITEMS).where(_ITEM_IS).values(_CHANGED)  # and the columns the parameters name
_NEW_LEVEL = insert(_LEVELS)
_SET_LEVEL = update(_LEVELS).where(
    _LEVELS.c.product_id == bindparam("pid"), _LEVELS.c.location_id == bindparam("loc")
)
_NEW_MOVEMENT = insert(table_of(Movement))
_RELEASE_ALL = (
    update(_RESERVATIONS)
    .where(_RESERVATIONS.c.product_id == bindparam("pid"), _RESERVATIONS.c.state == "ACTIVE")
    .values(state="RELEASED", updated_at=bindparam("now"))
)

# An IN on PostgreSQL, as one statement sent without BEGIN or COMMIT (`Database.write_alone`,
# `Inventory._move_in_alone`): one round trip instead of the locked path's eight. An IN ignores
# reservations, so it needs no reservation read to be safe (an OUT does: a subquery here would
# read the statement's snapshot, taken before the item row's lock was granted, and could miss a
# reservation committed meanwhile; OUTs, counts, transfers and reservations keep `lock_product`).
# The locks are taken in `lock_product`'s order: `moved` updates (and locks) the item row, and
# `level` joins `moved`, so it locks the location's row only once the item's is held.
# `moved`'s WHERE keeps a retired or missing item, a total above MAX_STOCK, or an item another
# writer changed after this statement's snapshot was taken (its `version` is no longer the one
# the snapshot saw: PostgreSQL re-checks the WHERE on the newest row after waiting for its lock)
# from changing anything. So when the item moves, no stock row of the product changed since the
# snapshot (every writer of one bumps the item's version under its lock), and the snapshot's
# levels are the product's levels. The movement's `balance_after` comes from `level` by a LEFT
# JOIN: where the item moved but the product has no row at the location (its first movement
# there, or the location deleted meanwhile), it is NULL, and the NOT NULL violation aborts the
# whole statement, item included. A duplicate request_id fails it whole too. In every case that
# changes nothing, the caller takes the locked path, which decides.
_IN_DELTA = bindparam("delta", type_=Integer())
_IN_HIGHEST = bindparam("highest", type_=Integer())  # the highest balance the IN may start from
_IN_NOW = bindparam("now", type_=UtcDateTime())
_IN_LOCATION = bindparam("loc", type_=String())
_SEEN = _ITEMS.alias("seen")  # the item row as the statement's snapshot has it
_SEEN_VERSION = select(_SEEN.c.version).where(_SEEN.c.product_id == bindparam("pid")).scalar_subquery()
_IN_MOVED = (
    update(_ITEMS)
    .where(
        _ITEM_IS,
        _ITEMS.c.retired_at.is_(None),
        _ITEMS.c.quantity <= _IN_HIGHEST,
        _ITEMS.c.version == _SEEN_VERSION,
    )
    .values(quantity=_ITEMS.c.quantity + _IN_DELTA, updated_at=_IN_NOW, **_CHANGED)
    .returning(_ITEMS.c.product_id, _ITEMS.c.quantity)
    .cte("moved")
)
_IN_LEVEL = (
    update(_LEVELS)
    .where(
        _LEVELS.c.product_id == _IN_MOVED.c.product_id,
        # The product named as well as joined: the planner then finds the row by its primary key,
        # where the join alone let it scan every row at the location (all its products').
        _LEVELS.c.product_id == bindparam("pid"),
        _LEVELS.c.location_id == _IN_LOCATION,
        _LEVELS.c.on_hand <= _IN_HIGHEST,
    )
    .values(on_hand=_LEVELS.c.on_hand + _IN_DELTA, updated_at=_IN_NOW)
    .returning(_LEVELS.c.on_hand, _LEVELS.c.reorder_point)
    .cte("level")
)
_MOVEMENTS = table_of(Movement)


def _appended(moved: Any, level: Any, delta: Any) -> Any:
    """The movement's INSERT, as a CTE on the item's (`moved`) and the location's (`level`)
    RETURNING, by `delta`: `balance_after` is the level's on_hand, NULL by the LEFT JOIN where the
    location's row did not change, and the NOT NULL violation then fails the whole statement."""
    return (
        insert(_MOVEMENTS)
        .from_select(
            [
                "product_id",
                "location_id",
                "type",
                "quantity",
                "balance_after",
                "reason",
                "reference",
                "actor",
                "actor_email",
                "request_id",
                "request_fingerprint",
                "created_at",
                "reorder_point",
            ],
            select(
                moved.c.product_id,
                _IN_LOCATION,
                bindparam("kind", type_=String()),
                delta,
                level.c.on_hand,  # NULL without a level row: the statement fails
                bindparam("why", type_=String()),
                bindparam("ref", type_=String()),
                bindparam("actor_id", type_=String()),
                bindparam("actor_email", type_=String()),
                bindparam("key", type_=String()),
                bindparam("fingerprint", type_=String()),
                _IN_NOW,
                level.c.reorder_point,
            ).select_from(moved.outerjoin(level, true())),
        )
        .returning(_MOVEMENTS.c.id, _MOVEMENTS.c.balance_after)
        .cte("appended")
    )


_IN_APPENDED = _appended(_IN_MOVED, _IN_LEVEL, _IN_DELTA)


# The answer's other figures, read in the same statement from its snapshot, as the locked path
# reports them: the product's other locations (the snapshot's, exact, see above), their reorder
# points and what active reservations hold, by location (a reservation, or a reorder point
# elsewhere, committed while this statement waited for the item's lock is left out: those are
# the figures that can be older than the locked path's; the location's own reorder point comes
# from its row's RETURNING, which is the newest).
# Each is a JSON object by location id: asyncpg decodes JSON with the codec SQLAlchemy sets on
# every connection, where an array of varchar or integers would make each new connection first
# ask PostgreSQL about those types (its costly type introspection, tens of ms of server CPU).
def _by_location(*, besides: Any = None) -> tuple[Any, Any]:
    """The product's (`pid`) [on_hand, reorder_point] at each location but `besides`, and what
    its active reservations hold at each location, as two JSON objects by location id, for one
    row to carry."""
    levels = select(_figures_of(_LEVELS)).where(_LEVELS.c.product_id == bindparam("pid"))
    if besides is not None:
        levels = levels.where(_LEVELS.c.location_id != besides)
    holds = (
        select(_RESERVATIONS.c.location_id, func.sum(_RESERVATIONS.c.quantity).label("held"))
        .where(_RESERVATIONS.c.product_id == bindparam("pid"), _HOLDING)
        .group_by(_RESERVATIONS.c.location_id)
        .subquery()
    )
    held = select(json_object_agg(holds.c.location_id, holds.c.held)).scalar_subquery()
    return levels.scalar_subquery().label("levels"), held.label("held")


# A product's stock for GET /inventory/{product_id}, in one statement.
_STOCK_OF = prepared(select(*_BALANCE, _ITEMS.c.retired_at, *_by_location()).where(_ITEM_IS))


def _alone(appended: CTE, moved: CTE, level: CTE, *also: ColumnElement[Any]) -> Select[Any]:
    """What a one-statement write answers: the movement `appended`, the location's reorder point
    (`level`), the item's new total (`moved`), `also`, and the product's other figures."""
    return select(
        appended.c.id,
        appended.c.balance_after,
        level.c.reorder_point,
        moved.c.quantity,
        *also,
        *_by_location(besides=_IN_LOCATION),
    ).select_from(appended.join(moved, true()).join(level, true()))


_MOVE_IN_ALONE = prepared(_alone(_IN_APPENDED, _IN_MOVED, _IN_LEVEL))

# An IN on SQLite, in a write transaction of its own run in one step, which holds the
# database's one write lock (BEGIN IMMEDIATE): nobody else writes until it commits, so the rule
# is checked by the statements' own conditions, in two UPDATE … RETURNING, and no row needs
# reading first (`_move_in_held`). The location's row moves first, and only where the item can
# take the units too; where it cannot (no row at the location yet, a retired item, a total
# above MAX_STOCK), nothing has changed, and the locked path decides in a transaction of its
# own. The item's RETURNING reads the answer's other figures, as `_MOVE_IN_ALONE` does.
_HELD_IN_LEVEL = (
    update(_LEVELS)
    .where(
        _LEVELS.c.product_id == bindparam("pid"),
        _LEVELS.c.location_id == _IN_LOCATION,
        _LEVELS.c.on_hand <= _IN_HIGHEST,
        select(_ITEMS.c.product_id)
        .where(_ITEM_IS, _ITEMS.c.retired_at.is_(None), _ITEMS.c.quantity <= _IN_HIGHEST)
        .exists(),
    )
    .values(on_hand=_LEVELS.c.on_hand + _IN_DELTA, updated_at=_IN_NOW)
    .returning(_LEVELS.c.on_hand, _LEVELS.c.reorder_point)
)
_HELD_IN_ITEM = (
    update(_ITEMS)
    .where(_ITEM_IS)
    .values(quantity=_ITEMS.c.quantity + _IN_DELTA, updated_at=_IN_NOW, **_CHANGED)
    .returning(_ITEMS.c.quantity, *_by_location(besides=_IN_LOCATION))
)

# A count (an ADJUSTMENT that sets no reorder point), as the IN's statements are: one statement
# on PostgreSQL (`_COUNT_ALONE`, `Inventory._count_alone`), two conditional updates in SQLite's
# held write transaction (`_HELD_COUNT_ITEM`, `_HELD_COUNT_LEVEL`, `_count_held`). Where the
# location's stock was `_STOCK_THERE`, the count moves it, and the item's total, by `counted`
# less that: the total is written as `quantity - _STOCK_THERE + counted`, in that order, and
# `highest` is the highest that `quantity - _STOCK_THERE` may be, so neither the check nor the
# sum overflows a 32-bit integer. Without a row at the location `_STOCK_THERE` is NULL, every
# condition on it fails, and the locked path decides (it writes the row).
_COUNTED = bindparam("counted", type_=Integer())
_COUNTED_AT = _LEVELS.alias("counted_at")  # the location's row before the count
_STOCK_THERE = (
    select(_COUNTED_AT.c.on_hand)
    .where(_COUNTED_AT.c.product_id == bindparam("pid"), _COUNTED_AT.c.location_id == _IN_LOCATION)
    .scalar_subquery()
)
_HELD_THERE = (
    select(func.coalesce(func.sum(_RESERVATIONS.c.quantity), 0))
    .where(
        _RESERVATIONS.c.product_id == bindparam("pid"), _RESERVATIONS.c.location_id == _IN_LOCATION, _HOLDING
    )
    .scalar_subquery()
)
_COUNT_TOTAL = _ITEMS.c.quantity - _STOCK_THERE + _COUNTED
_COUNT_DELTA = (_COUNTED - _STOCK_THERE).label("delta")
# On PostgreSQL the item's WHERE is the IN's (`_IN_MOVED`): not retired, and the `version` its
# snapshot saw. Every writer of its stock and every new reservation counts one more version
# under the item's lock (`lock_product`), so when the item moves, the snapshot's
# `_STOCK_THERE` is the location's stock and its `_HELD_THERE` holds every reservation there:
# one committed while this statement waited for the lock changed the version, and the statement
# changes nothing. (A reservation released or expired meanwhile only frees units: the snapshot
# then holds more than is held, which can only send a count to the locked path.) A count below
# what reservations hold is left to the locked path, which refuses it (BELOW_RESERVED).
_COUNT_MOVED = (
    update(_ITEMS)
    .where(
        _ITEM_IS,
        _ITEMS.c.retired_at.is_(None),
        _ITEMS.c.version == _SEEN_VERSION,
        _HELD_THERE <= _COUNTED,
        _ITEMS.c.quantity - _STOCK_THERE <= _IN_HIGHEST,
    )
    .values(quantity=_COUNT_TOTAL, updated_at=_IN_NOW, **_CHANGED)
    .returning(_ITEMS.c.product_id, _ITEMS.c.quantity, _COUNT_DELTA)
    .cte("moved")
)
_COUNT_LEVEL = (
    update(_LEVELS)
    .where(
        _LEVELS.c.product_id == _COUNT_MOVED.c.product_id,
        _LEVELS.c.product_id == bindparam("pid"),  # found by its primary key, as `_IN_LEVEL`
        _LEVELS.c.location_id == _IN_LOCATION,
    )
    .values(on_hand=_COUNTED, updated_at=_IN_NOW)
    .returning(_LEVELS.c.on_hand, _LEVELS.c.reorder_point)
    .cte("level")
)
_COUNT_APPENDED = _appended(_COUNT_MOVED, _COUNT_LEVEL, _COUNT_MOVED.c.delta)
_COUNT_ALONE = prepared(_alone(_COUNT_APPENDED, _COUNT_MOVED, _COUNT_LEVEL, _COUNT_MOVED.c.delta))
# On SQLite the write lock is held, so what the reservations hold is read as it is. The item
# moves first, only where the count is within the rule: its RETURNING reads the location's stock
# before the count (its row is written next) and the answer's other figures, as `_HELD_IN_ITEM`
# does.
_HELD_COUNT_ITEM = (
    update(_ITEMS)
    .where(
        _ITEM_IS,
        _ITEMS.c.retired_at.is_(None),
        _HELD_THERE <= _COUNTED,
        _ITEMS.c.quantity - _STOCK_THERE <= _IN_HIGHEST,
    )
    .values(quantity=_COUNT_TOTAL, updated_at=_IN_NOW, **_CHANGED)
    .returning(_ITEMS.c.quantity, _COUNT_DELTA, *_by_location(besides=_IN_LOCATION))
)
_HELD_COUNT_LEVEL = (
    update(_LEVELS)
    .where(_LEVELS.c.product_id == bindparam("pid"), _LEVELS.c.location_id == _IN_LOCATION)
    .values(on_hand=_COUNTED, updated_at=_IN_NOW)
    .returning(_LEVELS.c.on_hand, _LEVELS.c.reorder_point)
)
_NOT_NULL_VIOLATION = "23502"


# The movement types and what each does to a balance.
IN, OUT, ADJUSTMENT = "IN", "OUT", "ADJUSTMENT"
# A change that moves nothing: SetStock with a reorder point and no quantity.
REORDER_POINT = "REORDER_POINT"
# Movements written (a request_id sent again writes none), by type; label children bound once.
MOVEMENTS_TOTAL = Counter("invmesh_movements_total", "Stock movements recorded, by type.", ["type"])
MOVEMENTS_WRITTEN = {kind: MOVEMENTS_TOTAL.labels(kind) for kind in (IN, OUT, ADJUSTMENT)}


def is_low(on_hand: int, reorder_point: int) -> bool:
    """The stock at a location is low: a reorder point is set there (0 is none) and the stock
    is at or below it. `_low` says the same in SQL."""
    return reorder_point > 0 and on_hand <= reorder_point


@dataclass(frozen=True, slots=True)
class Level:
    """A product's stock at one location."""

    location_id: str
    on_hand: int
    reserved: int
    reorder_point: int = 0

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    @property
    def low_stock(self) -> bool:
        return is_low(self.on_hand, self.reorder_point)


@dataclass(frozen=True, slots=True)
class Stock:
    """A product's balance as a read or a change left it: the totals, and each location's."""

    product_id: str
    quantity: int  # on hand at every location
    updated_at: dt.datetime | None  # None if it never moved
    reserved: int = 0  # by active reservations, at every location
    locations: tuple[Level, ...] = ()
    low_elsewhere: bool = False  # low at a location `locations` leaves out (a batch lists none)

    @property
    def available(self) -> int:
        return self.quantity - self.reserved

    @property
    def low_stock(self) -> bool:
        return self.low_elsewhere or any(level.low_stock for level in self.locations)


@dataclass(frozen=True, slots=True)
class LedgerFilter:
    """The movements of a ledger to list: each condition set keeps only those that meet it."""

    kind: str = ""  # IN, OUT or ADJUSTMENT; "" for every type
    location_id: str = ""
    start: dt.datetime | None = None  # recorded at or after
    end: dt.datetime | None = None  # recorded before

    def check(self, problems: Violations) -> None:
        if self.kind not in ("", IN, OUT, ADJUSTMENT):
            problems.add(
                "type",
                f"type must be IN, OUT or ADJUSTMENT, or unset for every type, not {self.kind}",
                "INVALID_MOVEMENT_TYPE",
            )
        if self.start is not None and self.end is not None and self.end < self.start:
            problems.add("end_time", "end_time must not be before start_time", "INVALID_TIME_RANGE")

    def query_key(self, product_id: str) -> str:
        """What a page token is good for: the product, and the filters unless there are none, so
        a token of before the filters stays good."""
        times = [time.isoformat() if time else "" for time in (self.start, self.end)]
        filters = [self.kind, self.location_id, *times]
        return json.dumps([product_id, *filters]) if any(filters) else product_id

    def conditions(self) -> list[ColumnElement[bool]]:
        kept = []
        if self.kind:
            kept.append(Movement.type == self.kind)
        if self.location_id:
            kept.append(Movement.location_id == self.location_id)
        if self.start is not None:
            kept.append(Movement.created_at >= self.start)
        if self.end is not None:
            kept.append(Movement.created_at < self.end)
        return kept


@dataclass(frozen=True, slots=True)
class Ledger:
    """A page of a product's movements."""

    movements: list[Movement]
    next_page_token: str
    retired: bool  # the product was deleted: the ledger is kept for audit
    feed_cursor: int  # the feed's position before the page was read (`inventory.watch`)


@dataclass(frozen=True, slots=True)
class Recorded:
    movement: Movement | None  # None when SetStock changed only the reorder point
    stock: Stock


@dataclass(frozen=True, slots=True)
class Transferred:
    transfer_id: str
    outgoing: Movement
    incoming: Movement
    stock: Stock


@dataclass(frozen=True, slots=True)
class Change:
    """What a client asked to change, with what identifies a retry of it."""

    product_id: str
    kind: str  # IN, OUT or ADJUSTMENT, or REORDER_POINT (no movement)
    units: int  # moved in (IN) or out (OUT), or counted (ADJUSTMENT)
    reason: str
    reference: str
    request_id: str | None
    fingerprint: str
    location_id: str = DEFAULT_LOCATION_ID
    reorder_point: int | None = None  # SetStock's new reorder point at the location, if any

    @property
    def counts_only(self) -> bool:
        """A count that sets no reorder point: what `_COUNT_ALONE` and `_count_held` can write."""
        return self.kind == ADJUSTMENT and self.reorder_point is None

    def delta_from(self, balance: int) -> int:
        """What this change adds to `balance`: a count sets it to `units`."""
        return {IN: self.units, OUT: -self.units}.get(self.kind, self.units - balance)


# The stock rule, for every write path: a balance stays within 0..MAX_STOCK, and an exit takes
# no more than what active reservations leave available.


def next_balance(balance: int, delta: int, *, reserved: int = 0) -> int:
    """`balance` moved by `delta`, or the refusal of the stock rule: an exit may take only what
    `reserved` units leave available."""
    moved = balance + delta
    if moved < min(reserved, balance) or moved < 0:
        available = max(balance - reserved, 0)
        held = f"only {available} available ({balance} in stock, {reserved} reserved)"
        raise FailedPrecondition(
            f"cannot take out {-delta}: " + (held if reserved else f"only {balance} in stock"),
            reason="INSUFFICIENT_STOCK",
            metadata={"available": str(available), "requested": str(-delta)},
        )
    if moved > MAX_STOCK:
        raise InvalidArgument(
            f"the stock would be {moved}, above its maximum of {MAX_STOCK}",
            field="quantity",
            reason="INVALID_QUANTITY",
        )
    return moved


def fingerprint(*parts: object) -> str:
    """SHA-256 of what a request asked for, to tell a retry from a reused request_id."""
    return hashlib.sha256(json.dumps(list(parts)).encode()).hexdigest()


def check_request_id(problems: Violations, request_id: str) -> None:
    if request_id and not _REQUEST_ID.fullmatch(request_id):
        problems.add(
            "request_id", "request_id must be 1 to 64 letters, digits or . _ : -", "INVALID_REQUEST_ID"
        )


def check_units(problems: Violations, units: int, *, lowest: int = 1) -> None:
    if not lowest <= units <= MAX_STOCK:
        problems.add("quantity", f"quantity must be {lowest} to {MAX_STOCK}", "INVALID_QUANTITY")


def check_reorder_point(problems: Violations, reorder_point: int) -> None:
    if not 0 <= reorder_point <= MAX_STOCK:
        problems.add("reorder_point", f"reorder_point must be 0 to {MAX_STOCK}", "INVALID_REORDER_POINT")


def check_reason(problems: Violations, reason: str) -> None:
    if len(reason) > MAX_REASON_CHARS:
        problems.add("reason", f"reason must be at most {MAX_REASON_CHARS} characters", "INVALID_REASON")


def check_reference(problems: Violations, reference: str) -> None:
    if len(reference) > MAX_REFERENCE_CHARS:
        problems.add(
            "reference", f"reference must be at most {MAX_REFERENCE_CHARS} characters", "INVALID_REFERENCE"
        )


def _checked_change(
    problems: Violations,
    *,
    product_id: str,
    kind: str,
    units: int,
    reason: str,
    reference: str,
    request_id: str,
    location_id: str,
    reorder_point: int | None = None,
) -> Change:
    """The request as a Change; otherwise one INVALID_ARGUMENT naming every bad field, those
    the caller found (`problems`) included."""
    with problems.collect():
        require_product_id(product_id)
    if kind != REORDER_POINT:
        check_units(problems, units, lowest=0 if kind == ADJUSTMENT else 1)
    if reorder_point is not None:
        check_reorder_point(problems, reorder_point)
    check_reason(problems, reason)
    check_reference(problems, reference)
    check_request_id(problems, request_id)
    problems.check()
    location = location_id or DEFAULT_LOCATION_ID
    # The default location and an unset reorder point are left out, so a retry from before
    # either existed is still one.
    where = [] if location == DEFAULT_LOCATION_ID else [location]
    reorder = [] if reorder_point is None else [{"reorder_point": reorder_point}]
    return Change(
        product_id=product_id,
        kind=kind,
        units=units,
        reason=reason,
        reference=reference,
        request_id=request_id or None,
        fingerprint=fingerprint(product_id, kind, units, reason, reference, *where, *reorder),
        location_id=location,
        reorder_point=reorder_point,
    )


def require_product_id(product_id: str) -> None:
    if not product_id:
        raise InvalidArgument("product_id is required", field="product_id", reason="MISSING_PRODUCT_ID")


def location_not_found(location_id: str, *, field: str | None = None) -> NotFound:
    return NotFound(f"location {location_id} does not exist", reason="LOCATION_NOT_FOUND", field=field)


# The locked write path, shared with `inventory.reservations`.


@dataclass(slots=True)
class Locked:
    """A product's stock inside a write transaction that holds its locks (`lock_product`)."""

    product_id: str
    exists: bool  # it has an item row
    quantity: int
    updated_at: dt.datetime | None  # as the item row had it
    on_hand: dict[str, int]  # by location, where it has a stock row
    reorder_points: dict[str, int]  # by location, where it has a stock row
    reserved: dict[str, int]  # by location, by active reservations at `now`
    now: dt.datetime
    touched: set[str] = field(default_factory=set)  # locations whose balance this transaction wrote

    def available(self, location_id: str) -> int:
        return self.on_hand.get(location_id, 0) - self.reserved.get(location_id, 0)

    def stock(self) -> Stock:
        return Stock(
            self.product_id,
            self.quantity,
            self.now if self.touched else self.updated_at,
            sum(self.reserved.values()),
            _levels(self.on_hand, self.reserved, self.reorder_points),
        )


async def lock_product(conn: AsyncConnection, product_id: str, *, new_version: bool = False) -> Locked:
    """Locks the product's item row, then its stock rows in location order, and reads what its
    active reservations hold: the lock every writer of the product's stock takes first.
    NOT_FOUND if the product was retired. With `new_version` (a new reservation) the item
    counts one more version, as a change of its balance does (`_COUNT_MOVED` says why)."""
    ids = {"pid": product_id}
    if new_version and conn.dialect.update_returning:
        item = (await conn.execute(_LOCK_AS_NEW_VERSION, ids)).first()
    else:
        item = (await conn.execute(_LOCK_BALANCE, ids)).first()
        if new_version and item is not None:
            await conn.execute(_NEW_VERSION, ids)
    if item is not None and item.retired_at is not None:
        raise not_found(product_id)
    levels = (await conn.execute(_LOCK_LEVELS, {"pid": product_id})).all() if item is not None else []
    now = utcnow()
    reserved = (await conn.execute(_RESERVED_OF, {"pids": [product_id], "now": now})).all()
    return Locked(
        product_id=product_id,
        exists=item is not None,
        quantity=item.quantity if item is not None else 0,
        updated_at=item.updated_at if item is not None else None,
        on_hand={row.location_id: row.on_hand for row in levels},
        reorder_points={row.location_id: row.reorder_point for row in levels},
        reserved={row.location_id: int(row[2]) for row in reserved},
        now=now,
    )


async def require_location(conn: AsyncConnection, locked: Locked, location_id: str) -> None:
    """NOT_FOUND unless the location exists. A product's stock row there proves it (a location
    is deleted with its rows); otherwise the location's row is read, and the row a write then
    inserts is held to it by its foreign key, should a delete commit in between."""
    if location_id in locked.on_hand:
        return
    if (await conn.execute(LOCATION_EXISTS, {"loc": location_id})).first() is None:
        raise location_not_found(location_id)


async def store_level(conn: AsyncConnection, locked: Locked, location_id: str, on_hand: int) -> None:
    """Sets the product's stock at the location to `on_hand`, and its total to match."""
    delta = on_hand - locked.on_hand.get(location_id, 0)
    total = locked.quantity + delta
    if total > MAX_STOCK:
        raise InvalidArgument(
            f"the product's stock would be {total}, above its maximum of {MAX_STOCK}",
            field="quantity",
            reason="INVALID_QUANTITY",
        )
    state = {"quantity": total, "updated_at": locked.now}
    if not locked.exists:  # its first movement; a concurrent first one loses on the key, and retries
        await conn.execute(_NEW_BALANCE, {"product_id": locked.product_id, **state})
        locked.exists = True
    else:
        await conn.execute(_SET_BALANCE, {"pid": locked.product_id, **state})
    level = {"on_hand": on_hand, "updated_at": locked.now}
    if location_id in locked.on_hand:
        await conn.execute(_SET_LEVEL, {"pid": locked.product_id, "loc": location_id, **level})
    else:
        await conn.execute(_NEW_LEVEL, {"product_id": locked.product_id, "location_id": location_id, **level})
    locked.on_hand[location_id] = on_hand
    locked.quantity = total
    locked.touched.add(location_id)


async def store_reorder_point(
    conn: AsyncConnection, locked: Locked, location_id: str, reorder_point: int | None
) -> None:
    """Sets the product's reorder point at the location (None leaves it), making its item and
    stock rows if it never moved there. Neither its stock nor the stock feed's version change."""
    if reorder_point is None or locked.reorder_points.get(location_id, 0) == reorder_point:
        return  # unchanged, or 0 (none) where the product has no row
    if not locked.exists:  # a concurrent first movement loses on the key, or this one does: retried
        await conn.execute(
            _NEW_BALANCE, {"product_id": locked.product_id, "quantity": 0, "unpublished": False}
        )
        locked.exists = True
    if location_id in locked.on_hand:
        await conn.execute(
            _SET_LEVEL, {"pid": locked.product_id, "loc": location_id, "reorder_point": reorder_point}
        )
    else:
        row = {"product_id": locked.product_id, "location_id": location_id, "on_hand": 0}
        await conn.execute(_NEW_LEVEL, {**row, "reorder_point": reorder_point})
        locked.on_hand[location_id] = 0
    locked.reorder_points[location_id] = reorder_point


async def append_movement(
    conn: AsyncConnection,
    actor: Identity,
    change: Change,
    delta: int,
    balance: int,
    now: dt.datetime,
    reorder_point: int,
    **links: str | None,
) -> Movement:
    """Appends the movement that took the balance at the change's location to `balance`, with
    the reorder point there (the feed's low-stock signals are judged on it); `links` are its
    transfer_id or reservation_id."""
    return await conn.run_sync(_append_held, actor, change, delta, balance, now, reorder_point, **links)


# Awaited before a write that changed a product's total answers (`StockFeed.reported`).
Reported = Callable[[str], Awaitable[None]]


class Inventory:
    def __init__(
        self, *, db: Database, products: ProductCheck, changed: Callable[[], None], reported: Reported
    ) -> None:
        """`changed` is called after each committed change of a balance (the stock feed's and the
        sequencer's wake); `reported(product_id)` is awaited before answering a movement that
        changed the product's total (or a replay of one), so that the caller's next product read
        shows it: it returns once products holds it, or after its bound (`StockFeed.reported`).
        A transfer leaves the total as it was, so it does not wait."""
        self._db = db
        self._products = products
        self._changed = changed
        self._reported = reported

    async def record(
        self,
        *,
        product_id: str,
        kind: str,
        quantity: int,
        reason: str,
        reference: str,
        request_id: str,
        location_id: str = "",
    ) -> Recorded:
        """An entry (IN) or exit (OUT) of `quantity` units at a location (DEFAULT if none)."""
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
            location_id=location_id,
        )
        return await self._apply(change)

    async def set_stock(
        self,
        *,
        product_id: str,
        quantity: int | None,
        reorder_point: int | None,
        reason: str,
        request_id: str,
        location_id: str = "",
    ) -> Recorded:
        """Sets the stock at a location (DEFAULT if none) to a counted `quantity`, recording the
        difference as an ADJUSTMENT, never below what active reservations hold there; and its
        reorder point there, in the same transaction. Either may be None (left as it is), not
        both. A reorder point alone records no movement and keeps no request_id: setting it
        again sets the same."""
        require_verified_email()
        problems = Violations()
        if quantity is None and reorder_point is None:
            for name in ("quantity", "reorder_point"):
                problems.add(name, "quantity or reorder_point is required", "NOTHING_TO_SET")
        change = _checked_change(
            problems,
            product_id=product_id,
            kind=REORDER_POINT if quantity is None else ADJUSTMENT,
            units=quantity or 0,
            reason=reason,
            reference="",
            request_id=request_id,
            location_id=location_id,
            reorder_point=reorder_point,
        )
        return await self._apply(change)

    async def transfer(
        self,
        *,
        product_id: str,
        from_location_id: str,
        to_location_id: str,
        quantity: int,
        reason: str,
        request_id: str,
    ) -> Transferred:
        """Moves `quantity` units between two locations: an OUT and an IN sharing a transfer_id,
        in one transaction, refused when the source has fewer available."""
        require_verified_email()
        problems = Violations()
        with problems.collect():
            require_product_id(product_id)
        for name, value in (("from_location_id", from_location_id), ("to_location_id", to_location_id)):
            if not value:
                problems.add(name, f"{name} is required", "MISSING_LOCATION_ID")
        if from_location_id and from_location_id == to_location_id:
            problems.add(
                "to_location_id", "to_location_id must differ from from_location_id", "SAME_LOCATION"
            )
        check_units(problems, quantity)
        check_reason(problems, reason)
        check_request_id(problems, request_id)
        problems.check()
        body = fingerprint("TRANSFER", product_id, from_location_id, to_location_id, quantity, reason)
        outgoing = Change(product_id, OUT, quantity, reason, "", request_id or None, body, from_location_id)
        incoming = Change(product_id, IN, quantity, reason, "", None, body, to_location_id)
        actor = current_identity()
        for attempt in range(ATTEMPTS):
            if outgoing.request_id and (replay := await self._replay_transfer(actor, outgoing)) is not None:
                return replay
            if attempt == 0:
                await self._products.confirm(product_id)
            try:
                async with self._db.write_connection() as conn:
                    transferred = await self._write_transfer(conn, actor, outgoing, incoming)
                self._changed()
                MOVEMENTS_WRITTEN[OUT].inc()
                MOVEMENTS_WRITTEN[IN].inc()
                return transferred
            except RETRYABLE:
                if attempt == ATTEMPTS - 1:
                    raise
                await back_off(attempt)
        raise AssertionError("unreachable")

    async def get(self, product_id: str) -> Stock:
        require_product_id(product_id)
        await self._products.confirm(product_id)
        return await self._current(product_id, refuse_retired=True)

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

    async def list_items(
        self, *, page_size: int, page_token: str, location_id: str = "", low_stock: bool = False
    ) -> tuple[list[Stock], str]:
        """A page of the items of products that moved (at `location_id`, if given, with that
        location's stock only), by product id; with `low_stock`, only those low somewhere (at
        `location_id`, if given)."""
        # A page token is good for the filters it was made with; those of before locations and
        # of before low_stock stay good.
        listed = ("low-items" if low_stock else "items") + (f":{location_id}" if location_id else "")
        size, after = paging.page_request(page_size, page_token, query=listed)
        query = _LISTINGS[bool(location_id), low_stock, after is not None]
        values = {
            "loc": location_id,
            "size": size + 1,
            "after": None if after is None else _position(after, str),
            "now": utcnow(),
        }
        if location_id and not await self._db.fetch(LOCATION_EXISTS, {"loc": location_id}):
            raise location_not_found(location_id)
        items = await self._db.fetch(query, values)
        token = paging.encode_token([items[size - 1].product_id], query=listed) if len(items) > size else ""
        return _with_levels(items[:size], only=location_id), token

    async def movements(
        self, *, product_id: str, page_size: int, page_token: str, only: LedgerFilter
    ) -> Ledger:
        """A page of the product's ledger, newest first, of the movements `only` keeps. A deleted
        product's ledger stays readable to staff and admins, for audit, marked retired; viewers
        are told it does not exist, as they are by every other read."""
        problems = Violations()
        with problems.collect():
            require_product_id(product_id)
        only.check(problems)
        listed = only.query_key(product_id)
        with problems.collect():
            size, after = paging.page_request(page_size, page_token, query=listed)
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
            .where(Movement.product_id == product_id, *only.conditions())
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
            if (
                only.location_id
                and (await session.execute(LOCATION_EXISTS, {"loc": only.location_id})).first() is None
            ):
                raise location_not_found(only.location_id, field="location_id")
            # Read first, so the page holds every movement placed up to it: the position after
            # that place's events is where a feed that completes the page starts.
            last_place = (await session.execute(LAST_PLACE)).scalar_one()
            rows = list(await session.scalars(query))
        token = paging.encode_token([rows[size - 1].id], query=listed) if len(rows) > size else ""
        return Ledger(rows[:size], token, retired, 2 * last_place + 1)

    async def retire(self, product_id: str) -> None:
        """The product was deleted: take its item out of reads at every location, release its
        active reservations, refuse new movements, keep the ledger. Only the products service's
        relay calls this (the method's access rule)."""
        require_product_id(product_id)
        for attempt in range(ATTEMPTS):
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
                    await session.execute(_RELEASE_ALL, {"pid": product_id, "now": utcnow()})
                self._products.forget(product_id)
                return
            except RETRYABLE:
                if attempt == ATTEMPTS - 1:
                    raise
                await back_off(attempt)

    async def _apply(self, change: Change) -> Recorded:
        """Applies `change` under the stock rule, in one transaction that holds the product's
        locks (`lock_product`), run again if it loses a race on a key. On PostgreSQL an IN and a
        count first try one statement of their own (`_move_in_alone`, `_count_alone`), and on
        SQLite two conditional updates in a transaction run in one step (`_move_in_held`,
        `_count_held`); each leaves the locked path to decide, in a transaction of its own,
        when it changed nothing."""
        actor = current_identity()
        for attempt in range(ATTEMPTS):
            if change.request_id and (replay := await self._replay(actor, change)) is not None:
                if replay.movement is not None:  # committed, perhaps by a call that ended unreported
                    await self._reported(change.product_id)
                return replay
            if attempt == 0:
                await self._products.confirm(change.product_id)
            try:
                recorded = None
                if self._db.autocommits:
                    if change.kind == IN:
                        recorded = await self._move_in_alone(actor, change)
                    elif change.counts_only:
                        recorded = await self._count_alone(actor, change)
                elif self._db.is_sqlite:
                    if change.kind == IN:
                        recorded = await self._db.write_steps(lambda conn: _move_in_held(conn, actor, change))
                    elif change.counts_only:
                        recorded = await self._db.write_steps(lambda conn: _count_held(conn, actor, change))
                if recorded is None:
                    async with self._db.write_connection() as conn:
                        recorded = await self._write(conn, actor, change)
                if recorded.movement is not None:  # a reorder point alone changes no balance
                    self._changed()
                    MOVEMENTS_WRITTEN[change.kind].inc()
                    await self._reported(change.product_id)
                return recorded
            except RETRYABLE:
                # Another transaction created this item or row, or stored this request_id, first.
                if attempt == ATTEMPTS - 1:
                    raise
                await back_off(attempt)
        raise AssertionError("unreachable")

    async def _write(self, conn: AsyncConnection, actor: Identity, change: Change) -> Recorded:
        """Writes the reorder point, the balances and the movement in `conn`'s transaction, under the
        product's locks."""
        locked = await lock_product(conn, change.product_id)
        location = change.location_id
        await require_location(conn, locked, location)
        await store_reorder_point(conn, locked, location, change.reorder_point)
        if change.kind == REORDER_POINT:
            return Recorded(None, locked.stock())
        balance, reserved = locked.on_hand.get(location, 0), locked.reserved.get(location, 0)
        if change.kind == ADJUSTMENT and change.units < reserved:
            raise FailedPrecondition(
                f"cannot count {change.units}: active reservations hold {reserved} here",
                reason="BELOW_RESERVED",
                metadata={"reserved": str(reserved), "requested": str(change.units)},
            )
        delta = change.delta_from(balance)
        moved_to = next_balance(balance, delta, reserved=reserved)
        await store_level(conn, locked, location, moved_to)
        point = locked.reorder_points.get(location, 0)
        movement = await append_movement(conn, actor, change, delta, moved_to, locked.now, point)
        return Recorded(movement, locked.stock())

    async def _move_in_alone(self, actor: Identity, change: Change) -> Recorded | None:
        """An IN as one statement without BEGIN (`_MOVE_IN_ALONE`), answered as the locked path
        would; None if it changed nothing (a missing or retired item, a balance it would take
        above MAX_STOCK, an item another writer changed while this waited for its lock, no stock
        row at the location yet), for the locked path to decide."""
        now, delta = utcnow(), change.units
        moved = {"delta": delta, "highest": MAX_STOCK - delta}
        row = await self._write_alone(_MOVE_IN_ALONE, actor, change, now, moved)
        if row is None:
            return None
        values = _movement_values(actor, change, delta, row.balance_after, now, row.reorder_point)
        return _recorded(Movement(id=row.id, **values), row.reorder_point, row.quantity, row)

    async def _count_alone(self, actor: Identity, change: Change) -> Recorded | None:
        """A count as one statement without BEGIN (`_COUNT_ALONE`), answered as the locked path
        would; None if it changed nothing (a missing or retired item, no stock row at the
        location yet, a count below what reservations hold there, a total above MAX_STOCK, an
        item another writer changed while this waited for its lock), for the locked path to
        decide."""
        now, counted = utcnow(), change.units
        row = await self._write_alone(
            _COUNT_ALONE, actor, change, now, {"counted": counted, "highest": MAX_STOCK - counted}
        )
        if row is None:
            return None
        values = _movement_values(actor, change, row.delta, row.balance_after, now, row.reorder_point)
        return _recorded(Movement(id=row.id, **values), row.reorder_point, row.quantity, row)

    async def _write_alone(
        self, statement: Select[Any], actor: Identity, change: Change, now: dt.datetime, moved: dict[str, int]
    ) -> Row[Any] | None:
        """The one row of `_MOVE_IN_ALONE` or `_COUNT_ALONE`, run alone for `change` with the
        figures it moves by (`moved`); None if it wrote nothing."""
        try:
            rows = await self._db.write_alone(
                statement,
                {
                    "pid": change.product_id,
                    "loc": change.location_id,
                    "now": now,
                    "kind": change.kind,
                    "why": change.reason,
                    "ref": change.reference,
                    "actor_id": actor.subject,
                    "actor_email": actor.email,
                    "key": change.request_id,
                    "fingerprint": change.fingerprint if change.request_id else None,
                    **moved,
                },
            )
        except IntegrityError as error:
            if sqlstate(error) == _NOT_NULL_VIOLATION:  # no stock row there: nothing was written
                return None
            raise  # a duplicate request_id: retried, and replayed
        return rows[0] if rows else None

    async def _write_transfer(
        self, conn: AsyncConnection, actor: Identity, outgoing: Change, incoming: Change
    ) -> Transferred:
        locked = await lock_product(conn, outgoing.product_id)
        source, target = outgoing.location_id, incoming.location_id
        for location in (source, target):
            await require_location(conn, locked, location)
        units = outgoing.units
        left = next_balance(locked.on_hand.get(source, 0), -units, reserved=locked.reserved.get(source, 0))
        arrived = next_balance(locked.on_hand.get(target, 0), units)
        await store_level(conn, locked, source, left)
        await store_level(conn, locked, target, arrived)
        transfer_id = str(uuid.uuid4())
        now = locked.now
        points = locked.reorder_points
        out = await append_movement(
            conn, actor, outgoing, -units, left, now, points.get(source, 0), transfer_id=transfer_id
        )
        into = await append_movement(
            conn, actor, incoming, units, arrived, now, points.get(target, 0), transfer_id=transfer_id
        )
        return Transferred(transfer_id, out, into, locked.stock())

    async def _replay(self, actor: Identity, change: Change) -> Recorded | None:
        """The first result of a request_id already used by this actor, or None if it is new:
        the movement, and the balance it left at its location (reservations not recalled, nor a
        reorder point the request did not set)."""
        first = await self._first_of(actor, change)
        if first is None:
            return None
        level = Level(first.location_id, first.balance_after, 0, change.reorder_point or 0)
        return Recorded(first, Stock(first.product_id, first.balance_after, first.created_at, 0, (level,)))

    async def _replay_transfer(self, actor: Identity, outgoing: Change) -> Transferred | None:
        """The first result of a transfer's request_id, with the product's stock as it is now."""
        first = await self._first_of(actor, outgoing)
        if first is None:
            return None
        async with self._db.session() as session:
            both = list(
                await session.scalars(
                    select(Movement).where(Movement.transfer_id == first.transfer_id).order_by(Movement.id)
                )
            )
        return Transferred(str(first.transfer_id), both[0], both[1], await self._current(first.product_id))

    async def _first_of(self, actor: Identity, change: Change) -> Movement | None:
        """The movement that first used this actor's request_id; ALREADY_EXISTS if it asked for
        something else."""
        async with self._db.session() as session:
            first = await session.scalar(
                select(Movement).where(
                    Movement.actor == actor.subject, Movement.request_id == change.request_id
                )
            )
        if first is not None and first.request_fingerprint != change.fingerprint:
            raise AlreadyExists(
                f"request_id {change.request_id} was already used for a different request",
                field="request_id",
                reason="REQUEST_ID_REUSED",
            )
        return first

    async def _current(self, product_id: str, *, refuse_retired: bool = False) -> Stock:
        """The product's stock now, per location and reservations included, in one statement
        (`_STOCK_OF`); with `refuse_retired`, NOT_FOUND if the product was deleted."""
        found = await self._db.fetch(_STOCK_OF, {"pid": product_id, "now": utcnow()})
        if not found:
            return Stock(product_id, 0, None)
        item = found[0]
        if refuse_retired and item.retired_at is not None:
            raise not_found(product_id)
        reserved = _figures(item.held)
        return Stock(
            product_id, item.quantity, item.updated_at, sum(reserved.values()), _listed(item.levels, reserved)
        )


def _move_in_held(conn: Connection, actor: Identity, change: Change) -> Recorded | None:
    """An IN in a write transaction that holds SQLite's write lock (`_HELD_IN_LEVEL`,
    `_HELD_IN_ITEM`), run in one step (`Database.write_steps`); None, having changed nothing,
    where the locked path must decide."""
    now, delta = utcnow(), change.units
    moved = {"pid": change.product_id, "loc": change.location_id, "delta": delta, "now": now}
    level = conn.execute(_HELD_IN_LEVEL, {**moved, "highest": MAX_STOCK - delta}).first()
    if level is None:
        return None
    item = conn.execute(_HELD_IN_ITEM, moved).one()
    movement = _append_held(conn, actor, change, delta, level.on_hand, now, level.reorder_point)
    return _recorded(movement, level.reorder_point, item.quantity, item)


def _count_held(conn: Connection, actor: Identity, change: Change) -> Recorded | None:
    """A count in a write transaction that holds SQLite's write lock (`_HELD_COUNT_ITEM`,
    `_HELD_COUNT_LEVEL`), run in one step (`Database.write_steps`); None, having changed
    nothing, where the locked path must decide."""
    now, counted = utcnow(), change.units
    count = {"pid": change.product_id, "loc": change.location_id, "counted": counted, "now": now}
    item = conn.execute(_HELD_COUNT_ITEM, {**count, "highest": MAX_STOCK - counted}).first()
    if item is None:
        return None
    level = conn.execute(_HELD_COUNT_LEVEL, count).one()
    movement = _append_held(conn, actor, change, item.delta, level.on_hand, now, level.reorder_point)
    return _recorded(movement, level.reorder_point, item.quantity, item)


def _append_held(
    conn: Connection,
    /,
    actor: Identity,
    change: Change,
    delta: int,
    balance: int,
    now: dt.datetime,
    reorder_point: int,
    **links: str | None,
) -> Movement:
    """`append_movement` on a synchronous connection (a transaction run in one step)."""
    values = _movement_values(actor, change, delta, balance, now, reorder_point) | links
    inserted = conn.execute(_NEW_MOVEMENT, values)
    return Movement(id=cast("Row[Any]", inserted.inserted_primary_key)[0], **values)


def _recorded(movement: Movement, reorder_point: int, quantity: int, others: Row[Any]) -> Recorded:
    """What a fast path answers: its movement, the reorder point at its location, the item's new
    total, and the product's stock at its other locations, their reorder points and its
    reservations, as `others` carries them (`_by_location`)."""
    figures = {**(others.levels or {}), movement.location_id: (movement.balance_after, reorder_point)}
    reserved = _figures(others.held)
    levels = _listed(figures, reserved)
    stock = Stock(movement.product_id, quantity, movement.created_at, sum(reserved.values()), levels)
    return Recorded(movement, stock)


def _movement_values(
    actor: Identity, change: Change, delta: int, balance: int, now: dt.datetime, reorder_point: int
) -> dict[str, Any]:
    return {
        "product_id": change.product_id,
        "location_id": change.location_id,
        "type": change.kind,
        "quantity": delta,
        "balance_after": balance,
        "reason": change.reason,
        "reference": change.reference,
        "actor": actor.subject,
        "actor_email": actor.email,
        "request_id": change.request_id,
        "request_fingerprint": change.fingerprint if change.request_id else None,
        "created_at": now,
        "reorder_point": reorder_point,
    }


def _with_levels(items: Sequence[Row[Any]], *, only: str = "") -> list[Stock]:
    """The items' stock with each location's (`_LEVELS_BY_LOCATION`, read with them), and what
    active reservations hold (`_HOLDS_OF_ITEM`: all locations' in the totals; the locations
    listed only `only`'s, if given)."""
    stocks = []
    for item in items:
        held: dict[str, int] = {}
        if item.holds:
            for location, units in item.holds.values():
                held[location] = held.get(location, 0) + int(units)
        listed = _listed(item.levels, held)
        if only:
            listed = tuple(level for level in listed if level.location_id == only)
        stocks.append(Stock(item.product_id, item.quantity, item.updated_at, sum(held.values()), listed))
    return stocks


def _figures(by_location: dict[str, Any] | None) -> dict[str, int]:
    """A JSON object of figures by location (`_by_location`), NULL where there are none."""
    return {location: int(units) for location, units in (by_location or {}).items()}


def _listed(figures: dict[str, Sequence[Any]] | None, reserved: dict[str, int]) -> tuple[Level, ...]:
    """Each location's level from its [on_hand, reorder_point] (`_figures_of`, NULL where there
    are none) and what reservations hold there."""
    figures = figures or {}
    levels = []
    for location in sorted(figures.keys() | reserved.keys()):
        on_hand, reorder_point = figures.get(location, _NONE_THERE)
        levels.append(Level(location, int(on_hand), reserved.get(location, 0), int(reorder_point)))
    return tuple(levels)


_NONE_THERE = (0, 0)  # [on_hand, reorder_point] where the product has no stock row


def _levels(
    on_hand: dict[str, int], reserved: dict[str, int], reorder_points: dict[str, int]
) -> tuple[Level, ...]:
    return tuple(
        Level(location, on_hand.get(location, 0), reserved.get(location, 0), reorder_points.get(location, 0))
        for location in sorted(on_hand.keys() | reserved.keys())
    )


async def back_off(attempt: int) -> None:
    """A short random pause, so transactions that collided do not collide again in step."""
    await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))


def _position(after: list[Any], kind: type[T]) -> T:
    """The one keyset value of a page token, of the expected type."""
    if len(after) != 1 or type(after[0]) is not kind:
        raise InvalidArgument("page_token is malformed", field="page_token", reason="INVALID_PAGE_TOKEN")
    return after[0]


def _stock(item: Row[Any] | None, product_id: str) -> Stock:
    if item is None:
        return Stock(product_id, 0, None)
    return Stock(item.product_id, item.quantity, item.updated_at, low_elsewhere=bool(item.low_stock))
