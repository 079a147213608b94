"""WatchMovements over real gRPC (issue 17): the ledger as a stream, in commit order, resumed
exactly from any cursor it handed out; heartbeats, filters, low-stock signals; the bounds that
keep a slow or numerous audience from costing the server without limit."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from pathlib import Path

import grpc
import pytest
from sqlalchemy import select

from inventory.models import DEFAULT_LOCATION_ID, Movement
from inventory.service import running as running_inventory
from inventory.watch import HEARTBEAT, LOW_STOCK, MOVEMENT, RESTOCKED, FeedEvent, MovementWatch, crossing
from invmesh.inventory.v1 import inventory_service_pb2 as pb
from invmesh.inventory.v1 import inventory_service_pb2_grpc
from mesh.config import Settings
from mesh.db import table_of
from mesh.metrics import WATCH_STREAMS
from products.service import running as running_products
from tests.conftest import Mesh, MeshUsers, SmtpServer, running_mesh
from tests.rpc import error_reason, expect_error
from tests.test_inventory import move, new_product
from tests.test_locations import new_location
from tests.test_replicas import ReplicatedMesh, replicated_mesh
from tests.test_retirements import databases

MOVEMENTS = table_of(Movement)
Call = grpc.aio.UnaryStreamCall[pb.WatchMovementsRequest, pb.WatchMovementsResponse]


class Stream:
    """A WatchMovements call read event by event, whatever messages carried them (`messages`)."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.messages: list[pb.WatchMovementsResponse] = []
        self._ready: collections.deque[pb.MovementFeedEvent] = collections.deque()

    async def next(self) -> pb.MovementFeedEvent:
        while not self._ready:
            message = await self.call.read()
            assert isinstance(message, pb.WatchMovementsResponse), message
            assert message.events, "a message without events"
            self.messages.append(message)
            self._ready.extend(message.events)
        return self._ready.popleft()

    def cancel(self) -> None:
        self.call.cancel()


def watch(mesh: Mesh, after: str = "", **filters: str) -> Stream:
    request = pb.WatchMovementsRequest(after=after, **filters)
    return Stream(mesh.inventory.WatchMovements(request, metadata=mesh.as_user()))


async def events(
    stream: Stream, count: int, *, heartbeats: bool = False, timeout: float = 10
) -> list[pb.MovementFeedEvent]:
    """The next `count` events of `stream` (heartbeats left out unless asked for); a timeout
    keeps those read in the meantime out of the answer."""
    found: list[pb.MovementFeedEvent] = []
    async with asyncio.timeout(timeout):
        while len(found) < count:
            event = await stream.next()
            if heartbeats or event.WhichOneof("event") != "heartbeat":
                found.append(event)
    return found


def movements_of(found: list[pb.MovementFeedEvent]) -> list[pb.Movement]:
    return [e.movement for e in found if e.WhichOneof("event") == "movement"]


def test_a_crossing_is_judged_on_the_stock_before_and_after_the_movement() -> None:
    assert crossing(-3, 2, 4) == LOW_STOCK  # 5 → 2 past 4
    assert crossing(-1, 4, 4) == LOW_STOCK  # at the point counts as low
    assert crossing(-1, 5, 4) is None  # 6 → 5, still above
    assert crossing(3, 5, 4) == RESTOCKED  # 2 → 5
    assert crossing(1, 4, 4) is None  # 3 → 4, still low
    assert crossing(-9, 0, 0) is None  # no reorder point
    assert crossing(0, 3, 4) is None  # a count that matched


async def test_history_then_live_movements_come_in_order_with_cursors_that_resume_exactly(mesh: Mesh) -> None:
    pid = await new_product(mesh)
    for quantity in (5, 3):
        await mesh.inventory.RecordMovement(move(pid, pb.IN, quantity), metadata=mesh.as_user())

    stream = watch(mesh, after="0")
    history = await events(stream, 2)
    assert [(m.product_id, m.quantity, m.balance_after) for m in movements_of(history)] == [
        (pid, 5, 5),
        (pid, 3, 8),
    ]
    assert int(history[0].cursor) < int(history[1].cursor)

    await mesh.inventory.RecordMovement(move(pid, pb.OUT, 2), metadata=mesh.as_user())
    (live,) = await events(stream, 1)
    assert (live.movement.type, live.movement.quantity, live.movement.balance_after) == (pb.OUT, -2, 6)
    stream.cancel()

    # Resuming after the first event sends the second and the third, nothing else.
    resumed = watch(mesh, after=history[0].cursor)
    again = await events(resumed, 2)
    assert [e.cursor for e in again] == [history[1].cursor, live.cursor]
    assert again[1].movement == live.movement
    resumed.cancel()


async def test_events_ready_together_share_a_message_and_resume_from_inside_one_exactly(mesh: Mesh) -> None:
    """A transfer's two movements commit together: a live stream sends them in one message, and
    a replay sends its page of history in one. Resuming from an event inside a message sends
    exactly the events after it."""
    pid = await new_product(mesh)
    site = await new_location(mesh, "WH-7")
    await mesh.inventory.RecordMovement(move(pid, pb.IN, 5), metadata=mesh.as_user())
    await asyncio.sleep(0.2)  # numbered: the live stream starts after it
    live = watch(mesh, product_id=pid)
    await events(live, 1, heartbeats=True)  # caught up: the transfer comes through the reader
    transfer = pb.CreateTransferRequest(
        product_id=pid, from_location_id=DEFAULT_LOCATION_ID, to_location_id=site.id, quantity=2
    )
    done = await mesh.inventory.CreateTransfer(transfer, metadata=mesh.as_user())
    outgoing, incoming = await events(live, 2)
    assert (outgoing.movement, incoming.movement) == (done.outgoing, done.incoming)
    assert list(live.messages[-1].events) == [outgoing, incoming]
    live.cancel()

    replay = watch(mesh, after="0", product_id=pid)
    history = await events(replay, 3)
    assert list(replay.messages[0].events) == history
    assert [m.quantity for m in movements_of(history)] == [5, -2, 2]
    replay.cancel()

    resumed = watch(mesh, after=history[1].cursor, product_id=pid)
    rest = await events(resumed, 2, heartbeats=True)
    assert rest[0] == history[2] and rest[1].WhichOneof("event") == "heartbeat", rest
    resumed.cancel()


async def test_an_empty_cursor_starts_after_the_newest_movement(mesh: Mesh) -> None:
    pid = await new_product(mesh)
    await mesh.inventory.RecordMovement(move(pid, pb.IN, 5), metadata=mesh.as_user())
    await asyncio.sleep(0.2)  # numbered: the feed's end is past it
    stream = watch(mesh)
    await asyncio.sleep(0.2)  # joined
    await mesh.inventory.RecordMovement(move(pid, pb.IN, 1), metadata=mesh.as_user())
    (first,) = await events(stream, 1)
    assert first.movement.balance_after == 6
    stream.cancel()


async def test_a_ledger_page_s_feed_cursor_resumes_after_what_the_page_holds(mesh: Mesh) -> None:
    """The feed from a ledger page's cursor sends each movement the page could not list, and of
    those it listed only one committed just before the read (not yet placed in the feed)."""
    pid = await new_product(mesh)
    older = (await mesh.inventory.RecordMovement(move(pid, pb.IN, 5), metadata=mesh.as_user())).movement
    await asyncio.sleep(0.2)  # placed in the feed
    just_before = (await mesh.inventory.RecordMovement(move(pid, pb.IN, 1), metadata=mesh.as_user())).movement
    page = await mesh.inventory.ListMovements(
        pb.ListMovementsRequest(product_id=pid), metadata=mesh.as_user()
    )
    assert [m.id for m in page.movements] == [just_before.id, older.id]
    stream = watch(mesh, after=page.feed_cursor, product_id=pid)
    after = (await mesh.inventory.RecordMovement(move(pid, pb.OUT, 2), metadata=mesh.as_user())).movement
    sent: list[str] = []
    while after.id not in sent:
        sent += [m.id for m in movements_of(await events(stream, 1))]
    assert older.id not in sent and set(sent) <= {just_before.id, after.id}
    stream.cancel()


async def test_filters_keep_one_product_or_one_location(mesh: Mesh) -> None:
    one, other = await new_product(mesh, "SKU-1"), await new_product(mesh, "SKU-2")
    site = await new_location(mesh, "WH-2")
    await mesh.inventory.RecordMovement(move(one, pb.IN, 1), metadata=mesh.as_user())
    await mesh.inventory.RecordMovement(move(other, pb.IN, 2), metadata=mesh.as_user())
    await mesh.inventory.RecordMovement(move(other, pb.IN, 3, location_id=site.id), metadata=mesh.as_user())

    by_product = watch(mesh, after="0", product_id=other)
    by_location = watch(mesh, after="0", location_id=site.id)
    assert [m.quantity for m in movements_of(await events(by_product, 2))] == [2, 3]
    assert [m.quantity for m in movements_of(await events(by_location, 1))] == [3]
    await mesh.inventory.RecordMovement(move(one, pb.IN, 4, location_id=site.id), metadata=mesh.as_user())
    await mesh.inventory.RecordMovement(move(other, pb.IN, 5), metadata=mesh.as_user())
    assert [m.quantity for m in movements_of(await events(by_product, 1))] == [5]
    assert [(m.product_id, m.quantity) for m in movements_of(await events(by_location, 1))] == [(one, 4)]
    by_product.cancel()
    by_location.cancel()


async def test_bad_cursors_and_unknown_locations_are_refused(mesh: Mesh) -> None:
    for cursor in ("abc", "-1", "1" * 41):
        error = await expect_error(events(watch(mesh, after=cursor), 1), grpc.StatusCode.INVALID_ARGUMENT)
        assert error_reason(error) == "INVALID_CURSOR"
    error = await expect_error(events(watch(mesh, after="999999"), 1), grpc.StatusCode.INVALID_ARGUMENT)
    assert "past the end" in (error.details() or "")
    unknown = watch(mesh, after="0", location_id="no-such-place")
    error = await expect_error(events(unknown, 1), grpc.StatusCode.NOT_FOUND)
    assert error_reason(error) == "LOCATION_NOT_FOUND"


async def test_a_stream_needs_a_valid_token(mesh: Mesh) -> None:
    request = pb.WatchMovementsRequest(after="0")
    anonymous = Stream(mesh.inventory.WatchMovements(request))
    await expect_error(events(anonymous, 1), grpc.StatusCode.UNAUTHENTICATED)
    forged = Stream(mesh.inventory.WatchMovements(request, metadata=mesh.as_user("not-a-token")))
    await expect_error(events(forged, 1), grpc.StatusCode.UNAUTHENTICATED)


async def test_a_stream_says_when_it_is_live_then_beats_while_idle_with_its_cursor(
    mesh_users: MeshUsers,
) -> None:
    async with running_mesh(mesh_users, watch_heartbeat_seconds=0.2) as mesh:
        pid = await new_product(mesh)
        await mesh.inventory.RecordMovement(move(pid, pb.IN, 1), metadata=mesh.as_user())
        await asyncio.sleep(0.2)  # numbered
        stream = watch(mesh, after="0")
        moved, live, idle = await events(stream, 3, heartbeats=True)
        kinds = [e.WhichOneof("event") for e in (moved, live, idle)]
        assert kinds == ["movement", "heartbeat", "heartbeat"]
        assert int(moved.cursor) <= int(live.cursor) <= int(idle.cursor) and idle.heartbeat.HasField(
            "sent_at"
        )
        stream.cancel()
        # A stream that starts at the end says so at once, and resuming from a heartbeat's
        # cursor sends what came after it.
        (now,) = await events(watch(mesh), 1, heartbeats=True)
        assert now.WhichOneof("event") == "heartbeat" and int(now.cursor) >= int(idle.cursor)
        await mesh.inventory.RecordMovement(move(pid, pb.IN, 2), metadata=mesh.as_user())
        (after_beat,) = await events(watch(mesh, after=idle.cursor), 1)
        assert after_beat.movement.quantity == 2


async def test_a_busy_stream_waits_out_its_linger_and_an_idle_one_sends_at_once(
    mesh_users: MeshUsers,
) -> None:
    linger = 3.0
    async with running_mesh(mesh_users, watch_linger_seconds=linger, watch_heartbeat_seconds=30) as mesh:
        pid = await new_product(mesh)
        stream = watch(mesh)
        await events(stream, 1, heartbeats=True)  # live
        await mesh.inventory.RecordMovement(move(pid, pb.IN, 1), metadata=mesh.as_user())
        await events(stream, 1, timeout=linger - 0.5)  # the first since the stream went live: at once
        sent = asyncio.get_running_loop().time()
        for quantity in (2, 3):
            await mesh.inventory.RecordMovement(move(pid, pb.IN, quantity), metadata=mesh.as_user())
        second = asyncio.create_task(events(stream, 2, timeout=2 * linger))
        await asyncio.sleep(1.0)
        assert not second.done()  # held back: the stream sent a message less than the linger ago
        held = await second
        assert asyncio.get_running_loop().time() - sent >= linger - 0.1
        assert [m.quantity for m in movements_of(held)] == [2, 3]
        assert len(stream.messages[-1].events) == 2  # both in the one message


async def test_a_lingering_stream_sends_a_burst_once_it_half_fills_the_buffer_rather_than_overflow(
    mesh_users: MeshUsers,
) -> None:
    """A burst that would fill a stream's buffer before its linger ends goes once the buffer is
    half full: a client that reads promptly is never cut off as a slow consumer."""
    changes = {"watch_linger_seconds": 30.0, "watch_buffer_events": 4, "watch_heartbeat_seconds": 30}
    async with running_mesh(mesh_users, **changes) as mesh:
        pid = await new_product(mesh)
        stream = watch(mesh)
        await events(stream, 1, heartbeats=True)  # live
        await mesh.inventory.RecordMovement(move(pid, pb.IN, 1), metadata=mesh.as_user())
        await events(stream, 1)  # at once; the stream now lingers
        for _ in range(12):  # one at a time: each in a round of the sequencer of its own
            await mesh.inventory.RecordMovement(move(pid, pb.IN, 1), metadata=mesh.as_user())
        burst = await events(stream, 12)  # held back for the whole linger, or cut off: fails here
        assert [m.balance_after for m in movements_of(burst)] == list(range(2, 14))
        assert len(stream.messages) > 2  # in several messages, each sent before the linger ended


async def test_one_stream_more_than_the_limit_is_refused(mesh_users: MeshUsers) -> None:
    async with running_mesh(mesh_users, watch_max_streams=2, watch_heartbeat_seconds=0.1) as mesh:
        open_streams = [watch(mesh) for _ in range(2)]
        for stream in open_streams:
            await events(stream, 1, heartbeats=True)
        error = await expect_error(
            events(watch(mesh), 1, heartbeats=True), grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert error_reason(error) == "TOO_MANY_WATCHERS"
        # A stream that ends frees its place.
        open_streams[0].cancel()
        await asyncio.sleep(0.3)
        await events(watch(mesh), 1, heartbeats=True)


@pytest.mark.slow
async def test_a_client_that_reads_too_slowly_is_cut_off_with_a_cursor_to_resume_from(
    mesh_users: MeshUsers,
) -> None:
    async with running_mesh(mesh_users, watch_buffer_events=5, watch_heartbeat_seconds=30) as mesh:
        pid = await new_product(mesh)
        # A small window, so the server's writes wait on this client soon.
        options = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
        async with grpc.aio.insecure_channel(mesh.settings.inventory_addr, options=options) as slow_channel:
            slow = inventory_service_pb2_grpc.InventoryServiceStub(slow_channel)
            stream = slow.WatchMovements(pb.WatchMovementsRequest(), metadata=mesh.as_user())
            await asyncio.sleep(0.3)  # joined, and not reading
            for _ in range(120):
                await mesh.inventory.RecordMovement(move(pid, pb.IN, 1), metadata=mesh.as_user())
            read: list[pb.MovementFeedEvent] = []

            async def read_all() -> None:
                async with asyncio.timeout(10):
                    async for message in stream:
                        read.extend(message.events)

            error = await expect_error(read_all(), grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert error_reason(error) == "SLOW_CONSUMER"
            assert 0 < len(movements_of(read)) < 120
        # It resumes after the last event it read and misses nothing.
        rest = await events(watch(mesh, after=read[-1].cursor), 120 - len(movements_of(read)))
        balances = [m.balance_after for m in movements_of(read + rest)]
        assert balances == list(range(1, 121))


async def test_a_cancelled_stream_leaves_the_server(mesh: Mesh) -> None:
    before = WATCH_STREAMS._value.get()
    stream = watch(mesh, after="0")
    await asyncio.sleep(0.3)
    assert WATCH_STREAMS._value.get() == before + 1
    stream.cancel()
    async with asyncio.timeout(5):
        while WATCH_STREAMS._value.get() != before:
            await asyncio.sleep(0.02)


async def test_a_row_that_arrives_as_the_heartbeat_falls_due_is_sent_not_skipped(mesh: Mesh) -> None:
    """The event loop can run a held row's arrival and the heartbeat's timeout in one turn:
    the wait then ends in TimeoutError although the row is there. The heartbeat must not
    claim the row's position, or the stream skips it (a gap its client never resumes from).
    Blocking the loop past the heartbeat, then handing a row over, makes that turn happen."""
    pid = await new_product(mesh)
    await mesh.inventory.RecordMovement(move(pid, pb.IN, 1), metadata=mesh.as_user())
    async with databases(mesh.settings, "inventory") as (db,):
        async with asyncio.timeout(5):  # the sequencer gives it its place
            while not (rows := await db.fetch(select(MOVEMENTS).where(MOVEMENTS.c.product_id == pid))) or (
                rows[0].seq is None
            ):
                await asyncio.sleep(0.02)
        feed: MovementWatch[FeedEvent] = MovementWatch(
            db, render=lambda e: e, max_streams=1, buffer_events=10, heartbeat_seconds=0.2, linger_seconds=0
        )
        stream = feed.follow("", product_id=pid)  # from the end: live rows only
        caught_up = await anext(stream)
        assert [e.kind for e in caught_up] == [HEARTBEAT]
        place = rows[0].seq + 1  # a place after the end, as the sequencer would hand over
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)  # the stream now waits for rows, its heartbeat's timer armed
        loop = asyncio.get_running_loop()

        def stall_then_hand_over() -> None:
            time.sleep(0.4)  # the heartbeat falls due meanwhile; it runs in the next turn...
            loop.call_soon(feed._give, [(place, rows[0])])  # ...after the row's arrival

        loop.call_soon(stall_then_hand_over)
        sent: list[FeedEvent] = []
        async with asyncio.timeout(3):
            sent += await waiting
            while not any(e.kind == MOVEMENT for e in sent):
                sent += await anext(stream)
        await stream.aclose()
    assert [e.position for e in sent if e.kind != HEARTBEAT] == [2 * place]
    assert all(e.position < 2 * place for e in sent if e.kind == HEARTBEAT)


@pytest.mark.slow
async def test_resuming_at_random_points_across_two_replicas_misses_and_repeats_nothing(
    settings: Settings, smtp: SmtpServer, tmp_path: Path
) -> None:
    """Writers spread entries, exits and transfers over both inventory replicas while a reader
    follows the feed, dropping its stream after a random number of events and resuming from its
    last cursor on the other replica: it gets every movement once, each product's at each
    location in the order that chains their balances, in the order one unbroken stream gives."""
    rng = random.Random(17)
    async with replicated_mesh(settings, smtp, tmp_path) as mesh:
        products = [await mesh.new_product(f"FEED-{n}") for n in range(3)]
        site = await mesh.inventory.CreateLocation(
            pb.CreateLocationRequest(location=pb.Location(code="FEED-2", name="Second")), metadata=mesh.user
        )
        locations = [DEFAULT_LOCATION_ID, site.location.id]
        channels = [grpc.aio.insecure_channel(address) for address in mesh.addresses["inventory"]]
        by_replica = [inventory_service_pb2_grpc.InventoryServiceStub(channel) for channel in channels]

        async def write(writer: int) -> None:
            for _ in range(40):
                pid, where = rng.choice(products), rng.choice(locations)
                roll = rng.random()
                try:
                    if roll < 0.6:
                        await mesh.inventory.RecordMovement(
                            move(pid, pb.IN, rng.randint(1, 5), location_id=where), metadata=mesh.user
                        )
                    elif roll < 0.85:
                        await mesh.inventory.RecordMovement(
                            move(pid, pb.OUT, rng.randint(1, 3), location_id=where), metadata=mesh.user
                        )
                    else:
                        other = locations[1 - locations.index(where)]
                        transfer = pb.CreateTransferRequest(
                            product_id=pid, from_location_id=where, to_location_id=other, quantity=1
                        )
                        await mesh.inventory.CreateTransfer(transfer, metadata=mesh.user)
                except grpc.aio.AioRpcError as refused:  # an exit or transfer beyond the stock
                    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION, refused

        received: list[pb.MovementFeedEvent] = []
        writing = asyncio.gather(*(write(n) for n in range(6)))
        cursor, replica = "0", 0
        async with asyncio.timeout(90):  # a movement missed would keep the reader waiting
            while not writing.done() or len(movements_of(received)) < await total_movements(mesh, products):
                stream = Stream(
                    by_replica[replica].WatchMovements(
                        pb.WatchMovementsRequest(after=cursor), metadata=mesh.user
                    )
                )
                with contextlib.suppress(TimeoutError):
                    for _ in range(rng.randint(1, 40)):
                        (event,) = await events(stream, 1, timeout=0.5)
                        received.append(event)
                        cursor = event.cursor
                stream.cancel()
                replica = 1 - replica
        await writing

        cursors = [int(e.cursor) for e in received]
        assert cursors == sorted(set(cursors)), "a cursor came twice or out of order"
        got = movements_of(received)
        assert len({m.id for m in got}) == len(got) == await total_movements(mesh, products)
        balances: dict[tuple[str, str], int] = {}
        for m in got:
            before = balances.get((m.product_id, m.location_id), 0)
            assert m.balance_after == before + m.quantity, m
            balances[m.product_id, m.location_id] = m.balance_after

        whole = Stream(by_replica[0].WatchMovements(pb.WatchMovementsRequest(after="0"), metadata=mesh.user))
        unbroken = await events(whole, len(received))
        whole.cancel()
        assert [(e.cursor, e.movement.id) for e in unbroken] == [(e.cursor, e.movement.id) for e in received]
        for channel in channels:
            await channel.close()


async def total_movements(mesh: ReplicatedMesh, products: list[str]) -> int:
    return sum([len(await mesh.ledger(pid)) for pid in products])


async def test_a_stopping_server_ends_its_streams_at_once_so_clients_resume_elsewhere(
    mesh_users: MeshUsers,
) -> None:
    grace = 5.0
    settings = mesh_users.settings.model_copy(update={"shutdown_grace_seconds": grace})
    async with (
        running_products(settings),
        grpc.aio.insecure_channel(settings.inventory_addr) as channel,
        contextlib.AsyncExitStack() as inventory,
    ):
        await inventory.enter_async_context(running_inventory(settings))
        stub = inventory_service_pb2_grpc.InventoryServiceStub(channel)
        metadata = (("authorization", f"Bearer {mesh_users.verified_token}"),)
        stream = Stream(stub.WatchMovements(pb.WatchMovementsRequest(), metadata=metadata))
        await events(stream, 1, heartbeats=True)
        started = asyncio.get_running_loop().time()
        stopping = asyncio.create_task(inventory.aclose())
        error = await expect_error(events(stream, 1, heartbeats=True), grpc.StatusCode.UNAVAILABLE)
        # Ended when the server began to stop, not once the grace for unary calls ran out.
        assert asyncio.get_running_loop().time() - started < grace / 2, error
        await stopping
