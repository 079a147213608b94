"""Gives each committed movement its place in the movement feed (`seq`), in commit order.

A movement's id is taken before its transaction commits, so with several writers a lower id
can commit after a higher one: ids cannot be the feed's order, or a reader that resumed after
id 12 would never see an 11 committed later. Places are given after commit instead, by the
one row of `movement_feed`: a round locks it, reads the movements still without a place, in id
order, numbers them on from the row's last place, and commits. Rounds (of every replica) take
turns on that row, and each reads only what committed before it held the lock, so places are
unique, only ever appended, and visible in their order: whoever sees place n sees every place
below it, which is what lets a cursor resume exactly. A product's movements are written one at
a time under its lock, so its later movement never gets the lower place.

A round also marks each movement that took the stock at its location across that location's
reorder point (LOW_STOCK below it, RESTOCKED back above), with the point as it was; the feed
sends those as signals.

A commit wakes the sequencer, which waits `BATCH_WINDOW` so one round numbers the movements of
many requests; otherwise it looks every `IDLE_POLL` seconds, for movements of a replica that
died before numbering its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from sqlalchemy import Row, and_, bindparam, select, update

from inventory.models import LocationStock, Movement, MovementFeed
from mesh import tracing
from mesh.background import BackgroundLoop
from mesh.db import Database, table_of

BATCH = 500
BATCH_WINDOW = 0.01  # seconds from the first commit to the round that numbers it
IDLE_POLL = 1.0
LOW_STOCK = "LOW_STOCK"
RESTOCKED = "RESTOCKED"

_MOVEMENTS = table_of(Movement)
_LEVELS = table_of(LocationStock)
_FEED = table_of(MovementFeed)
_LOCK_FEED = select(_FEED.c.last_seq).where(_FEED.c.id == 1).with_for_update()
_UNNUMBERED = (
    select(_MOVEMENTS.c.id, _MOVEMENTS.c.quantity, _MOVEMENTS.c.balance_after, _LEVELS.c.reorder_point)
    .select_from(
        _MOVEMENTS.outerjoin(
            _LEVELS,
            and_(
                _LEVELS.c.product_id == _MOVEMENTS.c.product_id,
                _LEVELS.c.location_id == _MOVEMENTS.c.location_id,
            ),
        )
    )
    .where(_MOVEMENTS.c.seq.is_(None))
    .order_by(_MOVEMENTS.c.id)
    .limit(BATCH)
)
_NUMBER = (
    update(_MOVEMENTS)
    .where(_MOVEMENTS.c.id == bindparam("movement"))
    .values(seq=bindparam("place"), signal=bindparam("crossed"), reorder_point=bindparam("point"))
)
_ADVANCE = update(_FEED).where(_FEED.c.id == 1).values(last_seq=bindparam("last"))


def crossing(change: int, balance_after: int, reorder_point: int | None) -> str | None:
    """LOW_STOCK if a change to `balance_after` took the stock from above the reorder point to
    at or below it, RESTOCKED if the other way; None without a point (0 or none) or a crossing."""
    if not reorder_point:
        return None
    before = balance_after - change
    if before > reorder_point >= balance_after:
        return LOW_STOCK
    if before <= reorder_point < balance_after:
        return RESTOCKED
    return None


def _numbered(row: Row[Any, Any, Any, Any], place: int) -> dict[str, Any]:
    """_NUMBER's parameters for an unnumbered row given `place`."""
    signal = crossing(row.quantity, row.balance_after, row.reorder_point)
    return {
        "movement": row.id,
        "place": place,
        "crossed": signal,
        "point": row.reorder_point if signal else None,
    }


class Sequencer(BackgroundLoop):
    def __init__(
        self, db: Database, *, numbered: Callable[[], None], retry_initial: float, retry_max: float
    ) -> None:
        """`numbered` is called after each round that gave places (the feed's watchers read them)."""
        super().__init__("movement-sequencer", retry_initial=retry_initial, retry_max=retry_max)
        self._db = db
        self._numbered = numbered

    async def number(self) -> int:
        """Gives every committed movement without a place its place; returns how many."""
        numbered = 0
        while True:
            with tracing.untraced():
                async with self._db.write_connection() as conn:
                    last = (await conn.execute(_LOCK_FEED)).scalar_one()
                    rows = (await conn.execute(_UNNUMBERED)).all()
                    if rows:
                        await conn.execute(
                            _NUMBER, [_numbered(row, last + n) for n, row in enumerate(rows, 1)]
                        )
                        await conn.execute(_ADVANCE, {"last": last + len(rows)})
            if rows:
                numbered += len(rows)
                self._numbered()
            if len(rows) < BATCH:
                return numbered

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            self._wake.clear()
            try:
                await self.number()
                failures, delay = 0, IDLE_POLL
            except Exception as exc:
                delay = self.failed(failures, "number movements", exc)
                failures += 1
            if failures:
                await asyncio.sleep(delay)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
                    await asyncio.sleep(BATCH_WINDOW)
