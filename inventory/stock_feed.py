"""The stock feed: tells the products service each item's stock after it changes, so product
reads carry stock without calling inventory.

Every change of a balance counts one more `version` and marks the item `unpublished`, in its
own transaction (`inventory.stock`). The feed reads marked items in batches, sends them to
ProductsService.UpdateStockLevels as this service (a service token, not a user's), and clears
the mark of each item whose version is still the one sent; an item changed meanwhile stays
marked for the next batch. Products keeps the highest version it was sent, so a batch sent
twice, late, or by two replicas at once changes nothing it should not.

A commit wakes the feed, which waits `BATCH_WINDOW` so one call carries the changes of many
requests. Otherwise it looks again every `IDLE_POLL` seconds, for marks left by another
replica, by a process that died, or by a failed call (retried with backoff).

Read-your-writes: a write that changes what products shows (an item's total) answers once the
feed has reported it (`reported`), like a group commit. It asks for a round that begins after
its commit; the feed runs it within `WAITER_WINDOW`, back to back with the round in progress,
and one call carries every item marked by then, so concurrent writers share rounds. A round reads every
marked item and a mark is cleared only once products holds its version, so when a round that
began after the commit has sent its items, products holds the change, whichever replica's
feed sent it: its writers are released then, before the round clears the marks. The
wait is bounded (`STOCK_REPORT_WAIT_SECONDS`, and half the call's time left): past it the write
answers all the same, being committed, and the feed reports it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from typing import Any, cast

from sqlalchemy import Select, bindparam, func, select, update
from sqlalchemy.engine import Connection

from inventory.models import Item
from invmesh.products.v1 import products_service_pb2, products_service_pb2_grpc
from mesh import tracing
from mesh.background import BackgroundLoop
from mesh.context import deadline
from mesh.db import Database, table_of, utcnow
from mesh.direct import prepared
from mesh.metrics import STOCK_FEED_BACKLOG, STOCK_FEED_LAG, STOCK_REPORT_WAITS_TIMED_OUT
from mesh.service_token import ServiceToken

BATCH = 500  # UpdateStockLevels' limit
BATCH_WINDOW = 0.05  # seconds from the first commit to the call that reports it
# The same for a commit whose writer waits for the report: at 64 movements in flight on
# PostgreSQL, 10 ms made products' CPU per movement 0.24 ms where none made it 0.30-0.37.
WAITER_WINDOW = 0.01
IDLE_POLL = 1.0
MEASURE_EVERY = 1.0  # seconds between measures of the backlog while rounds run back to back
WARN_EVERY = 10.0  # seconds between warnings of writes that answered unreported

log = logging.getLogger(__name__)

_ITEMS = table_of(Item)
_UNPUBLISHED = prepared(
    select(_ITEMS.c.product_id, _ITEMS.c.quantity, _ITEMS.c.version).where(_ITEMS.c.unpublished).limit(BATCH)
)
# What is left to report, on the partial index of marked items: measured after each round.
_LEFT = prepared(
    cast("Select[Any]", select(func.count(), func.min(_ITEMS.c.updated_at)).where(_ITEMS.c.unpublished))
)
_PUBLISHED = (
    update(_ITEMS)
    .where(_ITEMS.c.product_id == bindparam("pid"), _ITEMS.c.version == bindparam("sent"))
    .values(unpublished=False)
)


class StockFeed(BackgroundLoop):
    def __init__(
        self,
        db: Database,
        products: products_service_pb2_grpc.ProductsServiceStub,
        identity: ServiceToken,
        *,
        retry_initial: float,
        retry_max: float,
        report_wait: float = 0.0,
    ) -> None:
        """`report_wait`: the longest `reported` waits (0: it returns at once)."""
        super().__init__("stock-feed", retry_initial=retry_initial, retry_max=retry_max)
        self._db = db
        self._products = products
        self._identity = identity
        self._report_wait = report_wait
        self._oldest: dt.datetime | None = None
        self._measured_at = 0.0
        self._unreported = 0  # writes that answered unreported since the last warning
        self._warned_at = -WARN_EVERY
        STOCK_FEED_LAG.set_function(self._lag)

    async def reported(self, product_id: str) -> None:
        """Returns once products holds every stock change committed before the call (the
        product's, which the caller just wrote, among them), or after the wait's bound: then
        the change is counted and logged, and reported later."""
        wait = self._report_wait
        if (ends := deadline.get()) is not None:
            wait = min(wait, (ends - time.monotonic()) / 2)  # the call answers well before its deadline
        if wait <= 0:
            self.wake()
            return
        try:
            async with asyncio.timeout(wait):
                await self.round_after_now()
        except TimeoutError:
            self._answered_unreported(product_id, wait)

    def _answered_unreported(self, product_id: str, waited: float) -> None:
        STOCK_REPORT_WAITS_TIMED_OUT.inc()
        self._unreported += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            log.warning(
                "stock of product %s not yet reported to products after %.2fs; the write answers "
                "and the stock feed reports it later (%d such writes since the last warning)",
                product_id,
                waited,
                self._unreported,
            )
            self._warned_at, self._unreported = now, 0

    def _lag(self) -> float:
        oldest = self._oldest
        return 0.0 if oldest is None else max((utcnow() - oldest).total_seconds(), 0.0)

    async def measure(self) -> None:
        """Sets the feed's backlog and lag gauges from the items still marked."""
        with tracing.untraced():
            (left, oldest), *_ = await self._db.fetch(_LEFT)
        STOCK_FEED_BACKLOG.set(left)
        self._oldest = oldest if left else None

    async def publish(self) -> int:
        """Reports every marked item to products; returns how many it reported."""
        reported = 0
        while True:
            with tracing.untraced():
                rows = await self._db.fetch(_UNPUBLISHED)
            if not rows:
                return reported
            levels = [
                products_service_pb2.StockLevel(
                    product_id=r.product_id, quantity=r.quantity, version=r.version
                )
                for r in rows
            ]
            with tracing.background_span("stock-feed publish", self._causes, **{"invmesh.items": len(rows)}):
                await self._products.UpdateStockLevels(
                    products_service_pb2.UpdateStockLevelsRequest(levels=levels),
                    metadata=await self._identity.metadata(),
                )
                if len(rows) < BATCH:  # products holds every item marked when the round began
                    self.release_waiters()
                sent = [{"pid": r.product_id, "sent": r.version} for r in rows]
                await self._db.write_steps(functools.partial(_clear_marks, sent=sent))
            reported += len(rows)
            if len(rows) < BATCH:
                return reported

    async def _run(self) -> None:
        await self._rounds(
            self.publish,
            could_not="report to products",
            idle_poll=IDLE_POLL,
            batch_window=BATCH_WINDOW,
            waiter_window=WAITER_WINDOW,
            after=self._measured,
        )

    async def _measured(self) -> None:
        now = time.monotonic()
        if self.waited_on and now - self._measured_at < MEASURE_EVERY:
            return  # writers wait for the next round: the gauges can wait a little
        self._measured_at = now
        with contextlib.suppress(Exception):  # a gauge left as it was: the next round retries
            await self.measure()


def _clear_marks(conn: Connection, *, sent: list[dict[str, Any]]) -> None:
    """Clears the mark of each item sent whose version is still the one sent, in one step
    (`Database.write_steps`)."""
    conn.execute(_PUBLISHED, sent)
