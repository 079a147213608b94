"""Work a service does beside its RPCs: a task that loops until the service stops and that a
commit can wake early, retrying failures with backoff (the outbox relays, inventory's stock
feed). Subclasses write `_run`, which loops while `_stopping` is false.

A caller can also wait for the work its commit made (`round_after_now`), as a group commit
does: it asks for a round that begins after the call, the loop runs that round at once, with no
batch window, and back to back with the one in progress, and every caller that asked meanwhile
shares it.

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
        # Rounds of `_rounds`, one at a time: how many began, the last that succeeded (so every
        # round up to it has ended), the highest a caller waits for, and the event set when the
        # round in progress releases its waiters (`release_waiters`).
        self._began = 0
        self._succeeded = 0
        self._wanted = 0
        self._round_ended = asyncio.Event()
        self._hurry = asyncio.Event()  # set by a caller that waits, cleared as a round begins

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

    async def round_after_now(self) -> None:
        """Returns once a round of `_rounds` that began after this call has succeeded: the work
        committed before the call is done. A round that fails is followed by the next after its
        backoff; a caller bounds its wait with a timeout of its own."""
        wanted = self._began + 1
        self._wanted = max(self._wanted, wanted)
        self._hurry.set()
        self.wake()
        while self._succeeded < wanted:
            await self._round_ended.wait()

    def release_waiters(self) -> None:
        """The round in progress has done what callers wait for: `round_after_now` returns to
        them now, before the rest of the round (which `_rounds` calls after `work` succeeds)."""
        if self._succeeded < self._began:
            self._succeeded = self._began
            ended, self._round_ended = self._round_ended, asyncio.Event()
            ended.set()

    @property
    def waited_on(self) -> bool:
        """A caller waits for a round that has not begun yet."""
        return self._wanted > self._began

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
        waiter_window: float = 0.0,
        after: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Runs `work` until the loop stops: `batch_window` after a wake (so one round takes the
        commits of many requests), else every `idle_poll` seconds, and after a failure once its
        backoff has passed, which wakes do not cut short. A caller waiting for a round
        (`round_after_now`) gets it after `waiter_window`, where a wake would wait `batch_window`,
        and so do the rounds that follow while callers wait: under load, that window gathers
        the callers of several commits into one round. `after` follows every round, once its
        waiters are released."""
        failures = 0
        while not self._stopping:
            self._wake.clear()
            self._hurry.clear()
            self._began += 1
            try:
                await work()
                failures, delay = 0, idle_poll
                self.release_waiters()
            except Exception as exc:
                delay = self.failed(failures, could_not, exc)
                failures += 1
            if after is not None:
                await after()
            if failures:
                await asyncio.sleep(delay)
                continue
            if not self.waited_on:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                        if not self.waited_on:
                            with contextlib.suppress(TimeoutError):
                                async with asyncio.timeout(batch_window):
                                    await self._hurry.wait()  # a caller came to wait: its window
            if self.waited_on:
                await asyncio.sleep(waiter_window)
