"""WatchMovements: the movement feed, followed from a cursor, first from the database, then live.

Each movement has a place in the feed (`seq`, given in commit order by `inventory.sequencer`),
and each event a position: the movement's is 2 * seq, the low-stock signal it caused, if any,
2 * seq + 1. A cursor is the position of the last event a client processed, so resuming from
one sends exactly the events after it, whichever replica sent it.

A stream first reads the events after its cursor from the database, a page at a time (a slow
client holds back the reads, not memory). Once it has read them all, it joins the process's
one reader of the feed (`MovementWatch`), which hands each new row to every stream it
concerns, holding a bounded number for each. The rows this process's sequencer numbered come
with their places from it, unread; the reader reads the others (another replica's, found by
polling, or any its sequencer did not hand over) once, in place order. Joining takes the
reader's position; the stream reads from the database what lies between its own and that one,
then sends the rows held for it, skipping any it already sent. A stream whose rows fill its
limit ends with RESOURCE_EXHAUSTED (SLOW_CONSUMER), and its client resumes from its cursor.

A stream sends what is ready at once together (one gRPC message): a page it read, or the rows
held for it, up to a page; each event keeps its own position. Most of a stream's cost is per
message, not per event, so a stream that sent less than the linger ago waits out the rest
before its next message: an idle stream's event goes at once, a busy one's messages go at most
once per linger (sooner when its rows half fill its buffer), each with everything that came
meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Row, Select, bindparam, select

from inventory.models import Movement
from inventory.sequencer import LAST_PLACE
from inventory.stock import LOCATION_EXISTS, location_not_found
from mesh import tracing
from mesh.db import Database, table_of
from mesh.direct import prepared
from mesh.errors import InvalidArgument, ResourceExhausted
from mesh.metrics import WATCH_STREAMS

log = logging.getLogger(__name__)

PAGE = 500  # rows per read of the database
POLL = 0.1  # seconds between reads of the feed for another replica's movements, while followed
IDLE_POLL = 5.0  # the same while nobody follows: only the feed's position then
MOVEMENT = "movement"
HEARTBEAT = "heartbeat"
LOW_STOCK = "low_stock"
RESTOCKED = "restocked"
MAX_CURSOR_CHARS = 40  # a position is below 2**64: 20 digits, with room to change the encoding
HANDED_OVER_ROUNDS = 64  # the sequencer's rounds kept for the reader; past that, it reads them back

_MOVEMENTS = table_of(Movement)
_NEWER = prepared(
    select(_MOVEMENTS).where(_MOVEMENTS.c.seq > bindparam("after")).order_by(_MOVEMENTS.c.seq).limit(PAGE)
)


def _between(*, product: bool, location: bool) -> Select[Any]:
    """A page of a stream's rows: places `first` to `last`, of its product and location."""
    query = (
        select(_MOVEMENTS)
        .where(_MOVEMENTS.c.seq >= bindparam("first"), _MOVEMENTS.c.seq <= bindparam("last"))
        .order_by(_MOVEMENTS.c.seq)
        .limit(PAGE)
    )
    if product:
        query = query.where(_MOVEMENTS.c.product_id == bindparam("pid"))
    if location:
        query = query.where(_MOVEMENTS.c.location_id == bindparam("loc"))
    return query


_BETWEEN = {(p, loc): _between(product=p, location=loc) for p in (False, True) for loc in (False, True)}


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """An event of a stream: a movement (`row`), the signal it caused (kind LOW_STOCK or
    RESTOCKED, the same `row`), or a heartbeat (no row)."""

    position: int
    kind: str
    row: Row[Any] | None = None


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


def events_of(row: Row[Any], place: int) -> Iterator[FeedEvent]:
    """The events of the movement at `place`: itself, and the signal it caused, judged on the
    reorder point its location had when it was recorded (which the movement keeps)."""
    yield FeedEvent(2 * place, MOVEMENT, row)
    if signal := crossing(row.quantity, row.balance_after, row.reorder_point):
        yield FeedEvent(2 * place + 1, signal, row)


def parse_cursor(cursor: str) -> int | None:
    """The position a cursor names; None for an empty one (start after the newest event)."""
    if not cursor:
        return None
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidArgument(
            "after must be a cursor from this feed (digits only)", field="after", reason="INVALID_CURSOR"
        )
    return int(cursor)


M = TypeVar("M")  # an event as the stream sends it (`render`'s answer)
Sent = tuple[int, M]  # an event's position, and the event as sent


def _unsent(rows: Iterable[Iterable[Sent[M]]], after: int) -> tuple[list[M], int]:
    """The events of `rows` past position `after`, and the position of the last one (else `after`)."""
    events = []
    for row in rows:
        for position, event in row:
            if position > after:
                after = position
                events.append(event)
    return events, after


def _end(waiting: asyncio.Future[None] | None) -> None:
    if waiting is not None and not waiting.done():
        waiting.set_result(None)


@dataclass(eq=False)
class _Follower(Generic[M]):
    product_id: str
    location_id: str
    limit: int  # the most rows held for the stream
    rows: list[tuple[Sent[M], ...]] = field(default_factory=list)  # each row's events, rendered once
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # rows came since `rows` emptied
    overflowed: bool = False
    lingering: asyncio.Future[None] | None = None  # while the stream lingers: done ends it

    def wants(self, row: Row[Any]) -> bool:
        return (not self.product_id or row.product_id == self.product_id) and (
            not self.location_id or row.location_id == self.location_id
        )

    def hold(self, rows: list[tuple[Sent[M], ...]]) -> bool:
        """Holds a batch of rows for the stream; False if they overflow its limit (it keeps
        what fits, so its client resumes right after)."""
        room = self.limit - len(self.rows)
        self.rows += rows[:room]
        self.arrived.set()
        self.overflowed = len(rows) > room
        if 2 * len(self.rows) >= self.limit:  # half full: a lingering stream sends now
            _end(self.lingering)
        return not self.overflowed

    async def linger(self, seconds: float) -> None:
        """Waits `seconds`, or until the rows held fill half the limit: a stream that lingers
        while a burst comes sends it rather than overflow."""
        loop = asyncio.get_running_loop()
        self.lingering = loop.create_future()
        timer = loop.call_later(seconds, _end, self.lingering)
        try:
            await self.lingering
        finally:
            timer.cancel()
            self.lingering = None

    def take(self) -> list[tuple[Sent[M], ...]]:
        """The rows held, a page at most."""
        taken, self.rows = self.rows[:PAGE], self.rows[PAGE:]
        return taken


class MovementWatch(Generic[M]):
    def __init__(
        self,
        db: Database,
        *,
        render: Callable[[FeedEvent], M],
        max_streams: int,
        buffer_events: int,
        heartbeat_seconds: float,
        linger_seconds: float,
    ) -> None:
        """`render` makes an event what a stream sends (the servicer's message)."""
        self._db = db
        self._render = render
        self._max_streams = max_streams
        self._buffer = buffer_events
        self._heartbeat = heartbeat_seconds
        self._linger = linger_seconds
        self._followers: set[_Follower[M]] = set()
        self._position = 0  # every place up to this one was handed to the followers of its time
        self._wake = asyncio.Event()
        self._handed_over: deque[tuple[int, Sequence[Row[Any]]]] = deque()  # the sequencer's rounds
        self._read_by = 0.0  # the loop's time by which to read the database for another replica's rows
        self._task: asyncio.Task[None] | None = None
        self._streams = 0

    async def start(self) -> None:
        self._position = await self._last()
        self._task = asyncio.create_task(self._run(), name="movement-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def followed(self) -> bool:
        return bool(self._followers)

    def numbered(self, places: range, rows: Sequence[Row[Any]] | None) -> None:
        """This process's sequencer gave `places`, to `rows` if it read them: hand them out now.
        With no follower, no one is owed them: the position moves past them, unread."""
        if not self._followers:
            self._position = max(self._position, places[-1])
            return
        if rows is None:  # read before the first follower came: read them back now
            self._read_by = 0.0
        else:
            if len(self._handed_over) >= HANDED_OVER_ROUNDS:  # the reader lags: it reads them back
                self._handed_over.clear()
            self._handed_over.append((places.start, rows))
        self._wake.set()

    async def follow(
        self, cursor: str, *, product_id: str = "", location_id: str = ""
    ) -> AsyncGenerator[list[M], None]:
        """The events after `cursor` (see `parse_cursor`) of the product and location, if named,
        then heartbeats and live events until the caller stops reading; in lists of those
        ready at once (the events of at most PAGE movements), a heartbeat alone."""
        if self._streams >= self._max_streams:
            raise ResourceExhausted(
                f"this server follows {self._max_streams} streams already; try again or another replica",
                reason="TOO_MANY_WATCHERS",
            )
        self._streams += 1
        WATCH_STREAMS.inc()
        try:
            async for events in self._follow(cursor, product_id, location_id):
                yield events
        finally:
            self._streams -= 1
            WATCH_STREAMS.dec()

    async def _follow(self, cursor: str, product_id: str, location_id: str) -> AsyncIterator[list[M]]:
        after = parse_cursor(cursor)
        if location_id and not await self._db.fetch(LOCATION_EXISTS, {"loc": location_id}):
            raise location_not_found(location_id)
        end = 2 * await self._last() + 1  # the position after every event there is
        if after is None:
            after = end
        elif after > end:
            raise InvalidArgument(
                f"after {after} is past the end of this feed ({end})", field="after", reason="INVALID_CURSOR"
            )
        read = _Reader(self._db, self._render, product_id, location_id, after)
        async for page in read.upto(None):  # the history, however long
            yield page
        follower: _Follower[M] = _Follower(product_id, location_id, self._buffer)
        self._followers.add(follower)
        joined_at = self._position  # rows above it are held for it
        try:
            async for page in read.upto(joined_at):
                yield page
            # Caught up: says so at once, with the cursor, to a client that started at the end too.
            read.position = max(read.position, 2 * joined_at + 1)
            yield [self._render(FeedEvent(read.position, HEARTBEAT))]
            while True:
                if not follower.rows:  # the heartbeat's timer only when there is time to wait
                    follower.arrived.clear()
                    try:
                        async with asyncio.timeout(self._heartbeat):
                            await follower.arrived.wait()
                    except TimeoutError:
                        # Rows held in the loop's turn that timed out the wait come first:
                        # the heartbeat below would claim their positions.
                        if follower.rows:
                            continue
                        # Every row up to the reader's position was held for it, and sent.
                        read.position = max(read.position, 2 * self._position + 1)
                        yield [self._render(FeedEvent(read.position, HEARTBEAT))]
                        continue
                events, read.position = _unsent(follower.take(), read.position)
                if events:
                    yield events
                if follower.overflowed and not follower.rows:
                    raise ResourceExhausted(
                        f"the client read too slowly and its {self._buffer} buffered events filled; "
                        f"resume after {read.position}",
                        reason="SLOW_CONSUMER",
                        metadata={"cursor": str(read.position)},
                    )
                # A stream that sent waits out the linger, so that under load one message carries
                # what comes meanwhile: most of a stream's cost is per message. Sleeping first
                # makes a busy stream's message cost one timer, not a wait for rows as well.
                if events and self._linger and not follower.overflowed:
                    await follower.linger(self._linger)
        finally:
            self._followers.discard(follower)

    async def _last(self) -> int:
        with tracing.untraced():
            (last,), *_ = await self._db.fetch(LAST_PLACE)
        return int(last)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL if self._followers else IDLE_POLL):
                    await self._wake.wait()
            self._wake.clear()
            try:
                if self._followers:
                    await self._hand_out()
                else:
                    self._handed_over.clear()
                    last = await self._last()
                    # A stream that joined meanwhile took the old position: the rows after it are its.
                    if not self._followers:
                        self._position = max(self._position, last)
            except Exception as error:  # the database is down: the next round tries again
                log.warning("could not read the movement feed: %s", error)
                await asyncio.sleep(1.0)

    async def _hand_out(self) -> None:
        """Every row after the position to the followers, in place order: the sequencer's
        rounds that follow on as they are; the database read for a round that does not
        (another replica's places lie between), and POLL seconds after the last round or read
        (another replica's rows, while this one's sequencer has none)."""
        loop = asyncio.get_running_loop()
        if self._give_handed_over():
            self._read_by = loop.time() + POLL
        while self._handed_over or loop.time() >= self._read_by:
            self._read_by = loop.time() + POLL
            with tracing.untraced():
                rows = await self._db.fetch(_NEWER, {"after": self._position})
            if not rows:  # the places between are not visible yet: the next wake tries again
                return
            self._give([(row.seq, row) for row in rows])
            self._give_handed_over()
            if len(rows) == PAGE:
                self._read_by = 0.0  # more to read now

    def _give_handed_over(self) -> bool:
        """Gives the sequencer's rounds that follow on; says whether there were any."""
        given = False
        while (places := self._next_handed_over()) is not None:
            self._give(places)
            given = True
        return given

    def _next_handed_over(self) -> list[tuple[int, Row[Any]]] | None:
        """The rows of the sequencer's next round that are not handed out yet, with their
        places, if they come right after the position; None if some lie between (another
        replica's places) or no round is waiting."""
        while self._handed_over:
            first, rows = self._handed_over[0]
            if first > self._position + 1:
                return None
            self._handed_over.popleft()
            if (fresh := self._position + 1 - first) < len(rows):  # else: read back already
                return [(first + n, row) for n, row in enumerate(rows) if n >= fresh]
        return None

    def _give(self, places: Sequence[tuple[int, Row[Any]]]) -> None:
        batches: dict[_Follower[M], list[tuple[Sent[M], ...]]] = {f: [] for f in self._followers}
        for place, row in places:
            rendered: tuple[Sent[M], ...] | None = None
            for follower, batch in batches.items():
                if follower.wants(row):
                    if rendered is None:
                        rendered = tuple((e.position, self._render(e)) for e in events_of(row, place))
                    batch.append(rendered)
        for follower, batch in batches.items():
            if batch and not follower.hold(batch):
                self._followers.discard(follower)
        if places:
            self._position = places[-1][0]


class _Reader(Generic[M]):
    """A stream's reads of the database, from its position on."""

    def __init__(
        self, db: Database, render: Callable[[FeedEvent], M], product_id: str, location_id: str, position: int
    ) -> None:
        self._db = db
        self._render = render
        self._query = _BETWEEN[bool(product_id), bool(location_id)]
        self._filters = {"pid": product_id, "loc": location_id}
        self.position = position

    async def upto(self, last_place: int | None) -> AsyncIterator[list[M]]:
        """The events after `position` up to place `last_place` (None: to the end), a page of
        rows' at a time."""
        last = 2**62 if last_place is None else last_place
        while True:
            first = (self.position + 1) // 2  # the place whose events may not all be sent yet
            if first > last:
                return
            rows = await self._db.fetch(self._query, {"first": first, "last": last, **self._filters})
            page = [e for row in rows for e in events_of(row, row.seq) if e.position > self.position]
            if page:
                self.position = page[-1].position
                yield [self._render(e) for e in page]
            if len(rows) < PAGE:
                return
