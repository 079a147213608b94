"""Assembles the inventory service: database, channels to auth and products, the feed that
reports stock changes to products, the sequencer that gives movements their place in the
movement feed and the watch that streams it, the sweeper that marks expired reservations,
servicer, server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from inventory.locations import Locations
from inventory.product_check import ProductCheck
from inventory.reservations import Reservations, ReservationSweeper
from inventory.sequencer import Sequencer
from inventory.servicer import InventoryServicer, add_to_server, feed_event
from inventory.stock import Inventory
from inventory.stock_feed import StockFeed
from inventory.watch import MovementWatch
from invmesh import client
from invmesh.inventory.v1 import inventory_service_pb2
from mesh.config import Settings
from mesh.db import open_database
from mesh.server import MeshServer, Servicer
from mesh.service_token import ServiceToken
from mesh.tokens import verifier_via_auth

SERVICE_NAME = inventory_service_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name


@asynccontextmanager
async def running(settings: Settings, *, address: str | None = None) -> AsyncIterator[MeshServer]:
    """The inventory service, serving on `address` (default INVENTORY_ADDR) until the block exits."""
    async with AsyncExitStack() as stack:
        db = await open_database(stack, settings, "inventory")
        peers = await stack.enter_async_context(client.connect(settings))
        auth = peers.channel("auth")
        check = ProductCheck(peers.products, ttl=settings.product_check_cache_seconds)
        feed = StockFeed(
            db,
            peers.products,
            ServiceToken.from_settings(auth, settings, "inventory"),
            retry_initial=settings.outbox_retry_initial_seconds,
            retry_max=settings.outbox_retry_max_seconds,
            report_wait=settings.stock_report_wait_seconds,
        )
        feed.start()
        stack.push_async_callback(feed.stop)
        watch = MovementWatch(
            db,
            render=feed_event,
            max_streams=settings.watch_max_streams,
            buffer_events=settings.watch_buffer_events,
            heartbeat_seconds=settings.watch_heartbeat_seconds,
            linger_seconds=settings.watch_linger_seconds,
        )
        await watch.start()
        stack.push_async_callback(watch.stop)
        sequencer = Sequencer(
            db,
            numbered=watch.numbered,
            rows_wanted=lambda: watch.followed,
            retry_initial=settings.outbox_retry_initial_seconds,
            retry_max=settings.outbox_retry_max_seconds,
        )
        sequencer.start()
        stack.push_async_callback(sequencer.stop)

        def changed() -> None:
            feed.wake()
            sequencer.wake()

        sweeper = ReservationSweeper(
            db,
            interval=settings.reservation_sweep_seconds,
            retry_initial=settings.outbox_retry_initial_seconds,
            retry_max=settings.outbox_retry_max_seconds,
        )
        sweeper.start()
        stack.push_async_callback(sweeper.stop)
        servicer = Servicer(
            SERVICE_NAME,
            add_to_server,
            InventoryServicer(
                Inventory(db=db, products=check, changed=changed, reported=feed.reported),
                Locations(db),
                Reservations(db=db, products=check, changed=changed, reported=feed.reported),
                watch,
            ),
        )
        yield await MeshServer.of_service(
            "inventory",
            servicer,
            settings,
            address=address or settings.inventory_addr,
            verifier=verifier_via_auth(auth, settings),
            database=db,
        ).start_in(stack)
