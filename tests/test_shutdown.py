"""Graceful shutdown: a stopping server first turns NOT_SERVING and serves on while the
channels that watch its health leave it, then lets its calls finish within the grace and
fails the rest with UNAVAILABLE; under load, SIGTERM to one of two inventory replicas in the
middle of a stream of stock entries over a round-robin channel fails no call."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from pathlib import Path
from typing import cast

import grpc
import pytest
from grpc_health.v1 import health_pb2

from invmesh.inventory.v1 import inventory_service_pb2 as pb
from invmesh.products.v1 import products_service_pb2 as products_pb
from invmesh.products.v1 import products_service_pb2_grpc
from mesh import access
from mesh.clients import channel, health_stub
from mesh.config import Settings
from mesh.interceptors import ServicerContext
from mesh.server import MeshServer, Servicer
from mesh.tokens import TokenVerifier
from tests.conftest import SmtpServer
from tests.test_replicas import assert_chained, replicated_mesh

GRACE_SECONDS = 1
LAME_DUCK_SECONDS = 0.5  # the default
CLIENTS = 8


async def watch_health(address: str) -> list[int]:
    """Every status the server's health reports from now until its stream ends."""
    statuses: list[int] = []
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            async for reply in health_stub(channel).Watch(health_pb2.HealthCheckRequest()):
                statuses.append(reply.status)
        except grpc.aio.AioRpcError:
            pass  # the server went away
    return statuses


class Sleeper(products_service_pb2_grpc.ProductsServiceServicer):
    """GetProduct takes as many seconds as its id says."""

    running = 0

    async def GetProduct(
        self, request: products_pb.GetProductRequest, context: ServicerContext
    ) -> products_pb.GetProductResponse:
        self.running += 1
        try:
            await asyncio.sleep(float(request.id))
        finally:
            self.running -= 1
        return products_pb.GetProductResponse(product=products_pb.Product(id=request.id))


async def test_stop_finishes_calls_within_the_grace_and_fails_the_rest_with_unavailable() -> None:
    name = products_pb.DESCRIPTOR.services_by_name["ProductsService"].full_name
    sleeper = Sleeper()
    server = MeshServer(
        [Servicer(name, products_service_pb2_grpc.add_ProductsServiceServicer_to_server, sleeper)],
        address="127.0.0.1:0",
        verifier=cast(TokenVerifier, None),  # every method is public here
        is_public=lambda method: method == f"/{name}/GetProduct" or access.is_public(method),
        grace_seconds=GRACE_SECONDS,
    )
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = products_service_pb2_grpc.ProductsServiceStub(channel)
        await stub.GetProduct(products_pb.GetProductRequest(id="0"))  # connected
        health = asyncio.create_task(watch_health(f"127.0.0.1:{server.port}"))
        quick = asyncio.ensure_future(stub.GetProduct(products_pb.GetProductRequest(id="0.3")))
        slow = asyncio.ensure_future(stub.GetProduct(products_pb.GetProductRequest(id="30")))
        await asyncio.sleep(0.1)  # both calls are running when the stop begins
        started = time.monotonic()
        await server.stop()
        assert sleeper.running == 0  # no handler outlives the stop (the database closes next)
        # Well before the slow call would end, though a health watch stays open to the end.
        assert time.monotonic() - started < GRACE_SECONDS + 2
        assert (await quick).product.id == "0.3"
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await slow
        assert cut.value.code() == grpc.StatusCode.UNAVAILABLE, cut.value.details()
        assert "shutting down" in (cut.value.details() or "")
        statuses = await health
        assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING, statuses


class Stamper(products_service_pb2_grpc.ProductsServiceServicer):
    """GetProduct notes when each call arrived."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []

    async def GetProduct(
        self, request: products_pb.GetProductRequest, context: ServicerContext
    ) -> products_pb.GetProductResponse:
        self.arrivals.append(time.monotonic())
        await asyncio.sleep(0.005)
        return products_pb.GetProductResponse(product=products_pb.Product(id=request.id))


async def test_clients_leave_a_stopping_server_while_it_still_serves() -> None:
    """Health goes NOT_SERVING first; the mesh's channels watch it, so a stopping replica gets
    no new calls during its lame duck while the other takes them all, and no call fails."""
    name = products_pb.DESCRIPTOR.services_by_name["ProductsService"].full_name
    stampers = [Stamper(), Stamper()]
    servers = [
        MeshServer(
            [Servicer(name, products_service_pb2_grpc.add_ProductsServiceServicer_to_server, stamper)],
            address="127.0.0.1:0",
            verifier=cast(TokenVerifier, None),  # every method is public here
            is_public=lambda method: method == f"/{name}/GetProduct" or access.is_public(method),
            grace_seconds=GRACE_SECONDS,
            lame_duck_seconds=1,
        )
        for stamper in stampers
    ]
    for server in servers:
        await server.start()
    stopping, staying = stampers
    done = asyncio.Event()
    async with channel(",".join(f"127.0.0.1:{s.port}" for s in servers)) as balanced:
        stub = products_service_pb2_grpc.ProductsServiceStub(balanced)

        async def client() -> None:
            while not done.is_set():
                await stub.GetProduct(products_pb.GetProductRequest(id="x"))

        clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
        while len(stopping.arrivals) < 20:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await servers[0].stop()
        assert time.monotonic() - started >= 1  # it served through the lame duck
        done.set()
        await asyncio.gather(*clients)  # none failed
    await servers[1].stop()
    late = [t - started for t in stopping.arrivals if t > started + 0.2]
    assert not late, f"{len(late)} calls reached the stopping server after it turned NOT_SERVING"
    assert any(t > started + 0.5 for t in staying.arrivals)


@pytest.mark.slow
async def test_a_replica_stopped_mid_traffic_finishes_its_calls_and_loses_no_acknowledged_write(
    settings: Settings, smtp: SmtpServer, tmp_path: Path
) -> None:
    # Longer than SQLite's busy_timeout (5 s), the longest a write waits for the lock that the
    # other replica (its movements and its stock feed) holds in turns: the calls in flight
    # finish (the test above covers those that would not).
    grace = 8
    async with replicated_mesh(settings, smtp, tmp_path, grace_seconds=grace) as mesh:
        pid = await mesh.new_product("SHUTDOWN-1")
        stopping = mesh.addresses["inventory"][0]
        process = mesh.processes[stopping]
        sent: list[pb.RecordMovementRequest] = []
        acknowledged: dict[str, pb.Movement] = {}
        numbers = itertools.count()
        done = asyncio.Event()

        async def client() -> None:
            # Every call succeeds: the stopping replica serves on (the lame duck) until the
            # channel, which watches its health, has moved the calls to the other one.
            while not done.is_set():
                n = next(numbers)
                request = pb.RecordMovementRequest(
                    product_id=pid,
                    type=pb.RecordMovementRequest.IN,
                    quantity=n % 5 + 1,
                    request_id=f"shutdown-{n}",
                )
                sent.append(request)
                reply = await mesh.inventory.RecordMovement(request, metadata=mesh.user)
                acknowledged[request.request_id] = reply.movement

        async def acknowledged_at_least(count: int) -> None:
            async with asyncio.timeout(60):
                while len(acknowledged) < count:
                    await asyncio.sleep(0.01)

        health = asyncio.create_task(watch_health(stopping))
        clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
        await acknowledged_at_least(50)
        process.send_signal(signal.SIGTERM)
        # invmesh up kills a child still running lame duck + grace + 5 s after its SIGTERM.
        async with asyncio.timeout(LAME_DUCK_SECONDS + grace + 5):
            assert await process.wait() == 0
        await acknowledged_at_least(len(acknowledged) + 50)  # the other replica takes the traffic
        done.set()
        await asyncio.gather(*clients)
        statuses = await health

        assert acknowledged.keys() == {r.request_id for r in sent}
        ledger = await mesh.ledger(pid)
        assert sorted(m.request_id for m in ledger) == sorted(acknowledged), "lost or doubled"
        assert all(m == acknowledged[m.request_id] for m in ledger)
        balance = await mesh.balance(pid)
        assert balance == sum(r.quantity for r in sent)
        assert_chained(ledger, balance)

    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert statuses[0] == serving and not_serving in statuses, statuses
    stopped_log = (tmp_path / "inventory-0.log").read_text()
    assert "shutting down" in stopped_log and stopped_log.count("RecordMovement"), stopped_log[-2000:]
