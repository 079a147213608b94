"""Readiness follows the database: a service's own health name turns NOT_SERVING once its
database has not answered HEALTH_DB_FAILURES pings in a row, SERVING again after
HEALTH_DB_SUCCESSES answered ones, never on one lost ping, and never again once the server is
stopping; its overall health ("", liveness) stays SERVING. `invmesh up` waits for readiness
(each service's own name, the facade's `/readyz`), and the facade's `/readyz` names the services
whose database is down.

The database goes away for real: a PostgreSQL cluster of the test's own is stopped as a crash
would stop it (tests/test_postgres_outage.py's `own_postgres`). So these run in the
INVMESH_TEST_DATABASE=postgresql pass only. SQLite is a file the service's own process opens:
there is no server to lose, and making the file unreachable cannot be done honestly here (the
tests run as root, whom permissions do not stop, and open connections keep their file
descriptors when the file or its folder is moved away).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2
from pydantic import SecretStr

from mesh.clients import health_stub
from mesh.config import Settings
from mesh.db import Database
from mesh.health import DatabaseWatch
from mesh.services import SERVICES
from products.service import running as running_products
from tests import databases
from tests.conftest import mesh_settings
from tests.test_postgres_outage import PostgresServer, own_postgres
from tests.test_supervisor import invmesh_up, up_env

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PRODUCTS = SERVICES["products"].descriptor.full_name
# With the defaults (a ping a second, 3 failures, 2 successes; docs/configuration.md): NOT_SERVING
# 2 to 4 s after the database stops answering, SERVING 1 to 2 s after it is back; some slack on
# top for a busy machine.
NOT_SERVING_WITHIN = (1.5, 5.5)
SERVING_AGAIN_WITHIN = 4.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        databases.KIND != "postgresql",
        reason="needs a PostgreSQL server of its own to stop (the INVMESH_TEST_DATABASE=postgresql "
        "pass); an SQLite file cannot be made unreachable honestly",
    ),
]


@pytest.fixture
async def postgres() -> AsyncIterator[PostgresServer]:
    async with own_postgres() as server:
        yield server


async def check(address: str, service: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_stub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        status: int = reply.status
        return status


class Reported:
    """Every status a server reports for a service (grpc.health.v1 Watch), with when it came."""

    def __init__(self, address: str, service: str) -> None:
        self.address = address
        self.service = service
        self.statuses: list[tuple[float, int]] = []
        self._news = asyncio.Event()

    async def watch(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            call = health_stub(channel).Watch(health_pb2.HealthCheckRequest(service=self.service))
            with contextlib.suppress(grpc.aio.AioRpcError):  # the server stopped
                async for reply in call:
                    self.statuses.append((time.monotonic(), reply.status))
                    self._news.set()

    async def turned(self, status: int, *, timeout: float = 15) -> float:
        """When the server reported `status` last, once it has."""
        async with asyncio.timeout(timeout):
            while not (self.statuses and self.statuses[-1][1] == status):
                self._news.clear()
                await self._news.wait()
        return self.statuses[-1][0]

    @property
    def sequence(self) -> list[str]:
        return [health_pb2.HealthCheckResponse.ServingStatus.Name(status) for _, status in self.statuses]


@contextlib.asynccontextmanager
async def reported(address: str, service: str) -> AsyncIterator[Reported]:
    watched = Reported(address, service)
    task = asyncio.create_task(watched.watch())
    await watched.turned(SERVING)
    try:
        yield watched
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_one_lost_ping_changes_nothing_and_each_turn_needs_pings_in_a_row(
    postgres: PostgresServer,
) -> None:
    db = Database(postgres.admin_url, connect_timeout=1)
    watch = DatabaseWatch(db, every=1, timeout=1, failures=3, successes=2)
    try:
        assert await watch.check()
        await postgres.crash()
        assert [await watch.check(), await watch.check()] == [True, True]  # two failures: still ready
        await postgres.start()
        assert await watch.check()  # an answer starts the count again
        await postgres.crash()
        assert [await watch.check(), await watch.check(), await watch.check()] == [True, True, False]
        await postgres.start()
        assert await watch.check() is False  # one answer in an outage is not enough
        await postgres.crash()
        assert await watch.check() is False
        await postgres.start()
        assert [await watch.check(), await watch.check()] == [False, True]
    finally:
        await db.dispose()


async def test_a_stopping_service_stays_not_serving_when_its_database_is_back(
    postgres: PostgresServer, settings: Settings
) -> None:
    url = await databases.Server("postgresql", postgres.admin_url).create("products_health")
    settings = mesh_settings(settings).model_copy(
        update={
            "products_database_url": SecretStr(url),
            "db_auto_migrate": True,
            "health_db_check_seconds": 0.2,
            "health_db_failures": 2,
            "health_db_successes": 1,
            "shutdown_lame_duck_seconds": 3.0,
        }
    )
    service = running_products(settings)
    await service.__aenter__()
    stopping = None
    try:
        address = settings.products_addr
        async with reported(address, PRODUCTS) as readiness, reported(address, "") as liveness:
            await postgres.crash()
            await readiness.turned(NOT_SERVING)
            assert await check(address, "") == SERVING  # liveness: a restart would not help
            await postgres.start()
            await readiness.turned(SERVING)
            await postgres.crash()
            await readiness.turned(NOT_SERVING)

            stopping = asyncio.create_task(service.__aexit__(None, None, None))
            await liveness.turned(NOT_SERVING)
            await postgres.start()
            await asyncio.sleep(1)  # five pings' time, in the lame duck: the database answers again
            assert not stopping.done()
            assert (await check(address, PRODUCTS), await check(address, "")) == (NOT_SERVING, NOT_SERVING)
            assert readiness.sequence[-1] == liveness.sequence[-1] == "NOT_SERVING"
        await stopping
    finally:
        if stopping is None:
            await service.__aexit__(None, None, None)


async def test_up_waits_for_readiness_which_follows_each_database(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    server = databases.Server("postgresql", postgres.admin_url)
    urls = {f"{name.upper()}_DATABASE_URL": await server.create(name) for name in SERVICES}
    env = up_env(tmp_path) | urls | {"DB_AUTO_MIGRATE": "true"}
    async with invmesh_up(env) as up, httpx.AsyncClient(base_url=up.facade_url, timeout=10) as http:
        await up.line("all healthy")
        ready = await http.get("/readyz")  # "all healthy" means ready: every backend serving
        assert (ready.status_code, ready.json()) == (200, {"status": "SERVING"}), ready.text

        async with contextlib.AsyncExitStack() as stack:
            readiness = {
                name: await stack.enter_async_context(reported(up.address(name), spec.descriptor.full_name))
                for name, spec in SERVICES.items()
            }
            liveness = {
                name: await stack.enter_async_context(reported(up.address(name), "")) for name in SERVICES
            }
            await postgres.crash()
            crashed = time.monotonic()
            for name, reports in readiness.items():
                after = await reports.turned(NOT_SERVING) - crashed
                print(f"{name}: NOT_SERVING {after:.2f} s after the crash")
                assert NOT_SERVING_WITHIN[0] <= after <= NOT_SERVING_WITHIN[1], name
            down = await http.get("/readyz")
            assert down.status_code == 503, down.text
            assert down.json() == {
                "status": "NOT_SERVING",
                "backends": {name: "NOT_SERVING" for name in SERVICES},
            }
            assert (await http.get("/healthz")).status_code == 200

            await postgres.start()
            restarted = time.monotonic()
            for name, reports in readiness.items():
                after = await reports.turned(SERVING) - restarted
                print(f"{name}: SERVING again {after:.2f} s after the restart")
                assert after <= SERVING_AGAIN_WITHIN, name
            again = await http.get("/readyz")
            assert (again.status_code, again.json()) == (200, {"status": "SERVING"}), again.text

            # No flapping on the way down or up, and liveness never moved.
            for name in SERVICES:
                assert readiness[name].sequence == ["SERVING", "NOT_SERVING", "SERVING"], name
                assert liveness[name].sequence == ["SERVING"], name
        assert not [line for line in up.said if "restarting" in line], up.said  # no process restarted
        for name in SERVICES:
            assert await check(up.address(name), "") == SERVING
        assert any("readiness NOT_SERVING" in line for line in up.said), up.said
