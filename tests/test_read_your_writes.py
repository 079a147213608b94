"""Read-your-writes for a product's stock (issue 19): a write that changes it answers once the
stock feed has reported it to products, so the writer's very next read of the product, and of
its item, shows it: on one inventory replica, across two, and, products being down, the write
still answers, within about STOCK_REPORT_WAIT_SECONDS, and products catches up once back."""

from __future__ import annotations

import asyncio
import time

import grpc
from prometheus_client import REGISTRY

from auth.service import running as running_auth
from inventory.service import running as running_inventory
from invmesh.auth.v1 import auth_service_pb2_grpc
from invmesh.inventory.v1 import inventory_service_pb2 as pb
from invmesh.inventory.v1 import inventory_service_pb2_grpc
from invmesh.products.v1 import products_service_pb2 as products_pb
from invmesh.products.v1 import products_service_pb2_grpc
from mesh.config import Settings
from products.service import running as running_products
from tests.conftest import Mesh, SmtpServer, free_port, mesh_settings, user_token
from tests.rpc import eventually
from tests.test_inventory import move, new_product

Metadata = tuple[tuple[str, str], ...]


async def product_stock(
    products: products_service_pb2_grpc.ProductsServiceStub, pid: str, user: Metadata
) -> int:
    return (await products.GetProduct(products_pb.GetProductRequest(id=pid), metadata=user)).product.stock


async def item_quantity(
    inventory: inventory_service_pb2_grpc.InventoryServiceStub, pid: str, user: Metadata
) -> int:
    request = pb.GetInventoryItemRequest(product_id=pid)
    return (await inventory.GetInventoryItem(request, metadata=user)).item.quantity


async def test_each_movement_shows_in_the_very_next_read_of_the_product_and_the_item(mesh: Mesh) -> None:
    """One client, default settings: every kind of write that changes the stock, each read at
    once after it, on products and on inventory; no read lags a movement behind."""
    pid, user = await new_product(mesh), mesh.as_user()
    assert await product_stock(mesh.products, pid, user) == 0  # read, so products holds it in memory
    expected = 0
    for kind, units in [(pb.IN, 1), (pb.IN, 1), (pb.IN, 5), (pb.OUT, 2), (pb.IN, 3), (pb.OUT, 1)]:
        await mesh.inventory.RecordMovement(move(pid, kind, units), metadata=user)
        expected += units if kind == pb.IN else -units
        assert await product_stock(mesh.products, pid, user) == expected
        assert await item_quantity(mesh.inventory, pid, user) == expected

    await mesh.inventory.SetStock(pb.SetStockRequest(product_id=pid, quantity=20), metadata=user)
    assert await product_stock(mesh.products, pid, user) == 20

    reserved = await mesh.inventory.CreateReservation(
        pb.CreateReservationRequest(product_id=pid, quantity=4), metadata=user
    )
    assert await product_stock(mesh.products, pid, user) == 20  # held, still on hand
    await mesh.inventory.ConfirmReservation(
        pb.ConfirmReservationRequest(id=reserved.reservation.id), metadata=user
    )
    assert await product_stock(mesh.products, pid, user) == 16

    # The same request sent again answers the first movement, and products shows it too.
    again = move(pid, pb.IN, 4, request_id="ryw-1")
    await mesh.inventory.RecordMovement(again, metadata=user)
    await mesh.inventory.RecordMovement(again, metadata=user)
    assert await product_stock(mesh.products, pid, user) == 20


async def test_writes_through_two_inventory_replicas_show_in_the_next_read(mesh: Mesh) -> None:
    """Two inventory replicas on one database, each with its own stock feed; writes alternate
    between them, concurrent writers too, and each read right after, on products and on the
    other replica, shows every write that answered."""
    user = mesh.as_user()
    other = f"127.0.0.1:{free_port()}"
    async with (
        running_inventory(mesh.settings, address=other),
        grpc.aio.insecure_channel(other) as channel,
    ):
        replicas = [mesh.inventory, inventory_service_pb2_grpc.InventoryServiceStub(channel)]
        pid = await new_product(mesh)
        assert await product_stock(mesh.products, pid, user) == 0
        for step in range(8):
            writer, reader = replicas[step % 2], replicas[(step + 1) % 2]
            await writer.RecordMovement(move(pid, pb.IN, 1), metadata=user)
            assert await product_stock(mesh.products, pid, user) == step + 1
            assert await item_quantity(reader, pid, user) == step + 1

        # Many writers at once over both replicas share the feed's rounds; each sees its own.
        async def write_then_read(k: int) -> int:
            await replicas[k % 2].RecordMovement(move(pid, pb.IN, 1), metadata=user)
            return await product_stock(mesh.products, pid, user)

        seen = await asyncio.gather(*(write_then_read(k) for k in range(20)))
        assert all(stock >= 9 for stock in seen) and max(seen) == 28, seen
        assert await product_stock(mesh.products, pid, user) == 28


def timed_out_waits() -> float:
    return REGISTRY.get_sample_value("invmesh_stock_report_waits_timed_out_total") or 0.0


async def test_with_products_down_a_movement_answers_within_the_bound_and_products_catches_up(
    settings: Settings, smtp: SmtpServer
) -> None:
    settings = mesh_settings(settings)
    bound = settings.stock_report_wait_seconds
    assert bound == 1.0  # the default
    async with running_auth(settings), running_inventory(settings):
        async with grpc.aio.insecure_channel(settings.auth_addr) as channel:
            token = await user_token(
                auth_service_pb2_grpc.AuthServiceStub(channel), "ops@example.com", smtp.inbox, settings
            )
        user = (("authorization", f"Bearer {token}"),)
        async with (
            grpc.aio.insecure_channel(settings.inventory_addr) as inventory_channel,
            grpc.aio.insecure_channel(settings.products_addr) as products_channel,
        ):
            inventory = inventory_service_pb2_grpc.InventoryServiceStub(inventory_channel)
            products = products_service_pb2_grpc.ProductsServiceStub(products_channel)
            async with running_products(settings):
                product = products_pb.Product(sku="S-1", name="Screw", price="1")
                created = await products.CreateProduct(
                    products_pb.CreateProductRequest(product=product), metadata=user
                )
                pid = created.product.id
                await inventory.RecordMovement(move(pid, pb.IN, 5), metadata=user)  # inventory knows it now
                assert await product_stock(products, pid, user) == 5

            before, started = timed_out_waits(), time.monotonic()
            answered = await inventory.RecordMovement(move(pid, pb.OUT, 2), metadata=user)
            took = time.monotonic() - started
            assert answered.item.quantity == 3  # committed, and answered as a success
            assert bound <= took < bound + 1.0, took  # the wait, and the write, on a busy machine
            assert timed_out_waits() == before + 1
            assert await item_quantity(inventory, pid, user) == 3

            async with running_products(settings):
                got = await eventually(lambda: product_stock(products, pid, user), lambda stock: stock == 3)
                assert got == 3
