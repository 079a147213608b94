"""Work a service does beside its RPCs: a task that loops until the service stops and that a
commit can wake early, retrying failures with backoff (the outbox relays, inventory's stock
feed). Subclasses write `_run`, which loops while `_stopping` is false.

Traces: a round that does work is a span of its own trace (`mesh.tracing.background_span`),
linked to the requests whose commits woke the loop (`_causes`); the polls that find nothing
make no spans."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from mesh import tracing
from mesh.errors import describe


def backoff(failures: int, *, initial: float, maximum: float) -> float:
    """Seconds to wait after `failures` failures in a row (0 after the first): doubling from
    `initial`, with 20% jitter so that clients and replicas do not retry in step, capped."""
    return min(initial * 2.0**failures * random.uniform(0.8, 1.2), maximum)


class BackgroundLoop:
    def __init__(self, task_name: str, *, retry_initial: float, retry_max: float) -> None:
        self._task_name = task_name
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._causes = tracing.Causes()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._task_name)

    async def stop(self) -> None:
        if self._task is None:
            return
        # The flag ends the loop even if a library on the way swallows the cancellation.
        self._stopping = True
        self._wake.set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def wake(self) -> None:
        """Work was committed: do it now rather than at the next poll."""
        self._causes.add()
        self._wake.set()

    def backoff(self, failures: int) -> float:
        return backoff(failures, initial=self._retry_initial, maximum=self._retry_max)

    def failed(self, failures: int, could_not: str, error: Exception) -> float:
        """Logs a round of the loop that failed (after `failures` before it, in a row), in the
        subclass's module's logger; returns the seconds to wait before the next (`backoff`)."""
        delay = self.backoff(failures)
        logging.getLogger(type(self).__module__).warning(
            "%s could not %s, retrying in %.1fs: %s", self._task_name, could_not, delay, describe(error)
        )
        return delay

    async def _run(self) -> None:
        raise NotImplementedError

    async def _rounds(
        self,
        work: Callable[[], Awaitable[object]],
        *,
        could_not: str,
        idle_poll: float,
        batch_window: float,
        after: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Runs `work` until the loop stops: `batch_window` after a wake (so one round takes the
        commits of many requests), else every `idle_poll` seconds, and after a failure once its
        backoff has passed, which wakes do not cut short. `after` follows every round."""
        failures = 0
        while not self._stopping:
            self._wake.clear()
            try:
                await work()
                failures, delay = 0, idle_poll
            except Exception as exc:
                delay = self.failed(failures, could_not, exc)
                failures += 1
            if after is not None:
                await after()
            if failures:
                await asyncio.sleep(delay)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
                    await asyncio.sleep(batch_window)
