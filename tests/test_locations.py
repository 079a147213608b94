"""Locations, stock per product and location, transfers and reservations over real gRPC, with
auth and products running (issue 16): what each call answers, what it refuses and why, and
that the ledger still explains every balance, now per location."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable

import grpc
import pytest
from google.rpc import error_details_pb2
from sqlalchemy import func, select, update

from inventory import stock
from inventory.models import DEFAULT_LOCATION_ID, Item, LocationStock, Movement, Reservation
from inventory.reservations import ReservationSweeper
from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from invmesh.inventory.v1 import inventory_service_pb2 as pb
from invmesh.products.v1 import products_service_pb2 as products_pb
from mesh.db import Database, utcnow
from mesh.errors import status_of
from mesh.messages import descriptor
from tests.conftest import SERVICE_SECRET, Mesh, SmtpServer, user_token
from tests.rpc import error_reason, eventually, expect_error, field_violations
from tests.test_inventory import ledger, move, new_product

Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
async def inventory_db(mesh: Mesh) -> AsyncIterator[Database]:
    db = Database(mesh.settings.database_url("inventory"))
    yield db
    await db.dispose()


async def new_location(mesh: Mesh, code: str, name: str = "") -> pb.Location:
    request = pb.CreateLocationRequest(location=pb.Location(code=code, name=name or f"Site {code}"))
    return (await mesh.inventory.CreateLocation(request, metadata=mesh.as_user())).location


async def stocked(mesh: Mesh, sku: str, quantity: int, location_id: str = "") -> str:
    pid = await new_product(mesh, sku)
    await mesh.inventory.RecordMovement(
        move(pid, pb.IN, quantity, location_id=location_id), metadata=mesh.as_user()
    )
    return pid


async def item(mesh: Mesh, pid: str) -> pb.InventoryItem:
    request = pb.GetInventoryItemRequest(product_id=pid)
    return (await mesh.inventory.GetInventoryItem(request, metadata=mesh.as_user())).item


def at(found: pb.InventoryItem, location_id: str) -> pb.LocationStock:
    (level,) = [level for level in found.locations if level.location_id == location_id]
    return level


async def reserve(
    mesh: Mesh, pid: str, quantity: int, metadata: Metadata = (), **fields: object
) -> pb.Reservation:
    request = pb.CreateReservationRequest(product_id=pid, quantity=quantity, **fields)  # type: ignore[arg-type]
    return (await mesh.inventory.CreateReservation(request, metadata=metadata or mesh.as_user())).reservation


async def service_token(mesh: Mesh) -> Metadata:
    issued = await mesh.auth.IssueServiceToken(
        auth_pb.IssueServiceTokenRequest(client_id="products", client_secret=SERVICE_SECRET)
    )
    return mesh.as_user(issued.access_token)


async def test_locations_are_created_read_listed_renamed_and_deleted(mesh: Mesh) -> None:
    listed = await mesh.inventory.ListLocations(pb.ListLocationsRequest(), metadata=mesh.as_user())
    assert [(loc.id, loc.code) for loc in listed.locations] == [(DEFAULT_LOCATION_ID, "DEFAULT")]

    made = [await new_location(mesh, code) for code in ("WH-2", "WH-1", "shop.3")]
    assert made[0].id and made[0].name == "Site WH-2" and made[0].HasField("created_at")
    got = await mesh.inventory.GetLocation(pb.GetLocationRequest(id=made[0].id), metadata=mesh.as_user())
    assert got.location == made[0]

    codes, token = [], ""
    while True:  # by code, two at a time
        page = await mesh.inventory.ListLocations(
            pb.ListLocationsRequest(page_size=2, page_token=token), metadata=mesh.as_user()
        )
        codes += [loc.code for loc in page.locations]
        if not (token := page.next_page_token):
            break
    assert codes == ["DEFAULT", "WH-1", "WH-2", "shop.3"]

    taken = await expect_error(new_location(mesh, "WH-1"), grpc.StatusCode.ALREADY_EXISTS)
    assert error_reason(taken) == "LOCATION_CODE_TAKEN"
    bad = await expect_error(new_location(mesh, "no spaces", " "), grpc.StatusCode.INVALID_ARGUMENT)
    assert field_violations(bad).keys() == {"code", "name"}

    renamed = await mesh.inventory.UpdateLocation(
        pb.UpdateLocationRequest(
            location=pb.Location(id=made[0].id, name="North"), update_mask={"paths": ["name"]}
        ),
        metadata=mesh.as_user(),
    )
    assert (renamed.location.code, renamed.location.name) == ("WH-2", "North")
    clash = await expect_error(
        mesh.inventory.UpdateLocation(
            pb.UpdateLocationRequest(location=pb.Location(id=made[0].id, code="WH-1", name="N")),
            metadata=mesh.as_user(),
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert error_reason(clash) == "LOCATION_CODE_TAKEN"

    await mesh.inventory.DeleteLocation(pb.DeleteLocationRequest(id=made[0].id), metadata=mesh.as_user())
    gone = await expect_error(
        mesh.inventory.GetLocation(pb.GetLocationRequest(id=made[0].id), metadata=mesh.as_user()),
        grpc.StatusCode.NOT_FOUND,
    )
    assert error_reason(gone) == "LOCATION_NOT_FOUND"
    default = await expect_error(
        mesh.inventory.DeleteLocation(
            pb.DeleteLocationRequest(id=DEFAULT_LOCATION_ID), metadata=mesh.as_user()
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_reason(default) == "DEFAULT_LOCATION"


async def test_a_location_holding_stock_or_reservations_is_not_deleted(mesh: Mesh) -> None:
    site = await new_location(mesh, "WH-9")
    pid = await stocked(mesh, "NE-1", 4, site.id)
    delete = pb.DeleteLocationRequest(id=site.id)
    full = await expect_error(
        mesh.inventory.DeleteLocation(delete, metadata=mesh.as_user()), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert error_reason(full) == "LOCATION_NOT_EMPTY"

    await mesh.inventory.RecordMovement(move(pid, pb.IN, 2, location_id=site.id), metadata=mesh.as_user())
    held = await reserve(mesh, pid, 2, location_id=site.id)
    await mesh.inventory.SetStock(
        pb.SetStockRequest(product_id=pid, quantity=2, location_id=site.id), metadata=mesh.as_user()
    )
    await mesh.inventory.ConfirmReservation(pb.ConfirmReservationRequest(id=held.id), metadata=mesh.as_user())
    assert at(await item(mesh, pid), site.id).on_hand == 0
    await mesh.inventory.DeleteLocation(delete, metadata=mesh.as_user())  # empty now

    # A reservation alone holds a location too.
    other = await new_location(mesh, "WH-8")
    pid2 = await stocked(mesh, "NE-2", 1, other.id)
    kept = await reserve(mesh, pid2, 1, location_id=other.id)
    await mesh.inventory.RecordMovement(move(pid2, pb.IN, 1, location_id=other.id), metadata=mesh.as_user())
    await mesh.inventory.RecordMovement(move(pid2, pb.OUT, 1, location_id=other.id), metadata=mesh.as_user())
    refused = await expect_error(
        mesh.inventory.DeleteLocation(pb.DeleteLocationRequest(id=other.id), metadata=mesh.as_user()),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_reason(refused) == "LOCATION_NOT_EMPTY"
    assert kept.state == pb.ACTIVE

    # Unknown locations are NOT_FOUND wherever they are named.
    for call in (
        mesh.inventory.RecordMovement(move(pid, pb.IN, 1, location_id="nowhere"), metadata=mesh.as_user()),
        mesh.inventory.ListInventoryItems(
            pb.ListInventoryItemsRequest(location_id="nowhere"), metadata=mesh.as_user()
        ),
        reserve(mesh, pid, 1, location_id="nowhere"),
    ):
        assert error_reason(await expect_error(call, grpc.StatusCode.NOT_FOUND)) == "LOCATION_NOT_FOUND"


async def test_stock_reads_carry_each_location_and_what_is_reserved(mesh: Mesh) -> None:
    site = await new_location(mesh, "WH-2")
    pid = await stocked(mesh, "PER-1", 10)
    await mesh.inventory.RecordMovement(move(pid, pb.IN, 5, location_id=site.id), metadata=mesh.as_user())
    await reserve(mesh, pid, 3)
    other = await stocked(mesh, "PER-2", 7)

    found = await item(mesh, pid)
    assert (found.quantity, found.reserved, found.available) == (15, 3, 12)
    assert [(lv.location_id, lv.on_hand, lv.reserved, lv.available) for lv in found.locations] == sorted(
        [(DEFAULT_LOCATION_ID, 10, 3, 7), (site.id, 5, 0, 5)]
    )

    listed = await mesh.inventory.ListInventoryItems(pb.ListInventoryItemsRequest(), metadata=mesh.as_user())
    assert {i.product_id: i.available for i in listed.items} == {pid: 12, other: 7}

    # Several holds at one location and one at another: a page's item sums them as a read does.
    await reserve(mesh, pid, 2)
    await reserve(mesh, pid, 4, location_id=site.id)
    found = await item(mesh, pid)
    assert found.reserved == 9
    assert {lv.location_id: lv.reserved for lv in found.locations} == {DEFAULT_LOCATION_ID: 5, site.id: 4}
    listed = await mesh.inventory.ListInventoryItems(pb.ListInventoryItemsRequest(), metadata=mesh.as_user())
    assert [i for i in listed.items if i.product_id == pid] == [found]
    there = await mesh.inventory.ListInventoryItems(
        pb.ListInventoryItemsRequest(location_id=site.id), metadata=mesh.as_user()
    )
    assert [(i.product_id, i.quantity, [lv.location_id for lv in i.locations]) for i in there.items] == [
        (pid, 15, [site.id])
    ]
    # Products' stock stays the on-hand total.
    get = products_pb.GetProductRequest(id=pid)
    product = await eventually(
        lambda: mesh.products.GetProduct(get, metadata=mesh.as_user()), lambda p: p.product.stock == 15
    )
    assert product.product.stock == 15


async def test_an_exit_takes_only_what_is_available_and_a_count_keeps_what_is_reserved(mesh: Mesh) -> None:
    pid = await stocked(mesh, "AV-1", 5)
    await reserve(mesh, pid, 3)
    refused = await expect_error(
        mesh.inventory.RecordMovement(move(pid, pb.OUT, 3), metadata=mesh.as_user()),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_reason(refused) == "INSUFFICIENT_STOCK" and "only 2 available" in (refused.details() or "")
    out = await mesh.inventory.RecordMovement(move(pid, pb.OUT, 2), metadata=mesh.as_user())
    assert (out.item.quantity, out.item.available, out.movement.location_id) == (3, 0, DEFAULT_LOCATION_ID)

    below = await expect_error(
        mesh.inventory.SetStock(pb.SetStockRequest(product_id=pid, quantity=2), metadata=mesh.as_user()),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_reason(below) == "BELOW_RESERVED"
    counted = await mesh.inventory.SetStock(
        pb.SetStockRequest(product_id=pid, quantity=4), metadata=mesh.as_user()
    )
    assert (counted.item.quantity, counted.item.reserved, counted.movement.quantity) == (4, 3, 1)
    assert (await item(mesh, pid)).quantity == 4


def figures(found: pb.InventoryItem) -> tuple[object, ...]:
    """What an item reports, but when it last moved."""
    levels = [(lv.location_id, lv.on_hand, lv.reserved, lv.available) for lv in found.locations]
    return found.product_id, found.quantity, found.reserved, found.available, levels


def replayed(movements: list[pb.Movement]) -> dict[str, int]:
    """The stock by location that a product's ledger (newest first, as listed) adds up to,
    each movement's balance_after checked against the sum before it."""
    balances: dict[str, int] = defaultdict(int)
    for movement in reversed(movements):
        balances[movement.location_id] += movement.quantity
        assert movement.balance_after == balances[movement.location_id] >= 0
    return dict(balances)


async def stored(db: Database, pid: str) -> tuple[int, int, int, int]:
    """The item's total and version, the sum of its stock rows, and its movements, as stored."""
    async with db.session() as session:
        total, version = (
            await session.execute(select(Item.quantity, Item.version).where(Item.product_id == pid))
        ).one()
        levels = await session.scalar(
            select(func.coalesce(func.sum(LocationStock.on_hand), 0)).where(LocationStock.product_id == pid)
        )
        movements = await session.scalar(select(func.count()).where(Movement.product_id == pid))
    return total, version, int(levels or 0), int(movements or 0)


async def test_an_entry_where_the_product_has_no_stock_row_yet_moves_the_total_and_the_level_together(
    mesh: Mesh, inventory_db: Database
) -> None:
    """On PostgreSQL an IN is first tried as one statement that needs the location's stock row:
    without it, the statement must change nothing (not even the item's total), and the locked
    path writes the row. An entry there next takes the one statement, and answers as the
    locked path does, reservations included."""
    site = await new_location(mesh, "NEW-1")
    pid = await stocked(mesh, "NEWROW-1", 5)
    await reserve(mesh, pid, 2)
    first = await mesh.inventory.RecordMovement(
        move(pid, pb.IN, 4, location_id=site.id), metadata=mesh.as_user()
    )
    assert (first.movement.balance_after, first.movement.location_id) == (4, site.id)
    expected = (pid, 9, 2, 7, sorted([(DEFAULT_LOCATION_ID, 5, 2, 3), (site.id, 4, 0, 4)]))
    assert figures(first.item) == expected
    assert figures(await item(mesh, pid)) == expected
    # one movement more (and the reservation, a version), its total and level agree
    assert await stored(inventory_db, pid) == (9, 3, 9, 2)

    again = await mesh.inventory.RecordMovement(
        move(pid, pb.IN, 3, location_id=site.id), metadata=mesh.as_user()
    )
    assert again.movement.balance_after == 7
    expected = (pid, 12, 2, 10, sorted([(DEFAULT_LOCATION_ID, 5, 2, 3), (site.id, 7, 0, 7)]))
    assert figures(again.item) == expected
    assert figures(await item(mesh, pid)) == expected
    home = await mesh.inventory.RecordMovement(move(pid, pb.IN, 1), metadata=mesh.as_user())
    assert home.movement.balance_after == 6 and figures(home.item) == figures(await item(mesh, pid))
    assert await stored(inventory_db, pid) == (13, 5, 13, 4)
    assert replayed(await ledger(mesh, pid)) == {DEFAULT_LOCATION_ID: 6, site.id: 7}


async def test_an_entry_that_waits_for_another_writer_answers_the_stock_that_writer_left(
    mesh: Mesh, inventory_db: Database
) -> None:
    """Another writer holds the item's lock and moves stock between locations while an IN
    waits: on PostgreSQL the IN's one statement read its snapshot before that commit, so it
    must change nothing and leave the entry to the locked path, whose answer shows the move."""
    site = await new_location(mesh, "WAIT-1")
    pid = await stocked(mesh, "WAITED-1", 5)
    await mesh.inventory.RecordMovement(move(pid, pb.IN, 2, location_id=site.id), metadata=mesh.as_user())

    async def enter() -> pb.RecordMovementResponse:
        return await mesh.inventory.RecordMovement(move(pid, pb.IN, 4), metadata=mesh.as_user())

    async with inventory_db.write_connection() as conn:  # a transfer of 1 to the site, by hand
        await conn.execute(select(Item.quantity).where(Item.product_id == pid).with_for_update())
        entry = asyncio.create_task(enter())
        await asyncio.sleep(1)  # the entry waits for the item's lock
        await conn.execute(update(Item).where(Item.product_id == pid).values(version=Item.version + 1))
        for location, on_hand in ((DEFAULT_LOCATION_ID, 4), (site.id, 3)):
            await conn.execute(
                update(LocationStock)
                .where(LocationStock.product_id == pid, LocationStock.location_id == location)
                .values(on_hand=on_hand)
            )
        assert not entry.done()
    answer = await entry
    expected = (pid, 11, 0, 11, sorted([(DEFAULT_LOCATION_ID, 8, 0, 8), (site.id, 3, 0, 3)]))
    assert answer.movement.balance_after == 8 and figures(answer.item) == expected
    assert figures(await item(mesh, pid)) == expected


async def test_an_entry_of_a_retired_item_is_refused_and_writes_nothing(
    mesh: Mesh, inventory_db: Database
) -> None:
    """The item retired while the products service still answers for the product (its
    retirement on its way): an IN is NOT_FOUND, at a location with a stock row or without."""
    site = await new_location(mesh, "RET-1")
    pid = await stocked(mesh, "RETIRED-IN", 5)
    async with inventory_db.transaction() as session:
        await session.execute(update(Item).where(Item.product_id == pid).values(retired_at=utcnow()))
    before = await stored(inventory_db, pid)
    for where in ("", site.id):
        refused = await expect_error(
            mesh.inventory.RecordMovement(move(pid, pb.IN, 3, location_id=where), metadata=mesh.as_user()),
            grpc.StatusCode.NOT_FOUND,
        )
        assert error_reason(refused) == "PRODUCT_NOT_FOUND"
    assert await stored(inventory_db, pid) == before == (5, 1, 5, 1)


def count(pid: str, quantity: int, location_id: str = "", **fields: object) -> pb.SetStockRequest:
    return pb.SetStockRequest(product_id=pid, quantity=quantity, location_id=location_id, **fields)  # type: ignore[arg-type]


def error_metadata(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The ErrorInfo metadata carried in the status details."""
    status = status_of(error)
    for detail in status.details if status is not None else ():
        if detail.Is(descriptor(error_details_pb2.ErrorInfo)):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return dict(info.metadata)
    return {}


def as_read(answer: pb.InventoryItem) -> pb.InventoryItem:
    """An item as reported, but when it last moved (a read gives the stored time, to its precision)."""
    found = pb.InventoryItem()
    found.CopyFrom(answer)
    found.ClearField("updated_at")
    return found


async def test_a_count_answers_what_a_read_then_reports_at_a_location_with_a_row_or_without(
    mesh: Mesh, inventory_db: Database
) -> None:
    """On PostgreSQL a count is first tried as one statement, on SQLite as two conditional
    updates, each needing the location's stock row: without it they change nothing and the
    locked path writes the row. Either way the answer's figures (each location's stock, its
    reservations and reorder points) are the ones a read gives next, and a count equal to the
    stock records a movement of 0, as the locked path always has."""
    site = await new_location(mesh, "CNT-1")
    pid = await stocked(mesh, "COUNT-1", 10)
    user = mesh.as_user()
    await mesh.inventory.SetStock(pb.SetStockRequest(product_id=pid, reorder_point=4), metadata=user)
    await reserve(mesh, pid, 3)
    first = await mesh.inventory.SetStock(count(pid, 6, site.id), metadata=user)
    assert (first.movement.quantity, first.movement.balance_after, first.movement.type) == (
        6,
        6,
        pb.ADJUSTMENT,
    )
    assert as_read(first.item) == as_read(await item(mesh, pid))
    assert (first.item.quantity, first.item.reserved, at(first.item, site.id).on_hand) == (16, 3, 6)
    await mesh.inventory.SetStock(
        pb.SetStockRequest(product_id=pid, reorder_point=7, location_id=site.id), metadata=user
    )
    steps = [(site.id, 9, 3), ("", 12, 2), (site.id, 9, 0), (site.id, 5, -4), ("", 3, -9), ("", 3, 0)]
    for where, counted, delta in steps:
        answer = await mesh.inventory.SetStock(
            count(pid, counted, where, request_id=f"c-{where}-{counted}-{delta}"), metadata=user
        )
        assert (answer.movement.quantity, answer.movement.balance_after) == (delta, counted)
        assert as_read(answer.item) == as_read(await item(mesh, pid))
    final = await item(mesh, pid)
    assert (at(final, DEFAULT_LOCATION_ID).low_stock, at(final, site.id).low_stock) == (True, True)
    assert (final.quantity, final.reserved, final.available) == (8, 3, 5)
    # 8 movements and the reservation count a version each; the reorder points none
    assert await stored(inventory_db, pid) == (8, 9, 8, 8)
    assert replayed(await ledger(mesh, pid)) == {DEFAULT_LOCATION_ID: 3, site.id: 5}


async def test_a_count_below_what_reservations_hold_is_refused_and_writes_nothing(
    mesh: Mesh, inventory_db: Database
) -> None:
    """BELOW_RESERVED, with what is reserved and what was counted, whether the count lowers
    the stock or (where reservations hold more than the stock, as only a repair of the
    database leaves it) raises it."""
    pid = await stocked(mesh, "COUNT-RES", 10)
    await reserve(mesh, pid, 6)
    for counted in (5, 0):
        refused = await expect_error(
            mesh.inventory.SetStock(count(pid, counted), metadata=mesh.as_user()),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert error_reason(refused) == "BELOW_RESERVED"
        assert error_metadata(refused) == {"reserved": "6", "requested": str(counted)}
    assert await stored(inventory_db, pid) == (10, 2, 10, 1)  # the reservation, a version
    async with inventory_db.transaction() as session:
        await session.execute(update(Item).where(Item.product_id == pid).values(quantity=4))
        await session.execute(update(LocationStock).where(LocationStock.product_id == pid).values(on_hand=4))
    refused = await expect_error(
        mesh.inventory.SetStock(count(pid, 5), metadata=mesh.as_user()), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert error_reason(refused) == "BELOW_RESERVED"
    assert error_metadata(refused) == {"reserved": "6", "requested": "5"}
    assert await stored(inventory_db, pid) == (4, 2, 4, 1)
    assert [m.balance_after for m in await ledger(mesh, pid)] == [10]


async def test_a_count_below_the_stock_sees_a_reservation_made_while_it_waited_for_the_lock(
    mesh: Mesh, inventory_db: Database
) -> None:
    """A reservation is made under the item's lock, against the stock as it is then, and
    counts one more version of the item (as `Reservations.create` does); a count that waits for
    that lock must then see it, though it was not committed when the count began (on
    PostgreSQL, after one statement's snapshot was taken)."""
    pid = await stocked(mesh, "COUNT-WAIT", 10)
    async with inventory_db.transaction() as session:
        await session.execute(select(Item).where(Item.product_id == pid).with_for_update())
        await session.execute(update(Item).where(Item.product_id == pid).values(version=Item.version + 1))
        now = utcnow()
        session.add(
            Reservation(
                id=str(uuid.uuid4()),
                product_id=pid,
                location_id=DEFAULT_LOCATION_ID,
                quantity=8,
                state="ACTIVE",
                expires_at=now + dt.timedelta(hours=1),
                actor="checkout",
            )
        )
        await session.flush()
        counting = asyncio.ensure_future(mesh.inventory.SetStock(count(pid, 5), metadata=mesh.as_user()))
        await asyncio.sleep(0.5)
        assert not counting.done()  # it waits for the item's lock
    refused = await expect_error(counting, grpc.StatusCode.FAILED_PRECONDITION)
    assert error_reason(refused) == "BELOW_RESERVED"
    assert error_metadata(refused) == {"reserved": "8", "requested": "5"}
    assert await stored(inventory_db, pid) == (10, 2, 10, 1)


async def test_a_count_lowering_the_stock_while_a_reservation_waits_for_the_lock_never_goes_below_it(
    mesh: Mesh, inventory_db: Database
) -> None:
    """A reservation and a count that lowers the stock below it, both waiting for the item's
    lock, the reservation first: whichever gets it first, the other sees what it did, and the
    stock never ends below what is reserved. (On PostgreSQL the count's one statement took its
    snapshot before the reservation committed: the version the reservation counts sends the
    count to the locked path, which refuses it.)"""
    pid = await stocked(mesh, "COUNT-RACE-RES", 10)
    async with inventory_db.transaction() as session:  # the item's lock (and SQLite's write lock)
        await session.execute(select(Item).where(Item.product_id == pid).with_for_update())
        await session.execute(update(Item).where(Item.product_id == pid).values(quantity=Item.quantity))
        reserving = asyncio.ensure_future(reserve(mesh, pid, 8))
        await asyncio.sleep(0.5)
        counting = asyncio.ensure_future(mesh.inventory.SetStock(count(pid, 5), metadata=mesh.as_user()))
        await asyncio.sleep(0.5)
        assert not reserving.done() and not counting.done()  # both wait for the lock
    reserved, counted = await asyncio.gather(reserving, counting, return_exceptions=True)
    found = await item(mesh, pid)
    if isinstance(counted, grpc.aio.AioRpcError):
        assert error_reason(counted) == "BELOW_RESERVED", counted
        assert isinstance(reserved, pb.Reservation), reserved
        assert (found.quantity, found.reserved, found.available) == (10, 8, 2)
    else:
        assert isinstance(reserved, grpc.aio.AioRpcError), reserved
        assert error_reason(reserved) == "INSUFFICIENT_STOCK"
        assert (found.quantity, found.reserved, found.available) == (5, 0, 5)
    assert found.available >= 0


async def test_a_count_of_a_retired_item_or_above_the_maximum_is_refused_and_writes_nothing(
    mesh: Mesh, inventory_db: Database
) -> None:
    """A count that would take the product's total above 2^31-1 is INVALID_ARGUMENT; a count of
    an item retired while the products service still answers for it is NOT_FOUND, up or down,
    at a location with a stock row or without."""
    site = await new_location(mesh, "CNT-MAX")
    pid = await stocked(mesh, "COUNT-MAX", stock.MAX_STOCK - 5)
    await mesh.inventory.RecordMovement(move(pid, pb.IN, 1, location_id=site.id), metadata=mesh.as_user())
    before = await stored(inventory_db, pid)
    for where, counted in ((site.id, 7), (DEFAULT_LOCATION_ID, stock.MAX_STOCK)):
        refused = await expect_error(
            mesh.inventory.SetStock(count(pid, counted, where), metadata=mesh.as_user()),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert field_violations(refused) == {"quantity": "INVALID_QUANTITY"}
    assert await stored(inventory_db, pid) == before == (stock.MAX_STOCK - 4, 2, stock.MAX_STOCK - 4, 2)
    fitting = await mesh.inventory.SetStock(count(pid, 5, site.id), metadata=mesh.as_user())
    assert (fitting.item.quantity, fitting.movement.quantity) == (stock.MAX_STOCK, 4)

    other = await new_location(mesh, "CNT-RET")
    pid = await stocked(mesh, "COUNT-RET", 5)
    async with inventory_db.transaction() as session:
        await session.execute(update(Item).where(Item.product_id == pid).values(retired_at=utcnow()))
    before = await stored(inventory_db, pid)
    for where, counted in (("", 9), ("", 5), ("", 1), (other.id, 3)):
        refused = await expect_error(
            mesh.inventory.SetStock(count(pid, counted, where), metadata=mesh.as_user()),
            grpc.StatusCode.NOT_FOUND,
        )
        assert error_reason(refused) == "PRODUCT_NOT_FOUND"
    assert await stored(inventory_db, pid) == before == (5, 1, 5, 1)


async def test_concurrent_counts_entries_and_reservations_keep_the_total_the_levels_and_the_ledger_together(
    mesh: Mesh, inventory_db: Database
) -> None:
    """Counts up and down, entries and reservations on one product at once, at a location
    with a row and one without yet, in three rounds: whatever each waited for, the item's total
    is the sum of its levels, each level is its ledger's last balance, and no level is below
    what its reservations hold."""
    site = await new_location(mesh, "CNT-RACE")
    pid = await stocked(mesh, "COUNT-RACE", 50)
    user = mesh.as_user()
    for round_ in range(3):
        calls: list[Awaitable[object]] = []
        for i in range(20):
            where = site.id if i % 2 else ""
            if i % 5 == 4:
                calls.append(reserve(mesh, pid, 2, location_id=where))
            elif i % 3 == 0:
                entry = move(pid, pb.IN, i + 1, location_id=where)
                calls.append(mesh.inventory.RecordMovement(entry, metadata=user))
            else:
                counted = count(pid, 10 + 3 * ((i + round_) % 7), where)
                calls.append(mesh.inventory.SetStock(counted, metadata=user))
        for result in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(result, grpc.aio.AioRpcError):  # below a reservation made first, or none there yet
                assert error_reason(result) in ("BELOW_RESERVED", "INSUFFICIENT_STOCK"), result
            else:
                assert not isinstance(result, BaseException), result
        total, _, levels, movements = await stored(inventory_db, pid)
        assert total == levels
        written = await ledger(mesh, pid, page_size=100)
        assert len(written) == movements
        balances = replayed(written)
        found = await item(mesh, pid)
        assert {level.location_id: level.on_hand for level in found.locations} == balances
        assert found.quantity == total == sum(balances.values())
        assert all(level.available >= 0 for level in found.locations)


async def test_a_transfer_moves_stock_in_one_transaction_once_per_request_id(mesh: Mesh) -> None:
    north, south = await new_location(mesh, "N"), await new_location(mesh, "S")
    pid = await stocked(mesh, "TR-1", 6, north.id)
    request = pb.CreateTransferRequest(
        product_id=pid,
        from_location_id=north.id,
        to_location_id=south.id,
        quantity=4,
        reason="rebalance",
        request_id="tr-1",
    )
    done = await mesh.inventory.CreateTransfer(request, metadata=mesh.as_user())
    assert done.transfer_id and done.outgoing.transfer_id == done.incoming.transfer_id == done.transfer_id
    assert (done.outgoing.type, done.outgoing.quantity, done.outgoing.balance_after) == (pb.OUT, -4, 2)
    assert (done.incoming.type, done.incoming.quantity, done.incoming.balance_after) == (pb.IN, 4, 4)
    assert (done.outgoing.location_id, done.incoming.location_id) == (north.id, south.id)
    assert done.item.quantity == 6 and {lv.location_id: lv.on_hand for lv in done.item.locations} == {
        north.id: 2,
        south.id: 4,
    }

    again = await mesh.inventory.CreateTransfer(request, metadata=mesh.as_user())
    assert (again.transfer_id, again.outgoing, again.incoming) == (
        done.transfer_id,
        done.outgoing,
        done.incoming,
    )
    request.quantity = 1
    reused = await expect_error(
        mesh.inventory.CreateTransfer(request, metadata=mesh.as_user()), grpc.StatusCode.ALREADY_EXISTS
    )
    assert error_reason(reused) == "REQUEST_ID_REUSED"

    short = await expect_error(
        mesh.inventory.CreateTransfer(
            pb.CreateTransferRequest(
                product_id=pid, from_location_id=north.id, to_location_id=south.id, quantity=3
            ),
            metadata=mesh.as_user(),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_reason(short) == "INSUFFICIENT_STOCK"
    same = await expect_error(
        mesh.inventory.CreateTransfer(
            pb.CreateTransferRequest(
                product_id=pid, from_location_id=north.id, to_location_id=north.id, quantity=0
            ),
            metadata=mesh.as_user(),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(same).keys() == {"to_location_id", "quantity"}
    found = await item(mesh, pid)
    assert {lv.location_id: lv.on_hand for lv in found.locations} == {north.id: 2, south.id: 4}
    assert len(await ledger(mesh, pid)) == 3  # the IN, and the transfer's two halves; nothing of the refusals


async def test_a_reservation_is_held_then_confirmed_or_released(mesh: Mesh) -> None:
    pid = await stocked(mesh, "RES-1", 10)
    held = await reserve(mesh, pid, 4, reference="cart-7", request_id="res-1")
    assert (held.state, held.quantity, held.reference, held.location_id) == (
        pb.ACTIVE,
        4,
        "cart-7",
        DEFAULT_LOCATION_ID,
    )
    assert held.expires_at.ToDatetime() - held.created_at.ToDatetime() == dt.timedelta(seconds=900)
    assert (await reserve(mesh, pid, 4, reference="cart-7", request_id="res-1")) == held  # a retry
    reused = await expect_error(reserve(mesh, pid, 5, request_id="res-1"), grpc.StatusCode.ALREADY_EXISTS)
    assert error_reason(reused) == "REQUEST_ID_REUSED"
    assert (await item(mesh, pid)).available == 6

    too_many = await expect_error(reserve(mesh, pid, 7), grpc.StatusCode.FAILED_PRECONDITION)
    assert error_reason(too_many) == "INSUFFICIENT_STOCK"

    confirmed = await mesh.inventory.ConfirmReservation(
        pb.ConfirmReservationRequest(id=held.id), metadata=mesh.as_user()
    )
    assert confirmed.reservation.state == pb.CONFIRMED
    assert (confirmed.movement.type, confirmed.movement.quantity, confirmed.movement.reservation_id) == (
        pb.OUT,
        -4,
        held.id,
    )
    assert confirmed.movement.reference == "cart-7" and confirmed.movement.balance_after == 6
    twice = await mesh.inventory.ConfirmReservation(
        pb.ConfirmReservationRequest(id=held.id), metadata=mesh.as_user()
    )
    assert twice == confirmed
    found = await item(mesh, pid)
    assert (found.quantity, found.reserved, found.available) == (6, 0, 6)

    freed = await reserve(mesh, pid, 6)
    assert (await item(mesh, pid)).available == 0
    released = await mesh.inventory.ReleaseReservation(
        pb.ReleaseReservationRequest(id=freed.id), metadata=mesh.as_user()
    )
    assert released.reservation.state == pb.RELEASED and (await item(mesh, pid)).available == 6
    late = await expect_error(
        mesh.inventory.ConfirmReservation(pb.ConfirmReservationRequest(id=freed.id), metadata=mesh.as_user()),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_reason(late) == "RESERVATION_RELEASED"
    unrelease = await expect_error(
        mesh.inventory.ReleaseReservation(pb.ReleaseReservationRequest(id=held.id), metadata=mesh.as_user()),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_reason(unrelease) == "RESERVATION_CONFIRMED"

    got = await mesh.inventory.GetReservation(pb.GetReservationRequest(id=freed.id), metadata=mesh.as_user())
    assert got.reservation == released.reservation
    listed = await mesh.inventory.ListReservations(
        pb.ListReservationsRequest(product_id=pid, page_size=1), metadata=mesh.as_user()
    )
    assert [r.id for r in listed.reservations] == [freed.id] and listed.next_page_token  # newest first
    rest = await mesh.inventory.ListReservations(
        pb.ListReservationsRequest(product_id=pid, page_size=1, page_token=listed.next_page_token),
        metadata=mesh.as_user(),
    )
    assert [r.id for r in rest.reservations] == [held.id] and not rest.next_page_token
    confirmed_only = await mesh.inventory.ListReservations(
        pb.ListReservationsRequest(product_id=pid, state=pb.CONFIRMED), metadata=mesh.as_user()
    )
    assert [r.id for r in confirmed_only.reservations] == [held.id]
    for call in (
        mesh.inventory.GetReservation(pb.GetReservationRequest(id="no-such"), metadata=mesh.as_user()),
        mesh.inventory.ConfirmReservation(
            pb.ConfirmReservationRequest(id="no-such"), metadata=mesh.as_user()
        ),
        mesh.inventory.ReleaseReservation(
            pb.ReleaseReservationRequest(id="no-such"), metadata=mesh.as_user()
        ),
    ):
        assert error_reason(await expect_error(call, grpc.StatusCode.NOT_FOUND)) == "RESERVATION_NOT_FOUND"


async def test_ttl_seconds_defaults_to_900_and_stops_at_7_days(mesh: Mesh) -> None:
    pid = await stocked(mesh, "TTL-1", 3)
    week = await reserve(mesh, pid, 1, ttl_seconds=7 * 24 * 3600)
    assert week.expires_at.ToDatetime() - week.created_at.ToDatetime() == dt.timedelta(days=7)
    for ttl in (7 * 24 * 3600 + 1, -1):
        bad = await expect_error(reserve(mesh, pid, 1, ttl_seconds=ttl), grpc.StatusCode.INVALID_ARGUMENT)
        assert field_violations(bad).keys() == {"ttl_seconds"}
    bad = await expect_error(reserve(mesh, pid, 0, reference="x" * 201), grpc.StatusCode.INVALID_ARGUMENT)
    assert field_violations(bad).keys() == {"quantity", "reference"}


async def test_an_expired_reservation_stops_counting_at_expires_at_without_the_sweeper(
    mesh: Mesh, inventory_db: Database
) -> None:
    pid = await stocked(mesh, "EXP-1", 5)
    held = await reserve(mesh, pid, 5)
    assert (await item(mesh, pid)).available == 0
    async with inventory_db.transaction() as session:  # its time passes
        await session.execute(
            update(Reservation)
            .where(Reservation.id == held.id)
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )

    found = await item(mesh, pid)
    assert (found.reserved, found.available) == (0, 5)
    again = await reserve(mesh, pid, 5)  # its units are taken again at once
    got = await mesh.inventory.GetReservation(pb.GetReservationRequest(id=held.id), metadata=mesh.as_user())
    assert got.reservation.state == pb.EXPIRED
    async with inventory_db.session() as session:  # the sweeper has not been by
        assert await session.scalar(select(Reservation.state).where(Reservation.id == held.id)) == "ACTIVE"
    expired = await expect_error(
        mesh.inventory.ConfirmReservation(pb.ConfirmReservationRequest(id=held.id), metadata=mesh.as_user()),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_reason(expired) == "RESERVATION_EXPIRED"
    released = await mesh.inventory.ReleaseReservation(
        pb.ReleaseReservationRequest(id=held.id), metadata=mesh.as_user()
    )
    assert released.reservation.state == pb.EXPIRED  # as it is
    listed = await mesh.inventory.ListReservations(
        pb.ListReservationsRequest(product_id=pid, state=pb.EXPIRED), metadata=mesh.as_user()
    )
    assert [r.id for r in listed.reservations] == [held.id]

    sweeper = ReservationSweeper(inventory_db, interval=3600, retry_initial=1, retry_max=1)
    assert await sweeper.sweep() == 1
    async with inventory_db.session() as session:
        states = {
            row.id: row.state for row in await session.execute(select(Reservation.id, Reservation.state))
        }
    assert states == {held.id: "EXPIRED", again.id: "ACTIVE"}


async def test_viewers_are_refused_and_a_service_token_reserves_and_confirms(
    mesh: Mesh, smtp: SmtpServer
) -> None:
    viewer = mesh.as_user(
        await user_token(mesh.auth, "viewer@example.com", smtp.inbox, mesh.settings, "viewer")
    )
    staff = mesh.as_user(await user_token(mesh.auth, "clerk@example.com", smtp.inbox, mesh.settings, "staff"))
    service = await service_token(mesh)
    pid = await stocked(mesh, "ROLE-L", 5)
    site = await new_location(mesh, "R-1")

    async def denied(call: object) -> None:
        error = await expect_error(call, grpc.StatusCode.PERMISSION_DENIED)  # type: ignore[arg-type]
        assert error_reason(error) == "ROLE_REQUIRED", error.details()

    create = pb.CreateLocationRequest(location=pb.Location(code="R-2", name="R"))
    transfer = pb.CreateTransferRequest(
        product_id=pid, from_location_id=DEFAULT_LOCATION_ID, to_location_id=site.id, quantity=1
    )
    await denied(mesh.inventory.CreateLocation(create, metadata=staff))  # locations are admin's
    await denied(mesh.inventory.DeleteLocation(pb.DeleteLocationRequest(id=site.id), metadata=staff))
    await denied(mesh.inventory.CreateLocation(create, metadata=service))
    await denied(mesh.inventory.CreateTransfer(transfer, metadata=viewer))
    await denied(mesh.inventory.CreateTransfer(transfer, metadata=service))
    await denied(reserve(mesh, pid, 1, metadata=viewer))
    await denied(mesh.inventory.ListReservations(pb.ListReservationsRequest(), metadata=viewer))
    # Everyone reads locations.
    await mesh.inventory.ListLocations(pb.ListLocationsRequest(), metadata=viewer)

    await mesh.inventory.CreateTransfer(transfer, metadata=staff)
    by_staff = await reserve(mesh, pid, 1, metadata=staff)
    await denied(
        mesh.inventory.ConfirmReservation(pb.ConfirmReservationRequest(id=by_staff.id), metadata=viewer)
    )
    # A checkout service reserves, reads and confirms over gRPC with its own token.
    checkout = await reserve(mesh, pid, 2, metadata=service, reference="order-1")
    read = await mesh.inventory.GetReservation(pb.GetReservationRequest(id=checkout.id), metadata=service)
    assert read.reservation == checkout
    done = await mesh.inventory.ConfirmReservation(
        pb.ConfirmReservationRequest(id=checkout.id), metadata=service
    )
    assert done.reservation.state == pb.CONFIRMED and done.movement.actor != ""
    await mesh.inventory.ReleaseReservation(pb.ReleaseReservationRequest(id=by_staff.id), metadata=service)
    assert (await item(mesh, pid)).quantity == 3


async def test_deleting_a_product_retires_its_stock_everywhere_and_releases_its_reservations(
    mesh: Mesh, inventory_db: Database
) -> None:
    site = await new_location(mesh, "DEL-1")
    pid = await stocked(mesh, "DEL-P", 5)
    await mesh.inventory.RecordMovement(move(pid, pb.IN, 3, location_id=site.id), metadata=mesh.as_user())
    held = [await reserve(mesh, pid, 2), await reserve(mesh, pid, 1, location_id=site.id)]

    await mesh.products.DeleteProduct(products_pb.DeleteProductRequest(id=pid), metadata=mesh.as_user())
    assert error_reason(await expect_error(item(mesh, pid), grpc.StatusCode.NOT_FOUND)) == "PRODUCT_NOT_FOUND"
    for reservation in held:
        got = await mesh.inventory.GetReservation(
            pb.GetReservationRequest(id=reservation.id), metadata=mesh.as_user()
        )
        assert got.reservation.state == pb.RELEASED
    refused = await expect_error(
        mesh.inventory.ConfirmReservation(
            pb.ConfirmReservationRequest(id=held[0].id), metadata=mesh.as_user()
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert error_reason(refused) == "PRODUCT_NOT_FOUND"
    # Its stock no longer holds the location.
    await mesh.inventory.DeleteLocation(pb.DeleteLocationRequest(id=site.id), metadata=mesh.as_user())


async def test_replaying_the_ledger_per_product_and_location_gives_every_balance(mesh: Mesh) -> None:
    sites = [DEFAULT_LOCATION_ID, (await new_location(mesh, "L-1")).id, (await new_location(mesh, "L-2")).id]
    pids = [await stocked(mesh, f"LED-{n}", 20) for n in range(2)]
    user = mesh.as_user()
    for n, pid in enumerate(pids):
        await mesh.inventory.CreateTransfer(
            pb.CreateTransferRequest(
                product_id=pid, from_location_id=sites[0], to_location_id=sites[1], quantity=7
            ),
            metadata=user,
        )
        await mesh.inventory.CreateTransfer(
            pb.CreateTransferRequest(
                product_id=pid, from_location_id=sites[1], to_location_id=sites[2], quantity=3
            ),
            metadata=user,
        )
        await mesh.inventory.RecordMovement(move(pid, pb.OUT, 2 + n, location_id=sites[2]), metadata=user)
        await mesh.inventory.SetStock(
            pb.SetStockRequest(product_id=pid, quantity=9, location_id=sites[0]), metadata=user
        )
        confirmed = await reserve(mesh, pid, 1, location_id=sites[1])
        await mesh.inventory.ConfirmReservation(pb.ConfirmReservationRequest(id=confirmed.id), metadata=user)
        await reserve(mesh, pid, 2, location_id=sites[0])  # held, not taken: the ledger knows nothing of it

    for pid in pids:
        balances = replayed(await ledger(mesh, pid))
        found = await item(mesh, pid)
        assert {lv.location_id: lv.on_hand for lv in found.locations} == balances
        assert found.quantity == sum(balances.values())
        assert (found.reserved, at(found, sites[0]).available) == (2, 7)


async def test_a_location_filtered_list_pages_through_that_locations_items_only(mesh: Mesh) -> None:
    site = await new_location(mesh, "PG-1")
    there = sorted([await stocked(mesh, f"PG-{n}", 1, site.id) for n in range(3)])
    await stocked(mesh, "PG-ELSEWHERE", 1)
    seen, token = [], ""
    while True:
        page = await mesh.inventory.ListInventoryItems(
            pb.ListInventoryItemsRequest(location_id=site.id, page_size=2, page_token=token),
            metadata=mesh.as_user(),
        )
        seen += [i.product_id for i in page.items]
        if not (token := page.next_page_token):
            break
    assert seen == there
    unfiltered = await mesh.inventory.ListInventoryItems(
        pb.ListInventoryItemsRequest(page_size=1), metadata=mesh.as_user()
    )
    other = await expect_error(
        mesh.inventory.ListInventoryItems(
            pb.ListInventoryItemsRequest(location_id=site.id, page_token=unfiltered.next_page_token),
            metadata=mesh.as_user(),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_reason(other) == "INVALID_PAGE_TOKEN"
