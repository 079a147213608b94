"""Drops from a products process's GetProduct cache what another replica changed.

Every write to what GetProduct answers, a product's fields or its stock, logs the product's
id in product_changes, in the write's own transaction (`products.catalog`). Each products
process reads the log every `POLL` seconds from where it stopped and forgets those products
(all but its own writes', which forgot theirs at commit), so a change made through one
replica shows on the others within about `POLL`, not PRODUCT_CACHE_SECONDS. That time stays
the bound for a change the log cannot carry in time: one whose transaction was open as the
process started, or committed more than `SETTLE` after taking its id.

Ids are taken before commit, so with several writers a lower id can become visible after a
higher one. The log is therefore read again from the first id not yet seen (`ChangeCursor`);
a missing id is given up (a rolled-back write, or rows pruned) once a later one has been seen
for `SETTLE` seconds. Rows every process read a retention period ago are pruned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from sqlalchemy import bindparam, delete, func, select

from mesh import tracing
from mesh.background import BackgroundLoop
from mesh.db import Database, table_of
from mesh.direct import prepared
from mesh.metrics import CHANGE_LOG_LAG
from products.models import ProductChange

POLL = 0.1  # seconds between reads of the log
SETTLE = 2.0  # a missing id is given up once a later one has been seen this long
BATCH = 5000  # rows per read
MIN_RETENTION = 60.0  # seconds from reading rows to pruning them

_CHANGES = table_of(ProductChange)
_LAST = select(func.coalesce(func.max(_CHANGES.c.id), 0))
_AFTER = prepared(
    select(_CHANGES.c.id, _CHANGES.c.product_id, _CHANGES.c.writer)
    .where(_CHANGES.c.id > bindparam("after"))
    .order_by(_CHANGES.c.id)
    .limit(BATCH)
)
_PRUNE = delete(_CHANGES).where(_CHANGES.c.id <= bindparam("upto"))
T = TypeVar("T")


class ChangeCursor:
    """Where a process is in the log: every id up to `after` is read or given up, and the
    ids above it already read are remembered with the time they were first seen."""

    def __init__(self, after: int) -> None:
        self.after = after
        self._seen: dict[int, float] = {}

    def read(self, rows: Iterable[tuple[int, T]], now: float) -> list[T]:
        """The changes of the rows, (id, change), not read before; moves `after` past what is
        settled."""
        fresh = []
        for change_id, change in rows:
            if change_id not in self._seen:
                self._seen[change_id] = now
                fresh.append(change)
        for change_id in sorted(self._seen):
            # The next id, or one above a gap that has had SETTLE seconds to fill.
            if change_id != self.after + 1 and now - self._seen[change_id] < SETTLE:
                break
            self.after = change_id
            del self._seen[change_id]
        return fresh


class ChangeWatch(BackgroundLoop):
    def __init__(
        self,
        db: Database,
        forget: Callable[[Sequence[str]], None],
        *,
        own_writer: str,
        retention: float,
        retry_initial: float,
        retry_max: float,
    ) -> None:
        """`forget` drops products from the cache, except those `own_writer` (this process)
        changed, which it dropped at their commit; rows are pruned `retention` seconds (at
        least MIN_RETENTION) after this process read them, so no entry cached before a pruned
        change outlives it when `retention` is the cache's time."""
        super().__init__("product-change-watch", retry_initial=retry_initial, retry_max=retry_max)
        self._db = db
        self._forget = forget
        self._own_writer = own_writer
        self._retention = max(retention, MIN_RETENTION)
        self._cursor = ChangeCursor(0)
        # Since when the watch has not read to the end of the log (None: it has): a read that
        # failed or that filled a whole batch. The lag is computed from it at scrape time.
        self._behind_since: float | None = None
        CHANGE_LOG_LAG.set_function(self._lag)

    def _lag(self) -> float:
        behind_since = self._behind_since
        return 0.0 if behind_since is None else time.monotonic() - behind_since

    def _behind(self, behind: bool) -> None:
        if not behind:
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = time.monotonic()

    async def start_at_end(self) -> None:
        """Starts reading after the last change logged: the cache is empty, so nothing before
        it matters. Await it before serving, so no read is cached ahead of the watch."""
        self._cursor = ChangeCursor((await self._db.fetch(_LAST))[0][0])
        self.start()

    async def poll(self) -> int:
        """Forgets the products changed since the last poll; returns how many changes it read."""
        try:
            rows = await self._db.fetch(_AFTER, {"after": self._cursor.after})
        except Exception:
            self._behind(True)
            raise
        self._behind(len(rows) == BATCH)
        fresh = self._cursor.read(((r.id, r) for r in rows), time.monotonic())
        if others := [r.product_id for r in fresh if r.writer != self._own_writer]:
            self._forget(others)
        return len(fresh)

    async def _run(self) -> None:
        failures = 0
        read_then, prune_at = self._cursor.after, time.monotonic() + self._retention
        while not self._stopping:
            try:
                with tracing.untraced():  # a poll every POLL seconds: a trace each would be noise
                    await self.poll()
                if time.monotonic() >= prune_at:
                    # Rows this process read a retention period ago; a replica that has not
                    # read them by now has had longer than its cache's time to fail to.
                    async with self._db.write_connection() as conn:
                        await conn.execute(_PRUNE, {"upto": read_then})
                    read_then, prune_at = self._cursor.after, time.monotonic() + self._retention
                failures, delay = 0, POLL
            except Exception as exc:
                delay = self.failed(failures, "read the product change log", exc)
                failures += 1
            await asyncio.sleep(delay)
