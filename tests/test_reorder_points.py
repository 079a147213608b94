"""Reorder points and low stock over real gRPC, with auth and products running: SetStock sets a
product's reorder point at a location, with a count or alone (then writing no movement), and
every read says where the stock is at or below it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import func, select

from inventory.models import DEFAULT_LOCATION_ID, Item, Movement
from inventory.stock import is_low
from invmesh.inventory.v1 import inventory_service_pb2 as pb
from invmesh.products.v1 import products_service_pb2 as products_pb
from mesh.db import Database
from tests.conftest import Mesh, SmtpServer, user_token
from tests.rpc import error_reason, expect_error, field_violations
from tests.test_inventory import ledger, move, new_product
from tests.test_locations import at, item, new_location, stocked


@pytest.fixture
async def inventory_db(mesh: Mesh) -> AsyncIterator[Database]:
    db = Database(mesh.settings.database_url("inventory"))
    yield db
    await db.dispose()


async def set_stock(mesh: Mesh, pid: str, **fields: object) -> pb.SetStockResponse:
    request = pb.SetStockRequest(product_id=pid, **fields)  # type: ignore[arg-type]
    return await mesh.inventory.SetStock(request, metadata=mesh.as_user())


def test_the_stock_is_low_at_or_below_a_reorder_point_that_is_set() -> None:
    assert [is_low(on_hand, 5) for on_hand in (0, 4, 5, 6)] == [True, True, True, False]
    assert not is_low(0, 0)  # 0: no reorder point


async def test_a_reorder_point_alone_writes_no_movement_and_keeps_the_stock(mesh: Mesh) -> None:
    pid = await stocked(mesh, "RP-1", 8)
    before = await item(mesh, pid)

    alone = await set_stock(mesh, pid, reorder_point=10, request_id="rp-1")
    assert not alone.HasField("movement")
    assert (alone.item.quantity, alone.item.updated_at, alone.item.low_stock) == (8, before.updated_at, True)
    level = at(alone.item, DEFAULT_LOCATION_ID)
    assert (level.on_hand, level.reorder_point, level.low_stock) == (8, 10, True)
    assert len(await ledger(mesh, pid)) == 1
    assert await item(mesh, pid) == alone.item

    # Idempotent by nature: sent again, it sets the same again.
    assert await set_stock(mesh, pid, reorder_point=10, request_id="rp-1") == alone
    assert len(await ledger(mesh, pid)) == 1

    above = await set_stock(mesh, pid, reorder_point=7)
    assert (at(above.item, DEFAULT_LOCATION_ID).reorder_point, above.item.low_stock) == (7, False)
    cleared = await set_stock(mesh, pid, reorder_point=0)
    level = at(cleared.item, DEFAULT_LOCATION_ID)
    assert (level.reorder_point, level.low_stock, cleared.item.low_stock) == (0, False, False)
    assert len(await ledger(mesh, pid)) == 1


async def test_a_count_and_a_reorder_point_are_set_together_and_retried_as_one(mesh: Mesh) -> None:
    pid = await stocked(mesh, "RP-2", 8)
    both = await set_stock(mesh, pid, quantity=3, reorder_point=5, request_id="count-rp")
    assert (both.movement.type, both.movement.quantity, both.movement.balance_after) == (pb.ADJUSTMENT, -5, 3)
    level = at(both.item, DEFAULT_LOCATION_ID)
    assert (level.on_hand, level.reorder_point, level.low_stock, both.item.low_stock) == (3, 5, True, True)

    assert await set_stock(mesh, pid, quantity=3, reorder_point=5, request_id="count-rp") == both
    for other in ({"quantity": 3, "reorder_point": 6}, {"quantity": 3}, {"reorder_point": 5}):
        reused = await expect_error(
            set_stock(mesh, pid, request_id="count-rp", **other), grpc.StatusCode.ALREADY_EXISTS
        )
        assert error_reason(reused) == "REQUEST_ID_REUSED"
    assert len(await ledger(mesh, pid)) == 2

    # A count alone keeps the reorder point; a movement reads it.
    counted = await set_stock(mesh, pid, quantity=9)
    assert (at(counted.item, DEFAULT_LOCATION_ID).reorder_point, counted.item.low_stock) == (5, False)
    moved = await mesh.inventory.RecordMovement(move(pid, pb.OUT, 4), metadata=mesh.as_user())
    level = at(moved.item, DEFAULT_LOCATION_ID)
    assert (level.on_hand, level.reorder_point, level.low_stock, moved.item.low_stock) == (5, 5, True, True)
    moved = await mesh.inventory.RecordMovement(move(pid, pb.IN, 1), metadata=mesh.as_user())
    assert (at(moved.item, DEFAULT_LOCATION_ID).reorder_point, moved.item.low_stock) == (5, False)


async def test_a_reorder_point_where_the_product_never_moved_makes_its_rows(
    mesh: Mesh, inventory_db: Database
) -> None:
    pid = await new_product(mesh, "RP-3")
    site = await new_location(mesh, "RP-SITE")
    nothing = await set_stock(mesh, pid, reorder_point=0, location_id=site.id)  # none to remove
    assert list(nothing.item.locations) == [] and not nothing.item.low_stock
    async with inventory_db.session() as session:
        assert await session.get(Item, pid) is None

    made = await set_stock(mesh, pid, reorder_point=2, location_id=site.id)
    assert (made.item.quantity, made.item.HasField("updated_at"), made.item.low_stock) == (0, False, True)
    assert [(lv.location_id, lv.on_hand, lv.reorder_point) for lv in made.item.locations] == [(site.id, 0, 2)]
    moved = await mesh.inventory.RecordMovement(
        move(pid, pb.IN, 3, location_id=site.id), metadata=mesh.as_user()
    )
    assert (at(moved.item, site.id).reorder_point, moved.item.low_stock) == (2, False)
    async with inventory_db.session() as session:
        assert await session.scalar(select(func.count()).select_from(Movement)) == 1


async def test_bad_set_stock_requests_name_every_field_at_fault(mesh: Mesh) -> None:
    pid = await stocked(mesh, "RP-4", 1)
    neither = await expect_error(set_stock(mesh, pid), grpc.StatusCode.INVALID_ARGUMENT)
    assert field_violations(neither) == {"quantity": "NOTHING_TO_SET", "reorder_point": "NOTHING_TO_SET"}
    bad = await expect_error(
        set_stock(mesh, "", quantity=-1, reorder_point=-1, reason="r" * 501), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert field_violations(bad) == {
        "product_id": "MISSING_PRODUCT_ID",
        "quantity": "INVALID_QUANTITY",
        "reorder_point": "INVALID_REORDER_POINT",
        "reason": "INVALID_REASON",
    }
    assert "reorder_point must be 0 to 2147483647" in str(bad.details())
    unknown = await expect_error(
        set_stock(mesh, pid, reorder_point=1, location_id="no-such-location"), grpc.StatusCode.NOT_FOUND
    )
    assert error_reason(unknown) == "LOCATION_NOT_FOUND"


async def test_neither_a_viewer_nor_anyone_on_a_deleted_product_sets_a_reorder_point(
    mesh: Mesh, smtp: SmtpServer
) -> None:
    viewer = mesh.as_user(
        await user_token(mesh.auth, "viewer@example.com", smtp.inbox, mesh.settings, "viewer")
    )
    pid = await stocked(mesh, "RP-5", 1)
    denied = await expect_error(
        mesh.inventory.SetStock(pb.SetStockRequest(product_id=pid, reorder_point=3), metadata=viewer),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert error_reason(denied) == "ROLE_REQUIRED"

    await mesh.products.DeleteProduct(products_pb.DeleteProductRequest(id=pid), metadata=mesh.as_user())
    gone = await expect_error(set_stock(mesh, pid, reorder_point=3), grpc.StatusCode.NOT_FOUND)
    assert error_reason(gone) == "PRODUCT_NOT_FOUND"


async def test_reads_flag_each_low_location_and_the_item(mesh: Mesh) -> None:
    site = await new_location(mesh, "RP-READ")
    pid = await stocked(mesh, "RP-6", 10)
    await mesh.inventory.RecordMovement(move(pid, pb.IN, 2, location_id=site.id), metadata=mesh.as_user())
    await set_stock(mesh, pid, reorder_point=3, location_id=site.id)

    found = await item(mesh, pid)
    assert found.low_stock
    assert {lv.location_id: (lv.reorder_point, lv.low_stock) for lv in found.locations} == {
        DEFAULT_LOCATION_ID: (0, False),
        site.id: (3, True),
    }
    batch = await mesh.inventory.BatchGetInventoryItems(
        pb.BatchGetInventoryItemsRequest(product_ids=[pid, "never-moved"]), metadata=mesh.as_user()
    )
    assert {i.product_id: i.low_stock for i in batch.items} == {pid: True, "never-moved": False}
    moved = await mesh.inventory.CreateTransfer(
        pb.CreateTransferRequest(
            product_id=pid, from_location_id=DEFAULT_LOCATION_ID, to_location_id=site.id, quantity=2
        ),
        metadata=mesh.as_user(),
    )
    restocked = at(moved.item, site.id)
    assert (restocked.on_hand, restocked.low_stock, moved.item.low_stock) == (4, False, False)


async def list_ids(mesh: Mesh, **filters: object) -> list[str]:
    """Every item the listing gives, two a page."""
    seen, token = [], ""
    while True:
        request = pb.ListInventoryItemsRequest(page_size=2, page_token=token, **filters)  # type: ignore[arg-type]
        page = await mesh.inventory.ListInventoryItems(request, metadata=mesh.as_user())
        assert all(i.low_stock for i in page.items) or not filters.get("low_stock")
        seen += [i.product_id for i in page.items]
        if not (token := page.next_page_token):
            return seen


async def test_the_low_stock_listing_pages_through_low_items_only(mesh: Mesh) -> None:
    site = await new_location(mesh, "RP-LIST")
    low_here = sorted([await stocked(mesh, f"LOW-HERE-{n}", 1, site.id) for n in range(3)])
    for pid in low_here:
        await set_stock(mesh, pid, reorder_point=1, location_id=site.id)
    low_default = sorted([await stocked(mesh, f"LOW-DEF-{n}", 2) for n in range(2)])
    for pid in low_default:
        await set_stock(mesh, pid, reorder_point=5)
    fine = await stocked(mesh, "FINE", 9, site.id)
    await set_stock(mesh, fine, reorder_point=8, location_id=site.id)
    await stocked(mesh, "NO-REORDER-POINT", 1)

    assert await list_ids(mesh, low_stock=True) == sorted(low_here + low_default)
    assert await list_ids(mesh, low_stock=True, location_id=site.id) == low_here
    assert len(await list_ids(mesh)) == 7

    listed = await mesh.inventory.ListInventoryItems(
        pb.ListInventoryItemsRequest(low_stock=True, location_id=site.id, page_size=1),
        metadata=mesh.as_user(),
    )
    (first,) = listed.items
    assert [(lv.location_id, lv.reorder_point, lv.low_stock) for lv in first.locations] == [
        (site.id, 1, True)
    ]
    for other in ({"location_id": site.id}, {"low_stock": True}, {}):
        stale = await expect_error(
            mesh.inventory.ListInventoryItems(
                pb.ListInventoryItemsRequest(page_token=listed.next_page_token, **other),
                metadata=mesh.as_user(),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert error_reason(stale) == "INVALID_PAGE_TOKEN"
