"""Assembles the products service: database, channels to auth and inventory, the relay that
retires deleted products' inventory, the watch that keeps its cache in step with other
replicas, servicer, server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from invmesh import client
from invmesh.products.v1 import products_service_pb2
from mesh.config import Settings
from mesh.db import open_database
from mesh.server import MeshServer, Servicer
from mesh.service_token import ServiceToken
from mesh.tokens import verifier_via_auth
from products.catalog import Catalog
from products.change_watch import ChangeWatch
from products.retirements import retirement_relay
from products.servicer import ProductsServicer, add_to_server, page_answer, product_answer

SERVICE_NAME = products_service_pb2.DESCRIPTOR.services_by_name["ProductsService"].full_name


@asynccontextmanager
async def running(settings: Settings, *, address: str | None = None) -> AsyncIterator[MeshServer]:
    """The products service, serving on `address` (default PRODUCTS_ADDR) until the block exits."""
    async with AsyncExitStack() as stack:
        db = await open_database(stack, settings, "products")
        peers = await stack.enter_async_context(client.connect(settings))
        auth = peers.channel("auth")
        identity = ServiceToken.from_settings(auth, settings, "products")
        retirements = retirement_relay(db, peers.inventory, identity, settings)
        retirements.start()
        stack.push_async_callback(retirements.stop)
        catalog = Catalog(
            db=db,
            retirements=retirements,
            cache_seconds=settings.product_cache_seconds,
            answer_product=product_answer,
            answer_page=page_answer,
        )
        # Runs with the cache off too: another replica may cache, and the watch prunes the log.
        watch = ChangeWatch(
            db,
            catalog.forget,
            own_writer=catalog.writer,
            retention=settings.product_cache_seconds,
            retry_initial=settings.outbox_retry_initial_seconds,
            retry_max=settings.outbox_retry_max_seconds,
        )
        await watch.start_at_end()
        stack.push_async_callback(watch.stop)
        servicer = Servicer(SERVICE_NAME, add_to_server, ProductsServicer(catalog))
        yield await MeshServer.of_service(
            "products",
            servicer,
            settings,
            address=address or settings.products_addr,
            verifier=verifier_via_auth(auth, settings),
            database=db,
        ).start_in(stack)
