"""Async SQLAlchemy 2 engines and sessions: one `Database` per service.

SQLite (aiosqlite) is the embedded default; any async URL works. On SQLite, write
transactions start with BEGIN IMMEDIATE so two writers never interleave (a deferred
transaction that reads, then writes, can fail with "database is locked" instead of
waiting); reads stay deferred and run beside writes under WAL.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, MetaData, TypeDecorator, event
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeEngine

log = logging.getLogger(__name__)

_WRITE = "invmesh_write"


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite keeps no zone)."""

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


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Database:
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        options: dict[str, Any] = {"pool_pre_ping": not self.is_sqlite}
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        else:
            options |= {"pool_size": pool_size, "max_overflow": pool_size}
        self.engine = create_async_engine(url, **options)
        if self.is_sqlite:
            _sqlite_transactions(self.engine.sync_engine)
        self._read = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write = async_sessionmaker(
            self.engine.execution_options(**{_WRITE: True}), expire_on_commit=False
        )

    def session(self) -> AsyncSession:
        """A session for reads (it may write too, but on SQLite it takes the lock late)."""
        return self._read()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        async with self._write() as session, session.begin():
            yield session

    async def create_all(self, metadata: MetaData) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def dispose(self) -> None:
        await self.engine.dispose()

    def describe(self) -> str:
        """The URL with any password hidden, for logs."""
        return self.engine.url.render_as_string(hide_password=True)


async def open_database(stack: AsyncExitStack, url: str, metadata: MetaData) -> Database:
    """A database with its tables created, disposed when `stack` closes."""
    db = Database(url)
    stack.push_async_callback(db.dispose)
    await db.create_all(metadata)
    log.info("using database %s", db.describe())
    return db


def _sqlite_transactions(engine: Any) -> None:
    # SQLAlchemy's documented recipe for pysqlite/aiosqlite: take BEGIN away from the
    # driver and emit it ourselves, choosing IMMEDIATE for write transactions.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=5000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")
