"""Assembles the products service: database, channels to auth and inventory, servicer, server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from invmesh.inventory.v1 import inventory_service_pb2_grpc
from invmesh.products.v1 import products_service_pb2, products_service_pb2_grpc
from mesh import clients
from mesh.config import Settings
from mesh.db import Database
from mesh.server import MeshServer, Servicer
from mesh.tokens import verifier_via_auth
from products.catalog import Catalog
from products.models import Base
from products.servicer import ProductsServicer

log = logging.getLogger(__name__)

SERVICE_NAME = products_service_pb2.DESCRIPTOR.services_by_name["ProductsService"].full_name


@asynccontextmanager
async def running(settings: Settings, *, address: str | None = None) -> AsyncIterator[MeshServer]:
    """The products service, serving on `address` (default PRODUCTS_ADDR) until the block exits."""
    async with AsyncExitStack() as stack:
        db = Database(settings.database_url("products"))
        stack.push_async_callback(db.dispose)
        await db.create_all(Base.metadata)
        log.info("using database %s", db.describe())
        auth_channel = clients.channel(settings.auth_addr, default_timeout=settings.peer_timeout_seconds)
        stack.push_async_callback(auth_channel.close)
        inventory_channel = clients.channel(
            settings.inventory_addr, default_timeout=settings.peer_timeout_seconds
        )
        stack.push_async_callback(inventory_channel.close)
        catalog = Catalog(
            db=db,
            inventory=inventory_service_pb2_grpc.InventoryServiceStub(inventory_channel),
            stock_timeout=settings.stock_lookup_timeout_seconds,
        )
        server = MeshServer(
            [
                Servicer(
                    SERVICE_NAME,
                    products_service_pb2_grpc.add_ProductsServiceServicer_to_server,
                    ProductsServicer(catalog),
                )
            ],
            address=address or settings.products_addr,
            verifier=verifier_via_auth(auth_channel, settings),
            grace_seconds=settings.shutdown_grace_seconds,
        )
        await server.start()
        stack.push_async_callback(server.stop)
        yield server
