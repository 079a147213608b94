"""The database layer on the run's kind of database (tests/databases.py): migrations up and
down, models equal to the migrated schema, startup refusals, `invmesh migrate`, and a
database server that drops connections, goes away and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import SecretStr
from sqlalchemy import (
    JSON,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, make_url

from auth.service import running as running_auth
from inventory.models import DEFAULT_LOCATION_ID
from invmesh.auth.v1 import auth_service_pb2_grpc
from invmesh.products.v1 import products_service_pb2 as pb
from invmesh.products.v1 import products_service_pb2_grpc
from mesh import migrations, revisions
from mesh.config import Settings
from mesh.db import PING_IDLE_AFTER_SECONDS, Database, StartupError, UtcDateTime
from mesh.errors import DatabaseUnavailable, InvalidArgument
from products.service import running as running_products
from tests import databases
from tests.conftest import METRICS_OFF, SmtpServer, free_port, mesh_settings, user_token
from tests.rpc import error_reason, expect_error

SERVICES = list(databases.METADATA)
on_a_server = pytest.mark.skipif(
    databases.SERVER is None, reason="an SQLite file cannot become unreachable; run with a database server"
)


def with_database(settings: Settings, service: str, url: str, **updates: object) -> Settings:
    """`settings` with `service`'s database at `url` (and any other `updates`)."""
    return settings.model_copy(update={f"{service}_database_url": SecretStr(url), **updates})


async def differences(db: Database, service: str, metadata: MetaData) -> list[Any]:
    """What Alembic's autogenerate would change to make the database match `metadata`."""

    def compare(connection: Connection) -> list[Any]:
        options = migrations.context_options(service, metadata, connection)
        del options["connection"]
        return list(compare_metadata(MigrationContext.configure(connection, opts=options), metadata))

    async with db.session() as session:
        return await (await session.connection()).run_sync(compare)


async def table_names(db: Database) -> set[str]:
    async with db.session() as session:
        conn = await session.connection()
        return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))


@pytest.mark.parametrize("service", SERVICES)
def test_each_history_is_numbered_as_startup_reads_it(service: str) -> None:
    """A service sees that its schema is current without Alembic (mesh/revisions.py), reading
    the newest revision from the file names: each revision is its file's four digits and
    revises the one before."""
    script = ScriptDirectory.from_config(migrations.config(service))
    history = list(reversed(list(script.walk_revisions())))
    numbers = [f"{n:04d}" for n in range(1, len(history) + 1)]
    assert [r.revision for r in history] == numbers
    assert [r.down_revision for r in history] == [None, *numbers[:-1]]
    assert all(Path(r.path).name.startswith(f"{r.revision}_") for r in history)
    assert revisions.newest(service) == migrations.head(service)


def test_a_service_on_a_current_schema_never_loads_alembic(tmp_path: Path) -> None:
    """Alembic, with Mako and Pygments, would stay in the process's memory (about 10 MiB):
    `invmesh up` migrates before it starts the services, which then only check."""
    env = {
        **os.environ,
        **METRICS_OFF,
        "INVMESH_DATA_DIR": str(tmp_path),
        "PRODUCTS_DATABASE_URL": "",
        "LOG_LEVEL": "ERROR",
    }
    opened = (
        "import asyncio, contextlib, sys\n"
        "from mesh.config import load_settings\n"
        "from mesh.db import open_database\n"
        "async def main():\n"
        "    async with contextlib.AsyncExitStack() as stack:\n"
        "        await open_database(stack, load_settings(), 'products')\n"
        "asyncio.run(main())\n"
        "print('alembic' in sys.modules)\n"
    )

    def loads_alembic() -> bool:
        run = subprocess.run(
            [sys.executable, "-c", opened], env=env, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.strip() == "True"

    assert loads_alembic()  # an empty database: the service migrates it, as DB_AUTO_MIGRATE allows on SQLite
    assert not loads_alembic()  # now current


@pytest.mark.parametrize("service", SERVICES)
async def test_each_history_goes_up_down_and_up_and_matches_the_models(tmp_path: Path, service: str) -> None:
    metadata = databases.METADATA[service]
    async with databases.fresh_database(tmp_path, service) as url:
        db = Database(url)
        try:
            assert await migrations.current(db, service) is None
            for _ in range(2):  # empty -> head -> base -> head
                await migrations.upgrade(db, service)
                assert await migrations.current(db, service) == migrations.head(service)
                assert await table_names(db) == {*metadata.tables, revisions.version_table(service)}
                assert await differences(db, service, metadata) == []
                if _ == 0:
                    await migrations.downgrade(db, service, "base")
                    assert await migrations.current(db, service) is None
                    assert await table_names(db) <= {revisions.version_table(service)}

            # The comparison does see a model the migrations do not create.
            changed = MetaData()
            for table in metadata.sorted_tables:
                table.to_metadata(changed)
            next(iter(changed.tables.values())).append_column(Column("unmigrated", Integer))
            assert [d[0] for d in await differences(db, service, changed)] == ["add_column"]
        finally:
            await db.dispose()


async def test_the_services_share_one_database_with_a_version_table_each(tmp_path: Path) -> None:
    async with databases.fresh_database(tmp_path, "shared") as url:
        db = Database(url)
        try:
            for service in SERVICES:
                await migrations.upgrade(db, service)
            for service in SERVICES:
                assert await migrations.current(db, service) == migrations.head(service)
                assert await differences(db, service, databases.METADATA[service]) == []
            await migrations.downgrade(db, "products", "base")
            assert await migrations.current(db, "products") is None
            assert await migrations.current(db, "auth") == migrations.head("auth")
        finally:
            await db.dispose()


async def test_upgrading_to_the_stock_feed_reports_every_existing_item_once(tmp_path: Path) -> None:
    """Products' new stock_levels start at version 0 and inventory's items stay unpublished
    at version 1, so the feed's first batches replace every old level."""
    async with databases.fresh_database(tmp_path, "shared") as url:
        db = Database(url)
        try:
            await migrations.upgrade(db, "inventory", "0001")
            await migrations.upgrade(db, "products", "0002")
            async with db.write_connection() as conn:
                await conn.execute(
                    text("INSERT INTO inventory_items (product_id, quantity) VALUES ('p-1', 4)")
                )
                await conn.execute(
                    text(
                        "INSERT INTO products (id, sku, name, description, price_minor, currency, created_at,"
                        " updated_at) VALUES ('p-1', 'S', 'N', '', 100, 'USD', :now, :now)"
                    ),
                    {"now": dt.datetime(2026, 12, 1)},
                )
            await migrations.upgrade(db, "inventory")
            await migrations.upgrade(db, "products")
            items = await db.fetch(
                text("SELECT product_id, quantity, version, unpublished FROM inventory_items")
            )
            levels = await db.fetch(text("SELECT product_id, quantity, version FROM stock_levels"))
            assert [tuple(r) for r in items] == [("p-1", 4, 1, True)]
            assert [tuple(r) for r in levels] == [("p-1", 0, 0)]
        finally:
            await db.dispose()


async def test_upgrading_to_locations_puts_every_items_stock_in_default(tmp_path: Path) -> None:
    """Revision 0003: each item's stock becomes its (product, DEFAULT) row, retired ones too, and
    every movement already written names DEFAULT, so each location's ledger replays to its row."""
    async with databases.fresh_database(tmp_path, "inventory") as url:
        db = Database(url)
        try:
            await migrations.upgrade(db, "inventory", "0002")
            now = dt.datetime(2026, 12, 1)
            async with db.write_connection() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO inventory_items (product_id, quantity, updated_at, retired_at)"
                        " VALUES ('p-1', 4, :now, NULL), ('p-2', 0, :now, NULL), ('p-3', 2, :now, :now)"
                    ),
                    {"now": now},
                )
                for pid, moved, balance in (("p-1", 6, 6), ("p-1", -2, 4), ("p-3", 2, 2)):
                    await conn.execute(
                        text(
                            "INSERT INTO movements (product_id, type, quantity, balance_after, reason,"
                            " reference, actor, created_at) VALUES (:pid, :kind, :moved, :balance,"
                            " '', '', 'u', :now)"
                        ),
                        {
                            "pid": pid,
                            "kind": "IN" if moved > 0 else "OUT",
                            "moved": moved,
                            "balance": balance,
                            "now": now,
                        },
                    )
            await migrations.upgrade(db, "inventory")
            assert await differences(db, "inventory", databases.METADATA["inventory"]) == []
            locations = await db.fetch(text("SELECT id, code FROM locations"))
            assert [tuple(r) for r in locations] == [(DEFAULT_LOCATION_ID, "DEFAULT")]
            levels = await db.fetch(
                text("SELECT product_id, location_id, on_hand FROM location_stock ORDER BY product_id")
            )
            assert [tuple(r) for r in levels] == [
                ("p-1", DEFAULT_LOCATION_ID, 4),
                ("p-2", DEFAULT_LOCATION_ID, 0),
                ("p-3", DEFAULT_LOCATION_ID, 2),
            ]
            sums = await db.fetch(
                text(
                    "SELECT product_id, location_id, sum(quantity) FROM movements"
                    " GROUP BY product_id, location_id"
                )
            )
            assert sorted(tuple(r) for r in sums) == [
                ("p-1", DEFAULT_LOCATION_ID, 4),
                ("p-3", DEFAULT_LOCATION_ID, 2),
            ]
            assert [tuple(r) for r in await db.fetch(text("SELECT count(*) FROM reservations"))] == [(0,)]

            await migrations.downgrade(db, "inventory", "0002")  # and back: the totals stay
            items = await db.fetch(
                text("SELECT product_id, quantity FROM inventory_items ORDER BY product_id")
            )
            assert [tuple(r) for r in items] == [("p-1", 4), ("p-2", 0), ("p-3", 2)]
        finally:
            await db.dispose()


async def test_a_service_refuses_an_outdated_schema_unless_it_may_migrate(
    tmp_path: Path, settings: Settings
) -> None:
    assert settings.auto_migrate("auth") is (databases.KIND == "sqlite")  # the default
    async with databases.fresh_database(tmp_path, "auth") as url:
        refusing = with_database(settings, "auth", url, db_auto_migrate=False)
        with pytest.raises(StartupError) as refused:
            async with running_auth(refusing, address="127.0.0.1:0"):
                pass
        message = str(refused.value)
        assert "empty" in message and "run `invmesh migrate auth`" in message
        assert url not in message

        migrating = refusing.model_copy(update={"db_auto_migrate": True})
        async with running_auth(migrating, address="127.0.0.1:0"):
            db = Database(url)
            try:
                assert await migrations.current(db, "auth") == migrations.head("auth")
            finally:
                await db.dispose()


async def test_a_schema_from_a_newer_version_is_refused_even_with_auto_migration(
    tmp_path: Path, settings: Settings
) -> None:
    async with databases.fresh_database(tmp_path, "auth") as url:
        db = Database(url)
        try:
            await migrations.upgrade(db, "auth")
            async with db.transaction() as session:
                table = revisions.version_table("auth")
                await session.execute(text(f"UPDATE {table} SET version_num = 'f00dcafe'"))
        finally:
            await db.dispose()
        with pytest.raises(
            StartupError, match="revision f00dcafe, which this version of invmesh does not know"
        ):
            async with running_auth(with_database(settings, "auth", url, db_auto_migrate=True)):
                pass


def _cli_env(**variables: str) -> dict[str, str]:
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_DATABASE_URL") and k not in ("DB_AUTO_MIGRATE", "INVMESH_DATA_DIR")
    }
    return inherited | METRICS_OFF | variables


async def _invmesh(*args: str, env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "launcher", *args, env=env, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        _, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def test_invmesh_migrate_brings_each_service_to_head(tmp_path: Path) -> None:
    async with databases.fresh_database(tmp_path, "cli") as url:
        env = _cli_env(**{f"{s.upper()}_DATABASE_URL": url for s in SERVICES}, INVMESH_DATA_DIR=str(tmp_path))
        status, output = await _invmesh("migrate", "auth", "inventory", env=env)
        assert status == 0, output
        assert "auth: migrated from empty to revision" in output
        assert "inventory: migrated from empty to revision" in output and "products" not in output
        status, output = await _invmesh("migrate", env=env)
        assert status == 0, output
        assert "auth: already at revision" in output and "products: migrated from empty" in output
        db = Database(url)
        try:
            for service in SERVICES:
                assert await migrations.current(db, service) == migrations.head(service)
        finally:
            await db.dispose()
    status, output = await _invmesh("migrate", "billing", env=_cli_env())
    assert status == 2 and "unknown service billing" in output


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://invmesh:pw-s3cret@127.0.0.1:{port}/x",
        "mysql+asyncmy://u:pw-s3cret@127.0.0.1:{port}/x",
    ],
)
async def test_an_unreachable_database_stops_startup_without_showing_the_url(
    tmp_path: Path, url: str
) -> None:
    env = _cli_env(
        INVMESH_DATA_DIR=str(tmp_path),
        AUTH_ADDR=f"127.0.0.1:{free_port()}",
        AUTH_DATABASE_URL=url.format(port=free_port()),  # nothing listens there
        DB_CONNECT_TIMEOUT_SECONDS="2",
    )
    started = time.monotonic()
    status, output = await _invmesh("serve", "auth", env=env)
    assert status == 1 and time.monotonic() - started < 15
    assert "invmesh: auth: cannot use the auth database" in output
    assert "pw-s3cret" not in output and "Traceback" not in output

    status, output = await _invmesh("migrate", "auth", env=env)
    assert status == 1 and "auth: migration failed" in output and "pw-s3cret" not in output


async def test_a_hot_read_sees_what_was_just_committed_with_the_same_values_as_a_session(
    tmp_path: Path,
) -> None:
    """`Database.fetch` (on a SQLite file, SQLite's own driver on a thread: see mesh/db.py) sees a
    write committed just before it, and gives what a session reads: aware UTC datetimes, decoded
    JSON, the Unicode lower(); it refuses NUL as writes do; dispose closes its connections, and a
    read after it opens one again, as an engine does."""
    table = Table(
        "hot", MetaData(), Column("id", Integer, primary_key=True), Column("name", String(20)),
        Column("at", UtcDateTime), Column("doc", JSON),
    )  # fmt: skip
    at = dt.datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=dt.UTC)
    read = select(table.c.name, table.c.at, table.c.doc).where(func.lower(table.c.name) == bindparam("name"))
    async with databases.fresh_database(tmp_path, "hot") as url:
        db = Database(url)
        try:
            async with db.write_connection() as conn:
                await conn.run_sync(table.metadata.create_all)
            for n in range(1, 4):
                async with db.write_connection() as conn:
                    await conn.execute(insert(table), {"id": n, "name": f"ÉTÉ{n}", "at": at, "doc": {"n": n}})
                (row,) = await db.fetch(read, {"name": f"été{n}"})
                assert (row.name, row.at, row.doc) == (f"ÉTÉ{n}", at, {"n": n})
                async with db.session() as session:
                    assert (await session.execute(read, {"name": f"été{n}"})).one() == row
            with pytest.raises(InvalidArgument):
                await db.fetch(read, {"name": "a\x00b"})
        finally:
            await db.dispose()
        if url.startswith("sqlite"):
            path = str(make_url(url).database)
            opened = [fd for fd in Path("/proc/self/fd").iterdir() if os.path.realpath(fd) == path]
            assert not opened
        assert (await db.fetch(read, {"name": "été3"}))[0].doc == {"n": 3}  # as an engine reconnects
        await db.dispose()


async def test_steps_written_in_one_step_commit_together_or_not_at_all(tmp_path: Path) -> None:
    """`Database.write_steps` (on a SQLite file, SQLite's own driver on a thread): its statements
    commit together, a raise rolls back all of them, and it takes turns with the other writers."""
    table = Table("steps", MetaData(), Column("id", Integer, primary_key=True), Column("at", UtcDateTime))
    at = dt.datetime(2026, 12, 7, 8, 9, 10, 111213, tzinfo=dt.UTC)

    def two_rows(conn: Connection, first: int) -> int:
        conn.execute(insert(table), [{"id": first, "at": at}, {"id": first + 1, "at": at}])
        return first

    def then_refuse(conn: Connection) -> None:
        two_rows(conn, 10)
        raise InvalidArgument("refused after writing")

    async def by_connection(row_id: int) -> None:
        async with db.write_connection() as conn:
            await conn.execute(insert(table), {"id": row_id, "at": at})

    async with databases.fresh_database(tmp_path, "steps") as url:
        db = Database(url)
        try:
            async with db.write_connection() as conn:
                await conn.run_sync(table.metadata.create_all)
            assert await db.write_steps(lambda conn: two_rows(conn, 1)) == 1
            with pytest.raises(InvalidArgument):
                await db.write_steps(then_refuse)
            await asyncio.gather(
                *(db.write_steps(functools.partial(two_rows, first=200 + 2 * n)) for n in range(20)),
                *(by_connection(100 + n) for n in range(20)),
            )
            rows = await db.fetch(select(table.c.id, table.c.at).order_by(table.c.id))
            assert [row.id for row in rows] == [1, 2, *range(100, 120), *range(200, 240)]
            assert {row.at for row in rows} == {at}
        finally:
            await db.dispose()


@on_a_server
async def test_a_pooled_connection_idle_a_second_is_pinged_and_one_just_used_is_not(
    service_databases: databases.ServiceDatabases,
) -> None:
    real = make_url(service_databases.urls["products"])
    proxy = Proxy(real.host or "127.0.0.1", real.port or 0)
    await proxy.start()
    db = Database(
        real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False), pool_size=1
    )
    one = text("SELECT 1")
    try:
        assert (await db.fetch(one))[0][0] == 1
        proxy.drop_connections()  # a server restart, say
        await asyncio.sleep(PING_IDLE_AFTER_SECONDS + 0.1)
        assert (await db.fetch(one))[0][0] == 1  # its ping failed, and a new connection served

        proxy.drop_connections()  # used a moment ago: not pinged, so the statement finds it dead
        with pytest.raises(DatabaseUnavailable):
            await db.fetch(one)
        assert (await db.fetch(one))[0][0] == 1  # and the pool replaced it
    finally:
        await db.dispose()
        await proxy.stop()


class Proxy:
    """A TCP relay in front of the database server that a test can break: drop every
    connection, refuse new ones, or accept them and never answer."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.port = free_port()
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.silent = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.silent:
            return  # the connection stays open, and nothing ever comes back
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def drop_connections(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        """Refuses new connections and drops the open ones."""
        if self._server is not None:
            self._server.close()
            self.drop_connections()
            await self._server.wait_closed()
            self._server = None


@pytest.fixture
async def proxied_products(settings: Settings, smtp: SmtpServer) -> AsyncIterator[tuple[Proxy, Any, Any]]:
    """Auth, and products whose database is reached through a Proxy; inventory is down."""
    assert databases.SERVER is not None
    real = make_url(settings.database_url("products"))
    proxy = Proxy(real.host or "127.0.0.1", real.port or 0)
    await proxy.start()
    settings = with_database(
        mesh_settings(settings),
        "products",
        real.set(port=proxy.port).render_as_string(hide_password=False),
        db_connect_timeout_seconds=1.0,
        db_pool_timeout_seconds=1.0,
        product_cache_seconds=0,  # every GetProduct reads the database, as this is about the database
    )
    try:
        async with (
            running_auth(settings),
            running_products(settings),
            grpc.aio.insecure_channel(settings.auth_addr) as auth_channel,
            grpc.aio.insecure_channel(settings.products_addr) as channel,
        ):
            auth = auth_service_pb2_grpc.AuthServiceStub(auth_channel)
            token = await user_token(auth, "staff@example.com", smtp.inbox, settings)
            yield (
                proxy,
                products_service_pb2_grpc.ProductsServiceStub(channel),
                (("authorization", f"Bearer {token}"),),
            )
    finally:
        await proxy.stop()


@on_a_server
async def test_a_lost_database_is_unavailable_fast_and_the_service_recovers_alone(
    proxied_products: tuple[Proxy, Any, Any],
) -> None:
    proxy, products, user = proxied_products
    created = await products.CreateProduct(
        pb.CreateProductRequest(product=pb.Product(sku="DB-1", name="Widget", price="1")), metadata=user
    )
    get = pb.GetProductRequest(id=created.product.id)

    def create(sku: str) -> Any:  # a write, which no cache answers
        return products.CreateProduct(
            pb.CreateProductRequest(product=pb.Product(sku=sku, name=sku, price="1")), metadata=user
        )

    # A server restart: the pool's connections are dead, new ones work. A connection idle for
    # PING_IDLE_AFTER_SECONDS is pinged as it leaves the pool, and replaced.
    proxy.drop_connections()
    await asyncio.sleep(PING_IDLE_AFTER_SECONDS + 0.1)
    await create("DB-AFTER-IDLE")
    # One used a moment ago is not: the call that finds it dead fails fast, as one in flight
    # would, and the pool replaces every connection it opened before, so the next call works.
    proxy.drop_connections()
    with contextlib.suppress(grpc.aio.AioRpcError):
        await create("DB-AT-ONCE")
    await create("DB-NEXT")
    assert (await products.GetProduct(get, metadata=user)).product.sku == "DB-1"

    await proxy.stop()  # the server is gone: connections are refused
    for call in (
        products.GetProduct(get, metadata=user),
        products.ListProducts(pb.ListProductsRequest(), metadata=user),
    ):
        started = time.monotonic()
        error = await expect_error(call, grpc.StatusCode.UNAVAILABLE)
        assert time.monotonic() - started < 2.5
        assert error_reason(error) == "DATABASE_UNAVAILABLE"
        assert "database is unavailable" in (error.details() or "")
        assert str(proxy.port) not in (error.details() or "")

    proxy.silent = True  # a server that accepts but never answers: the connect timeout ends the wait
    await proxy.start()
    started = time.monotonic()
    error = await expect_error(products.GetProduct(get, metadata=user), grpc.StatusCode.UNAVAILABLE)
    assert error_reason(error) == "DATABASE_UNAVAILABLE" and time.monotonic() - started < 4

    await proxy.stop()
    proxy.silent = False
    await proxy.start()  # back: the same service serves again, reads and writes
    assert (await products.GetProduct(get, metadata=user)).product.sku == "DB-1"
    await products.CreateProduct(
        pb.CreateProductRequest(product=pb.Product(sku="DB-2", name="Gadget", price="2")), metadata=user
    )
