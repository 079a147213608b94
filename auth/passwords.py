"""Password rules and bcrypt, run on a thread pool sized to the cores so hashing never
blocks the event loop and concurrent logins queue instead of oversubscribing the CPU.

bcrypt bounds how many checks a second the auth service can do (a few, at cost 12, per core),
so admission is bounded too (`BcryptQueue`): a check is admitted only if the checks ahead of
it leave it time to finish within its call's deadline; otherwise it is refused at once,
RESOURCE_EXHAUSTED (429) with a RetryInfo, rather than left to time out. Checks come in two
lanes. `Lane.CLEAN` is for attempts whose account and client address have no other attempt
counted in their window (auth.throttle): the users who have not just failed. Every other
attempt, and every new hash, is `Lane.SHARED`. Half the workers (at least one, if there are
two) run clean checks only, and clean checks go first for the others, so a real user's login
waits for at most one running check while a burst of failures fills the shared lane.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import enum
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import bcrypt

from mesh import context
from mesh.errors import InvalidArgument, ResourceExhausted

MIN_CHARS = 8
MAX_BYTES = 72  # bcrypt reads no further; longer passwords are refused, never truncated
# The time a check may take, waiting included, when its call has no deadline.
NO_DEADLINE_BUDGET_SECONDS = 10.0
# Of the time a call has left, what its check may use: the rest is for the database and the answer.
_BUDGET_SHARE = 0.5
_BUDGET_RESERVE_SECONDS = 0.3

_WORKERS = os.cpu_count() or 1
_pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="bcrypt")
_T = TypeVar("_T")


class Lane(enum.Enum):
    CLEAN = "clean"  # an attempt with no other counted for its account or client address
    SHARED = "shared"  # anything else


class Ticket:
    """A check admitted to a lane; `BcryptQueue.run` spends it, `release` gives it back unused."""

    def __init__(self, queue: BcryptQueue, lane: Lane) -> None:
        self.queue = queue
        self.lane = lane
        self.spent = False

    def release(self) -> None:
        if not self.spent:
            self.spent = True
            self.queue._admitted[self.lane] -= 1


class BcryptQueue:
    """Admission and scheduling of bcrypt work on `workers` threads (see the module)."""

    def __init__(self, workers: int, check_seconds: float) -> None:
        self.workers = workers
        self.reserved = workers // 2  # workers that run clean checks only
        self.check_seconds = check_seconds  # a moving average of one check's time
        self._admitted = {lane: 0 for lane in Lane}  # waiting or running
        self._running = {lane: 0 for lane in Lane}
        self._waiting: dict[Lane, collections.deque[asyncio.Future[None]]] = {
            lane: collections.deque() for lane in Lane
        }

    def admit(self, lane: Lane) -> Ticket:
        """A place in `lane`, or RESOURCE_EXHAUSTED at once if the checks ahead leave this one
        no time to finish within the current call's deadline."""
        self.check(lane)
        self._admitted[lane] += 1
        return Ticket(self, lane)

    def check(self, lane: Lane) -> None:
        """RESOURCE_EXHAUSTED if `admit(lane)` would refuse now; takes no place."""
        deadline = context.deadline.get()
        left = NO_DEADLINE_BUDGET_SECONDS if deadline is None else deadline - time.monotonic()
        budget = left * _BUDGET_SHARE - _BUDGET_RESERVE_SECONDS
        expected = self.expected_seconds(lane)
        if expected > budget:
            wait = max(1, math.ceil(expected - budget))
            raise ResourceExhausted(
                "too many password checks at once; try again shortly",
                reason="TOO_MANY_CONCURRENT_LOGINS",
                retry_after=dt.timedelta(seconds=wait),
            )

    def expected_seconds(self, lane: Lane) -> float:
        """How long a check admitted to `lane` now would take to finish, at worst."""
        if not any(self._admitted.values()):
            # Nothing ahead and every worker free: it starts now. (Counting a round of others
            # here too would refuse every check once a slow spell had doubled the estimate,
            # and a refused check is never timed to bring it back down.)
            return self.check_seconds
        if lane is Lane.CLEAN:
            # First in line for every worker; at worst every worker is busy with another check.
            rounds = self._admitted[Lane.CLEAN] // self.workers + 1
            return (rounds + 1) * self.check_seconds
        rounds = self._admitted[Lane.SHARED] // self._shared_workers + 1
        return rounds * self.check_seconds

    @property
    def _shared_workers(self) -> int:
        return max(1, self.workers - self.reserved)

    async def run(self, ticket: Ticket, work: Callable[..., _T], *args: object) -> _T:
        """Runs `work(*args)` on a bcrypt worker when `ticket`'s turn comes."""
        assert ticket.queue is self and not ticket.spent
        lane = ticket.lane
        ticket.spent = True  # from here on, accounted for below
        try:
            await self._turn(lane)
        except BaseException:
            self._admitted[lane] -= 1
            raise
        started = time.monotonic()
        try:
            return await asyncio.get_running_loop().run_in_executor(_pool, work, *args)
        finally:
            self.check_seconds = 0.8 * self.check_seconds + 0.2 * (time.monotonic() - started)
            self._admitted[lane] -= 1
            self._finished(lane)

    async def _turn(self, lane: Lane) -> None:
        """Returns once a worker is this check's (counted in `_running`)."""
        if self._may_start(lane) and not self._waiting[lane]:
            self._running[lane] += 1
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting[lane].append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._finished(lane)  # given a worker it will not use: pass it on
            elif turn in self._waiting[lane]:
                self._waiting[lane].remove(turn)
            raise

    def _may_start(self, lane: Lane) -> bool:
        running = sum(self._running.values())
        if running >= self.workers:
            return False
        return lane is Lane.CLEAN or self._running[Lane.SHARED] < self._shared_workers

    def _finished(self, lane: Lane) -> None:
        self._running[lane] -= 1
        for next_lane in (Lane.CLEAN, Lane.SHARED):
            while self._waiting[next_lane] and self._may_start(next_lane):
                turn = self._waiting[next_lane].popleft()
                if turn.done():
                    continue
                self._running[next_lane] += 1
                turn.set_result(None)


def _check_seconds(rounds: int) -> float:
    """One check's time at `rounds`, from one at the least cost (about a millisecond), scaled:
    a first estimate, before any check at the real cost has been timed."""
    salt = bcrypt.gensalt(4)
    started = time.perf_counter()
    bcrypt.hashpw(b"estimate", salt)
    return (time.perf_counter() - started) * float(1 << max(rounds - 4, 0))


def check_new_password(password: str, *, field: str = "password") -> bytes:
    """The password's UTF-8 bytes if it may be set; otherwise INVALID_ARGUMENT saying why."""
    encoded = password.encode()
    if len(password) < MIN_CHARS:
        raise InvalidArgument(
            f"{field} must be at least {MIN_CHARS} characters", field=field, reason="PASSWORD_TOO_SHORT"
        )
    if len(encoded) > MAX_BYTES:
        raise InvalidArgument(
            f"{field} must be at most {MAX_BYTES} bytes in UTF-8 (it is {len(encoded)}); "
            "bcrypt ignores anything longer, so it is refused rather than truncated",
            field=field,
            reason="PASSWORD_TOO_LONG",
        )
    return encoded


class PasswordHasher:
    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        # Checked against when the email is unknown, so that path costs what a real check costs:
        # a fresh salt at the same cost, and a digest no password produces. Hashing a real
        # password here would hold up startup for one check's time (a quarter second at 12).
        self._dummy_hash = bcrypt.gensalt(rounds) + b"." * 31
        self.queue = BcryptQueue(_WORKERS, _check_seconds(rounds))

    async def hash(self, password: bytes, *, lane: Lane = Lane.SHARED) -> str:
        hashed = await self.queue.run(
            self.queue.admit(lane), bcrypt.hashpw, password, bcrypt.gensalt(self.rounds)
        )
        return hashed.decode()

    async def verify(self, password: str, hashed: str | None, *, ticket: Ticket | None = None) -> bool:
        """Checks a login attempt; with no hash (unknown user) it burns the same time and fails.
        Runs on `ticket` (see `BcryptQueue.admit`), or else admitted to the shared lane now."""
        encoded = password.encode()
        usable = len(encoded) <= MAX_BYTES and hashed is not None
        matched = await self.queue.run(
            ticket or self.queue.admit(Lane.SHARED),
            bcrypt.checkpw,
            encoded if len(encoded) <= MAX_BYTES else encoded[:MAX_BYTES],
            hashed.encode() if hashed is not None else self._dummy_hash,
        )
        return usable and matched
