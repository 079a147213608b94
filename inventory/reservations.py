"""Reservations: units of a product promised at a location for a while (a checkout holding
stock while its customer pays), then confirmed into an OUT movement, released, or expired.

An ACTIVE reservation holds its units only until `expires_at`: every availability check
(`inventory.stock.lock_product`) sums the ACTIVE ones still ahead of the clock at the time of
the write, so an expired reservation gives its units back at `expires_at` whether or not the
sweeper (`ReservationSweeper`) has marked it EXPIRED yet; reads show it EXPIRED from then on.

Creating and confirming one take the product's locks, as every movement does, so no two
writers ever promise or take the same units. Releasing one only frees units: a conditional
UPDATE of its row (`state = 'ACTIVE'`) suffices, and a confirmation that got there first wins.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from inventory import stock
from inventory.models import DEFAULT_LOCATION_ID, Movement, Reservation
from inventory.product_check import ProductCheck
from inventory.stock import OUT, Change, lock_product, next_balance
from mesh import paging
from mesh.access import SERVICE
from mesh.background import BackgroundLoop
from mesh.context import current_identity, require_verified_email
from mesh.db import Database, rowcount, table_of, utcnow
from mesh.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Violations
from mesh.tokens import Identity

ACTIVE, CONFIRMED, RELEASED, EXPIRED = "ACTIVE", "CONFIRMED", "RELEASED", "EXPIRED"
STATES = (ACTIVE, CONFIRMED, RELEASED, EXPIRED)
DEFAULT_TTL_SECONDS = 900
MAX_TTL_SECONDS = 7 * 24 * 3600

_RESERVATIONS = table_of(Reservation)
_ID_IS = _RESERVATIONS.c.id == bindparam("rid")
_NEW_RESERVATION = insert(_RESERVATIONS)
_LOCK_RESERVATION = select(_RESERVATIONS).where(_ID_IS).with_for_update()
_MOVEMENTS = table_of(Movement)
_CONFIRMATION = select(_MOVEMENTS).where(_MOVEMENTS.c.reservation_id == bindparam("rid"))
_SETTLE = (
    update(_RESERVATIONS)
    .where(_ID_IS, _RESERVATIONS.c.state == ACTIVE, _RESERVATIONS.c.expires_at > bindparam("now"))
    .values(state=bindparam("to"), updated_at=bindparam("now"))
)
# The sweeper's statement: every ACTIVE reservation past its expiry, marked.
_EXPIRE = (
    update(_RESERVATIONS)
    .where(_RESERVATIONS.c.state == ACTIVE, _RESERVATIONS.c.expires_at <= bindparam("now"))
    .values(state=EXPIRED, updated_at=bindparam("now"))
)


@dataclass(frozen=True, slots=True)
class Held:
    """A reservation as a client sees it: an ACTIVE one past its expiry reads EXPIRED."""

    id: str
    product_id: str
    location_id: str
    quantity: int
    state: str
    expires_at: dt.datetime
    reference: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Confirmed:
    reservation: Held
    movement: Movement


def held(row: Reservation, now: dt.datetime | None = None) -> Held:
    state = row.state
    if state == ACTIVE and row.expires_at <= (now or utcnow()):
        state = EXPIRED
    return Held(
        row.id,
        row.product_id,
        row.location_id,
        row.quantity,
        state,
        row.expires_at,
        row.reference,
        row.created_at,
    )


def _require_writer() -> None:
    """A user must have confirmed their email to change stock; a service (a checkout calling
    with a token from AuthService.IssueServiceToken) has no email to confirm."""
    if SERVICE not in current_identity().roles:
        require_verified_email()


def _not_found(reservation_id: str) -> NotFound:
    return NotFound(f"reservation {reservation_id} does not exist", reason="RESERVATION_NOT_FOUND")


def _settled(reservation: Held, wanted: str) -> FailedPrecondition:
    """The refusal to confirm or release a reservation that is no longer ACTIVE."""
    return FailedPrecondition(
        f"reservation {reservation.id} is {reservation.state.lower()}: it cannot be {wanted}",
        reason=f"RESERVATION_{reservation.state}",
        metadata={"state": reservation.state},
    )


class Reservations:
    def __init__(
        self, *, db: Database, products: ProductCheck, changed: Callable[[], None], reported: stock.Reported
    ) -> None:
        """`changed` is called after a confirmation commits (the stock feed's and the sequencer's
        wake), and `reported` awaited before a confirmation answers, as `Inventory` does after a
        movement: a reservation alone leaves the product's total as it was, its confirmation
        takes the units out."""
        self._db = db
        self._products = products
        self._changed = changed
        self._reported = reported

    async def create(
        self,
        *,
        product_id: str,
        location_id: str,
        quantity: int,
        ttl_seconds: int,
        reference: str,
        request_id: str,
    ) -> Held:
        """Holds `quantity` units at the location (DEFAULT if none) for `ttl_seconds` (900 if 0);
        INSUFFICIENT_STOCK when fewer are available there."""
        _require_writer()
        problems = Violations()
        with problems.collect():
            stock.require_product_id(product_id)
        stock.check_units(problems, quantity)
        if not 0 <= ttl_seconds <= MAX_TTL_SECONDS:
            problems.add(
                "ttl_seconds",
                f"ttl_seconds must be 0 (for {DEFAULT_TTL_SECONDS}) to {MAX_TTL_SECONDS}",
                "INVALID_TTL",
            )
        stock.check_reference(problems, reference)
        stock.check_request_id(problems, request_id)
        problems.check()
        location = location_id or DEFAULT_LOCATION_ID
        ttl = ttl_seconds or DEFAULT_TTL_SECONDS
        body = stock.fingerprint("RESERVE", product_id, location, quantity, ttl, reference)
        actor = current_identity().subject
        for attempt in range(stock.ATTEMPTS):
            if request_id and (first := await self._first_of(actor, request_id, body)) is not None:
                return first
            if attempt == 0:
                await self._products.confirm(product_id)
            try:
                async with self._db.write_connection() as conn:
                    locked = await lock_product(conn, product_id, new_version=True)
                    await stock.require_location(conn, locked, location)
                    next_balance(locked.available(location), -quantity)  # INSUFFICIENT_STOCK
                    values = {
                        "id": str(uuid.uuid4()),
                        "product_id": product_id,
                        "location_id": location,
                        "quantity": quantity,
                        "state": ACTIVE,
                        "expires_at": locked.now + dt.timedelta(seconds=ttl),
                        "reference": reference,
                        "actor": actor,
                        "request_id": request_id or None,
                        "request_fingerprint": body if request_id else None,
                        "created_at": locked.now,
                        "updated_at": locked.now,
                    }
                    await conn.execute(_NEW_RESERVATION, values)
                return held(Reservation(**values), locked.now)
            except stock.RETRYABLE:
                if attempt == stock.ATTEMPTS - 1:
                    raise
                await stock.back_off(attempt)
        raise AssertionError("unreachable")

    async def get(self, reservation_id: str) -> Held:
        return held(await self._row(reservation_id))

    async def list(
        self, *, product_id: str, state: str, page_size: int, page_token: str
    ) -> tuple[list[Held], str]:
        """A page of reservations, newest first, of one product and in one state if given."""
        query_key = f"reservations:{product_id}:{state}"
        size, after = paging.page_request(page_size, page_token, query=query_key)
        now = utcnow()
        query: Select[Any] = (
            select(Reservation).order_by(Reservation.created_at.desc(), Reservation.id.desc()).limit(size + 1)
        )
        if product_id:
            query = query.where(Reservation.product_id == product_id)
        if state == ACTIVE:
            query = query.where(Reservation.state == ACTIVE, Reservation.expires_at > now)
        elif state == EXPIRED:
            query = query.where(
                or_(
                    Reservation.state == EXPIRED,
                    (Reservation.state == ACTIVE) & (Reservation.expires_at <= now),
                )
            )
        elif state:
            query = query.where(Reservation.state == state)
        if after is not None:
            created, last_id = _position(after)
            query = query.where(
                or_(
                    Reservation.created_at < created,
                    (Reservation.created_at == created) & (Reservation.id < last_id),
                )
            )
        async with self._db.session() as session:
            rows = list(await session.scalars(query))
        token = ""
        if len(rows) > size:
            last = rows[size - 1]
            token = paging.encode_token([last.created_at.isoformat(), last.id], query=query_key)
        return [held(row, now) for row in rows[:size]], token

    async def confirm(self, reservation_id: str) -> Confirmed:
        """Turns an ACTIVE reservation into an OUT movement that references it, atomically; a
        CONFIRMED one answers again with its movement."""
        _require_writer()
        product_id = (await self._row(reservation_id)).product_id
        actor = current_identity()
        for attempt in range(stock.ATTEMPTS):
            try:
                async with self._db.write_connection() as conn:
                    confirmed, moved = await self._confirm(conn, actor, product_id, reservation_id)
                if moved:
                    self._changed()
                    stock.MOVEMENTS_WRITTEN[OUT].inc()
                await self._reported(product_id)  # this confirmation's OUT, or the first one's
                return confirmed
            except stock.RETRYABLE:
                if attempt == stock.ATTEMPTS - 1:
                    raise
                await stock.back_off(attempt)
        raise AssertionError("unreachable")

    async def _confirm(
        self, conn: AsyncConnection, actor: Identity, product_id: str, reservation_id: str
    ) -> tuple[Confirmed, bool]:
        locked = await lock_product(conn, product_id)
        row = (await conn.execute(_LOCK_RESERVATION, {"rid": reservation_id})).first()
        if row is None:
            raise _not_found(reservation_id)
        reservation = held(Reservation(**row._mapping), locked.now)
        if reservation.state == CONFIRMED:
            taken = (await conn.execute(_CONFIRMATION, {"rid": reservation_id})).one()
            return Confirmed(reservation, Movement(**taken._mapping)), False
        if reservation.state != ACTIVE:
            raise _settled(reservation, "confirmed")
        location, units = reservation.location_id, reservation.quantity
        # Its own units are among those reserved there: the exit may take them.
        reserved = locked.reserved.get(location, 0) - units
        left = next_balance(locked.on_hand.get(location, 0), -units, reserved=reserved)
        settled = await conn.execute(_SETTLE, {"rid": reservation_id, "now": locked.now, "to": CONFIRMED})
        if rowcount(settled) != 1:  # it cannot have changed under the product's lock
            raise AssertionError(f"reservation {reservation_id} changed under its product's lock")
        await stock.store_level(conn, locked, location, left)
        locked.reserved[location] = reserved
        change = Change(
            product_id=product_id,
            kind=OUT,
            units=units,
            reason="reservation confirmed",
            reference=reservation.reference,
            request_id=None,
            fingerprint="",
            location_id=location,
        )
        point = locked.reorder_points.get(location, 0)
        movement = await stock.append_movement(
            conn, actor, change, -units, left, locked.now, point, reservation_id=reservation_id
        )
        return Confirmed(_with_state(reservation, CONFIRMED), movement), True

    async def release(self, reservation_id: str) -> Held:
        """Frees an ACTIVE reservation's units; a RELEASED or EXPIRED one answers as it is."""
        _require_writer()
        now = utcnow()
        async with self._db.write_connection() as conn:
            released = await conn.execute(_SETTLE, {"rid": reservation_id, "now": now, "to": RELEASED})
        reservation = held(await self._row(reservation_id), now)
        if rowcount(released) == 1:
            return _with_state(reservation, RELEASED)
        if reservation.state == CONFIRMED:
            raise _settled(reservation, "released")
        return reservation

    async def _row(self, reservation_id: str) -> Reservation:
        if not reservation_id:
            raise InvalidArgument("id is required", field="id", reason="MISSING_RESERVATION_ID")
        async with self._db.session() as session:
            row = await session.get(Reservation, reservation_id)
        if row is None:
            raise _not_found(reservation_id)
        return row

    async def _first_of(self, actor: str, request_id: str, body: str) -> Held | None:
        async with self._db.session() as session:
            first = await session.scalar(
                select(Reservation).where(Reservation.actor == actor, Reservation.request_id == request_id)
            )
        if first is None:
            return None
        if first.request_fingerprint != body:
            raise AlreadyExists(
                f"request_id {request_id} was already used for a different request",
                field="request_id",
                reason="REQUEST_ID_REUSED",
            )
        return held(first)


def _with_state(reservation: Held, state: str) -> Held:
    return Held(
        reservation.id,
        reservation.product_id,
        reservation.location_id,
        reservation.quantity,
        state,
        reservation.expires_at,
        reservation.reference,
        reservation.created_at,
    )


def _position(after: list[Any]) -> tuple[dt.datetime, str]:
    try:
        created, last_id = after
        if isinstance(created, str) and isinstance(last_id, str):
            return dt.datetime.fromisoformat(created), last_id
    except ValueError:
        pass
    raise InvalidArgument("page_token is malformed", field="page_token", reason="INVALID_PAGE_TOKEN")


class ReservationSweeper(BackgroundLoop):
    """Marks ACTIVE reservations past their expiry EXPIRED, every `interval` seconds. Only
    reads and lists wait for it: availability stops counting a reservation at `expires_at`."""

    def __init__(self, db: Database, *, interval: float, retry_initial: float, retry_max: float) -> None:
        super().__init__("reservation-sweeper", retry_initial=retry_initial, retry_max=retry_max)
        self._db = db
        self._interval = interval

    async def sweep(self) -> int:
        """Marks every expired reservation; returns how many."""
        async with self._db.write_connection() as conn:
            return rowcount(await conn.execute(_EXPIRE, {"now": utcnow()}))

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                await self.sweep()
                failures, delay = 0, self._interval
            except Exception as exc:  # a deadlock with a retirement, a database away: next round
                delay = self.failed(failures, "mark expired reservations", exc)
                failures += 1
            await asyncio.sleep(delay)
