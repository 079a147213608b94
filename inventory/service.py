"""Assembles the inventory service: database, channels to auth and products, servicer, server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from inventory.models import Base
from inventory.servicer import InventoryServicer
from inventory.stock import Inventory
from invmesh.inventory.v1 import inventory_service_pb2, inventory_service_pb2_grpc
from invmesh.products.v1 import products_service_pb2_grpc
from mesh import clients
from mesh.config import Settings
from mesh.db import Database
from mesh.server import MeshServer, Servicer
from mesh.tokens import verifier_via_auth

log = logging.getLogger(__name__)

SERVICE_NAME = inventory_service_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name


@asynccontextmanager
async def running(settings: Settings, *, address: str | None = None) -> AsyncIterator[MeshServer]:
    """The inventory service, serving on `address` (default INVENTORY_ADDR) until the block exits."""
    async with AsyncExitStack() as stack:
        db = Database(settings.database_url("inventory"))
        stack.push_async_callback(db.dispose)
        await db.create_all(Base.metadata)
        log.info("using database %s", db.describe())
        auth_channel = clients.channel(settings.auth_addr, default_timeout=settings.peer_timeout_seconds)
        stack.push_async_callback(auth_channel.close)
        products_channel = clients.channel(
            settings.products_addr, default_timeout=settings.peer_timeout_seconds
        )
        stack.push_async_callback(products_channel.close)
        inventory = Inventory(db=db, products=products_service_pb2_grpc.ProductsServiceStub(products_channel))
        server = MeshServer(
            [
                Servicer(
                    SERVICE_NAME,
                    inventory_service_pb2_grpc.add_InventoryServiceServicer_to_server,
                    InventoryServicer(inventory),
                )
            ],
            address=address or settings.inventory_addr,
            verifier=verifier_via_auth(auth_channel, settings),
            grace_seconds=settings.shutdown_grace_seconds,
        )
        await server.start()
        stack.push_async_callback(server.stop)
        yield server
