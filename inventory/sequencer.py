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

A commit wakes the sequencer, which waits `BATCH_WINDOW` so one round numbers the movements of
many requests; otherwise it looks every `IDLE_POLL` seconds, for movements of a replica that
died before numbering its own.

While streams follow the feed, a round reads the whole rows it numbers, not only their ids, and
hands them to the process's feed reader with their places: the reader then sends them without
reading them back, which was most of what a follower cost per movement.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.engine import Connection

from inventory.models import Movement, MovementFeed
from mesh import tracing
from mesh.background import BackgroundLoop
from mesh.db import Database, table_of
from mesh.direct import prepared

BATCH = 500
BATCH_WINDOW = 0.01  # seconds from the first commit to the round that numbers it
IDLE_POLL = 1.0

_MOVEMENTS = table_of(Movement)
_FEED = table_of(MovementFeed)
# The last place given: whoever reads n sees every movement placed up to n, and every movement
# it does not see gets a later place.
LAST_PLACE = select(_FEED.c.last_seq).where(_FEED.c.id == 1)
_LOCK_FEED = LAST_PLACE.with_for_update()
_UNNUMBERED = select(_MOVEMENTS.c.id).where(_MOVEMENTS.c.seq.is_(None)).order_by(_MOVEMENTS.c.id).limit(BATCH)
_UNNUMBERED_ROWS = select(_MOVEMENTS).where(_MOVEMENTS.c.seq.is_(None)).order_by(_MOVEMENTS.c.id).limit(BATCH)
_ANY_UNNUMBERED = prepared(select(_MOVEMENTS.c.id).where(_MOVEMENTS.c.seq.is_(None)).limit(1))
_NUMBER = update(_MOVEMENTS).where(_MOVEMENTS.c.id == bindparam("movement")).values(seq=bindparam("place"))
_ADVANCE = update(_FEED).where(_FEED.c.id == 1).values(last_seq=bindparam("last"))


# After a round's commit: the places it gave, and the rows it numbered (in place order, their
# `seq` not yet set) if `rows_wanted` asked for them, else None.
Numbered = Callable[[range, Sequence[Row[Any]] | None], None]


class Sequencer(BackgroundLoop):
    def __init__(
        self,
        db: Database,
        *,
        numbered: Numbered,
        rows_wanted: Callable[[], bool],
        retry_initial: float,
        retry_max: float,
    ) -> None:
        """`numbered` is called after each round that gave places (the feed's reader sends them);
        `rows_wanted`, before each, says whether it wants the rows or only to know."""
        super().__init__("movement-sequencer", retry_initial=retry_initial, retry_max=retry_max)
        self._db = db
        self._numbered = numbered
        self._rows_wanted = rows_wanted

    async def number(self) -> int:
        """Gives every committed movement without a place its place; returns how many."""
        numbered = 0
        while True:
            with tracing.untraced():
                # A look without the lock first: the idle polls then take no write lock.
                if not await self._db.fetch(_ANY_UNNUMBERED):
                    return numbered
                round_ = functools.partial(_round, rows=self._rows_wanted())
                last, ids, rows = await self._db.write_steps(round_)
            if ids:
                numbered += len(ids)
                self._numbered(range(last + 1, last + len(ids) + 1), rows)
            if len(ids) < BATCH:
                return numbered

    async def _run(self) -> None:
        await self._rounds(
            self.number, could_not="number movements", idle_poll=IDLE_POLL, batch_window=BATCH_WINDOW
        )


def _round(conn: Connection, *, rows: bool) -> tuple[int, Sequence[int], Sequence[Row[Any]] | None]:
    """One round, in one step (`Database.write_steps`): the last place given before it, the ids
    it numbered, and their rows if `rows`."""
    last: int = conn.execute(_LOCK_FEED).scalar_one()
    numbered: Sequence[Row[Any]] | None = None
    if rows:
        numbered = conn.execute(_UNNUMBERED_ROWS).all()
        ids: Sequence[int] = [row.id for row in numbered]
    else:
        ids = conn.execute(_UNNUMBERED).scalars().all()
    if ids:
        conn.execute(_NUMBER, [{"movement": m, "place": last + n} for n, m in enumerate(ids, 1)])
        conn.execute(_ADVANCE, {"last": last + len(ids)})
    return last, ids, numbered
