"""Locations: the places that hold stock (warehouses, shops), each with a unique code.

The DEFAULT location, made by the migration that brought locations, takes every request that
names none and cannot be deleted. Another location can be deleted only while it holds no
stock and no active reservation of a product that exists: the delete locks the location's
row and then its stock rows, by product, so a movement or reservation there either committed
before (and the delete sees it) or finds the location gone (its stock row, held to the
location by a foreign key, cannot be inserted).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.exc import IntegrityError

from inventory.models import DEFAULT_LOCATION_ID, Item, Location, LocationStock, Reservation
from inventory.stock import location_not_found
from mesh import paging
from mesh.context import require_verified_email
from mesh.db import Database, table_of, utcnow
from mesh.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Violations
from mesh.messages import fields_in_mask

MAX_CODE_CHARS = 32
MAX_NAME_CHARS = 200
EDITABLE_FIELDS = ("code", "name")
_IGNORED_IN_MASK = frozenset({"id", "created_at"})
_CODE = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_CODE_CHARS}}}")

_LOCATIONS = table_of(Location)
_LEVELS = table_of(LocationStock)
_ITEMS = table_of(Item)
_RESERVATIONS = table_of(Reservation)
_LOCK_LOCATION = select(_LOCATIONS.c.id).where(_LOCATIONS.c.id == bindparam("loc")).with_for_update()
_LOCK_STOCK_THERE = (
    select(_LEVELS.c.product_id, _LEVELS.c.on_hand)
    .where(_LEVELS.c.location_id == bindparam("loc"))
    .order_by(_LEVELS.c.product_id)
    .with_for_update()
)
_RETIRED = select(_ITEMS.c.product_id).where(
    _ITEMS.c.product_id.in_(bindparam("pids", expanding=True)), _ITEMS.c.retired_at.is_not(None)
)
_HELD_THERE = select(func.count()).where(
    _RESERVATIONS.c.location_id == bindparam("loc"),
    _RESERVATIONS.c.state == "ACTIVE",
    _RESERVATIONS.c.expires_at > bindparam("now"),
)


@dataclass(frozen=True, slots=True)
class Fields:
    code: str
    name: str


def _check(fields: Fields, only: Sequence[str] = EDITABLE_FIELDS) -> None:
    problems = Violations()
    if "code" in only and not _CODE.fullmatch(fields.code):
        problems.add(
            "code", f"code must be 1 to {MAX_CODE_CHARS} letters, digits or . _ -", "INVALID_LOCATION_CODE"
        )
    if "name" in only and not (fields.name.strip() and len(fields.name) <= MAX_NAME_CHARS):
        problems.add("name", f"name must be 1 to {MAX_NAME_CHARS} characters", "INVALID_LOCATION_NAME")
    problems.check()


def _code_taken(code: str) -> AlreadyExists:
    return AlreadyExists(
        f"a location with code {code} already exists", field="code", reason="LOCATION_CODE_TAKEN"
    )


def _require_id(location_id: str) -> None:
    if not location_id:
        raise InvalidArgument("id is required", field="id", reason="MISSING_LOCATION_ID")


class Locations:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, fields: Fields) -> Location:
        require_verified_email()
        _check(fields)
        location = Location(id=str(uuid.uuid4()), code=fields.code, name=fields.name, created_at=utcnow())
        try:
            async with self._db.transaction() as session:
                session.add(location)
        except IntegrityError:
            raise _code_taken(fields.code) from None
        return location

    async def get(self, location_id: str) -> Location:
        _require_id(location_id)
        async with self._db.session() as session:
            location = await session.get(Location, location_id)
        if location is None:
            raise location_not_found(location_id)
        return location

    async def list(self, *, page_size: int, page_token: str) -> tuple[list[Location], str]:
        """A page of locations by code."""
        size, after = paging.page_request(page_size, page_token, query="locations")
        query = select(Location).order_by(Location.code).limit(size + 1)
        if after is not None:
            if len(after) != 1 or not isinstance(after[0], str):
                raise InvalidArgument(
                    "page_token is malformed", field="page_token", reason="INVALID_PAGE_TOKEN"
                )
            query = query.where(Location.code > after[0])
        async with self._db.session() as session:
            rows = list(await session.scalars(query))
        token = paging.encode_token([rows[size - 1].code], query="locations") if len(rows) > size else ""
        return rows[:size], token

    async def update(self, location_id: str, fields: Fields, *, mask: Sequence[str] | None) -> Location:
        """The location with the fields `mask` names (both without one) set to `fields`'."""
        require_verified_email()
        _require_id(location_id)
        updating = fields_in_mask(
            mask, editable=EDITABLE_FIELDS, ignored=_IGNORED_IN_MASK, resource="location"
        )
        _check(fields, updating)
        try:
            async with self._db.transaction() as session:
                location = await session.get(Location, location_id, with_for_update=True)
                if location is None:
                    raise location_not_found(location_id)
                for name in updating:
                    setattr(location, name, getattr(fields, name))
        except IntegrityError:
            raise _code_taken(fields.code) from None
        return location

    async def delete(self, location_id: str) -> None:
        """Deletes an empty location and its stock rows (all of them 0, or of deleted products)."""
        require_verified_email()
        _require_id(location_id)
        if location_id == DEFAULT_LOCATION_ID:
            raise FailedPrecondition(
                "the DEFAULT location takes every request that names none: it cannot be deleted",
                reason="DEFAULT_LOCATION",
            )
        async with self._db.write_connection() as conn:
            if (await conn.execute(_LOCK_LOCATION, {"loc": location_id})).first() is None:
                raise location_not_found(location_id)
            levels = (await conn.execute(_LOCK_STOCK_THERE, {"loc": location_id})).all()
            stocked = [level.product_id for level in levels if level.on_hand > 0]
            retired = set((await conn.execute(_RETIRED, {"pids": stocked})).scalars()) if stocked else set()
            holding = [pid for pid in stocked if pid not in retired]
            reservations = (await conn.execute(_HELD_THERE, {"loc": location_id, "now": utcnow()})).scalar()
            if holding or reservations:
                raise FailedPrecondition(
                    f"location {location_id} still holds the stock of {len(holding)} products and "
                    f"{reservations} active reservations: move or count them out first",
                    reason="LOCATION_NOT_EMPTY",
                    metadata={"products": str(len(holding)), "reservations": str(reservations)},
                )
            await conn.execute(delete(_LEVELS).where(_LEVELS.c.location_id == location_id))
            await conn.execute(delete(_LOCATIONS).where(_LOCATIONS.c.id == location_id))
