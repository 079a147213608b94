"""A service's readiness follows its database: `DatabaseWatch` pings the database (`SELECT 1`)
every HEALTH_DB_CHECK_SECONDS and tells the server (mesh/server.py) when it has stopped
answering (HEALTH_DB_FAILURES pings in a row) and when it answers again (HEALTH_DB_SUCCESSES in
a row), so that one lost ping, or one answered in the middle of an outage, changes nothing.

The server turns the health of its services' own names NOT_SERVING and SERVING with it; its
overall health ("") does not follow the database, as a process whose database is down is alive
and would gain nothing by a restart. A call that fails with DATABASE_UNAVAILABLE brings the next
ping forward (mesh.db's `Database.when_unavailable`), so an outage is counted from the first
failed call rather than from the next ping; the pings that follow keep their interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from sqlalchemy import text

from mesh.background import BackgroundLoop
from mesh.db import Database, describe_error

if TYPE_CHECKING:
    from mesh.config import Settings

log = logging.getLogger(__name__)

_PING = text("SELECT 1")


class DatabaseWatch(BackgroundLoop):
    def __init__(self, db: Database, *, every: float, timeout: float, failures: int, successes: int) -> None:
        super().__init__("database-watch", retry_initial=every, retry_max=every)
        self._db = db
        self._every = every
        self._timeout = timeout
        self._failures_needed = failures
        self._successes_needed = successes
        self._failures = 0  # pings in a row that failed, or answered
        self._successes = 0
        self._last_error = ""
        # A service starts once it has reached its database (its schema was checked).
        self.reachable = True
        self._report: Callable[[bool], Awaitable[None]] | None = None
        db.when_unavailable(self.wake)

    @classmethod
    def from_settings(cls, db: Database, settings: Settings) -> DatabaseWatch | None:
        """The watch the settings ask for; None with HEALTH_DB_CHECK_SECONDS=0."""
        if settings.health_db_check_seconds == 0:
            return None
        return cls(
            db,
            every=settings.health_db_check_seconds,
            timeout=settings.health_db_timeout_seconds,
            failures=settings.health_db_failures,
            successes=settings.health_db_successes,
        )

    def start_reporting(self, report: Callable[[bool], Awaitable[None]]) -> None:
        """Starts pinging; `report(reachable)` is awaited each time the verdict changes."""
        self._report = report
        self.start()

    async def check(self) -> bool:
        """One ping, counted: whether the database is reachable now, by the rules above."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._db.fetch(_PING)
        except Exception as error:  # whatever it is, the database did not answer
            self._last_error = (
                f"no answer within {self._timeout:g}s"
                if isinstance(error, TimeoutError)
                else describe_error(error)
            )
            self._successes, self._failures = 0, self._failures + 1
            if self.reachable and self._failures >= self._failures_needed:
                log.warning(
                    "the database did not answer %d pings in a row (%s): readiness NOT_SERVING",
                    self._failures,
                    self._last_error,
                )
                await self._turn(reachable=False)
        else:
            self._failures, self._successes = 0, self._successes + 1
            if not self.reachable and self._successes >= self._successes_needed:
                log.info("the database answered %d pings in a row: readiness SERVING", self._successes)
                await self._turn(reachable=True)
        return self.reachable

    async def _turn(self, *, reachable: bool) -> None:
        self.reachable = reachable
        if self._report is not None:
            await self._report(reachable)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            await self.check()
            self._wake.clear()  # a failed call during the ping, the ping's own failure: counted
            wait = max(0.0, self._every - (loop.time() - started))
            if self.reachable and self._failures == 0:
                # A failing call starts the count now; later pings keep the interval, so the
                # failures needed always span (HEALTH_DB_FAILURES - 1) intervals.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
            else:
                await asyncio.sleep(wait)
