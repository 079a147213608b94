"""Inventory over real gRPC, with auth and products running: movements, counts, the ledger,
idempotency, retirement, and the invariants under concurrency."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update

from auth.service import running as running_auth
from inventory.models import DEFAULT_LOCATION_ID, Item, Movement
from inventory.service import running as running_inventory
from inventory.stock import MAX_STOCK, next_balance
from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from invmesh.auth.v1 import auth_service_pb2_grpc
from invmesh.inventory.v1 import inventory_service_pb2 as pb
from invmesh.inventory.v1 import inventory_service_pb2_grpc
from invmesh.products.v1 import products_service_pb2 as products_pb
from invmesh.products.v1 import products_service_pb2_grpc
from mesh import paging
from mesh.config import Settings
from mesh.db import Database
from mesh.errors import FailedPrecondition, InvalidArgument
from products.service import running as running_products
from tests.conftest import SERVICE_SECRET, Mesh, SmtpServer, mesh_settings, user_token
from tests.rpc import error_reason, eventually, expect_error, field_violations


async def new_product(mesh: Mesh, sku: str = "SKU-1") -> str:
    product = products_pb.Product(sku=sku, name=f"Product {sku}", price="9.99")
    reply = await mesh.products.CreateProduct(
        products_pb.CreateProductRequest(product=product), metadata=mesh.as_user()
    )
    return reply.product.id


def move(product_id: str, kind: int, quantity: int, **fields: str) -> pb.RecordMovementRequest:
    return pb.RecordMovementRequest(product_id=product_id, type=kind, quantity=quantity, **fields)  # type: ignore[arg-type]


async def ledger(mesh: Mesh, product_id: str, page_size: int = 7, **filters: Any) -> list[pb.Movement]:
    movements: list[pb.Movement] = []
    token = ""
    while True:
        page = await mesh.inventory.ListMovements(
            pb.ListMovementsRequest(product_id=product_id, page_size=page_size, page_token=token, **filters),
            metadata=mesh.as_user(),
        )
        movements.extend(page.movements)
        if not (token := page.next_page_token):
            return movements


@pytest.fixture
async def inventory_db(mesh: Mesh) -> AsyncIterator[Database]:
    db = Database(mesh.settings.database_url("inventory"))
    yield db
    await db.dispose()


async def test_movements_move_the_balance_and_fill_the_ledger(mesh: Mesh) -> None:
    pid = await new_product(mesh)
    item = (
        await mesh.inventory.GetInventoryItem(
            pb.GetInventoryItemRequest(product_id=pid), metadata=mesh.as_user()
        )
    ).item
    assert item.quantity == 0 and not item.HasField("updated_at")  # never moved

    first = await mesh.inventory.RecordMovement(
        move(pid, pb.IN, 10, reason="delivery", reference="PO-7", request_id="r-1"), metadata=mesh.as_user()
    )
    assert first.item.quantity == 10 and first.movement.balance_after == 10
    out = await mesh.inventory.RecordMovement(move(pid, pb.OUT, 4), metadata=mesh.as_user())
    assert out.movement.quantity == -4 and out.item.quantity == 6
    counted = await mesh.inventory.SetStock(
        pb.SetStockRequest(product_id=pid, quantity=2, reason="count"), metadata=mesh.as_user()
    )
    assert (
        counted.movement.type == pb.ADJUSTMENT
        and counted.movement.quantity == -4
        and counted.item.quantity == 2
    )

    movements = await ledger(mesh, pid)
    assert [m.type for m in movements] == [pb.ADJUSTMENT, pb.OUT, pb.IN]  # newest first
    assert [m.balance_after for m in movements] == [2, 6, 10]
    oldest = movements[-1]
    me = await mesh.auth.GetMe(auth_pb.GetMeRequest(), metadata=mesh.as_user())
    assert (oldest.reason, oldest.reference, oldest.request_id, oldest.actor) == (
        "delivery",
        "PO-7",
        "r-1",
        me.user.id,
    )
    assert oldest.created_at.seconds > 0

    product = await eventually(
        lambda: mesh.products.GetProduct(products_pb.GetProductRequest(id=pid), metadata=mesh.as_user()),
        lambda got: got.product.stock == 2,
    )
    assert product.product.stock == 2  # products shows inventory's stock once the feed reports it


async def test_each_movement_keeps_the_email_its_authors_token_gave(mesh: Mesh) -> None:
    """Whichever path writes it (a first entry, an entry on the hot path, an exit, a count,
    both halves of a transfer, a confirmed reservation), a movement records the email of the
    caller's token with its user id, and the ledger reads it back."""
    pid = await new_product(mesh)
    me = (await mesh.auth.GetMe(auth_pb.GetMeRequest(), metadata=mesh.as_user())).user
    second = await mesh.inventory.CreateLocation(
        pb.CreateLocationRequest(location=pb.Location(code="WH-2", name="Second")), metadata=mesh.as_user()
    )
    written = [
        (await mesh.inventory.RecordMovement(move(pid, kind, 5), metadata=mesh.as_user())).movement
        for kind in (pb.IN, pb.IN, pb.OUT)
    ]
    counted = await mesh.inventory.SetStock(
        pb.SetStockRequest(product_id=pid, quantity=8), metadata=mesh.as_user()
    )
    moved = await mesh.inventory.CreateTransfer(
        pb.CreateTransferRequest(
            product_id=pid,
            from_location_id=DEFAULT_LOCATION_ID,
            to_location_id=second.location.id,
            quantity=2,
        ),
        metadata=mesh.as_user(),
    )
    held = await mesh.inventory.CreateReservation(
        pb.CreateReservationRequest(product_id=pid, quantity=1), metadata=mesh.as_user()
    )
    confirmed = await mesh.inventory.ConfirmReservation(
        pb.ConfirmReservationRequest(id=held.reservation.id), metadata=mesh.as_user()
    )
    written += [counted.movement, moved.outgoing, moved.incoming, confirmed.movement]
    assert [(m.actor, m.actor_email) for m in written] == [(me.id, me.email)] * 7
    assert {m.id: m.actor_email for m in await ledger(mesh, pid)} == {m.id: me.email for m in written}


async def test_an_exit_beyond_the_stock_changes_nothing(mesh: Mesh, inventory_db: Database) -> None:
    pid = await new_product(mesh)
    await mesh.inventory.RecordMovement(move(pid, pb.IN, 3), metadata=mesh.as_user())
    error = await expect_error(
        mesh.inventory.RecordMovement(move(pid, pb.OUT, 4), metadata=mesh.as_user()),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_reason(error) == "INSUFFICIENT_STOCK" and "only 3 in stock" in (error.details() or "")
    assert len(await ledger(mesh, pid)) == 1
    async with inventory_db.session() as session:
        assert (await session.get_one(Item, pid)).quantity == 3


async def test_the_stock_stays_within_its_bounds_at_the_extremes(mesh: Mesh) -> None:
    """Near 2^31 - 1 a sum would overflow the databases' 32-bit integers: every change that
    would pass a bound is refused with the reason, none is a 500, and the balance holds."""
    most = 2**31 - 1
    pid = await new_product(mesh)
    await mesh.inventory.SetStock(
        pb.SetStockRequest(product_id=pid, quantity=most - 1), metadata=mesh.as_user()
    )
    topped = await mesh.inventory.RecordMovement(move(pid, pb.IN, 1), metadata=mesh.as_user())
    assert topped.item.quantity == most and topped.movement.balance_after == most
    for kind, quantity in ((pb.IN, 1), (pb.IN, most)):
        error = await expect_error(
            mesh.inventory.RecordMovement(move(pid, kind, quantity), metadata=mesh.as_user()),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert error_reason(error) == "INVALID_QUANTITY" and f"maximum of {most}" in str(error.details())
    emptied = await mesh.inventory.RecordMovement(move(pid, pb.OUT, most), metadata=mesh.as_user())
    assert emptied.item.quantity == 0 and emptied.movement.quantity == -most
    error = await expect_error(
        mesh.inventory.RecordMovement(move(pid, pb.OUT, most), metadata=mesh.as_user()),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_reason(error) == "INSUFFICIENT_STOCK"
    assert [m.balance_after for m in await ledger(mesh, pid)] == [0, most, most - 1]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"type": pb.MOVEMENT_TYPE_UNSPECIFIED}, "type"),
        ({"type": pb.ADJUSTMENT}, "type"),
        ({"quantity": 0}, "quantity"),
        ({"quantity": -5}, "quantity"),
        ({"reason": "r" * 501}, "reason"),
        ({"reference": "x" * 201}, "reference"),
        ({"request_id": "has spaces"}, "request_id"),
        ({"request_id": "k" * 65}, "request_id"),
        ({"product_id": ""}, "product_id"),
    ],
)
async def test_bad_movements_are_refused_and_write_nothing(
    mesh: Mesh, inventory_db: Database, request_fields: dict[str, object], field: str
) -> None:
    pid = await new_product(mesh)
    fields: dict[str, object] = {"product_id": pid, "type": pb.IN, "quantity": 1} | request_fields
    error = await expect_error(
        mesh.inventory.RecordMovement(pb.RecordMovementRequest(**fields), metadata=mesh.as_user()),  # type: ignore[arg-type]
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field in (error.details() or "")
    async with inventory_db.session() as session:
        assert await session.scalar(select(func.count()).select_from(Movement)) == 0


async def test_every_bad_field_of_a_movement_is_named_at_once(mesh: Mesh, inventory_db: Database) -> None:
    request = pb.RecordMovementRequest(
        product_id="", quantity=0, reason="r" * 501, reference="x" * 201, request_id="has spaces"
    )
    error = await expect_error(
        mesh.inventory.RecordMovement(request, metadata=mesh.as_user()), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert field_violations(error) == {
        "type": "INVALID_MOVEMENT_TYPE",
        "product_id": "MISSING_PRODUCT_ID",
        "quantity": "INVALID_QUANTITY",
        "reason": "INVALID_REASON",
        "reference": "INVALID_REFERENCE",
        "request_id": "INVALID_REQUEST_ID",
    }
    for limit in ("quantity must be 1 to 2147483647", "at most 500 characters", "at most 200 characters"):
        assert limit in str(error.details())
    count = pb.SetStockRequest(product_id="", quantity=-1, reason="r" * 501)
    error = await expect_error(
        mesh.inventory.SetStock(count, metadata=mesh.as_user()), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert set(field_violations(error)) == {"product_id", "quantity", "reason"}
    assert "quantity must be 0 to 2147483647" in str(error.details())
    async with inventory_db.session() as session:
        assert await session.scalar(select(func.count()).select_from(Movement)) == 0


async def test_page_requests_name_both_bad_fields_and_the_limits(mesh: Mesh) -> None:
    pid = await new_product(mesh)
    request = pb.ListMovementsRequest(product_id=pid, page_size=-1, page_token="forged")
    error = await expect_error(
        mesh.inventory.ListMovements(request, metadata=mesh.as_user()), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert field_violations(error) == {"page_size": "INVALID_PAGE_SIZE", "page_token": "INVALID_PAGE_TOKEN"}
    assert "0 asks for 50, and at most 500 are returned" in str(error.details())


async def test_the_ledger_lists_by_type_location_and_time_across_pages(mesh: Mesh) -> None:
    pid = await new_product(mesh)
    second = (
        await mesh.inventory.CreateLocation(
            pb.CreateLocationRequest(location=pb.Location(code="WH-2", name="Second")),
            metadata=mesh.as_user(),
        )
    ).location.id
    moves = [(pb.IN, 5, ""), (pb.IN, 3, second), (pb.OUT, 1, ""), (pb.IN, 2, ""), (pb.OUT, 1, second)]
    written = [
        (
            await mesh.inventory.RecordMovement(
                move(pid, kind, units, location_id=where), metadata=mesh.as_user()
            )
        ).movement
        for kind, units, where in moves
    ]
    counted = await mesh.inventory.SetStock(
        pb.SetStockRequest(product_id=pid, quantity=10), metadata=mesh.as_user()
    )
    last = await mesh.inventory.RecordMovement(
        move(pid, pb.IN, 1, location_id=second), metadata=mesh.as_user()
    )
    m1, m2, m3, m4, m5, m6, m7 = [*written, counted.movement, last.movement]

    async def listed(**filters: Any) -> list[str]:
        return [m.id for m in await ledger(mesh, pid, page_size=2, **filters)]

    assert await listed(type=pb.IN) == [m7.id, m4.id, m2.id, m1.id]
    assert await listed(type=pb.ADJUSTMENT) == [m6.id]
    assert await listed(location_id=second) == [m7.id, m5.id, m2.id]
    # Half-open: m3's own time is in, m6's is out.
    assert await listed(start_time=m3.created_at, end_time=m6.created_at) == [m5.id, m4.id, m3.id]
    assert await listed(start_time=m5.created_at) == [m7.id, m6.id, m5.id]
    assert await listed(end_time=m2.created_at) == [m1.id]
    year_one, year_9999 = Timestamp(seconds=-62135596800), Timestamp(seconds=253402300799)
    assert len(await listed(start_time=year_one, end_time=year_9999)) == 7
    assert await listed(type=pb.IN, location_id=second, end_time=m7.created_at) == [m2.id]
    assert await listed(type=pb.MOVEMENT_TYPE_UNSPECIFIED) == [
        m.id for m in reversed([m1, m2, m3, m4, m5, m6, m7])
    ]


async def test_a_ledger_page_token_is_good_only_for_its_filters(mesh: Mesh) -> None:
    pid = await new_product(mesh)
    for _ in range(3):
        await mesh.inventory.RecordMovement(move(pid, pb.IN, 1), metadata=mesh.as_user())
    first = await mesh.inventory.ListMovements(
        pb.ListMovementsRequest(product_id=pid, page_size=1, type=pb.IN), metadata=mesh.as_user()
    )
    assert first.next_page_token
    for other in ({"type": pb.OUT}, {}, {"type": pb.IN, "location_id": DEFAULT_LOCATION_ID}):
        error = await expect_error(
            mesh.inventory.ListMovements(
                pb.ListMovementsRequest(
                    product_id=pid, page_size=1, page_token=first.next_page_token, **other
                ),
                metadata=mesh.as_user(),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert field_violations(error) == {"page_token": "INVALID_PAGE_TOKEN"}


async def test_bad_ledger_filters_are_refused_naming_each_field(mesh: Mesh) -> None:
    pid = await new_product(mesh)
    await mesh.inventory.RecordMovement(move(pid, pb.IN, 1), metadata=mesh.as_user())
    later, earlier = Timestamp(seconds=1_800_000_000), Timestamp(seconds=1_700_000_000)
    bad = pb.ListMovementsRequest(product_id=pid, type=7, start_time=later, end_time=earlier, page_size=-1)  # type: ignore[arg-type]
    error = await expect_error(
        mesh.inventory.ListMovements(bad, metadata=mesh.as_user()), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert field_violations(error) == {
        "type": "INVALID_MOVEMENT_TYPE",
        "end_time": "INVALID_TIME_RANGE",
        "page_size": "INVALID_PAGE_SIZE",
    }
    # [t, t) is empty, not wrong.
    empty = pb.ListMovementsRequest(product_id=pid, start_time=later, end_time=later)
    assert not (await mesh.inventory.ListMovements(empty, metadata=mesh.as_user())).movements
    beyond = pb.ListMovementsRequest(product_id=pid, start_time=Timestamp(seconds=2**40))
    error = await expect_error(
        mesh.inventory.ListMovements(beyond, metadata=mesh.as_user()), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert field_violations(error) == {"start_time": "INVALID_TIMESTAMP"}
    nowhere = pb.ListMovementsRequest(product_id=pid, location_id="no-such-location")
    error = await expect_error(
        mesh.inventory.ListMovements(nowhere, metadata=mesh.as_user()), grpc.StatusCode.NOT_FOUND
    )
    assert field_violations(error) == {"location_id": "LOCATION_NOT_FOUND"}


@given(
    balance=st.integers(0, MAX_STOCK),
    delta=st.integers(-MAX_STOCK, MAX_STOCK),
    reserved=st.integers(0, MAX_STOCK),
)
@example(balance=5, delta=-5, reserved=0)  # each side of each bound
@example(balance=4, delta=-5, reserved=0)
@example(balance=5, delta=-3, reserved=2)
@example(balance=5, delta=-4, reserved=2)
@example(balance=MAX_STOCK - 1, delta=1, reserved=0)
@example(balance=MAX_STOCK, delta=1, reserved=0)
@example(balance=MAX_STOCK, delta=-MAX_STOCK, reserved=0)
def test_the_stock_rule_keeps_a_balance_in_range_and_reserved_units_in_stock(
    balance: int, delta: int, reserved: int
) -> None:
    reserved = min(reserved, balance)  # reserved never passes on hand
    try:
        moved: int | None = next_balance(balance, delta, reserved=reserved)
    except (FailedPrecondition, InvalidArgument):
        moved = None
    allowed = balance + delta <= MAX_STOCK and (delta >= 0 or balance + delta >= reserved)
    assert (moved is not None) == allowed
    assert moved is None or 0 <= moved <= MAX_STOCK


async def test_unknown_products_and_negative_counts(mesh: Mesh) -> None:
    for call in (
        mesh.inventory.RecordMovement(move("no-such-product", pb.IN, 1), metadata=mesh.as_user()),
        mesh.inventory.GetInventoryItem(
            pb.GetInventoryItemRequest(product_id="no-such-product"), metadata=mesh.as_user()
        ),
        mesh.inventory.ListMovements(
            pb.ListMovementsRequest(product_id="no-such-product"), metadata=mesh.as_user()
        ),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND)
    pid = await new_product(mesh)
    error = await expect_error(
        mesh.inventory.SetStock(pb.SetStockRequest(product_id=pid, quantity=-1), metadata=mesh.as_user()),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "quantity" in (error.details() or "")


async def test_a_retried_request_id_returns_the_first_result(mesh: Mesh) -> None:
    pid = await new_product(mesh)
    request = move(pid, pb.IN, 5, request_id="delivery-42")
    first = await mesh.inventory.RecordMovement(request, metadata=mesh.as_user())
    await mesh.inventory.RecordMovement(move(pid, pb.IN, 1), metadata=mesh.as_user())
    again = await mesh.inventory.RecordMovement(request, metadata=mesh.as_user())
    assert again == first  # the first result, balance as it was then
    assert len(await ledger(mesh, pid)) == 2

    error = await expect_error(
        mesh.inventory.RecordMovement(move(pid, pb.IN, 6, request_id="delivery-42"), metadata=mesh.as_user()),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert error_reason(error) == "REQUEST_ID_REUSED"
    count = pb.SetStockRequest(product_id=pid, quantity=9, request_id="count-1")
    assert await mesh.inventory.SetStock(count, metadata=mesh.as_user()) == await mesh.inventory.SetStock(
        count, metadata=mesh.as_user()
    )
    assert len(await ledger(mesh, pid)) == 3


async def listed_ids(mesh: Mesh) -> list[str]:
    listed = await mesh.inventory.ListInventoryItems(pb.ListInventoryItemsRequest(), metadata=mesh.as_user())
    return [item.product_id for item in listed.items]


async def test_deleting_a_product_retires_its_item_and_keeps_the_ledger(
    mesh: Mesh, inventory_db: Database
) -> None:
    pid = await new_product(mesh)
    await mesh.inventory.RecordMovement(move(pid, pb.IN, 7), metadata=mesh.as_user())
    await mesh.products.DeleteProduct(products_pb.DeleteProductRequest(id=pid), metadata=mesh.as_user())

    await expect_error(
        mesh.products.GetProduct(products_pb.GetProductRequest(id=pid), metadata=mesh.as_user()),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        mesh.inventory.GetInventoryItem(pb.GetInventoryItemRequest(product_id=pid), metadata=mesh.as_user()),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        mesh.inventory.RecordMovement(move(pid, pb.IN, 1), metadata=mesh.as_user()), grpc.StatusCode.NOT_FOUND
    )
    async with asyncio.timeout(5):  # the products relay retires the item right after the delete
        while pid in await listed_ids(mesh):
            await asyncio.sleep(0.02)
    # Retiring again (the relay delivers at least once) is harmless; the ledger stays for audit.
    issued = await mesh.auth.IssueServiceToken(
        auth_pb.IssueServiceTokenRequest(client_id="products", client_secret=SERVICE_SECRET)
    )
    await mesh.inventory.DeleteInventoryItem(
        pb.DeleteInventoryItemRequest(product_id=pid), metadata=mesh.as_user(issued.access_token)
    )
    assert pid not in await listed_ids(mesh)
    async with inventory_db.session() as session:
        assert await session.scalar(select(func.count()).where(Movement.product_id == pid)) == 1


async def test_a_deleted_products_ledger_stays_readable_to_staff_and_admins_only(
    mesh: Mesh, inventory_db: Database
) -> None:
    pid = await new_product(mesh)
    await mesh.inventory.RecordMovement(move(pid, pb.IN, 7, reason="delivery"), metadata=mesh.as_user())
    staff = await user_token(mesh.auth, "clerk@example.com", None, mesh.settings, role="staff")
    viewer = await user_token(mesh.auth, "viewer@example.com", None, mesh.settings, role="viewer")
    request = pb.ListMovementsRequest(product_id=pid)
    live = await mesh.inventory.ListMovements(request, metadata=mesh.as_user(viewer))
    assert [m.quantity for m in live.movements] == [7] and live.retired is False

    await mesh.products.DeleteProduct(products_pb.DeleteProductRequest(id=pid), metadata=mesh.as_user())
    for auditor in (mesh.verified_token, staff):  # an admin and a staff member
        kept = await mesh.inventory.ListMovements(request, metadata=mesh.as_user(auditor))
        assert kept.retired is True
        assert [(m.quantity, m.reason) for m in kept.movements] == [(7, "delivery")]
    error = await expect_error(
        mesh.inventory.ListMovements(request, metadata=mesh.as_user(viewer)), grpc.StatusCode.NOT_FOUND
    )
    assert error_reason(error) == "PRODUCT_NOT_FOUND"
    # As it was before the retirement arrived (had inventory been down at the delete): the
    # products service no longer knows the product, so its ledger reads as retired already.
    async with inventory_db.transaction() as session:
        await session.execute(update(Item).where(Item.product_id == pid).values(retired_at=None))
    on_its_way = await mesh.inventory.ListMovements(request, metadata=mesh.as_user(staff))
    assert on_its_way.retired is True and len(on_its_way.movements) == 1
    await expect_error(
        mesh.inventory.ListMovements(request, metadata=mesh.as_user(viewer)), grpc.StatusCode.NOT_FOUND
    )
    # Retired is not unknown: a product that never existed has no ledger to audit.
    await expect_error(
        mesh.inventory.ListMovements(
            pb.ListMovementsRequest(product_id="no-such-product"), metadata=mesh.as_user()
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_tokens_and_verified_email(mesh: Mesh) -> None:
    pid = await new_product(mesh)
    await expect_error(
        mesh.inventory.GetInventoryItem(pb.GetInventoryItemRequest(product_id=pid)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await expect_error(
        mesh.inventory.ListInventoryItems(
            pb.ListInventoryItemsRequest(), metadata=mesh.as_user("not-a-token")
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    visitor = mesh.as_user(mesh.unverified_token)
    item = await mesh.inventory.GetInventoryItem(pb.GetInventoryItemRequest(product_id=pid), metadata=visitor)
    assert item.item.quantity == 0  # reads are open to any valid token
    for write, reason in (  # the visitor is staff, but unverified
        (mesh.inventory.RecordMovement(move(pid, pb.IN, 1), metadata=visitor), "EMAIL_NOT_VERIFIED"),
        (
            mesh.inventory.SetStock(pb.SetStockRequest(product_id=pid, quantity=1), metadata=visitor),
            "EMAIL_NOT_VERIFIED",
        ),
        (
            mesh.inventory.DeleteInventoryItem(
                pb.DeleteInventoryItemRequest(product_id=pid), metadata=visitor
            ),
            "ROLE_REQUIRED",
        ),
    ):
        error = await expect_error(write, grpc.StatusCode.PERMISSION_DENIED)
        assert error_reason(error) == reason


async def test_item_and_movement_pages_walk_everything_once(mesh: Mesh) -> None:
    ids = [await new_product(mesh, f"P-{n}") for n in range(5)]
    for n, pid in enumerate(ids):
        await mesh.inventory.RecordMovement(move(pid, pb.IN, n + 1), metadata=mesh.as_user())
    for _ in range(9):
        await mesh.inventory.RecordMovement(move(ids[0], pb.IN, 1), metadata=mesh.as_user())
    seen, token = [], ""
    while True:
        page = await mesh.inventory.ListInventoryItems(
            pb.ListInventoryItemsRequest(page_size=2, page_token=token), metadata=mesh.as_user()
        )
        seen += [item.product_id for item in page.items]
        if not (token := page.next_page_token):
            break
    assert sorted(seen) == sorted(ids)
    movements = await ledger(mesh, ids[0])
    assert len(movements) == 10 and len({m.id for m in movements}) == 10
    assert [m.balance_after for m in movements] == list(range(10, 0, -1))
    await expect_error(
        mesh.inventory.ListMovements(
            pb.ListMovementsRequest(product_id=ids[1], page_token="garbage"), metadata=mesh.as_user()
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_concurrent_exits_never_oversell(mesh: Mesh) -> None:
    pid = await new_product(mesh)
    await mesh.inventory.SetStock(pb.SetStockRequest(product_id=pid, quantity=30), metadata=mesh.as_user())
    results = await asyncio.gather(
        *(mesh.inventory.RecordMovement(move(pid, pb.OUT, 1), metadata=mesh.as_user()) for _ in range(100)),
        return_exceptions=True,
    )
    succeeded = [r for r in results if isinstance(r, pb.RecordMovementResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(succeeded) == 30 and len(refused) == 70
    assert all(error_reason(r) == "INSUFFICIENT_STOCK" for r in refused)
    movements = await ledger(mesh, pid)
    assert len(movements) == 31 and sum(m.quantity for m in movements) == 0
    item = await mesh.inventory.GetInventoryItem(
        pb.GetInventoryItemRequest(product_id=pid), metadata=mesh.as_user()
    )
    assert item.item.quantity == 0


async def test_a_random_workload_keeps_every_invariant(mesh: Mesh) -> None:
    rng = random.Random(7)
    ids = [await new_product(mesh, f"R-{n}") for n in range(3)]
    requests: list[object] = []
    for n in range(120):
        pid = rng.choice(ids)
        roll = rng.random()
        if roll < 0.45:
            requests.append(move(pid, pb.IN, rng.randint(1, 5), request_id=f"in-{n}"))
        elif roll < 0.9:
            requests.append(move(pid, pb.OUT, rng.randint(1, 5), request_id=f"out-{n}"))
        else:
            requests.append(
                pb.SetStockRequest(product_id=pid, quantity=rng.randint(0, 10), request_id=f"set-{n}")
            )
    requests += rng.sample(requests, 30)  # client retries of the same requests
    rng.shuffle(requests)

    async def send(request: object) -> None:
        call = (
            mesh.inventory.SetStock
            if isinstance(request, pb.SetStockRequest)
            else mesh.inventory.RecordMovement
        )
        try:
            await call(request, metadata=mesh.as_user())  # type: ignore[arg-type]
        except grpc.aio.AioRpcError as error:
            assert error_reason(error) == "INSUFFICIENT_STOCK", error.details()

    for start in range(0, len(requests), 15):
        await asyncio.gather(*(send(r) for r in requests[start : start + 15]))

    for pid in ids:
        movements = list(reversed(await ledger(mesh, pid)))  # oldest first
        balance = 0
        for movement in movements:
            balance += movement.quantity
            assert movement.balance_after == balance >= 0
        assert len({m.request_id for m in movements}) == len(movements)  # each request applied once
        item = await mesh.inventory.GetInventoryItem(
            pb.GetInventoryItemRequest(product_id=pid), metadata=mesh.as_user()
        )
        assert item.item.quantity == balance


async def test_with_products_down_movements_answer_unavailable(settings: Settings, smtp: SmtpServer) -> None:
    settings = mesh_settings(settings)  # nothing listens on the products address
    async with running_auth(settings), running_inventory(settings):
        async with grpc.aio.insecure_channel(settings.auth_addr) as channel:
            token = await user_token(
                auth_service_pb2_grpc.AuthServiceStub(channel),
                "ops@example.com",
                smtp.inbox,
                settings,
            )
        async with grpc.aio.insecure_channel(settings.inventory_addr) as channel:
            stub = inventory_service_pb2_grpc.InventoryServiceStub(channel)
            metadata = (("authorization", f"Bearer {token}"),)
            error = await expect_error(
                stub.RecordMovement(move("some-product", pb.IN, 1), metadata=metadata, timeout=10),
                grpc.StatusCode.UNAVAILABLE,
            )
            assert error_reason(error) == "PRODUCTS_UNAVAILABLE"


@pytest.mark.parametrize("cache_seconds", [60.0, 0.0])
async def test_a_product_confirmed_lately_is_not_asked_about_again(
    settings: Settings, smtp: SmtpServer, cache_seconds: float
) -> None:
    """Inventory remembers a confirmed product for PRODUCT_CHECK_CACHE_SECONDS: movements on it
    go on while products is down. With 0 it asks every time, and fails without products."""
    settings = mesh_settings(settings).model_copy(update={"product_check_cache_seconds": cache_seconds})
    async with running_auth(settings), running_inventory(settings):
        async with grpc.aio.insecure_channel(settings.auth_addr) as channel:
            token = await user_token(
                auth_service_pb2_grpc.AuthServiceStub(channel), "ops@example.com", smtp.inbox, settings
            )
        metadata = (("authorization", f"Bearer {token}"),)
        async with grpc.aio.insecure_channel(settings.inventory_addr) as channel:
            inventory = inventory_service_pb2_grpc.InventoryServiceStub(channel)
            async with (
                running_products(settings),
                grpc.aio.insecure_channel(settings.products_addr) as products_channel,
            ):
                products = products_service_pb2_grpc.ProductsServiceStub(products_channel)
                product = products_pb.Product(sku="S-1", name="Screw", price="1")
                created = await products.CreateProduct(
                    products_pb.CreateProductRequest(product=product), metadata=metadata
                )
                pid = created.product.id
                await inventory.RecordMovement(move(pid, pb.IN, 5), metadata=metadata)
            # The products service is gone now.
            later = inventory.RecordMovement(move(pid, pb.OUT, 2), metadata=metadata, timeout=10)
            if cache_seconds:
                assert (await later).item.quantity == 3
            else:
                error = await expect_error(later, grpc.StatusCode.UNAVAILABLE)
                assert error_reason(error) == "PRODUCTS_UNAVAILABLE"


@pytest.mark.parametrize("position", [[], ["a", "b"], [1.5], [None]])
async def test_crafted_page_tokens_are_refused(mesh: Mesh, position: list[object]) -> None:
    pid = await new_product(mesh)
    for request, call in (
        (
            pb.ListInventoryItemsRequest(page_token=paging.encode_token(position, query="items")),
            mesh.inventory.ListInventoryItems,
        ),
        (
            pb.ListMovementsRequest(product_id=pid, page_token=paging.encode_token(position, query=pid)),
            mesh.inventory.ListMovements,
        ),
    ):
        # mypy joins the two (request, method) pairs' types, so each request meets both methods
        error = await expect_error(call(request, metadata=mesh.as_user()), grpc.StatusCode.INVALID_ARGUMENT)  # type: ignore[arg-type]
        assert "page_token" in (error.details() or "")


async def test_the_stock_feed_gauges_while_products_is_down(settings: Settings, smtp: SmtpServer) -> None:
    """Products down after a movement it was not told of: feed backlog 1 and a lag that grows;
    products back: both 0."""
    settings = mesh_settings(settings).model_copy(
        update={
            "product_check_cache_seconds": 60.0,
            "outbox_retry_initial_seconds": 0.1,
            "outbox_retry_max_seconds": 0.3,
        }
    )

    def gauge(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    async def backlog_becomes(want: float) -> None:
        async def read() -> float:
            return gauge("invmesh_stock_feed_backlog")

        assert await eventually(read, lambda got: got == want) == want

    async with running_auth(settings), running_inventory(settings):
        async with grpc.aio.insecure_channel(settings.auth_addr) as channel:
            token = await user_token(
                auth_service_pb2_grpc.AuthServiceStub(channel), "ops@example.com", smtp.inbox, settings
            )
        metadata = (("authorization", f"Bearer {token}"),)
        async with grpc.aio.insecure_channel(settings.inventory_addr) as channel:
            inventory = inventory_service_pb2_grpc.InventoryServiceStub(channel)
            async with (
                running_products(settings),
                grpc.aio.insecure_channel(settings.products_addr) as products_channel,
            ):
                products = products_service_pb2_grpc.ProductsServiceStub(products_channel)
                product = products_pb.Product(sku="S-1", name="Screw", price="1")
                created = await products.CreateProduct(
                    products_pb.CreateProductRequest(product=product), metadata=metadata
                )
                pid = created.product.id
                await inventory.RecordMovement(move(pid, pb.IN, 5), metadata=metadata)
                await backlog_becomes(0)
            await inventory.RecordMovement(move(pid, pb.OUT, 2), metadata=metadata)
            await backlog_becomes(1)
            first = gauge("invmesh_stock_feed_lag_seconds")
            await asyncio.sleep(0.3)
            assert 0 < first < gauge("invmesh_stock_feed_lag_seconds")
            async with running_products(settings):
                await backlog_becomes(0)
                assert gauge("invmesh_stock_feed_lag_seconds") == 0
