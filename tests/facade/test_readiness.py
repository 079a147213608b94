"""`GET /readyz`: 200 while every backend answers its health check SERVING, 503 naming the
backends that do not and why, and 200 again once they are back; concurrent probes share
one check of each backend."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import grpc
import httpx
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from auth.service import running as running_auth
from facade.app import create_app
from facade.readiness import Checked, Readiness
from inventory.service import running as running_inventory
from mesh.config import Settings
from mesh.interceptors import ServicerContext
from products.service import running as running_products
from tests.conftest import mesh_settings
from tests.facade.conftest import serving
from tests.rpc import eventually

SERVING = {"status": "SERVING"}


async def test_readyz_follows_the_backends_and_healthz_stays_live(settings: Settings) -> None:
    settings = mesh_settings(settings)
    async with (
        running_auth(settings),
        running_products(settings),
        AsyncExitStack() as inventory,
        serving(create_app(settings)) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        await inventory.enter_async_context(running_inventory(settings))
        ready = await http.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, SERVING), ready.text

        await inventory.aclose()
        down = await eventually(lambda: http.get("/readyz"), lambda got: got.status_code == 503)
        assert down.status_code == 503, down.text
        assert down.json() == {"status": "NOT_SERVING", "backends": {"inventory": "UNAVAILABLE"}}
        assert (await http.get("/healthz")).status_code == 200  # liveness calls no backend

        async with running_inventory(settings):
            serving_since = time.monotonic()
            again = await eventually(lambda: http.get("/readyz"), lambda got: got.status_code == 200)
            waited = time.monotonic() - serving_since
            assert (again.status_code, again.json()) == (200, SERVING), again.text
            print(f"ready again {waited:.3f} s after inventory came back")
            assert waited < 2, f"ready again {waited:.2f} s after inventory came back"


class CountedHealth(health.aio.HealthServicer):
    """grpc.health.v1 that counts its Checks and takes `delay` seconds over each."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.checks = 0

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        self.checks += 1
        await asyncio.sleep(self.delay)
        return await super().Check(request, context)


async def test_concurrent_probes_share_one_check_and_each_reason_is_named() -> None:
    checks: dict[str, CountedHealth] = {}
    ports: list[int] = []
    async with AsyncExitStack() as stack:
        for name, status, delay in [
            ("up", "SERVING", 0.2),
            ("stopping", "NOT_SERVING", 0.2),
            ("slow", "SERVING", 3),
        ]:
            server = grpc.aio.server()
            checks[name] = CountedHealth(delay)
            health_pb2_grpc.add_HealthServicer_to_server(checks[name], server)
            ports.append(server.add_insecure_port("127.0.0.1:0"))
            await server.start()
            stack.push_async_callback(server.stop, 0)
            await checks[name].set("svc", health_pb2.HealthCheckResponse.ServingStatus.Value(status))
        channels = {
            name: await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
            for name, port in zip(checks, ports, strict=True)
        }
        readiness = Readiness([Checked(name, "svc", channels[name]) for name in checks], timeout=1)
        started = time.monotonic()
        answers = await asyncio.gather(*(readiness.not_serving() for _ in range(20)))
        assert time.monotonic() - started < 1.5  # the deadline, not the slow backend's 3 s
        assert answers == [{"stopping": "NOT_SERVING", "slow": "DEADLINE_EXCEEDED"}] * 20
        assert {name: counted.checks for name, counted in checks.items()} == {
            "up": 1,
            "stopping": 1,
            "slow": 1,
        }
        await readiness.not_serving()  # a probe after the check has ended starts the next one
        assert checks["up"].checks == 2
