"""The database kind the suite runs on: INVMESH_TEST_DATABASE=sqlite (the default), postgresql
or mariadb.

SQLite needs nothing: every test gets its own files in a temporary folder, copied from files
the run migrated once (`migrated_sqlite`). On a server, the run creates one database per
service, with a random suffix, migrates each to head once, empties their tables before each
test that asks for settings, and drops them at the end; the shared mesh (tests/conftest.py)
has a second set of its own. Tests that need a database of their own (migrations, startup
checks) get a fresh one from `fresh_database`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import MetaData, delete, insert, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from auth.models import Base as AuthBase
from inventory.models import DEFAULT_LOCATION_CODE, DEFAULT_LOCATION_ID
from inventory.models import Base as InventoryBase
from mesh import migrations
from mesh.db import Database
from products.models import Base as ProductsBase

T = TypeVar("T")
Rows = dict[str, list[dict[str, Any]]]
"""A service's rows, by table name."""

KIND = os.environ.get("INVMESH_TEST_DATABASE", "sqlite").strip().lower() or "sqlite"
SERVER_URLS = {
    "postgresql": os.environ.get(
        "INVMESH_TEST_POSTGRESQL_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    ),
    "mariadb": os.environ.get("INVMESH_TEST_MARIADB_URL", "mysql+asyncmy://root@127.0.0.1:3306/mysql"),
}
METADATA: dict[str, MetaData] = {
    "auth": AuthBase.metadata,
    "products": ProductsBase.metadata,
    "inventory": InventoryBase.metadata,
}
# The rows a migration inserts, which an emptied database gets back: inventory's DEFAULT location.
SEEDED: dict[str, Rows] = {
    "inventory": {
        "locations": [
            {
                "id": DEFAULT_LOCATION_ID,
                "code": DEFAULT_LOCATION_CODE,
                "name": "Default",
                "created_at": dt.datetime(2026, 12, 6, tzinfo=dt.UTC),
            }
        ],
        "movement_feed": [{"id": 1, "last_seq": 0}],
    }
}
RUN_PREFIX = f"invmesh_test_{secrets.token_hex(4)}"

if KIND not in ("sqlite", *SERVER_URLS):
    raise SystemExit(f"INVMESH_TEST_DATABASE must be sqlite, postgresql or mariadb, not {KIND!r}")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Runs `coroutine` to the end on a loop of its own thread, apart from the tests' loops."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class Server:
    """A PostgreSQL or MariaDB server on which the run (or a test, at `admin_url`) creates and
    drops its databases."""

    def __init__(self, kind: str, admin_url: str | None = None) -> None:
        self.kind = kind
        self.admin_url = make_url(admin_url or SERVER_URLS[kind])

    def describe(self) -> str:
        return f"{self.kind} at {self.admin_url.host}:{self.admin_url.port}"

    def url(self, database: str) -> str:
        url: URL = self.admin_url.set(database=database)
        return url.render_as_string(hide_password=False)

    def _quote(self, name: str) -> str:
        return f'"{name}"' if self.kind == "postgresql" else f"`{name}`"

    async def _admin(self, *statements: str) -> None:
        engine = create_async_engine(
            self.admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args=_timeout(self.kind)
        )
        try:
            async with engine.connect() as conn:
                for statement in statements:
                    await conn.execute(text(statement))
        finally:
            await engine.dispose()

    async def problem(self) -> str | None:
        """Why the server cannot be used, or None if it can."""
        try:
            await self._admin("SELECT 1")
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    async def create(self, name: str) -> str:
        await self._admin(f"CREATE DATABASE {self._quote(name)}")
        return self.url(name)

    async def drop(self, *names: str) -> None:
        force = " WITH (FORCE)" if self.kind == "postgresql" else ""  # ends what a killed test left open
        await self._admin(*(f"DROP DATABASE IF EXISTS {self._quote(name)}{force}" for name in names))


def _timeout(kind: str) -> dict[str, float]:
    return {"timeout": 3} if kind == "postgresql" else {"connect_timeout": 3}


SERVER = Server(KIND) if KIND != "sqlite" else None


class ServiceDatabases:
    """The run's database per service on a server: created and migrated once, emptied per test."""

    def __init__(self, server: Server, label: str = "") -> None:
        self.server = server
        self.names = {service: f"{RUN_PREFIX}{label}_{service}" for service in METADATA}
        self.urls = {service: server.url(name) for service, name in self.names.items()}

    async def create(self) -> None:
        for service, name in self.names.items():
            await self.server.create(name)
            db = Database(self.urls[service])
            try:
                await migrations.upgrade(db, service)
            finally:
                await db.dispose()

    async def drop(self) -> None:
        await self.server.drop(*self.names.values())

    async def empty(self) -> None:
        for service, url in self.urls.items():
            engine = create_async_engine(url, poolclass=NullPool)
            try:
                async with engine.begin() as conn:
                    await replace_rows(conn, service)
            finally:
                await engine.dispose()


_HAS_SQLITE_SEQUENCE = text("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_sequence'")


async def read_rows(conn: AsyncConnection, service: str) -> Rows:
    """Every row of `service`'s tables."""
    return {
        table.name: [dict(row) for row in (await conn.execute(select(table))).mappings()]
        for table in METADATA[service].sorted_tables
    }


async def replace_rows(conn: AsyncConnection, service: str, rows: Rows | None = None) -> None:
    """Deletes every row of `service`'s tables (children first; faster than TRUNCATE for the few
    rows a test leaves), then inserts `rows` (parents first), or a table's `SEEDED` rows where
    `rows` has none, in the transaction of `conn`."""
    tables = METADATA[service].sorted_tables
    for table in reversed(tables):
        await conn.execute(delete(table))
    if conn.dialect.name == "sqlite" and await conn.scalar(_HAS_SQLITE_SEQUENCE):
        # AUTOINCREMENT keys start from 1 again, as in a new file (a server's sequences go on,
        # as they did before the shared mesh).
        await conn.execute(text("DELETE FROM sqlite_sequence"))
    for table in tables:
        if kept := (rows or {}).get(table.name) or SEEDED.get(service, {}).get(table.name):
            await conn.execute(insert(table), kept)


async def migrated_sqlite(folder: Path) -> None:
    """Creates each service's SQLite file in `folder`, migrated to head, for `copy_sqlite`."""
    for service in METADATA:
        db = Database(f"sqlite+aiosqlite:///{folder / f'{service}.db'}")
        try:
            await migrations.upgrade(db, service)
        finally:
            await db.dispose()


def copy_sqlite(migrated: Path, data_dir: Path) -> None:
    """Puts the migrated files into `data_dir`: a service starting there finds its schema at
    head and skips Alembic, which costs more than the copy."""
    for file in migrated.iterdir():
        shutil.copyfile(file, data_dir / file.name)


@asynccontextmanager
async def fresh_database(tmp_path: Path, label: str) -> AsyncIterator[str]:
    """The URL of a new, empty database of the run's kind; dropped afterwards."""
    if SERVER is None:
        # Not `<service>.db`: the settings' own files in tmp_path have those names.
        yield f"sqlite+aiosqlite:///{tmp_path / f'fresh-{label}.db'}"
        return
    name = f"{RUN_PREFIX}_{label}_{secrets.token_hex(3)}"
    url = await SERVER.create(name)
    try:
        yield url
    finally:
        await SERVER.drop(name)
