"""The product list (search by name or SKU, a page at a time, with each product's stock, and
the form that creates one) and the low-stock list (GET /inventory?low_stock=true's items, with
their names)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from facade.console.calls import ApiError, Caller, Refused, stubs
from facade.console.forms import Form
from facade.console.product import EDITABLE, PRODUCTS, product_path
from facade.console.session import Session
from facade.console.web import Console
from invmesh.inventory.v1 import inventory_service_pb2 as inventory_pb
from invmesh.products.v1 import products_service_pb2 as products_pb

PAGE_SIZE = 50
DONE = {"deleted": "Product deleted."}


def routes(console: Console) -> list[Route]:
    async def show(
        request: Request,
        session: Session,
        call: Caller,
        *,
        error: ApiError | None = None,
        form: Form | None = None,
    ) -> Response:
        """The list; after the new product's form was refused, with the refusal beside its fields."""
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
            "done": DONE.get(request.query_params.get("done", ""), ""),
            "error": error,
            "form": form.values if form is not None else {},
            "may_create": session.may(PRODUCTS["CreateProduct"]),
        }
        return console.render(request, session, "products.html", context, error.status if error else 200)

    async def product_list(request: Request, session: Session, call: Caller) -> Response:
        return await show(request, session, call)

    async def create(request: Request, session: Session, call: Caller, form: Form) -> Response:
        product = products_pb.Product()
        for name in EDITABLE:
            setattr(product, name, form.values.get(name, ""))
        try:
            created = await call(
                stubs(request).products.CreateProduct, products_pb.CreateProductRequest(product=product)
            )
        except Refused as refusal:
            return await show(request, session, call, error=refusal.error, form=form)
        return RedirectResponse(f"{product_path(created.product.id)}?done=created", status_code=303)

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
        Route("/products", console.action(create), methods=["POST"]),
        Route("/low-stock", console.page(low_stock), methods=["GET"]),
    ]
