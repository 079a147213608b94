"""Retries by the channels' service config (gRFC A6): an UNAVAILABLE read is sent again, after a
backoff and within a budget, possibly to another replica; a write that is not idempotent is not."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest

from invmesh.products.v1 import products_service_pb2 as pb
from invmesh.products.v1 import products_service_pb2_grpc
from mesh.clients import CHANNEL_OPTIONS, channel
from mesh.interceptors import ServicerContext
from tests.conftest import free_port


class FakeProducts(products_service_pb2_grpc.ProductsServiceServicer):
    """A products backend that counts every attempt, fails the first `failures[method]` of a
    method with UNAVAILABLE and, while `delay` is set, takes that long to answer."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.attempts: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.delay = 0.0
        self.in_flight = 0

    async def _serve(self, method: str, context: ServicerContext) -> pb.Product:
        self.attempts[method] += 1
        if self.failures[method] > 0:
            self.failures[method] -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} is not ready")
        self.in_flight += 1
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        return pb.Product(id="p1", sku="SKU", name=self.name, price="1.00")

    async def GetProduct(
        self, request: pb.GetProductRequest, context: ServicerContext
    ) -> pb.GetProductResponse:
        return pb.GetProductResponse(product=await self._serve("GetProduct", context))

    async def ListProducts(
        self, request: pb.ListProductsRequest, context: ServicerContext
    ) -> pb.ListProductsResponse:
        return pb.ListProductsResponse(products=[await self._serve("ListProducts", context)])

    async def CreateProduct(
        self, request: pb.CreateProductRequest, context: ServicerContext
    ) -> pb.CreateProductResponse:
        return pb.CreateProductResponse(product=await self._serve("CreateProduct", context))


@contextlib.asynccontextmanager
async def fake_products(name: str = "fake") -> AsyncIterator[tuple[str, FakeProducts, grpc.aio.Server]]:
    """A `FakeProducts` served on a free port: (its address, the servicer, the server)."""
    servicer = FakeProducts(name)
    server = grpc.aio.server()
    products_service_pb2_grpc.add_ProductsServiceServicer_to_server(servicer, server)
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    await server.start()
    try:
        yield address, servicer, server
    finally:
        await server.stop(None)


def test_reads_and_idempotent_writes_have_the_retry_policy_and_nothing_else_does() -> None:
    config = json.loads(str(dict(CHANNEL_OPTIONS)["grpc.service_config"]))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["retryThrottling"] == {"maxTokens": 10, "tokenRatio": 0.1}
    (retried,) = config["methodConfig"]
    assert retried["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert 3 <= retried["retryPolicy"]["maxAttempts"] <= 4
    names = {f"{n['service'].rsplit('.', 1)[1]}.{n['method']}" for n in retried["name"]}
    assert names == {
        "AuthService.GetMe",
        "AuthService.GetJwks",
        "AuthService.ListUsers",
        "ProductsService.ListProducts",
        "ProductsService.GetProduct",
        "ProductsService.BatchGetProducts",
        "InventoryService.ListInventoryItems",
        "InventoryService.GetInventoryItem",
        "InventoryService.BatchGetInventoryItems",
        "InventoryService.ListMovements",
        "InventoryService.ListLocations",
        "InventoryService.GetLocation",
        "InventoryService.ListReservations",
        "InventoryService.GetReservation",
        "InventoryService.ConfirmReservation",
        "InventoryService.ReleaseReservation",
        "InventoryService.DeleteInventoryItem",
        "ProductsService.UpdateStockLevels",
    }


async def test_an_unavailable_read_is_retried_and_a_create_is_not() -> None:
    async with fake_products() as (address, backend, _), channel(address) as opened:
        stub = products_service_pb2_grpc.ProductsServiceStub(opened)
        backend.failures.update(GetProduct=1, CreateProduct=1)

        got = await stub.GetProduct(pb.GetProductRequest(id="p1"))
        assert got.product.id == "p1"
        assert backend.attempts["GetProduct"] == 2

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateProduct(pb.CreateProductRequest(product=pb.Product(sku="S")))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert backend.attempts["CreateProduct"] == 1

        backend.failures.update(ListProducts=10)  # more than the attempts: the caller sees UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as exhausted:
            await stub.ListProducts(pb.ListProductsRequest())
        assert exhausted.value.code() == grpc.StatusCode.UNAVAILABLE
        assert backend.attempts["ListProducts"] == 3


async def test_the_retry_budget_stops_retries_to_a_backend_that_keeps_failing() -> None:
    async with fake_products() as (address, backend, _), channel(address) as opened:
        stub = products_service_pb2_grpc.ProductsServiceStub(opened)
        backend.failures.update(GetProduct=1000)
        for _ in range(20):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetProduct(pb.GetProductRequest(id="p1"))
        # Without a budget, 3 attempts each (60); with it, retries stop once half the tokens are gone.
        assert 20 < backend.attempts["GetProduct"] <= 25, backend.attempts


async def test_reads_succeed_while_one_of_two_replicas_is_down_or_failing() -> None:
    async with (
        fake_products("a") as (a, first, first_server),
        fake_products("b") as (b, second, _),
        channel(f"{a},{b}") as opened,
    ):
        stub = products_service_pb2_grpc.ProductsServiceStub(opened)
        for _ in range(4):
            await stub.GetProduct(pb.GetProductRequest(id="p1"))
        assert first.attempts["GetProduct"] and second.attempts["GetProduct"]  # both replicas serve

        first.failures.update(GetProduct=2)  # a replica answering UNAVAILABLE: retried on the other
        for _ in range(4):
            await stub.GetProduct(pb.GetProductRequest(id="p1"))
        assert first.failures["GetProduct"] == 0

        await first_server.stop(None)  # a replica gone: the channel keeps to the other one
        # once it has read the GOAWAY and the closed connection (calls sent in that very instant
        # may fail, and a burst of them spends the retry budget; on a loaded machine that takes
        # a while)
        await asyncio.sleep(0.5)
        served = second.attempts["GetProduct"]
        replies = await asyncio.gather(*(stub.GetProduct(pb.GetProductRequest(id="p1")) for _ in range(20)))
        assert {r.product.name for r in replies} == {"b"}
        assert second.attempts["GetProduct"] == served + 20
