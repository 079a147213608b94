"""The transactional outbox: work for another system, written in the same transaction as the
change that causes it, and delivered afterwards by a relay that retries until it succeeds.

A row is claimed by one relay (an optimistic update of `attempts`, which also leases it by
moving `next_attempt_at` ahead), delivered, and deleted. A failure reschedules it with
exponential backoff and jitter. Several replicas may run relays over one table; a row whose
relay died is taken again once its lease runs out, so delivery is at least once and the
receiver must take a repeat as a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import InstrumentedAttribute

from mesh import tracing
from mesh.background import BackgroundLoop
from mesh.db import Database, rowcount, utcnow
from mesh.errors import describe
from mesh.metrics import OUTBOX_BACKLOG, OUTBOX_DELIVERIES, OUTBOX_OLDEST_AGE

log = logging.getLogger(__name__)

BATCH = 50


class OutboxTable(Protocol):
    """The columns a relay needs; each outbox model has them (see auth.models.OutgoingMail)."""

    id: InstrumentedAttribute[Any]
    attempts: InstrumentedAttribute[int]
    next_attempt_at: InstrumentedAttribute[dt.datetime]
    last_error: InstrumentedAttribute[str | None]
    created_at: InstrumentedAttribute[dt.datetime]


Row = TypeVar("Row")


class OutboxRelay(BackgroundLoop, Generic[Row]):
    def __init__(
        self,
        db: Database,
        table: type[Row],
        deliver: Callable[[Row], Awaitable[None]],
        *,
        name: str,
        retry_initial: float,
        retry_max: float,
        lease: float,
    ) -> None:
        super().__init__(f"{name}-relay", retry_initial=retry_initial, retry_max=retry_max)
        self._db = db
        self._table: Any = table  # an OutboxTable model
        self._deliver_row = deliver
        self._name = name
        self._lease = dt.timedelta(seconds=lease)
        self._delivered = OUTBOX_DELIVERIES.labels(name, "delivered")
        self._failed = OUTBOX_DELIVERIES.labels(name, "failed")
        # Measured by each round of the relay (the query it makes anyway, with two aggregates
        # more); the age is computed at scrape time from the oldest row's creation.
        self._backlog = OUTBOX_BACKLOG.labels(name)
        self._oldest: dt.datetime | None = None
        OUTBOX_OLDEST_AGE.labels(name).set_function(self._oldest_age)

    def _oldest_age(self) -> float:
        oldest = self._oldest
        return 0.0 if oldest is None else max((utcnow() - oldest).total_seconds(), 0.0)

    def held_for_writer(self) -> dt.datetime:
        """The `next_attempt_at` of a row that its writer delivers itself (`deliver_now`): no
        relay takes it before then, so the writer's claim cannot lose to one; if the writer
        dies first, a relay delivers it once that time has come."""
        return utcnow() + self._lease

    async def deliver_now(self, row_id: object) -> None:
        """Delivers a row just committed, in the caller's own time, so its effect is there
        before the caller answers whenever the receiver is up; a failure leaves it to the relay."""
        with tracing.background_span(f"{self._task_name} deliver"):  # in the caller's trace
            delivered = await self._deliver(row_id, 0)
        if not delivered:
            self.wake()  # the relay's retry links to the caller's trace

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                delay = await self.deliver_due()
            except Exception:
                log.warning("%s relay could not read its outbox; retrying", self._name, exc_info=True)
                delay = self._retry_initial
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def deliver_due(self) -> float:
        """Delivers every row that is due; returns the seconds until the next one is."""
        table = self._table
        with tracing.untraced():
            due = await self._due()
        for row_id, attempts in due:
            with tracing.background_span(f"{self._task_name} deliver", self._causes):
                await self._deliver(row_id, attempts)
        if len(due) == BATCH:
            return 0.0
        with tracing.untraced():
            async with self._db.session() as session:
                upcoming, waiting, oldest = (
                    await session.execute(
                        select(func.min(table.next_attempt_at), func.count(), func.min(table.created_at))
                    )
                ).one()
        self._backlog.set(waiting)
        self._oldest = oldest
        if upcoming is None:
            return self._retry_max
        due_in: float = (upcoming - utcnow()).total_seconds()
        return min(max(due_in, 0.0), self._retry_max)

    async def _due(self) -> list[tuple[object, int]]:
        table = self._table
        async with self._db.session() as session:
            due = (
                await session.execute(
                    select(table.id, table.attempts)
                    .where(table.next_attempt_at <= utcnow())
                    .order_by(table.next_attempt_at)
                    .limit(BATCH)
                )
            ).all()
        return [(row_id, attempts) for row_id, attempts in due]

    async def _deliver(self, row_id: object, attempts: int) -> bool:
        """Claims, delivers and deletes the row; False if it is not delivered (yet)."""
        table = self._table
        async with self._db.transaction() as session:
            claimed = await session.execute(
                update(table)
                .where(table.id == row_id, table.attempts == attempts)
                .values(attempts=attempts + 1, next_attempt_at=utcnow() + self._lease)
            )
            if rowcount(claimed) != 1:
                return False  # another relay has it
            row = await session.get_one(table, row_id)
        try:
            await self._deliver_row(row)
        except Exception as exc:
            backoff = self.backoff(attempts)
            problem = describe(exc)
            self._failed.inc()
            log.warning(
                "%s delivery failed (attempt %d), retrying in %.1fs: %s",
                self._name,
                attempts + 1,
                backoff,
                problem,
            )
            retry_at = utcnow() + dt.timedelta(seconds=backoff)
            async with self._db.transaction() as session:
                await session.execute(
                    update(table)
                    .where(table.id == row_id)
                    .values(next_attempt_at=retry_at, last_error=problem[:500])
                )
            return False
        async with self._db.transaction() as session:
            await session.execute(delete(table).where(table.id == row_id))
        self._delivered.inc()
        log.info("%s delivered", self._name, extra={"attempts": attempts + 1})
        return True
