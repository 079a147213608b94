"""auth.passwords.BcryptQueue: bcrypt checks are admitted only if they can finish within their
call's deadline, and clean attempts have workers of their own and go first."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from auth.passwords import BcryptQueue, Lane
from mesh import context
from mesh.errors import ResourceExhausted


def test_checks_that_cannot_finish_in_time_are_refused_at_once_with_a_retry_delay() -> None:
    queue = BcryptQueue(workers=2, check_seconds=0.25)
    token = context.deadline.set(time.monotonic() + 5.0)  # budget: 5 * 0.5 - 0.3 = 2.2 s
    try:
        admitted = []
        with pytest.raises(ResourceExhausted) as refused:
            while True:
                admitted.append(queue.admit(Lane.SHARED))
        # One shared worker (the other is kept for clean attempts): 8 checks of 0.25 s fit.
        assert len(admitted) == 8
        assert refused.value.reason == "TOO_MANY_CONCURRENT_LOGINS"
        assert refused.value.retry_after is not None and refused.value.retry_after.total_seconds() >= 1
        # The shared lane being full leaves the clean lane open.
        clean = queue.admit(Lane.CLEAN)
        # A released place is given back.
        admitted.pop().release()
        admitted.append(queue.admit(Lane.SHARED))
        for ticket in [*admitted, clean]:
            ticket.release()
    finally:
        context.deadline.reset(token)


def test_an_idle_queue_admits_a_check_that_fits_its_budget_alone() -> None:
    """A slow spell left the estimate at 2 s: with nothing running, a check still fits a 2.2 s
    budget (it starts at once), and one behind it does not."""
    queue = BcryptQueue(workers=2, check_seconds=2.0)
    token = context.deadline.set(time.monotonic() + 5.0)  # budget: 5 * 0.5 - 0.3 = 2.2 s
    try:
        first = queue.admit(Lane.CLEAN)
        with pytest.raises(ResourceExhausted):
            queue.admit(Lane.CLEAN)
        first.release()
        queue.admit(Lane.SHARED).release()
    finally:
        context.deadline.reset(token)


async def test_clean_checks_overtake_queued_shared_ones_and_shared_ones_never_take_every_worker() -> None:
    queue = BcryptQueue(workers=2, check_seconds=0.05)
    started: list[str] = []
    concurrent_shared = 0
    most_shared = 0
    lock = threading.Lock()

    def work(name: str) -> str:
        nonlocal concurrent_shared, most_shared
        with lock:
            started.append(name)
            if name.startswith("shared"):
                concurrent_shared += 1
                most_shared = max(most_shared, concurrent_shared)
        time.sleep(0.05)
        with lock:
            if name.startswith("shared"):
                concurrent_shared -= 1
        return name

    shared = [asyncio.create_task(queue.run(queue.admit(Lane.SHARED), work, f"shared{n}")) for n in range(6)]
    await asyncio.sleep(0.01)  # shared0 runs; the others wait
    clean = asyncio.create_task(queue.run(queue.admit(Lane.CLEAN), work, "clean"))
    assert await clean == "clean"
    await asyncio.gather(*shared)
    assert started.index("clean") <= 1, started  # at once, on the worker kept for clean checks
    assert most_shared == 1, "shared checks took the worker kept for clean ones"
    assert queue.expected_seconds(Lane.SHARED) == pytest.approx(queue.check_seconds)  # nothing left


async def test_a_cancelled_waiting_check_gives_its_place_back() -> None:
    queue = BcryptQueue(workers=2, check_seconds=0.05)
    first = asyncio.create_task(queue.run(queue.admit(Lane.SHARED), time.sleep, 0.2))
    waiting = asyncio.create_task(queue.run(queue.admit(Lane.SHARED), time.sleep, 0.01))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await first
    # The cancelled check's place was given back: the next one runs at once.
    await asyncio.wait_for(queue.run(queue.admit(Lane.SHARED), time.sleep, 0.01), 2)
    assert queue.expected_seconds(Lane.SHARED) == pytest.approx(queue.check_seconds)
