"""Connections of the mesh's channels: a replica that comes back on its address gets calls
within about a second of reporting SERVING (the channels' reconnect backoff), and a server
recycles its connections at their maximum age (gRFC A9) without failing a call."""

from __future__ import annotations

import asyncio
import time
from typing import cast

import grpc
import pytest

from invmesh.products.v1 import products_service_pb2 as products_pb
from invmesh.products.v1 import products_service_pb2_grpc
from mesh import access
from mesh.clients import channel
from mesh.interceptors import ServicerContext
from mesh.server import MeshServer, Servicer
from mesh.tokens import TokenVerifier
from tests.test_shutdown import Stamper

NAME = products_pb.DESCRIPTOR.services_by_name["ProductsService"].full_name
CLIENTS = 4
# The restarted replica is away this long: past gRPC's default fourth reconnect attempt
# (1 + 1.6 + 2.56 + 4.1 s = 9.3 s, ± 0.6 s of jitter) and before its fifth (15.8 s), so a
# channel with gRPC's default backoff leaves it idle for seconds (3.2 s and 5.0 s in two runs here).
AWAY_SECONDS = 10.5


def products_server(
    servicer: products_service_pb2_grpc.ProductsServiceServicer,
    *,
    address: str = "127.0.0.1:0",
    max_connection_age_seconds: float = 300.0,
    max_connection_age_grace_seconds: float = 30.0,
) -> MeshServer:
    """A MeshServer of `servicer` on `address`, every method public."""
    return MeshServer(
        [Servicer(NAME, products_service_pb2_grpc.add_ProductsServiceServicer_to_server, servicer)],
        address=address,
        verifier=cast(TokenVerifier, None),  # every method is public here
        is_public=lambda method: method.startswith(f"/{NAME}/") or access.is_public(method),
        grace_seconds=1,
        lame_duck_seconds=0.5,
        max_connection_age_seconds=max_connection_age_seconds,
        max_connection_age_grace_seconds=max_connection_age_grace_seconds,
    )


@pytest.mark.slow
async def test_a_restarted_replica_gets_calls_within_a_second_and_a_half_of_serving() -> None:
    first, other = Stamper(), Stamper()
    servers = [products_server(first), products_server(other)]
    for server in servers:
        await server.start()
    port = servers[0].port
    done = asyncio.Event()
    async with channel(",".join(f"127.0.0.1:{s.port}" for s in servers)) as balanced:
        stub = products_service_pb2_grpc.ProductsServiceStub(balanced)

        async def client() -> None:  # any failed call fails the test
            while not done.is_set():
                await stub.GetProduct(products_pb.GetProductRequest(id="x"))

        clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
        try:
            while len(first.arrivals) < 20:
                await asyncio.sleep(0.01)
            await servers[0].stop()
            await asyncio.sleep(AWAY_SECONDS)
            back = Stamper()
            servers[0] = products_server(back, address=f"127.0.0.1:{port}")
            await servers[0].start()  # it reports SERVING as start() returns
            serving = time.monotonic()
            async with asyncio.timeout(15):
                while not back.arrivals:
                    await asyncio.sleep(0.01)
            waited = back.arrivals[0] - serving
            print(f"the restarted replica's first call came {waited:.3f} s after it reported SERVING")
            assert waited < 1.5
        finally:
            done.set()
            await asyncio.gather(*clients)
            for server in servers:
                await server.stop()


class Peers(products_service_pb2_grpc.ProductsServiceServicer):
    """CreateProduct, which no retry policy resends, notes the client connection it came on."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def CreateProduct(
        self, request: products_pb.CreateProductRequest, context: ServicerContext
    ) -> products_pb.CreateProductResponse:
        self.seen.append(context.peer())  # ipv4:127.0.0.1:<the client's port>
        await asyncio.sleep(0.005)
        return products_pb.CreateProductResponse(product=request.product)


async def test_connections_are_recycled_at_their_maximum_age_and_no_call_fails() -> None:
    aged, ageless = Peers(), Peers()
    servers = [
        products_server(aged, max_connection_age_seconds=1, max_connection_age_grace_seconds=1),
        products_server(ageless, max_connection_age_seconds=0),
    ]
    for server in servers:
        await server.start()
    done = asyncio.Event()
    try:
        async with (
            channel(f"127.0.0.1:{servers[0].port}") as to_aged,
            channel(f"127.0.0.1:{servers[1].port}") as to_ageless,
        ):

            async def client(to: grpc.aio.Channel) -> int:
                stub = products_service_pb2_grpc.ProductsServiceStub(to)
                calls = 0
                while not done.is_set():
                    request = products_pb.CreateProductRequest(product=products_pb.Product(sku=f"S{calls}"))
                    reply = await stub.CreateProduct(request)  # a failed call fails the test
                    assert reply.product.sku == f"S{calls}"
                    calls += 1
                return calls

            clients = [
                asyncio.create_task(client(to)) for to in (to_aged, to_ageless) for _ in range(CLIENTS)
            ]
            await asyncio.sleep(3.5)
            done.set()
            calls = sum(await asyncio.gather(*clients))
    finally:
        for server in servers:
            await server.stop()
    connections = {"aged": len(set(aged.seen)), "ageless": len(set(ageless.seen))}
    print(f"{calls} calls; client connections each server saw: {connections}")
    assert connections["ageless"] == 1, connections
    assert connections["aged"] >= 3, connections  # a new one each second, give or take 10%
