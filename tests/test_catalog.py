"""Products over real gRPC, with auth and inventory running: CRUD, validation, pages, and the
stock that inventory's feed reports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import func, select, update

from auth.service import running as running_auth
from inventory.service import running as running_inventory
from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from invmesh.auth.v1 import auth_service_pb2_grpc
from invmesh.inventory.v1 import inventory_service_pb2 as inventory_pb
from invmesh.inventory.v1 import inventory_service_pb2_grpc
from invmesh.products.v1 import products_service_pb2 as pb
from invmesh.products.v1 import products_service_pb2_grpc
from mesh.config import Settings
from mesh.db import Database
from products import change_watch
from products.catalog import Catalog
from products.models import Product, ProductChange
from products.service import running as running_products
from products.servicer import page_answer, product_answer
from tests.conftest import SERVICE_SECRET, Mesh, SmtpServer, free_port, mesh_settings, user_token
from tests.rpc import error_reason, eventually, expect_error, field_violations


def product(**fields: str) -> pb.Product:
    chosen: dict[str, Any] = {"sku": "SKU-1", "name": "Widget", "price": "12.50"} | fields
    return pb.Product(**chosen)


@pytest.fixture
async def products_db(mesh: Mesh) -> AsyncIterator[Database]:
    db = Database(mesh.settings.database_url("products"))
    yield db
    await db.dispose()


async def create(mesh: Mesh, **fields: str) -> pb.Product:
    reply = await mesh.products.CreateProduct(
        pb.CreateProductRequest(product=product(**fields)), metadata=mesh.as_user()
    )
    return reply.product


async def test_create_get_update_list_delete(mesh: Mesh) -> None:
    created = await create(mesh, description="A fine widget", currency="eur")
    assert created.id and created.price == "12.50" and created.currency == "EUR" and created.stock == 0
    assert created.created_at == created.updated_at

    got = (
        await mesh.products.GetProduct(pb.GetProductRequest(id=created.id), metadata=mesh.as_user())
    ).product
    assert got == created

    changed = product(id=created.id, sku="SKU-1B", name="Widget B", price="3", currency="JPY")
    updated = (
        await mesh.products.UpdateProduct(pb.UpdateProductRequest(product=changed), metadata=mesh.as_user())
    ).product
    assert (updated.sku, updated.name, updated.price, updated.currency) == ("SKU-1B", "Widget B", "3", "JPY")
    assert updated.description == ""  # PUT replaces every editable field
    assert (
        updated.created_at == created.created_at
        and updated.updated_at.ToDatetime() > created.updated_at.ToDatetime()
    )

    listed = await mesh.products.ListProducts(pb.ListProductsRequest(), metadata=mesh.as_user())
    assert [p.id for p in listed.products] == [created.id] and listed.next_page_token == ""
    assert listed.products[0].stock == 0

    await mesh.products.DeleteProduct(pb.DeleteProductRequest(id=created.id), metadata=mesh.as_user())
    for call in (
        mesh.products.GetProduct(pb.GetProductRequest(id=created.id), metadata=mesh.as_user()),
        mesh.products.DeleteProduct(pb.DeleteProductRequest(id=created.id), metadata=mesh.as_user()),
        mesh.products.UpdateProduct(pb.UpdateProductRequest(product=changed), metadata=mesh.as_user()),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND)


async def patch(mesh: Mesh, changes: pb.Product, paths: list[str]) -> pb.Product:
    request = pb.UpdateProductRequest(product=changes, update_mask=field_mask_pb2.FieldMask(paths=paths))
    reply: pb.UpdateProductResponse = await mesh.products.UpdateProduct(request, metadata=mesh.as_user())
    return reply.product


async def test_an_update_mask_changes_only_the_fields_it_names(mesh: Mesh) -> None:
    created = await create(mesh, description="A fine widget", currency="EUR")
    repriced = await patch(mesh, pb.Product(id=created.id, price="9.90", name="ignored"), ["price"])
    assert (repriced.price, repriced.name, repriced.description) == ("9.90", "Widget", "A fine widget")
    assert repriced.updated_at.ToDatetime() > created.updated_at.ToDatetime()
    # The id and output-only fields are ignored, so a product read back can be sent as it is.
    renamed = pb.Product(id=created.id, name="Gadget", stock=99, created_at=created.updated_at)
    got = await patch(mesh, renamed, ["name", "id", "stock", "created_at", "updated_at"])
    assert (got.name, got.price, got.stock, got.created_at) == ("Gadget", "9.90", 0, created.created_at)
    untouched = await patch(mesh, pb.Product(id=created.id), [])  # an empty mask changes nothing
    assert untouched == got
    replaced = await patch(mesh, product(id=created.id, sku="SKU-2"), ["*"])  # "*" is a PUT
    assert (replaced.sku, replaced.description, replaced.currency) == ("SKU-2", "", "USD")


async def test_a_masked_update_is_checked_whole_and_refused_whole(mesh: Mesh) -> None:
    created = await create(mesh, price="12.50")
    # A currency alone can make the kept price invalid: the price is named.
    error = await expect_error(
        patch(mesh, pb.Product(id=created.id, currency="JPY"), ["currency"]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(error) == {"price": "INVALID_PRICE"}
    error = await expect_error(
        patch(mesh, pb.Product(id=created.id, sku=""), ["sku", "colour", "product.name"]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "'colour'" in str(error.details()) and "'product.name'" in str(error.details())
    assert field_violations(error) == {"update_mask": "INVALID_UPDATE_MASK"}  # the mask, before the fields
    assert error_reason(error) == "INVALID_UPDATE_MASK"  # the reason both violations share
    got = await mesh.products.GetProduct(pb.GetProductRequest(id=created.id), metadata=mesh.as_user())
    assert got.product == created
    await expect_error(patch(mesh, pb.Product(id="gone"), ["name"]), grpc.StatusCode.NOT_FOUND)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"sku": ""}, "sku"),
        ({"sku": "   "}, "sku"),
        ({"sku": "s" * 65}, "sku"),
        ({"name": ""}, "name"),
        ({"name": "n" * 201}, "name"),
        ({"price": ""}, "price"),
        ({"price": "-1.00"}, "price"),
        ({"price": "abc"}, "price"),
        ({"price": "1e3"}, "price"),
        ({"price": "NaN"}, "price"),
        ({"price": "Infinity"}, "price"),
        ({"price": "12.345"}, "price"),
        ({"price": "1.5", "currency": "JPY"}, "price"),
        ({"price": "1,50"}, "price"),
        ({"price": "١٢"}, "price"),  # Arabic-Indic digits are digits, but not a price
        ({"currency": "XYZ"}, "currency"),
        ({"currency": "XAU"}, "currency"),  # gold has no minor unit to price in
        ({"description": "d" * 5001}, "description"),
    ],
)
async def test_invalid_products_are_refused_and_write_nothing(
    mesh: Mesh, products_db: Database, fields: dict[str, str], field: str
) -> None:
    error = await expect_error(
        mesh.products.CreateProduct(
            pb.CreateProductRequest(product=product(**fields)), metadata=mesh.as_user()
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field in (error.details() or "")
    async with products_db.session() as session:
        assert await session.scalar(select(func.count()).select_from(Product)) == 0


async def test_every_bad_field_is_named_at_once(mesh: Mesh, products_db: Database) -> None:
    bad = pb.Product(sku="", name="", price="abc", currency="XYZ", description="d" * 5001)
    error = await expect_error(
        mesh.products.CreateProduct(pb.CreateProductRequest(product=bad), metadata=mesh.as_user()),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(error) == {
        "sku": "INVALID_SKU",
        "name": "INVALID_NAME",
        "description": "INVALID_DESCRIPTION",
        "currency": "INVALID_CURRENCY",
        "price": "INVALID_PRICE",
    }
    assert error_reason(error) == "INVALID_FIELDS"
    for limit in ("1 to 64 characters", "1 to 200 characters", "at most 5000 characters", "'XYZ'"):
        assert limit in str(error.details())
    async with products_db.session() as session:
        assert await session.scalar(select(func.count()).select_from(Product)) == 0


async def test_one_bad_field_keeps_its_own_reason(mesh: Mesh) -> None:
    error = await expect_error(create(mesh, price="1.5", currency="JPY"), grpc.StatusCode.INVALID_ARGUMENT)
    assert field_violations(error) == {"price": "INVALID_PRICE"} and error_reason(error) == "INVALID_PRICE"
    assert "at most 0 decimals for JPY" in str(error.details())


@pytest.mark.parametrize(
    ("price", "currency", "shown"),
    [("0", "USD", "0.00"), ("7", "JPY", "7"), ("1.234", "BHD", "1.234"), ("5.5", "", "5.50")],
)
async def test_prices_keep_the_currency_minor_digits(
    mesh: Mesh, price: str, currency: str, shown: str
) -> None:
    created = await create(mesh, price=price, currency=currency)
    assert created.price == shown


async def test_skus_are_unique(mesh: Mesh) -> None:
    first = await create(mesh, sku="A-1")
    second = await create(mesh, sku="A-2")
    error = await expect_error(create(mesh, sku="A-1"), grpc.StatusCode.ALREADY_EXISTS)
    assert error_reason(error) == "SKU_TAKEN"
    taken = product(id=second.id, sku="A-1")
    await expect_error(
        mesh.products.UpdateProduct(pb.UpdateProductRequest(product=taken), metadata=mesh.as_user()),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert (
        await mesh.products.GetProduct(pb.GetProductRequest(id=first.id), metadata=mesh.as_user())
    ).product.sku == "A-1"


async def test_skus_that_differ_only_in_case_or_accents_are_different(mesh: Mesh) -> None:
    # As on SQLite and PostgreSQL; MariaDB's default collation would call these duplicates.
    for sku in ("CAFÉ-1", "café-1", "CAFE-1"):
        await create(mesh, sku=sku)
    await expect_error(create(mesh, sku="café-1"), grpc.StatusCode.ALREADY_EXISTS)


async def test_pages_walk_the_list_exactly_once_while_rows_are_inserted(mesh: Mesh) -> None:
    originals = {(await create(mesh, sku=f"P-{n:03}", name=f"Part {n}")).id for n in range(60)}
    seen: list[str] = []
    token, inserted = "", 0
    while True:
        page = await mesh.products.ListProducts(
            pb.ListProductsRequest(page_size=7, page_token=token), metadata=mesh.as_user()
        )
        seen += [p.id for p in page.products]
        await create(mesh, sku=f"NEW-{inserted}")  # lands after every original: seen once, at the end
        inserted += 1
        if not (token := page.next_page_token):
            break
    assert len(seen) == len(set(seen)) and originals <= set(seen)


async def test_search_and_page_parameters(mesh: Mesh) -> None:
    await create(mesh, sku="BOLT-10", name="Hex bolt")
    await create(mesh, sku="NUT-10", name="Hex nut")
    await create(mesh, sku="WASH_1", name="100% washer")
    found = await mesh.products.ListProducts(pb.ListProductsRequest(q="HEX"), metadata=mesh.as_user())
    assert sorted(p.sku for p in found.products) == ["BOLT-10", "NUT-10"]
    by_sku = await mesh.products.ListProducts(pb.ListProductsRequest(q="nut-1"), metadata=mesh.as_user())
    assert [p.sku for p in by_sku.products] == ["NUT-10"]
    literal = await mesh.products.ListProducts(pb.ListProductsRequest(q="_"), metadata=mesh.as_user())
    assert [p.sku for p in literal.products] == ["WASH_1"]  # wildcards match themselves only
    percent = await mesh.products.ListProducts(pb.ListProductsRequest(q="100%"), metadata=mesh.as_user())
    assert [p.sku for p in percent.products] == ["WASH_1"]

    page = await mesh.products.ListProducts(
        pb.ListProductsRequest(q="hex", page_size=1), metadata=mesh.as_user()
    )
    assert page.next_page_token
    for request in (
        pb.ListProductsRequest(q="nut", page_token=page.next_page_token),  # a token of another query
        pb.ListProductsRequest(page_token="not-a-token"),
        pb.ListProductsRequest(page_size=-1),
    ):
        await expect_error(
            mesh.products.ListProducts(request, metadata=mesh.as_user()), grpc.StatusCode.INVALID_ARGUMENT
        )
    capped = await mesh.products.ListProducts(
        pb.ListProductsRequest(page_size=10_000), metadata=mesh.as_user()
    )
    assert len(capped.products) == 3


async def test_search_folds_case_beyond_ascii_and_keeps_accents(mesh: Mesh) -> None:
    await create(mesh, sku="CB-1", name="Crème BRÛLÉE")
    await create(mesh, sku="CC-1", name="Creme caramel")
    await create(mesh, sku="ÖL-5", name="Motor oil")

    async def skus(q: str) -> list[str]:
        found = await mesh.products.ListProducts(pb.ListProductsRequest(q=q), metadata=mesh.as_user())
        return sorted(p.sku for p in found.products)

    assert await skus("brûlée") == await skus("CRÈME") == ["CB-1"]
    assert await skus("creme") == ["CC-1"]  # an accent makes another letter, on every database
    assert await skus("öl-") == ["ÖL-5"]
    assert await skus("CREME") == ["CC-1"]


async def test_text_holding_nul_is_refused_alike_on_every_database(mesh: Mesh) -> None:
    # PostgreSQL cannot store NUL; the others could, so it is refused before any database sees it.
    error = await expect_error(create(mesh, name="a\x00b"), grpc.StatusCode.INVALID_ARGUMENT)
    assert error_reason(error) == "INVALID_CHARACTER"
    found = await mesh.products.BatchGetProducts(
        pb.BatchGetProductsRequest(ids=["a\x00b"]), metadata=mesh.as_user()
    )
    assert list(found.products) == []
    await expect_error(
        mesh.inventory.GetInventoryItem(
            inventory_pb.GetInventoryItemRequest(product_id="a\x00b"), metadata=mesh.as_user()
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_batch_get(mesh: Mesh) -> None:
    a = await create(mesh, sku="B-1")
    reply = await mesh.products.BatchGetProducts(
        pb.BatchGetProductsRequest(ids=[a.id, "missing"]), metadata=mesh.as_user()
    )
    assert [p.id for p in reply.products] == [a.id] and not reply.products[0].HasField("stock")
    await expect_error(
        mesh.products.BatchGetProducts(pb.BatchGetProductsRequest(ids=["x"] * 501), metadata=mesh.as_user()),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_reads_need_a_token_and_writes_a_verified_email(mesh: Mesh) -> None:
    existing = await create(mesh)
    await expect_error(mesh.products.ListProducts(pb.ListProductsRequest()), grpc.StatusCode.UNAUTHENTICATED)
    visitor = mesh.as_user(mesh.unverified_token)
    await mesh.products.GetProduct(pb.GetProductRequest(id=existing.id), metadata=visitor)
    for write in (
        mesh.products.CreateProduct(pb.CreateProductRequest(product=product(sku="V-1")), metadata=visitor),
        mesh.products.UpdateProduct(
            pb.UpdateProductRequest(product=product(id=existing.id)), metadata=visitor
        ),
        mesh.products.DeleteProduct(pb.DeleteProductRequest(id=existing.id), metadata=visitor),
    ):
        await expect_error(write, grpc.StatusCode.PERMISSION_DENIED)


async def test_reads_carry_the_stock_inventory_reports(mesh: Mesh) -> None:
    created = await create(mesh)
    await mesh.inventory.RecordMovement(
        inventory_pb.RecordMovementRequest(
            product_id=created.id, type=inventory_pb.RecordMovementRequest.IN, quantity=8
        ),
        metadata=mesh.as_user(),
    )
    listed = await eventually(
        lambda: mesh.products.ListProducts(pb.ListProductsRequest(), metadata=mesh.as_user()),
        lambda reply: reply.products[0].stock == 8,
    )
    assert listed.products[0].stock == 8
    await mesh.inventory.SetStock(
        inventory_pb.SetStockRequest(product_id=created.id, quantity=3), metadata=mesh.as_user()
    )
    got = await eventually(
        lambda: mesh.products.GetProduct(pb.GetProductRequest(id=created.id), metadata=mesh.as_user()),
        lambda reply: reply.product.stock == 3,
    )
    assert got.product.stock == 3
    updated = await mesh.products.UpdateProduct(
        pb.UpdateProductRequest(product=product(id=created.id, name="Renamed")), metadata=mesh.as_user()
    )
    assert updated.product.stock == 3


async def test_replicas_serve_reads_from_memory_and_show_each_others_changes_at_once(
    mesh: Mesh, products_db: Database
) -> None:
    """GetProduct answers from memory. A change made through one replica, to a product or its
    stock, or its delete, shows on another as soon as that one reads the change log (about
    0.1 s), long before its copy would expire (PRODUCT_CACHE_SECONDS)."""
    assert mesh.settings.product_cache_seconds == 30.0  # the default
    pid = (await create(mesh)).id
    other_address = f"127.0.0.1:{free_port()}"
    async with (
        running_products(mesh.settings, address=other_address),
        grpc.aio.insecure_channel(other_address) as channel,
    ):
        other = products_service_pb2_grpc.ProductsServiceStub(channel)

        async def read(stub: products_service_pb2_grpc.ProductsServiceStub) -> pb.Product:
            return (await stub.GetProduct(pb.GetProductRequest(id=pid), metadata=mesh.as_user())).product

        async def shown_on_other(done: Callable[[pb.Product], bool]) -> None:
            changed = time.monotonic()
            assert done(await eventually(lambda: read(other), done))
            assert time.monotonic() - changed < 3  # slack for a busy machine, far below the 30 s

        assert (await read(other)).name == (await read(mesh.products)).name == "Widget"  # both keep it
        async with products_db.transaction() as session:  # behind both replicas' backs, unlogged
            await session.execute(update(Product).where(Product.id == pid).values(name="Edited"))
        assert (await read(mesh.products)).name == (await read(other)).name == "Widget"  # from memory

        await mesh.products.UpdateProduct(
            pb.UpdateProductRequest(product=product(id=pid, name="Renamed")), metadata=mesh.as_user()
        )
        assert (await read(mesh.products)).name == "Renamed"  # the writer's own copy went with the commit
        await shown_on_other(lambda p: p.name == "Renamed")

        # Inventory's feed reports to the first replica only.
        await mesh.inventory.RecordMovement(
            inventory_pb.RecordMovementRequest(
                product_id=pid, type=inventory_pb.RecordMovementRequest.IN, quantity=7
            ),
            metadata=mesh.as_user(),
        )
        await shown_on_other(lambda p: p.stock == 7)

        await mesh.products.DeleteProduct(pb.DeleteProductRequest(id=pid), metadata=mesh.as_user())
        changed = time.monotonic()
        while time.monotonic() - changed < 3:
            try:
                await read(other)
            except grpc.aio.AioRpcError as gone:
                assert gone.code() == grpc.StatusCode.NOT_FOUND
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the other replica still serves the deleted product")


async def test_replicas_serve_pages_from_memory_and_show_each_others_new_products_at_once(
    mesh: Mesh, products_db: Database
) -> None:
    """ListProducts pages are kept like GetProduct's rows; any change to any product, a new
    one included, drops them on every replica."""
    pid = (await create(mesh, sku="A-1", name="Alpha")).id
    other_address = f"127.0.0.1:{free_port()}"
    async with (
        running_products(mesh.settings, address=other_address),
        grpc.aio.insecure_channel(other_address) as channel,
    ):
        other = products_service_pb2_grpc.ProductsServiceStub(channel)

        async def names(stub: products_service_pb2_grpc.ProductsServiceStub) -> list[str]:
            page = await stub.ListProducts(pb.ListProductsRequest(page_size=10), metadata=mesh.as_user())
            return [p.name for p in page.products]

        assert await names(other) == await names(mesh.products) == ["Alpha"]
        async with products_db.transaction() as session:  # behind both replicas' backs, unlogged
            await session.execute(update(Product).where(Product.id == pid).values(name="Edited"))
        assert await names(mesh.products) == await names(other) == ["Alpha"]  # from memory

        await create(mesh, sku="B-1", name="Beta")
        assert await names(mesh.products) == ["Edited", "Beta"]  # its own create dropped its pages
        changed = time.monotonic()
        assert await eventually(lambda: names(other), lambda n: n == ["Edited", "Beta"]) == ["Edited", "Beta"]
        assert time.monotonic() - changed < 3  # slack for a busy machine, far below the 30 s


async def test_a_process_does_not_drop_again_what_its_own_writes_dropped(
    mesh: Mesh, products_db: Database
) -> None:
    """Its writes drop what they change at their commit; its change watch, reading the same
    writes in the log, leaves what it read since alone."""
    pid = (await create(mesh)).id

    async def name() -> str:
        return (
            await mesh.products.GetProduct(pb.GetProductRequest(id=pid), metadata=mesh.as_user())
        ).product.name

    assert await name() == "Widget"
    async with products_db.transaction() as session:  # behind its back, unlogged
        await session.execute(update(Product).where(Product.id == pid).values(name="Edited"))
    await asyncio.sleep(5 * change_watch.POLL)  # the watch has read the create's row by now
    assert await name() == "Widget"


async def test_the_change_log_is_pruned_once_read(
    mesh: Mesh, products_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each process deletes the rows it read a retention period ago (at least a minute, and at
    least PRODUCT_CACHE_SECONDS; shortened here), and goes on reading what comes after."""
    monkeypatch.setattr(change_watch, "MIN_RETENTION", 0.3)
    forgotten: list[str] = []
    watch = change_watch.ChangeWatch(
        products_db, forgotten.extend, own_writer="this test", retention=0, retry_initial=0.1, retry_max=1
    )
    await watch.start_at_end()
    try:
        pid = (await create(mesh)).id
        for name in ("One", "Two"):
            await mesh.products.UpdateProduct(
                pb.UpdateProductRequest(product=product(id=pid, name=name)), metadata=mesh.as_user()
            )
        logged = select(func.count()).select_from(ProductChange)
        assert await eventually(lambda: products_db.fetch(logged), lambda rows: rows[0][0] == 0, within=3)
        assert forgotten == [pid, pid, pid]  # the create, and the two updates
        await mesh.products.UpdateProduct(
            pb.UpdateProductRequest(product=product(id=pid, name="Three")), metadata=mesh.as_user()
        )
        assert await eventually(lambda: asyncio.sleep(0, forgotten), lambda f: len(f) == 4) == [pid] * 4
    finally:
        await watch.stop()


def test_the_change_cursor_reads_late_commits_and_gives_up_gaps_in_time() -> None:
    cursor = change_watch.ChangeCursor(after=10)
    assert cursor.read([(11, "a"), (13, "c")], now=0.0) == ["a", "c"]
    assert cursor.after == 11  # 12 is missing: its writer may not have committed yet
    assert cursor.read([(13, "c")], now=1.0) == []  # read again, forgotten once
    assert cursor.read([(12, "b"), (13, "c")], now=1.5) == ["b"]  # the late commit
    assert cursor.after == 13
    assert cursor.read([(15, "e")], now=2.0) == ["e"]
    assert cursor.after == 13
    assert cursor.read([(15, "e"), (16, "f")], now=2.0 + change_watch.SETTLE) == ["f"]
    assert cursor.after == 16  # 14 given up (rolled back, or pruned): 15 was seen SETTLE ago


async def test_stock_levels_come_only_from_a_service_and_never_go_back(mesh: Mesh) -> None:
    pid = (await create(mesh)).id
    issued = await mesh.auth.IssueServiceToken(
        auth_pb.IssueServiceTokenRequest(client_id="inventory", client_secret=SERVICE_SECRET)
    )
    service = mesh.as_user(issued.access_token)

    def levels(*reported: tuple[int, int]) -> pb.UpdateStockLevelsRequest:
        return pb.UpdateStockLevelsRequest(
            levels=[pb.StockLevel(product_id=pid, quantity=q, version=v) for q, v in reported]
        )

    async def stock() -> int:
        return (
            await mesh.products.GetProduct(pb.GetProductRequest(id=pid), metadata=mesh.as_user())
        ).product.stock

    refused = await expect_error(
        mesh.products.UpdateStockLevels(levels((5, 10**6)), metadata=mesh.as_user()),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert error_reason(refused) == "ROLE_REQUIRED"  # not even an admin
    assert await stock() == 0

    await mesh.products.UpdateStockLevels(levels((50, 5)), metadata=service)
    assert await stock() == 50
    await mesh.products.UpdateStockLevels(levels((30, 3)), metadata=service)  # late: older than 5
    await mesh.products.UpdateStockLevels(levels((50, 5)), metadata=service)  # twice
    assert await stock() == 50
    await mesh.products.UpdateStockLevels(levels((7, 7), (6, 6)), metadata=service)  # newest wins
    assert await stock() == 7

    for bad in [
        levels((-1, 8)),
        levels((1, 0)),
        pb.UpdateStockLevelsRequest(levels=[pb.StockLevel(version=9)]),
    ]:
        invalid = await expect_error(
            mesh.products.UpdateStockLevels(bad, metadata=service), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert error_reason(invalid) == "INVALID_STOCK_LEVEL"
    too_many = await expect_error(
        mesh.products.UpdateStockLevels(levels(*[(1, 10 + n) for n in range(501)]), metadata=service),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_reason(too_many) == "TOO_MANY_LEVELS"
    assert await stock() == 7  # a refused call changes nothing


async def test_stock_reaches_products_after_it_was_down(settings: Settings, smtp: SmtpServer) -> None:
    """A movement committed while products is down is reported once products is back."""
    settings = mesh_settings(settings)
    async with running_auth(settings), running_inventory(settings):
        async with grpc.aio.insecure_channel(settings.auth_addr) as channel:
            auth = auth_service_pb2_grpc.AuthServiceStub(channel)
            token = await user_token(auth, "ops@example.com", smtp.inbox, settings)
        metadata = (("authorization", f"Bearer {token}"),)
        async with (
            grpc.aio.insecure_channel(settings.products_addr) as products_channel,
            grpc.aio.insecure_channel(settings.inventory_addr) as inventory_channel,
        ):
            products = products_service_pb2_grpc.ProductsServiceStub(products_channel)
            inventory = inventory_service_pb2_grpc.InventoryServiceStub(inventory_channel)

            def move(quantity: int) -> Awaitable[inventory_pb.RecordMovementResponse]:
                request = inventory_pb.RecordMovementRequest(
                    product_id=pid, type=inventory_pb.RecordMovementRequest.IN, quantity=quantity
                )
                return inventory.RecordMovement(request, metadata=metadata)

            async with running_products(settings):
                created = await products.CreateProduct(
                    pb.CreateProductRequest(product=product()), metadata=metadata
                )
                pid = created.product.id
                await move(5)  # inventory now knows the product exists
            await move(2)  # products is down: the feed retries with backoff
            async with running_products(settings):
                got = await eventually(
                    lambda: products.GetProduct(pb.GetProductRequest(id=pid), metadata=metadata),
                    lambda reply: reply.product.stock == 7,
                )
                assert got.product.stock == 7


async def test_with_inventory_down_reads_answer_at_once_with_the_stock_last_reported(
    settings: Settings, smtp: SmtpServer
) -> None:
    settings = mesh_settings(settings)  # nothing listens on the inventory address
    async with running_auth(settings), running_products(settings):
        async with grpc.aio.insecure_channel(settings.auth_addr) as channel:
            auth = auth_service_pb2_grpc.AuthServiceStub(channel)
            token = await user_token(auth, "ops@example.com", smtp.inbox, settings)
        metadata = (("authorization", f"Bearer {token}"),)
        async with grpc.aio.insecure_channel(settings.products_addr) as channel:
            stub = products_service_pb2_grpc.ProductsServiceStub(channel)
            created = (
                await stub.CreateProduct(pb.CreateProductRequest(product=product()), metadata=metadata)
            ).product
            got = await stub.GetProduct(pb.GetProductRequest(id=created.id), metadata=metadata, timeout=1)
            assert got.product.id == created.id and got.product.stock == 0  # never moved
            listed = await stub.ListProducts(pb.ListProductsRequest(), metadata=metadata, timeout=1)
            assert [p.id for p in listed.products] == [created.id] and listed.products[0].stock == 0


async def test_a_page_larger_than_the_page_cache_is_answered_and_read_again(
    mesh: Mesh, products_db: Database
) -> None:
    for n in range(3):
        await create(mesh, sku=f"BIG-{n}", name=f"Big {n}", description="d" * 2000)
    catalog = Catalog(
        db=products_db,
        retirements=cast(Any, None),  # only deletes use it
        cache_seconds=30,
        answer_product=product_answer,
        answer_page=page_answer,
        page_cache_bytes=5000,
    )
    small = await catalog.list(page_size=1, page_token="", q="BIG-")
    big = await catalog.list(page_size=3, page_token="", q="BIG-")
    assert len(small) < 5000 < len(big)
    async with products_db.transaction() as session:  # behind its back, unlogged
        await session.execute(update(Product).where(Product.sku.like("BIG-%")).values(name="Renamed"))
    kept = pb.ListProductsResponse.FromString(await catalog.list(page_size=1, page_token="", q="BIG-"))
    assert [p.name for p in kept.products] == ["Big 0"]
    read_again = pb.ListProductsResponse.FromString(await catalog.list(page_size=3, page_token="", q="BIG-"))
    assert [p.name for p in read_again.products] == ["Renamed"] * 3
