"""Async SQLAlchemy 2 engines and sessions: one `Database` per service, on SQLite (aiosqlite,
the embedded default), PostgreSQL (asyncpg) or MariaDB/MySQL (asyncmy).

The differences between those databases are handled here, once:
- SQLite: write transactions start with BEGIN IMMEDIATE so two writers never interleave (a
  deferred transaction that reads, then writes, can fail with "database is locked" instead
  of waiting), and a process's writers queue on an asyncio lock first, so only one at a time
  holds or waits for SQLite's lock, rather than twenty pooled connections polling it in
  busy_timeout's sleeps; reads stay deferred and run beside writes under WAL. `lower()` is
  replaced by a Unicode-aware one, so case-insensitive search folds "É" as the other
  databases do.
- PostgreSQL and MariaDB: a pool sized by settings, whose connections are pinged when they come
  out of the pool after a second or more idle, so those a restarted server dropped are
  replaced (`_ping_when_idle`), READ COMMITTED on both (MariaDB's REPEATABLE READ takes gap
  locks that deadlock concurrent first inserts), and a connect timeout, so an unreachable
  server fails a call instead of hanging it.
- MariaDB tables are utf8mb4 with a binary collation (`TABLE_OPTIONS`): comparisons, unique
  indexes and LIKE are then case- and accent-sensitive, as on PostgreSQL and SQLite.
- Text: PostgreSQL cannot store or even compare a string holding NUL ("\\x00"), so no
  database is sent one: such a value is INVALID_ARGUMENT everywhere, before it is sent.
- Errors: a database that cannot be reached or dropped the connection surfaces as
  `DatabaseUnavailable` (gRPC UNAVAILABLE); a deadlock, lock wait timeout or serialization
  failure as `TransactionConflict` (ABORTED), which callers whose change may safely run
  again retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import importlib
import logging
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import orjson
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import JSON, BigInteger, DateTime, Executable, Integer, Row, Select, TypeDecorator, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL, Connection, Dialect, Engine, create_engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, PoolProxiedConnection, QueuePool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeEngine
from sqlalchemy.util import greenlet_spawn

from mesh import revisions, tracing
from mesh.direct import Direct, is_prepared
from mesh.errors import DatabaseUnavailable, InvalidArgument, TransactionConflict

if TYPE_CHECKING:
    from sqlalchemy import CursorResult, Result, Table, TextClause
    from sqlalchemy.orm import DeclarativeBase
    from sqlalchemy.sql.elements import ClauseElement

    from mesh.config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
# aiosqlite logs every statement with its parameters (password hashes, queued mail with its
# verification link) at DEBUG. Never let a DEBUG root logger turn that on; SQLAlchemy's own
# loggers already default to WARNING until someone asks for them.
logging.getLogger("aiosqlite").setLevel(logging.INFO)

_WRITE = "invmesh_write"
_ONE_STATEMENT = "invmesh_one_statement"
PING_IDLE_AFTER_SECONDS = 1.0
_RETURNED_AT = "invmesh_returned_at"
# Threads (and connections) of a SQLite file's reads (`Database.fetch`). Most of a read holds the
# GIL (SQLAlchemy's part, not SQLite's step), so reads on two threads mostly took turns with each
# other and the event loop: one thread answered GET /inventory/{id} with about a sixth less
# CPU (bench.cpu). Writes (`write_steps`) have a thread of their own, so a write waiting for another
# process's lock holds up no read.
SQLITE_READ_THREADS = 1
# A prepared read of a SQLite file runs on the event loop (`_LoopReader`) within this many steps
# of SQLite's virtual machine (about 40 ns each here: 20,000 is under a millisecond); SQLite
# counts them in slices of LOOP_READ_SLICE. A page of 20 items takes about 1,900.
LOOP_READ_STEPS = 20_000
LOOP_READ_SLICE = 1_000

# Every table's options on MariaDB/MySQL (ignored elsewhere): see the module docstring.
TABLE_OPTIONS: dict[str, str] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}

# Constraint names made from the columns, so every migration (and SQLite's batch mode) can name
# the constraint it alters; CHECK constraints are named by hand.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
}

# An auto-incrementing 64-bit key: SQLite only auto-increments a column declared INTEGER.
BigIntegerKey = BigInteger().with_variant(Integer(), "sqlite")

# Driver error codes: deadlock, lock wait timeout, serialization failure (retry the transaction) ...
_CONFLICT_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
_CONFLICT_MYSQL_ERRNOS = frozenset({1205, 1213})
_SQLITE_BUSY_OR_LOCKED = frozenset({5, 6})
# ... and a server that is gone, going, refusing or out of connections.
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
_UNAVAILABLE_MYSQL_ERRNOS = frozenset({1040, 1053, 1927, 2002, 2003, 2005, 2006, 2013, 2055})


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend, stored as naive UTC (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))  # the default keeps whole seconds only
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: use an aware UTC datetime")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        return value.replace(tzinfo=dt.UTC) if value is not None else None


class json_object_agg(FunctionElement[Any]):
    """`json_object_agg(key, value)`: one JSON object of a key and a value per row (PostgreSQL's
    json_object_agg, SQLite's json_group_object, MariaDB's JSON_OBJECTAGG), so a row can carry
    a product's figures per location; NULL over no rows, except on SQLite ({})."""

    type = JSON()
    inherit_cache = True
    name = "json_object_agg"


class json_array(FunctionElement[Any]):
    """`json_array(value, ...)`: a JSON array of the values (PostgreSQL's json_build_array,
    SQLite's json_array, MariaDB's JSON_ARRAY), so that `json_object_agg` can carry several
    figures under one key, as a JSON value rather than text."""

    type = JSON()
    inherit_cache = True
    name = "json_array"


def _spelled(function: type[FunctionElement[Any]], default: str, **by_dialect: str) -> None:
    """Compiles `function` as the function `default` names, or, on a dialect `by_dialect` names,
    as the one it gives, with the same arguments."""

    def spelling(name: str) -> Callable[..., str]:
        def compile_as(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
            return f"{name}({compiler.process(element.clauses, **kw)})"

        return compile_as

    compiles(function)(spelling(default))
    for dialect, name in by_dialect.items():
        compiles(function, dialect)(spelling(name))


_spelled(
    json_object_agg,
    "json_object_agg",
    sqlite="json_group_object",
    mysql="JSON_OBJECTAGG",
    mariadb="JSON_OBJECTAGG",
)
_spelled(json_array, "json_build_array", sqlite="json_array", mysql="JSON_ARRAY", mariadb="JSON_ARRAY")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def table_of(model: type[DeclarativeBase]) -> Table:
    """A mapped class's table: SQLAlchemy types `__table__` as any `FromClause`."""
    return cast("Table", model.__table__)


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched: `execute()` is typed to return a plain `Result`."""
    return cast("CursorResult[Any]", result).rowcount


class StartupError(Exception):
    """The database is not ready for the service; the message says why and what to do."""


class Database:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 20,
        max_overflow: int = 0,
        pool_timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        parsed = make_url(url)
        self.backend = parsed.get_backend_name()  # sqlite, postgresql, mysql or mariadb
        self.is_sqlite = self.backend == "sqlite"
        options: dict[str, Any] = {}
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        else:
            options = {
                "poolclass": _CountedPool,
                "pool_size": pool_size,
                "max_overflow": max_overflow,
                "pool_timeout": pool_timeout,
                "isolation_level": "READ COMMITTED",
                **_connect_options(parsed, connect_timeout),
            }
        # JSON values (stock by location, aggregated in the hot reads) are decoded with orjson:
        # several per row, and json.loads costs a few µs each in Python frames around its scanner.
        decoding = {"json_deserializer": orjson.loads}
        self.engine = create_async_engine(parsed, **decoding, **options)
        if not self.is_sqlite:
            _ping_when_idle(self.engine.sync_engine)
        _configure(self.engine.sync_engine)
        # A SQLite file's hot reads skip aiosqlite, which hops to its connection's thread and back
        # for each step (check out, execute, fetch, close, reset): each read runs whole, on
        # SQLite's own driver, in one hop to a thread of `_readers`; so do the writes of
        # `write_steps`, on a connection and a thread of their own (`_writers`). A database in
        # memory is private to its one aiosqlite connection, so it keeps the async path.
        self._reader: Engine | None = None
        self._step_writer: Engine | None = None
        self._readers: _Threads | None = None
        self._writers: _Threads | None = None
        self._on_loop: _LoopReader | None = None
        in_memory = parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
        if self.is_sqlite and not in_memory:
            on_thread = parsed.set(drivername="sqlite+pysqlite")
            reader = create_engine(on_thread, pool_size=SQLITE_READ_THREADS, max_overflow=0, **decoding)
            _configure(reader)
            self._reader = reader.execution_options(**{_ONE_STATEMENT: True})
            step_writer = create_engine(on_thread, pool_size=1, max_overflow=0, **decoding)  # one writer
            _configure(step_writer)
            self._step_writer = step_writer.execution_options(**{_WRITE: True})
            self._readers = _Threads(SQLITE_READ_THREADS, "sqlite-read")
            self._writers = _Threads(1, "sqlite-write")
            on_loop = create_engine(on_thread, pool_size=1, max_overflow=0, **decoding)
            _configure(on_loop)
            self._on_loop = _LoopReader(on_loop, self._readers)
        self._read = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_engine = self.engine.execution_options(**{_WRITE: True})
        self._write = async_sessionmaker(self._write_engine, expire_on_commit=False)
        # A statement that runs alone needs no BEGIN and COMMIT around it. On PostgreSQL that is
        # autocommit, which asyncpg applies without a round trip (MariaDB's driver would spend
        # two, setting autocommit and resetting it, more than the one ROLLBACK it saves).
        self.autocommits = self.backend == "postgresql"
        self._one_statement = self.engine.execution_options(
            **{_ONE_STATEMENT: True}, **({"isolation_level": "AUTOCOMMIT"} if self.autocommits else {})
        )
        # Prepared statements (mesh.direct) run on the driver directly, asyncpg's or a SQLite file's
        # reader's, unless tracing wants a span per statement from SQLAlchemy's events.
        self._direct: dict[int, tuple[Executable, Direct]] | None = None
        self._on_asyncpg = False
        if not tracing.active() and (self.backend == "postgresql" or self._reader is not None):
            self._direct = {}
            self._on_asyncpg = self.backend == "postgresql"
        if self._on_asyncpg:
            self._refused: type[Exception] = importlib.import_module("asyncpg").PostgresError
        # SQLite has one writer at a time. Its writers wait in line here, on the event loop, rather
        # than each in its own connection's thread, polling the lock in busy_timeout's sleeps.
        self._writer: asyncio.Lock | contextlib.nullcontext[None] = (
            asyncio.Lock() if self.is_sqlite else contextlib.nullcontext()
        )
        self._when_unavailable: list[Callable[[], None]] = []
        _POOLS.add(self)

    @classmethod
    def for_service(cls, settings: Settings, service: str) -> Database:
        """The database of `service`, with the pool the settings ask for."""
        return cls(
            settings.database_url(service),
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_seconds,
            connect_timeout=settings.db_connect_timeout_seconds,
        )

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session for reads (it may write too, but on SQLite it takes the lock late)."""
        with self._translated():
            async with self._read() as session:
                yield session

    async def fetch(
        self, statement: Select[Any] | TextClause, parameters: Mapping[str, Any] | None = None
    ) -> Sequence[Row[*tuple[Any, ...]]]:
        """The rows of one SELECT, through Core: the hot reads, without an ORM session's cost.
        Hot paths build `statement` once, with bind parameters, and pass the values here.

        No BEGIN is sent on SQLite and PostgreSQL: one statement reads one consistent snapshot by
        itself, and BEGIN would cost more round trips. On a SQLite file the read runs on a thread of
        its own (see `__init__`), or, prepared, on the event loop if SQLite answers it at once
        (`_LoopReader`).
        """
        if self._reader is None or self._readers is None:
            return await self._alone(statement, parameters, read=True)
        with self._translated():
            if self._direct is not None and is_prepared(statement):
                compiled = self._compiled(statement, self._reader.dialect)
                arguments = compiled.arguments(parameters)
                _refuse_nul_in(arguments)
                if self._on_loop is not None:
                    answered = await self._on_loop.fetch(compiled, arguments)
                    if answered is not None:
                        return answered
                return await self._readers.run(
                    _fetch_direct, self._reader, compiled, arguments, statement, parameters
                )
            return await self._readers.run(_fetch_on, self._reader, statement, parameters)

    async def write_alone(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> Sequence[Row[*tuple[Any, ...]]]:
        """The rows one writing statement returns, run as a transaction of its own: alone, with
        no BEGIN or COMMIT, where the database autocommits (see `autocommits`), else in one."""
        if not self.autocommits:
            async with self.write_connection() as conn:
                return (await conn.execute(statement, parameters)).all()
        return await self._alone(statement, parameters, read=False)

    async def _alone(
        self, statement: Executable, parameters: Mapping[str, Any] | None, *, read: bool
    ) -> Sequence[Row[*tuple[Any, ...]]]:
        """The rows of one statement on a connection that sends no BEGIN (`_one_statement`), in
        one greenlet: an `AsyncConnection` would start one each to check out, execute and close;
        a prepared one on PostgreSQL on asyncpg directly (mesh.direct)."""
        if self._on_asyncpg and is_prepared(statement):
            rows = await self._run_direct(statement, parameters, read=read)
            if rows is not None:
                return rows
        with self._translated():
            return await greenlet_spawn(_fetch_on, self._one_statement.sync_engine, statement, parameters)

    async def _run_direct(
        self, statement: Executable, parameters: Mapping[str, Any] | None, *, read: bool
    ) -> list[Any] | None:
        """The rows of a prepared statement, run on its pooled connection's asyncpg connection; None
        where the statement must run again through SQLAlchemy, which then raises its error as for
        any statement: PostgreSQL refused it (it ran alone, so it changed nothing), or, for a
        read, the connection failed. A write whose connection failed may have been applied:
        DatabaseUnavailable, as SQLAlchemy would say, and it is never sent twice."""
        compiled = self._compiled(statement, self.engine.dialect)
        arguments = compiled.arguments(parameters)
        _refuse_nul_in(arguments)
        with self._translated():
            # A Connection (not the pool's raw one) so that a failed checkout is SQLAlchemy's error.
            conn = await greenlet_spawn(self.engine.sync_engine.connect)
            try:
                driver: Any = conn.connection.driver_connection
                records = await driver.fetch(compiled.sql, *arguments)
            except Exception as error:
                if isinstance(error, self._refused) and not _unavailable_sqlstate(_sqlstate(error)):
                    return None  # it ran alone, so it changed nothing
                await greenlet_spawn(conn.invalidate, error)  # the connection failed
                if read:
                    return None
                raise DatabaseUnavailable() from error  # a write may have been applied
            except BaseException:  # cancelled in the middle of a call: its connection's state is unknown
                await greenlet_spawn(conn.invalidate)
                raise
            finally:
                await greenlet_spawn(conn.close)
        return compiled.rows(records, records[0].keys() if records else ())

    def _compiled(self, statement: Executable, dialect: Dialect) -> Direct:
        """A prepared statement, compiled on its first run."""
        assert self._direct is not None
        known = self._direct.get(id(statement))
        if known is None:  # kept with its statement, so that the id stays its own
            known = self._direct[id(statement)] = (
                statement,
                Direct(cast("ClauseElement", statement), dialect),
            )
        return known[1]

    async def write_steps(self, steps: Callable[[Connection], T]) -> T:
        """`steps(conn)` in a write transaction, committed when they return, rolled back if they
        raise, run whole in one step: on a SQLite file in one hop to a thread (aiosqlite hops
        to its thread and back for every statement, BEGIN and COMMIT too), elsewhere in one
        greenlet. For hot writes whose statements need nothing awaited between them."""
        async with self._writer:
            with self._translated():
                if self._step_writer is not None and self._writers is not None:
                    return await self._writers.run(_in_transaction, self._step_writer, steps)
                return await greenlet_spawn(_in_transaction, self._write_engine.sync_engine, steps)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        async with self._writer:
            with self._translated():
                async with self._write() as session, session.begin():
                    yield session

    @asynccontextmanager
    async def write_connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a write transaction, for Core writes on a hot path and for schema
        changes: committed when the block ends, rolled back if it raises."""
        async with self._writer:
            with self._translated():
                async with self._write_engine.begin() as conn:
                    yield conn

    def when_unavailable(self, callback: Callable[[], None]) -> None:
        """Calls `callback` whenever a statement fails with `DatabaseUnavailable` (mesh.health's
        watch then pings at once)."""
        self._when_unavailable.append(callback)

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """`_translated()`, telling `when_unavailable`'s callbacks of an unavailable database."""
        try:
            with _translated():
                yield
        except DatabaseUnavailable:
            for callback in self._when_unavailable:
                callback()
            raise

    async def dispose(self) -> None:
        # Reads after this one take the async path, which opens connections again, as before.
        reader, step_writer, threads = self._reader, self._step_writer, (self._readers, self._writers)
        on_loop = self._on_loop
        self._reader = self._step_writer = self._readers = self._writers = self._on_loop = None
        if on_loop is not None:
            on_loop.close()
        for pool in threads:
            if pool is not None:
                await asyncio.to_thread(pool.stop)  # reads and writes in flight finish first
        for engine in (reader, step_writer):
            if engine is not None:
                engine.dispose()
        await self.engine.dispose()

    def describe(self) -> str:
        """The URL with any password hidden, for logs."""
        return self.engine.url.render_as_string(hide_password=True)


class _LoopReader:
    """A SQLite file's prepared reads, run on the event loop when SQLite answers them at once.

    On the reader thread, sqlite3 lets go of the GIL around each step of a read and takes it back
    after, while the loop's thread and gRPC's poller want it too: a page of 20 items cost that
    thread about twice its CPU in the services, and the loop waited for the GIL meanwhile. Run on
    the loop, a read takes the GIL back uncontended. What the loop must never do is wait, and
    here it does not:
    - its one connection is opened on the reader thread (opening may wait for another
      process's lock), and then has no busy timeout: SQLite answers SQLITE_BUSY at once where
      it would wait (a reader of a WAL file takes no lock a writer holds; another process in
      exclusive locking mode, or a crash's recovery, does);
    - a read that has not finished within LOOP_READ_STEPS of SQLite's steps is interrupted (a
      low-stock listing that scans a large table, say).
    Either way the reader thread answers it instead, as it does one SQLite refused (which that
    path runs again through SQLAlchemy)."""

    def __init__(self, engine: Engine, threads: _Threads) -> None:
        self.engine = engine
        self._threads = threads
        self._connection: PoolProxiedConnection | None = None
        self._opening = asyncio.Lock()
        self._left = 0  # slices of steps the read in progress may still take
        event.listen(engine, "connect", self._connect)  # after _configure's, whose busy timeout it undoes

    def _connect(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout = 0")
        dbapi_connection.set_progress_handler(self._slice, LOOP_READ_SLICE)

    def _slice(self) -> bool:
        """SQLite's call every LOOP_READ_SLICE steps: True interrupts the read."""
        self._left -= 1
        return self._left < 0

    async def fetch(self, compiled: Direct, arguments: list[Any]) -> list[Any] | None:
        """The read's rows, or None if SQLite would have waited, or took too long, or refused it."""
        connection = self._connection or await self._open()
        self._left = LOOP_READ_STEPS // LOOP_READ_SLICE
        return _sqlite_read(connection, compiled, arguments)

    async def _open(self) -> PoolProxiedConnection:
        async with self._opening:
            if self._connection is None:
                self._connection = await self._threads.run(self.engine.raw_connection)
            return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self.engine.dispose()


class _Threads:
    """Threads that run calls for the event loop, with less overhead per call than a
    `ThreadPoolExecutor` (no concurrent future, no lock or condition made per call): a call is
    one put on a queue, and its result one `call_soon_threadsafe` back."""

    def __init__(self, count: int, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]] | None]
        self._calls = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True) for n in range(count)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)` on a thread, in the caller's context (its trace's span, say)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.put((future, contextvars.copy_context().run, (call, *args)))
        return await future

    def _work(self) -> None:
        while (item := self._calls.get()) is not None:
            future, call, args = item
            try:
                result = call(*args)
            except BaseException as error:
                future.get_loop().call_soon_threadsafe(_settle, future, None, error)
            else:
                future.get_loop().call_soon_threadsafe(_settle, future, result, None)

    def stop(self) -> None:
        """Ends the threads once the calls queued before have run."""
        for _ in self._threads:
            self._calls.put(None)
        for thread in self._threads:
            thread.join()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():  # its caller has gone; the connection is back in the pool all the same
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _CountedPool(AsyncAdaptedQueuePool):
    """SQLAlchemy's pool for asyncio, counting the calls inside a checkout: those waiting for
    a connection to be returned, or to be made (SQLAlchemy has no such figure)."""

    waiting = 0

    def _do_get(self) -> ConnectionPoolEntry:
        self.waiting += 1
        try:
            return super()._do_get()
        finally:
            self.waiting -= 1


class _PoolCollector(Collector):
    """`invmesh_db_pool_*`, read from the pools of this process's databases at scrape time:
    no work per request. Only a queue pool (PostgreSQL, MariaDB, and SQLite files, which
    SQLAlchemy 2 pools the same way, their reader threads' pool included) has these figures;
    a database without one (SQLite in memory, a static pool) adds nothing rather than zeros
    that would not be true."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_use = GaugeMetricFamily("invmesh_db_pool_in_use", "Database connections checked out of the pool.")
        idle = GaugeMetricFamily("invmesh_db_pool_idle", "Database connections idle in the pool.")
        overflow = GaugeMetricFamily(
            "invmesh_db_pool_overflow", "Database connections open beyond the pool's size (max_overflow)."
        )
        databases = list(_POOLS)
        # A SQLite file's reader threads have pools of their own (`Database.fetch`, `write_steps`).
        pools = [db.engine.pool for db in databases] + [
            engine.pool for db in databases for engine in (db._reader, db._step_writer) if engine
        ]
        queued = [pool for pool in pools if isinstance(pool, QueuePool)]
        if queued:
            in_use.add_metric([], sum(pool.checkedout() for pool in queued))
            idle.add_metric([], sum(pool.checkedin() for pool in queued))
            overflow.add_metric([], sum(max(pool.overflow(), 0) for pool in queued))
            yield from (in_use, idle, overflow)
        counted = [pool for pool in pools if isinstance(pool, _CountedPool)]
        if counted:
            yield GaugeMetricFamily(
                "invmesh_db_pool_waiting",
                "Calls waiting for a database connection (to be returned to the pool, or made).",
                value=sum(pool.waiting for pool in counted),
            )


_POOLS: weakref.WeakSet[Database] = weakref.WeakSet()
REGISTRY.register(_PoolCollector())


def translate(error: Exception) -> Exception:
    """`error`, or the domain error it means: DatabaseUnavailable or TransactionConflict."""
    if is_unavailable(error):
        log.warning("database unavailable: %s", describe_error(error))
        return DatabaseUnavailable()
    if isinstance(error, sa_exc.DBAPIError) and _is_conflict(error.orig):
        return TransactionConflict()
    return error


@contextmanager
def _translated() -> Iterator[None]:
    """Re-raises what `translate` makes of an error; other errors pass unchanged."""
    try:
        yield
    except Exception as error:
        translated = translate(error)
        if translated is error:
            raise
        raise translated from error


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` means the database cannot be reached or dropped the connection."""
    if isinstance(error, (OSError, sa_exc.TimeoutError)):  # refused, timed out, or no pooled connection
        return True
    if not isinstance(error, sa_exc.DBAPIError):
        return False
    if error.connection_invalidated or isinstance(error.orig, OSError):
        return True
    if _unavailable_sqlstate(_sqlstate(error.orig)):
        return True
    return _mysql_errno(error.orig) in _UNAVAILABLE_MYSQL_ERRNOS


def _is_conflict(orig: BaseException | None) -> bool:
    if _sqlstate(orig) in _CONFLICT_SQLSTATES or _mysql_errno(orig) in _CONFLICT_MYSQL_ERRNOS:
        return True
    code = getattr(orig, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _SQLITE_BUSY_OR_LOCKED


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a database error (a SQLAlchemy error's driver error), if it has one."""
    return _sqlstate(getattr(error, "orig", None))


def _unavailable_sqlstate(code: str | None) -> bool:
    return code is not None and (code.startswith("08") or code in _UNAVAILABLE_SQLSTATES)


def _sqlstate(orig: BaseException | None) -> str | None:
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code if isinstance(code, str) else None


def _mysql_errno(orig: BaseException | None) -> int | None:
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def describe_error(error: BaseException) -> str:
    """What went wrong, in the driver's own words; never the URL (drivers don't print it)."""
    if isinstance(error, DatabaseUnavailable) and error.__cause__ is not None:
        error = error.__cause__
    cause = error.orig if isinstance(error, sa_exc.DBAPIError) and error.orig is not None else error
    return f"{type(cause).__name__}: {cause}"


def _connect_options(url: URL, timeout: float) -> dict[str, Any]:
    """Engine options that bound the time a new connection may take to `timeout`."""
    if url.get_backend_name() == "postgresql":
        return {"connect_args": {"timeout": timeout}}  # asyncpg's covers the whole handshake
    # asyncmy's connect_timeout covers the TCP connect only: a server that accepts and never
    # greets would hang the handshake. So connect through the driver ourselves, with a deadline
    # on all of it, from the arguments SQLAlchemy would have used.
    _, params = url.get_dialect()().create_connect_args(url)
    params.setdefault("charset", "utf8mb4")  # the driver's default is the server's, maybe 3-byte utf8
    driver = importlib.import_module(url.get_driver_name())

    async def connect() -> Any:
        return await asyncio.wait_for(driver.connect(**params), timeout)

    return {"async_creator": connect}


async def open_database(stack: AsyncExitStack, settings: Settings, service: str) -> Database:
    """The database of `service`, its schema at the newest migration; disposed when `stack` closes.

    An older schema is migrated only when auto-migration is on (the SQLite default); otherwise
    the service refuses to start and says to run `invmesh migrate`.
    """
    db = Database.for_service(settings, service)
    stack.push_async_callback(db.dispose)
    await ensure_schema(db, service, auto_migrate=settings.auto_migrate(service))
    log.info("using database %s", db.describe())
    return db


async def ensure_schema(db: Database, service: str, *, auto_migrate: bool) -> None:
    try:
        if await revisions.is_newest(db, service):
            return
        from mesh import migrations  # Alembic: only when the schema must change, or be explained

        head = migrations.head(service)
        current = await migrations.current(db, service)
        if current == head:
            return
        if current is not None and not migrations.knows(service, current):
            raise StartupError(
                f"the {service} database schema is at revision {current}, which this version of invmesh "
                f"does not know (a newer version migrated it); run that version, or one that knows {current}"
            )
        if not auto_migrate:
            found = f"at revision {current}" if current else "empty (no invmesh tables)"
            raise StartupError(
                f"the {service} database schema is {found}, but this version needs revision {head}: "
                f"run `invmesh migrate {service}` (or set DB_AUTO_MIGRATE=true)"
            )
        await migrations.upgrade(db, service)
        log.info("migrated the %s database from %s to %s", service, current or "empty", head)
    except (DatabaseUnavailable, sa_exc.DBAPIError, OSError) as error:
        raise StartupError(f"cannot use the {service} database: {describe_error(error)}") from error


def _configure(engine: Engine) -> None:
    """What every engine of a `Database` does on its connections and statements."""
    tracing.instrument_engine(engine)  # a span per statement, when tracing is on
    event.listen(engine, "before_cursor_execute", _refuse_nul)
    if engine.dialect.name == "sqlite":
        _sqlite_transactions(engine)


def _fetch_on(
    engine: Engine, statement: Executable, parameters: Mapping[str, Any] | None
) -> Sequence[Row[*tuple[Any, ...]]]:
    with engine.connect() as conn:
        return conn.execute(statement, parameters).all()


def _fetch_direct(
    engine: Engine,
    compiled: Direct,
    arguments: list[Any],
    statement: Executable,
    parameters: Mapping[str, Any] | None,
) -> list[Any]:
    """A prepared read on a SQLite file, on SQLite's own driver (mesh.direct), its `arguments`
    those of `parameters`; one SQLite refused runs again through SQLAlchemy, which raises its
    error as for any statement."""
    with contextlib.closing(engine.raw_connection()) as connection:
        rows = _sqlite_read(connection, compiled, arguments)
    if rows is None:  # with its connection back in the pool: a file's reader has one
        return list(_fetch_on(engine, statement, parameters))
    return rows


def _sqlite_read(
    connection: PoolProxiedConnection, compiled: Direct, arguments: list[Any]
) -> list[Any] | None:
    """A prepared read on a SQLite file's `sqlite3` connection: its rows, or None if SQLite
    refused it (or, on the loop's connection, would have waited or ran too long)."""
    try:
        cursor = connection.driver_connection.execute(compiled.sql, arguments)  # type: ignore[union-attr]
        records = cursor.fetchall()
    except sqlite3.Error:
        return None
    return compiled.rows(records, [column[0] for column in cursor.description])


def _in_transaction(engine: Engine, steps: Callable[[Connection], T]) -> T:
    with engine.begin() as conn:
        return steps(conn)


def _refuse_nul(
    conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    rows = parameters if executemany else [parameters]
    for row in rows or ():
        # A row is a mapping or a sequence of values; a batched INSERT's driver parameters can
        # also come as one flat sequence of scalars.
        _refuse_nul_in(
            row.values() if isinstance(row, dict) else row if isinstance(row, list | tuple) else [row]
        )


def _refuse_nul_in(values: Iterable[Any]) -> None:
    if any(isinstance(value, str) and "\x00" in value for value in values):
        raise InvalidArgument("text must not contain NUL characters", reason="INVALID_CHARACTER")


def _ping_when_idle(engine: Any) -> None:
    """Pings a pooled connection as it is checked out, if it has been idle PING_IDLE_AFTER_SECONDS
    or more, and replaces it if the ping fails (SQLAlchemy's pessimistic disconnect handling,
    with HikariCP's bypass window). `pool_pre_ping` pings at every checkout, which on asyncpg
    is three round trips (BEGIN, an empty query, ROLLBACK) before every statement of a busy
    service. A connection used a moment ago is as alive as a ping would show; should the server
    have restarted since, the statement that finds it fails as one in flight would, and the
    pool then replaces every connection it opened before."""
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def returned(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def taken(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        returned_at = record.info.get(_RETURNED_AT)
        if returned_at is None or time.monotonic() - returned_at < PING_IDLE_AFTER_SECONDS:
            return  # new, or in use a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as error:
            raise sa_exc.DisconnectionError(f"the pooled connection failed its ping: {error}") from error


def _sqlite_transactions(engine: Any) -> None:
    # SQLAlchemy's documented recipe for pysqlite/aiosqlite: take BEGIN away from the
    # driver and emit it ourselves, choosing IMMEDIATE for write transactions.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # The busy timeout first: while another process holds a lock, even journal_mode waits for it.
        for pragma in ("busy_timeout=5000", "journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()
        # SQLite's own lower() folds ASCII only; ilike() is lower(x) LIKE lower(y) here.
        dbapi_connection.create_function("lower", 1, _lower, deterministic=True)

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get(_WRITE):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif not options.get(_ONE_STATEMENT):
            conn.exec_driver_sql("BEGIN")


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value
