"""Prepared statements on the driver directly (mesh.direct): the same rows as through
SQLAlchemy, the database's refusals raised as SQLAlchemy's errors, and on PostgreSQL a
connection that fails or is cancelled in the middle of a call dropped, never reused, and a
write never sent twice. On a SQLite file a prepared read is answered on the event loop, unless
SQLite would make it wait or it runs long: then the reader thread answers it.

Not on MariaDB, where nothing runs directly.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Executable,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.sql.elements import ClauseElement

from inventory.models import DEFAULT_LOCATION_ID, Item, LocationStock, Movement, Reservation
from mesh import db as db_module
from mesh.db import Database, ensure_schema, utcnow
from mesh.direct import Direct, is_prepared, prepared
from mesh.errors import DatabaseUnavailable, InvalidArgument
from tests import databases

pytestmark = pytest.mark.skipif(databases.KIND == "mariadb", reason="nothing runs directly on MariaDB")
on_postgresql = pytest.mark.skipif(databases.KIND != "postgresql", reason="asyncpg's connections")
on_a_sqlite_file = pytest.mark.skipif(databases.KIND != "sqlite", reason="a SQLite file's reads")

# Every module that prepares statements: each of them must compile for asyncpg.
PREPARING = (
    "inventory.stock",
    "inventory.sequencer",
    "inventory.stock_feed",
    "inventory.watch",
    "products.catalog",
    "products.change_watch",
)
_PROBES = Table("direct_probes", MetaData(), Column("n", Integer, primary_key=True))
_SLEEPY_READ = prepared(
    select(func.pg_sleep(bindparam("seconds", type_=Integer)), bindparam("n", type_=Integer))
)
_SLEEPY_WRITE = prepared(
    insert(_PROBES)
    .from_select(
        ["n"], select(bindparam("n", type_=Integer)).where(func.pg_sleep(bindparam("seconds")).is_not(None))
    )
    .returning(_PROBES.c.n)
)
_MISSING = prepared(select(Table("no_such_table", MetaData(), Column("n", Integer)).c.n))
_ECHO = prepared(select(bindparam("word", type_=String)))
_DUPLICATE = prepared(insert(_PROBES).values(n=bindparam("n")).returning(_PROBES.c.n))


@pytest.fixture
async def inventory_db(tmp_path: Path) -> AsyncIterator[Database]:
    async with databases.fresh_database(tmp_path, "direct") as url:
        db = Database(url)
        try:
            await ensure_schema(db, "inventory", auto_migrate=True)
            async with db.write_connection() as conn:
                await conn.run_sync(_PROBES.create)
            yield db
        finally:
            await db.dispose()


def through_sqlalchemy(db: Database) -> Database:
    """`db` with its direct path off: every statement through SQLAlchemy, as before."""
    db._direct = None
    db._on_asyncpg = False
    return db


def test_every_prepared_statement_compiles_for_asyncpg() -> None:
    dialect = create_async_engine("postgresql+asyncpg://").dialect  # connects to nothing
    found = [
        value
        for name in PREPARING
        for value in vars(importlib.import_module(name)).values()
        if isinstance(value, Executable) and isinstance(value, ClauseElement) and is_prepared(value)
    ]
    assert len(found) >= 11
    for statement in found:
        Direct(statement, dialect)  # raises for a statement it could not run as SQLAlchemy would


async def test_a_prepared_read_answers_the_rows_sqlalchemy_answers(inventory_db: Database) -> None:
    from inventory import stock, stock_feed, watch

    now = utcnow()
    async with inventory_db.transaction() as session:
        session.add(Item(product_id="p1", quantity=7, updated_at=now))
        await session.flush()
        session.add(
            LocationStock(product_id="p1", location_id=DEFAULT_LOCATION_ID, on_hand=7, reorder_point=3)
        )
        session.add_all(
            [
                Reservation(
                    id="r1", product_id="p1", location_id=DEFAULT_LOCATION_ID, quantity=2, state="ACTIVE",
                    expires_at=now + dt.timedelta(hours=1), actor="u1",
                ),
                Movement(
                    product_id="p1", type="IN", quantity=7, balance_after=7, actor="u1", actor_email="a@b.c",
                    request_id="k1", reason="delivery", seq=1, reorder_point=3,
                ),
            ]
        )  # fmt: skip
    reads: list[tuple[Any, dict[str, Any]]] = [
        (stock._STOCK_OF, {"pid": "p1", "now": utcnow()}),
        (stock._STOCK_OF, {"pid": "nobody", "now": utcnow()}),
        (watch._NEWER, {"after": 0}),
        (stock_feed._UNPUBLISHED, {}),
        (stock_feed._LEFT, {}),
    ]
    direct = [await inventory_db.fetch(statement, values) for statement, values in reads]
    assert inventory_db._direct  # they did run directly
    plain = [await through_sqlalchemy(inventory_db).fetch(statement, values) for statement, values in reads]
    assert direct == plain
    for ran_directly, through in zip(direct, plain, strict=True):
        for row, same in zip(ran_directly, through, strict=True):
            assert row._fields == same._fields
    (item,) = direct[0]
    assert item.levels == {DEFAULT_LOCATION_ID: [7, 3]} and item.held == {DEFAULT_LOCATION_ID: 2}
    assert item.updated_at == now and item.updated_at.tzinfo is dt.UTC  # aware, as SQLAlchemy gives it
    (movement,) = direct[2]
    assert (movement.type, movement.quantity, movement.actor_email) == ("IN", 7, "a@b.c")


async def test_a_statement_postgresql_refuses_raises_sqlalchemys_error_and_changes_nothing(
    inventory_db: Database,
) -> None:
    assert [tuple(row) for row in await inventory_db.write_alone(_DUPLICATE, {"n": 1})] == [(1,)]
    with pytest.raises(IntegrityError):
        await inventory_db.write_alone(_DUPLICATE, {"n": 1})
    with pytest.raises(InvalidArgument):  # refused before it is sent, as through SQLAlchemy
        await inventory_db.fetch(_ECHO, {"word": "a\x00b"})
    assert [tuple(row) for row in await inventory_db.fetch(_ECHO, {"word": "ab"})] == [("ab",)]
    with pytest.raises(DBAPIError):  # SQLAlchemy's error, not the driver's
        await inventory_db.fetch(_MISSING, {})
    assert await probes(inventory_db) == [1]
    assert inventory_db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@on_postgresql
async def test_a_read_cancelled_mid_call_drops_its_connection_and_the_next_read_is_served(
    inventory_db: Database,
) -> None:
    await inventory_db.fetch(_SLEEPY_READ, {"seconds": 0, "n": 0})
    pool: Any = inventory_db.engine.pool
    dropped: list[BaseException | None] = []
    event.listen(pool, "invalidate", lambda connection, record, error: dropped.append(error))
    read = asyncio.ensure_future(inventory_db.fetch(_SLEEPY_READ, {"seconds": 30, "n": 1}))
    await until(lambda: pool.checkedout() == 1)
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read
    assert pool.checkedout() == 0
    assert dropped == [None]  # as SQLAlchemy drops a connection whose call was cancelled
    async with asyncio.timeout(5):
        rows = await inventory_db.fetch(_SLEEPY_READ, {"seconds": 0, "n": 2})
    assert [tuple(row) for row in rows] == [(None, 2)]


@on_postgresql
async def test_a_lost_connection_fails_a_write_once_and_a_read_is_answered_on_another(
    inventory_db: Database,
) -> None:
    write = asyncio.ensure_future(inventory_db.write_alone(_SLEEPY_WRITE, {"seconds": 30, "n": 5}))
    await terminate_the_backend_sleeping(inventory_db)
    with pytest.raises(DatabaseUnavailable):
        await write
    assert await probes(inventory_db) == []  # sent once, never again

    read = asyncio.ensure_future(inventory_db.fetch(_SLEEPY_READ, {"seconds": 1, "n": 6}))
    await terminate_the_backend_sleeping(inventory_db)
    assert [tuple(row) for row in await read] == [(None, 6)]  # again, through SQLAlchemy


@on_a_sqlite_file
async def test_a_prepared_read_of_a_sqlite_file_is_answered_on_the_loop(
    inventory_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inventory import stock

    await stocked(inventory_db, 30)
    on_thread = threads_used(inventory_db, monkeypatch)
    page = stock._LISTINGS[False, False, False]
    values = {"loc": "", "size": 21, "after": None, "now": utcnow()}
    rows = await inventory_db.fetch(page, values)
    assert len(rows) == 21 and db_module._fetch_direct not in on_thread
    assert rows == await through_sqlalchemy(inventory_db).fetch(page, values)


@on_a_sqlite_file
async def test_a_sqlite_read_that_runs_long_on_the_loop_is_answered_by_the_reader_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inventory import stock

    monkeypatch.setattr(db_module, "LOOP_READ_STEPS", 1)  # read as each connection opens
    monkeypatch.setattr(db_module, "LOOP_READ_SLICE", 1)
    async with databases.fresh_database(tmp_path, "long") as url:
        db = Database(url)
        try:
            await ensure_schema(db, "inventory", auto_migrate=True)
            await stocked(db, 30)
            on_thread = threads_used(db, monkeypatch)
            page = stock._LISTINGS[False, False, False]
            values = {"loc": "", "size": 21, "after": None, "now": utcnow()}
            rows = await db.fetch(page, values)
            assert on_thread.count(db_module._fetch_direct) == 1  # interrupted on the loop, read there
            assert rows == await through_sqlalchemy(db).fetch(page, values)
        finally:
            await db.dispose()


@on_a_sqlite_file
async def test_a_sqlite_read_that_would_wait_for_a_lock_waits_off_the_loop(tmp_path: Path) -> None:
    from inventory import stock

    async with databases.fresh_database(tmp_path, "locked") as url:
        db = Database(url)
        await ensure_schema(db, "inventory", auto_migrate=True)
        await stocked(db, 1)
        await db.dispose()
        # Another process in exclusive locking mode keeps every connection out of a WAL file.
        holder = sqlite3.connect(db.engine.url.database or "", isolation_level=None)
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        db = Database(url)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        async def release_soon() -> None:
            await asyncio.sleep(0.3)
            holder.execute("COMMIT")
            holder.close()

        ticker = asyncio.create_task(tick())
        releaser = asyncio.create_task(release_soon())
        try:
            rows = await db.fetch(stock._STOCK_OF, {"pid": "p0", "now": utcnow()})
            assert [(row.product_id, row.quantity) for row in rows] == [("p0", 1)]
            assert ticks >= 10  # the loop ran on while the read waited for the lock
        finally:
            ticker.cancel()
            await releaser
            await db.dispose()


async def stocked(db: Database, items: int) -> None:
    """`items` products p0, p1, ... with i + 1 units each at the default location."""
    async with db.transaction() as session:
        session.add_all(Item(product_id=f"p{i}", quantity=i + 1, updated_at=utcnow()) for i in range(items))
        await session.flush()
        session.add_all(
            LocationStock(product_id=f"p{i}", location_id=DEFAULT_LOCATION_ID, on_hand=i + 1)
            for i in range(items)
        )


def threads_used(db: Database, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The calls `db` hands to its reader thread from now on (opening its loop's connection, the
    first time, is one)."""
    assert db._readers is not None
    calls: list[Any] = []
    run = db._readers.run

    async def counted(call: Any, *args: Any) -> Any:
        calls.append(call)
        return await run(call, *args)

    monkeypatch.setattr(db._readers, "run", counted)
    return calls


async def terminate_the_backend_sleeping(db: Database) -> None:
    query = text(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE '%pg_sleep%'"
    )
    async with asyncio.timeout(10):
        while True:
            async with db.engine.connect() as conn:
                if (await conn.execute(query)).all():
                    return
            await asyncio.sleep(0.02)


async def probes(db: Database) -> list[int]:
    return [n for (n,) in await through_sqlalchemy_read(db, select(_PROBES.c.n).order_by(_PROBES.c.n))]


async def through_sqlalchemy_read(db: Database, statement: Any) -> list[Any]:
    async with db.engine.connect() as conn:
        return list((await conn.execute(statement)).all())


async def until(condition: Any) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.01)
