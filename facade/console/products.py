"""The product list (search by name or SKU, a page at a time, with each product's stock) and
the low-stock list (GET /inventory?low_stock=true's items, with their names)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from facade.console.calls import Caller, stubs
from facade.console.product import product_path
from facade.console.session import Session
from facade.console.web import Console
from invmesh.inventory.v1 import inventory_service_pb2 as inventory_pb
from invmesh.products.v1 import products_service_pb2 as products_pb

PAGE_SIZE = 50


def routes(console: Console) -> list[Route]:
    async def product_list(request: Request, session: Session, call: Caller) -> Response:
        query = request.query_params.get("q", "").strip()
        page_token = request.query_params.get("page_token", "")
        listed = await call(
            stubs(request).products.ListProducts,
            products_pb.ListProductsRequest(page_size=PAGE_SIZE, q=query, page_token=page_token),
        )
        ids = [product.id for product in listed.products]
        stock = {}
        if ids:
            batch = await call(
                stubs(request).inventory.BatchGetInventoryItems,
                inventory_pb.BatchGetInventoryItemsRequest(product_ids=ids),
            )
            stock = {item.product_id: item for item in batch.items}
        rows = [(product, stock.get(product.id), product_path(product.id)) for product in listed.products]
        context = {
            "query": query,
            "rows": rows,
            "next_page_token": listed.next_page_token,
            "first_page": not page_token,
        }
        return console.render(request, session, "products.html", context)

    async def low_stock(request: Request, session: Session, call: Caller) -> Response:
        page_token = request.query_params.get("page_token", "")
        inventory = stubs(request).inventory
        listed, places = await asyncio.gather(
            call(
                inventory.ListInventoryItems,
                inventory_pb.ListInventoryItemsRequest(
                    page_size=PAGE_SIZE, page_token=page_token, low_stock=True
                ),
            ),
            call(inventory.ListLocations, inventory_pb.ListLocationsRequest(page_size=500)),
        )
        found = {}
        if listed.items:
            batch = await call(
                stubs(request).products.BatchGetProducts,
                products_pb.BatchGetProductsRequest(ids=[item.product_id for item in listed.items]),
            )
            found = {product.id: product for product in batch.products}
        rows = [
            (found.get(item.product_id), level, product_path(item.product_id))
            for item in listed.items
            for level in item.locations
            if level.low_stock
        ]
        context = {
            "rows": rows,
            "names": {place.id: place.code for place in places.locations},
            "next_page_token": listed.next_page_token,
            "first_page": not page_token,
        }
        return console.render(request, session, "low_stock.html", context)

    return [
        Route("/products", console.page(product_list), methods=["GET"]),
        Route("/low-stock", console.page(low_stock), methods=["GET"]),
    ]
