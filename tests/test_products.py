"""Products with auth running and inventory down (nothing listens on its address): exact prices,
permission checked before input, forged page tokens, and answers that need no inventory.

The catalog with inventory up (CRUD, every validation rule, pages, search) is in test_catalog.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select

from invmesh.products.v1 import products_service_pb2 as pb
from invmesh.products.v1 import products_service_pb2_grpc
from mesh.db import Database
from mesh.paging import encode_token
from products.models import Product
from products.service import running as running_products
from tests.conftest import MeshUsers
from tests.rpc import error_reason, expect_error

Metadata = tuple[tuple[str, str], ...]


@dataclass
class Products:
    stub: products_service_pb2_grpc.ProductsServiceStub
    db: Database
    verified: Metadata
    unverified: Metadata

    async def create(self, **fields: str) -> pb.Product:
        request = pb.CreateProductRequest(product=product(**fields))
        return (await self.stub.CreateProduct(request, metadata=self.verified)).product

    async def count(self) -> int:
        async with self.db.session() as session:
            return await session.scalar(select(func.count()).select_from(Product)) or 0


def product(**fields: str) -> pb.Product:
    chosen: dict[str, Any] = {"sku": "SKU-1", "name": "Widget", "price": "12.50"} | fields
    return pb.Product(**chosen)


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def products(mesh_users: MeshUsers) -> AsyncIterator[Products]:
    settings = mesh_users.settings  # inventory's free port stays free: inventory is down
    async with running_products(settings), grpc.aio.insecure_channel(settings.products_addr) as channel:
        db = Database(settings.database_url("products"))
        try:
            yield Products(
                stub=products_service_pb2_grpc.ProductsServiceStub(channel),
                db=db,
                verified=bearer(mesh_users.verified_token),
                unverified=bearer(mesh_users.unverified_token),
            )
        finally:
            await db.dispose()


@pytest.mark.parametrize(
    ("price", "currency", "minor"),
    [
        ("99999999999999.99", "USD", 9_999_999_999_999_999),  # past a float's 15-16 significant digits
        ("99999999999999.9999", "CLF", 999_999_999_999_999_999),  # four minor digits
        ("99999999999999", "JPY", 99_999_999_999_999),
        ("0.1", "USD", 10),
    ],
)
async def test_prices_are_stored_exactly_as_minor_units(
    products: Products, price: str, currency: str, minor: int
) -> None:
    created = await products.create(price=price, currency=currency)
    got = await products.stub.GetProduct(pb.GetProductRequest(id=created.id), metadata=products.verified)
    listed = await products.stub.ListProducts(pb.ListProductsRequest(), metadata=products.verified)
    shown = f"{price}0" if price == "0.1" else price
    assert created.price == got.product.price == listed.products[0].price == shown
    async with products.db.session() as session:
        assert await session.scalar(select(Product.price_minor)) == minor


async def test_prices_from_1e14_are_refused(products: Products) -> None:
    error = await expect_error(products.create(price="100000000000000"), grpc.StatusCode.INVALID_ARGUMENT)
    assert "price" in (error.details() or "") and error_reason(error) == "INVALID_PRICE"
    assert await products.count() == 0


async def test_an_unverified_caller_is_refused_before_its_input_is_checked(products: Products) -> None:
    invalid = product(sku="", price="abc", currency="XYZ")
    for write in (
        products.stub.CreateProduct(pb.CreateProductRequest(product=invalid), metadata=products.unverified),
        products.stub.UpdateProduct(pb.UpdateProductRequest(product=invalid), metadata=products.unverified),
    ):
        error = await expect_error(write, grpc.StatusCode.PERMISSION_DENIED)
        assert error_reason(error) == "EMAIL_NOT_VERIFIED"
    assert await products.count() == 0


@pytest.mark.parametrize(
    "position",
    [
        ["2020-01-01T00:00:00", "some-id"],  # no time zone: not a position this list wrote
        ["yesterday", "some-id"],
        [1, 2],
        [],
    ],
)
async def test_forged_page_tokens_are_invalid_arguments(products: Products, position: list[object]) -> None:
    await products.create()
    error = await expect_error(
        products.stub.ListProducts(
            pb.ListProductsRequest(page_token=encode_token(position)), metadata=products.verified
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "page_token" in (error.details() or "")


async def test_with_inventory_down_writes_and_reads_answer_with_the_stock_last_reported(
    products: Products,
) -> None:
    created = await products.create()
    assert created.stock == 0  # a new product never moved
    changed = product(id=created.id, sku="SKU-2", name="Widget 2", price="3", currency="jpy")
    request = pb.UpdateProductRequest(product=changed)
    updated = (await products.stub.UpdateProduct(request, metadata=products.verified)).product
    assert (updated.sku, updated.price, updated.currency) == ("SKU-2", "3", "JPY")
    assert updated.stock == 0  # as last reported: never moved
    # Reads need a token, not a verified email.
    got = await products.stub.GetProduct(pb.GetProductRequest(id=created.id), metadata=products.unverified)
    listed = await products.stub.ListProducts(pb.ListProductsRequest(), metadata=products.unverified)
    assert got.product == updated == listed.products[0]

    # A delete does not wait for inventory: its retirement waits in the outbox (tests/test_retirements.py).
    await products.stub.DeleteProduct(pb.DeleteProductRequest(id=created.id), metadata=products.verified)
    assert await products.count() == 0
    await expect_error(
        products.stub.DeleteProduct(pb.DeleteProductRequest(id="no-such-id"), metadata=products.verified),
        grpc.StatusCode.NOT_FOUND,
    )
