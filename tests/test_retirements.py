"""Product deletes never wait for inventory: each commits with an outbox row, and a relay in
the products service retires the inventory item as the products service itself (a service
token from AuthService.IssueServiceToken), retrying until inventory has it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import func, select

from auth.service import running as running_auth
from inventory.models import Item
from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from invmesh.auth.v1 import auth_service_pb2_grpc
from invmesh.inventory.v1 import inventory_service_pb2 as pb
from invmesh.inventory.v1 import inventory_service_pb2_grpc
from invmesh.products.v1 import products_service_pb2 as products_pb
from invmesh.products.v1 import products_service_pb2_grpc
from mesh.config import Settings
from mesh.db import Database
from products.models import RetiredProduct
from products.service import running as running_products
from tests.conftest import METRICS_OFF, SERVICE_SECRET, Mesh, SmtpServer, mesh_settings, user_token
from tests.rpc import error_reason, expect_error
from tests.test_replicas import wait_serving


@contextlib.asynccontextmanager
async def databases(settings: Settings, *names: str) -> AsyncIterator[list[Database]]:
    """Connections of the test's own to the services' databases, to look at what they hold."""
    opened = [Database(settings.database_url(name)) for name in names]
    try:
        yield opened
    finally:
        for db in opened:
            await db.dispose()


class InventoryProcess:
    """The inventory service in a process of its own, so it can be killed and started again."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self._log = log
        self._env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("SMTP_URL", "JWT_PRIVATE_KEY") and not k.endswith(("_DATABASE_URL", "_ADDR"))
        } | {
            **METRICS_OFF,
            "INVMESH_DATA_DIR": str(settings.data_dir),
            "AUTH_ADDR": settings.auth_addr,
            "PRODUCTS_ADDR": settings.products_addr,
            "INVENTORY_ADDR": settings.inventory_addr,
            "INVENTORY_DATABASE_URL": settings.database_url("inventory"),
            "DB_AUTO_MIGRATE": "true",
            "SHUTDOWN_GRACE_SECONDS": "1",
        }
        self.address = settings.inventory_addr
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self._log.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "launcher", "serve", "inventory"), env=self._env, stderr=log
            )
        await wait_serving(self.address)

    async def kill(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        await self._process.wait()

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGTERM)
            await self._process.wait()


@contextlib.asynccontextmanager
async def inventory_process(settings: Settings, log: Path) -> AsyncIterator[InventoryProcess]:
    process = InventoryProcess(settings, log)
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


async def test_kill_9_inventory_during_deletes_and_every_retirement_arrives_after_it_restarts(
    settings: Settings, smtp: SmtpServer, tmp_path: Path
) -> None:
    settings = mesh_settings(settings)
    async with (
        databases(settings, "products", "inventory") as (products_db, inventory_db),
        running_auth(settings),
        running_products(settings),
        inventory_process(settings, tmp_path / "inventory.log") as inventory,
        grpc.aio.insecure_channel(settings.auth_addr) as auth_channel,
        grpc.aio.insecure_channel(settings.products_addr) as products_channel,
        grpc.aio.insecure_channel(settings.inventory_addr) as inventory_channel,
    ):
        auth = auth_service_pb2_grpc.AuthServiceStub(auth_channel)
        admin = (
            (
                "authorization",
                f"Bearer {await user_token(auth, 'ops@example.com', smtp.inbox, settings, 'admin')}",
            ),
        )
        products = products_service_pb2_grpc.ProductsServiceStub(products_channel)
        stock = inventory_service_pb2_grpc.InventoryServiceStub(inventory_channel)
        ids = []
        for n in range(20):
            draft = products_pb.Product(sku=f"GONE-{n}", name=f"Gone {n}", price="1.00")
            pid = (
                await products.CreateProduct(products_pb.CreateProductRequest(product=draft), metadata=admin)
            ).product.id
            await stock.RecordMovement(
                pb.RecordMovementRequest(product_id=pid, type=pb.RecordMovementRequest.IN, quantity=5),
                metadata=admin,
            )
            ids.append(pid)

        async def delete(pid: str) -> None:
            await products.DeleteProduct(products_pb.DeleteProductRequest(id=pid), metadata=admin)

        deletes = [asyncio.create_task(delete(pid)) for pid in ids[:10]]
        await asyncio.sleep(0)  # the first deletes are on their way, some retirements with them
        await inventory.kill()
        await asyncio.gather(*deletes, *(delete(pid) for pid in ids[10:]))  # none waits for inventory

        async with products_db.session() as session:
            waiting = await session.scalar(select(func.count()).select_from(RetiredProduct))
        assert waiting, "with inventory killed, some retirements must be waiting in the outbox"

        await inventory.start()
        async with asyncio.timeout(20):
            while waiting:
                await asyncio.sleep(0.1)
                async with products_db.session() as session:
                    waiting = await session.scalar(select(func.count()).select_from(RetiredProduct))
        async with inventory_db.session() as session:
            items = {item.product_id: item for item in await session.scalars(select(Item))}
        assert all(items[pid].retired_at is not None for pid in ids)
        assert all(items[pid].quantity == 5 for pid in ids)  # the ledger's balance is kept for audit


async def test_only_a_service_token_retires_an_inventory_item(mesh: Mesh) -> None:
    issue = mesh.auth.IssueServiceToken
    for client_id, secret in [
        ("products", "wrong-secret-0123456789"),
        ("warehouse", SERVICE_SECRET),
        ("", ""),
    ]:
        refused = await expect_error(
            issue(auth_pb.IssueServiceTokenRequest(client_id=client_id, client_secret=secret)),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        assert error_reason(refused) == "INVALID_CLIENT"
    issued = await issue(auth_pb.IssueServiceTokenRequest(client_id="products", client_secret=SERVICE_SECRET))
    assert issued.token_type == "Bearer" and issued.expires_in == mesh.settings.service_token_ttl_seconds
    service = mesh.as_user(issued.access_token)

    retire = pb.DeleteInventoryItemRequest(product_id="any-product")
    user_refused = await expect_error(
        mesh.inventory.DeleteInventoryItem(retire, metadata=mesh.as_user()), grpc.StatusCode.PERMISSION_DENIED
    )
    assert error_reason(user_refused) == "ROLE_REQUIRED"  # not even an admin
    await mesh.inventory.DeleteInventoryItem(retire, metadata=service)
    await mesh.inventory.DeleteInventoryItem(retire, metadata=service)  # a redelivery is a no-op

    # A service token carries no user role: it reads, but makes no user's changes.
    draft = products_pb.Product(sku="SVC-1", name="Service", price="1.00")
    denied = await expect_error(
        mesh.products.CreateProduct(products_pb.CreateProductRequest(product=draft), metadata=service),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert error_reason(denied) == "ROLE_REQUIRED"
    await mesh.products.ListProducts(products_pb.ListProductsRequest(), metadata=service)


@pytest.mark.parametrize("secrets", ["products", "products:short", ":0123456789abcdef"])
def test_service_secrets_must_be_name_and_long_secret_pairs(settings: Settings, secrets: str) -> None:
    from mesh.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"SERVICE_SECRETS: .*NAME:SECRET pairs"):
        load_settings(service_secrets=secrets)
