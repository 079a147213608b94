"""Abuse limits: attempts per account and per client address, counted in the auth database.

A `Limit` allows `max_attempts` in a fixed window that opens with the first attempt. An
attempt is counted *before* the work it guards (a bcrypt check, a mail), by one upsert that
locks the counter rows, so a burst of concurrent attempts cannot all slip under the limit.
An attempt over the limit is refused with RESOURCE_EXHAUSTED and a RetryInfo saying when the
window ends; its transaction rolls back, so refused attempts are not counted. A login that
turns out right gives its attempts back (`clear`, `give_back`). The counters live in the
database, so every replica sees the same ones.

The client address is the gRPC peer's, or the address in `x-forwarded-for` metadata when the
caller proves it is the facade (mesh.forwarding), which sends its HTTP client's address there.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Insert

from auth.models import Throttle
from mesh.db import Database, describe_error, rowcount, table_of, utcnow
from mesh.errors import ResourceExhausted

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Limit:
    action: str  # what is counted, e.g. "login-account"
    subject: str  # who: an account's email (as typed, if it is not one) or a client address
    max_attempts: int
    window: dt.timedelta

    def __post_init__(self) -> None:
        if len(self.action) > 15:  # throttles.key is 80 characters: the action, ":" and 64 hex digits
            raise ValueError(f"the action name {self.action!r} is longer than 15 characters")

    @property
    def key(self) -> str:
        return f"{self.action}:{hashlib.sha256(self.subject.encode()).hexdigest()}"


async def take(
    session: AsyncSession, limits: Sequence[Limit], *, now: dt.datetime, reason: str, doing: str
) -> int:
    """Counts one attempt against every limit in `session`'s transaction; raises
    ResourceExhausted (which must roll that transaction back) if any limit is passed. Returns
    the most attempts any of the limits now holds in its window, this one included (1: no
    other attempt is counted, neither a failure nor one in flight)."""
    rows = sorted(
        ({"key": limit.key, "attempts": 1, "window_ends_at": now + limit.window} for limit in limits),
        key=lambda row: str(row["key"]),  # one lock order for every caller: no deadlocks between them
    )
    await session.execute(_count(session.get_bind().dialect.name, rows, now))
    counted = {
        key: (attempts, ends)
        for key, attempts, ends in await session.execute(
            select(Throttle.key, Throttle.attempts, Throttle.window_ends_at).where(
                Throttle.key.in_([row["key"] for row in rows])
            )
        )
    }
    ends = [
        counted[limit.key][1]
        for limit in limits
        if limit.key in counted and counted[limit.key][0] > limit.max_attempts
    ]
    if ends:
        # Whole seconds, and no count or time in the message: the answer for an account that
        # exists is the one for an account that does not.
        wait = dt.timedelta(seconds=math.ceil((max(ends) - now).total_seconds()))
        raise ResourceExhausted(f"too many {doing}; try again later", reason=reason, retry_after=wait)
    return max((attempts for attempts, _ in counted.values()), default=1)


def _count(dialect: str, rows: list[dict[str, object]], now: dt.datetime) -> Insert:
    """INSERT the rows, or add one attempt to a row's window (a new window once it ended)."""
    table = table_of(Throttle)
    ended = table.c.window_ends_at <= now
    if dialect in ("mysql", "mariadb"):
        insert = mysql.insert(table).values(rows)
        new_window = insert.inserted.window_ends_at
        # MySQL assigns left to right, each seeing the ones before: `attempts` reads the old window.
        return insert.on_duplicate_key_update(
            [
                ("attempts", case((ended, 1), else_=table.c.attempts + 1)),
                ("window_ends_at", case((ended, new_window), else_=table.c.window_ends_at)),
            ]
        )
    upsert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    upserted = upsert(table).values(rows)
    return upserted.on_conflict_do_update(
        index_elements=[table.c.key],
        set_={
            "attempts": case((ended, 1), else_=table.c.attempts + 1),
            "window_ends_at": case((ended, upserted.excluded.window_ends_at), else_=table.c.window_ends_at),
        },
    )


async def clear(session: AsyncSession, limit: Limit) -> None:
    """Forgets every attempt counted against `limit` (a login succeeded: the account is fine)."""
    await session.execute(delete(Throttle).where(Throttle.key == limit.key))


async def give_back(session: AsyncSession, limit: Limit) -> None:
    """Un-counts one attempt (it succeeded), keeping the others of the window."""
    await session.execute(
        update(Throttle)
        .where(Throttle.key == limit.key, Throttle.attempts > 0)
        .values(attempts=Throttle.attempts - 1)
    )


async def prune(db: Database, now: dt.datetime) -> int:
    """Deletes the counters whose window has ended; returns how many."""
    async with db.transaction() as session:
        result = await session.execute(delete(Throttle).where(Throttle.window_ends_at <= now))
    return rowcount(result) or 0


async def prune_every(db: Database, interval: float) -> None:
    """Prunes ended windows forever, every `interval` seconds (a task of the auth service)."""
    while True:
        try:
            await prune(db, utcnow())
        except Exception as exc:
            log.warning("could not prune the abuse counters: %s", describe_error(exc))
        await asyncio.sleep(interval)


class RecentFailures:
    """Client addresses that failed a login lately, in this process's memory: a hint that lets
    a login from one be refused for a full bcrypt queue before it costs a database write. The
    counters in the database stay the rule; at most `size` addresses are kept."""

    def __init__(self, ttl_seconds: float, size: int = 10_000) -> None:
        self._ttl = ttl_seconds
        self._size = size
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()

    def add(self, address: str) -> None:
        self._seen[address] = time.monotonic()
        self._seen.move_to_end(address)
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)

    def discard(self, address: str) -> None:
        self._seen.pop(address, None)

    def __contains__(self, address: str) -> bool:
        seen = self._seen.get(address)
        return seen is not None and time.monotonic() - seen < self._ttl


def client_address(peer: str | None, forwarded: str | None = None) -> str:
    """The caller's address: `forwarded` (an address the facade proved it sent, see
    mesh.forwarding) if it is an IP address, else the gRPC peer's IP, or the peer as given if
    it is not an IP peer (a Unix socket)."""
    if forwarded and (named := _ip(forwarded.strip().strip("[]"))) is not None:
        return str(named)
    address = _peer_ip(peer)
    if address is None:
        return peer or "unknown"
    return str(address)


def _peer_ip(peer: str | None) -> Address | None:
    """The IP of a gRPC peer such as `ipv4:10.0.0.7:50000` or `ipv6:[::1]:50000`."""
    kind, _, rest = (peer or "").partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    return _ip(rest.rpartition(":")[0].strip("[]"))


def _ip(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.0.0.7 is 10.0.0.7
    return address
