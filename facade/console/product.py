"""A product's page: its details and edit form, its stock per location, the forms that move
stock (entry or exit, a count confirmed after it shows the change, a transfer, a
reservation), its reservations, and its ledger with the chart of its balance; and the page
that confirms its deletion."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import grpc
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from facade.console.calls import ApiError, Caller, Refused, stubs
from facade.console.forms import Form
from facade.console.ledger import TYPES, LedgerFilter, balances, type_name
from facade.console.session import Session
from facade.console.web import Console
from invmesh.inventory.v1 import inventory_service_pb2 as inventory_pb
from invmesh.inventory.v1 import inventory_service_pb2_grpc
from invmesh.products.v1 import products_service_pb2 as products_pb

INVENTORY = inventory_pb.DESCRIPTOR.services_by_name["InventoryService"].methods_by_name
PRODUCTS = products_pb.DESCRIPTOR.services_by_name["ProductsService"].methods_by_name
LEDGER_ROWS = 50
DIRECTIONS = {"IN": inventory_pb.RecordMovementRequest.IN, "OUT": inventory_pb.RecordMovementRequest.OUT}
EDITABLE = ("sku", "name", "description", "price", "currency")
# What a page says after a form succeeded (`?done=`): fixed texts, so no query is echoed.
DONE = {
    "created": "Product created.",
    "product": "Product saved.",
    "movement": "Movement recorded.",
    "stock": "Stock set.",
    "reorder": "Reorder point saved.",
    "transfer": "Transfer recorded.",
    "reservation": "Reservation created.",
    "confirmed": "Reservation confirmed: its units left the stock.",
    "released": "Reservation released.",
}


def product_path(product_id: str) -> str:
    return f"/console/products/{quote(product_id, safe='')}"


def routes(console: Console) -> list[Route]:
    async def show(
        request: Request,
        session: Session,
        call: Caller,
        *,
        failed: str = "",
        error: ApiError | None = None,
        form: Form | None = None,
        confirm: Mapping[str, Any] | None = None,
    ) -> Response:
        """The page; after a form, with its refusal beside its fields or its confirm step."""
        product_id = request.path_params["product_id"]
        inventory, products = stubs(request).inventory, stubs(request).products
        shown = LedgerFilter.parse(
            request.query_params.get("since", ""),
            request.query_params.get("until", ""),
            request.query_params.get("type", ""),
        )
        page_token = request.query_params.get("page_token", "")
        may_reserve = session.may(INVENTORY["ListReservations"])
        got, stock, (ledger, refused_filter), places, held = await asyncio.gather(
            call(products.GetProduct, products_pb.GetProductRequest(id=product_id)),
            call(inventory.GetInventoryItem, inventory_pb.GetInventoryItemRequest(product_id=product_id)),
            _movements(call, inventory, shown.request(product_id, LEDGER_ROWS, page_token)),
            call(inventory.ListLocations, inventory_pb.ListLocationsRequest(page_size=500)),
            _reservations(call, inventory, product_id) if may_reserve else _none(),
        )
        names = {place.id: place.code for place in places.locations}
        chart = balances(ledger.movements)
        context = {
            "product": got.product,
            "item": stock.item,
            "locations": places.locations,
            "names": names,
            "movements": ledger.movements,
            "older": ledger.next_page_token,
            "page_token": page_token,
            "refused_filter": refused_filter,
            "retired": ledger.retired,
            "feed_cursor": ledger.feed_cursor,
            "filter": shown,
            "types": TYPES,
            "type_name": type_name,
            "state_name": inventory_pb.ReservationState.Name,
            "chart": chart.as_chart(names),
            "chart_rows": list(chart.rows()),
            "chart_labels": [names.get(location, location) for location in chart.locations],
            "reservations": held,
            "path": product_path(product_id),
            "request_id": secrets.token_urlsafe(24),  # a form sent twice records once
            "done": DONE.get(request.query_params.get("done", ""), ""),
            "failed": failed,
            "error": error,
            "form": form.values if form is not None else {},
            "confirm": confirm,
            "may": {
                "edit": session.may(PRODUCTS["UpdateProduct"]),
                "delete": session.may(PRODUCTS["DeleteProduct"]),
                "move": session.may(INVENTORY["RecordMovement"]),
                "set": session.may(INVENTORY["SetStock"]),
                "transfer": session.may(INVENTORY["CreateTransfer"]),
                "reserve": session.may(INVENTORY["CreateReservation"]),
                "reservations": may_reserve,
            },
        }
        shown_error = error or refused_filter
        return console.render(
            request, session, "product.html", context, shown_error.status if shown_error else 200
        )

    async def page(request: Request, session: Session, call: Caller) -> Response:
        return await show(request, session, call)

    def done(request: Request, what: str) -> Response:
        return RedirectResponse(f"{product_path(request.path_params['product_id'])}?done={what}", 303)

    async def refused(
        request: Request, session: Session, call: Caller, form: Form, failed: str, error: ApiError
    ) -> Response:
        return await show(request, session, call, failed=failed, error=error, form=form)

    def unreadable(form: Form) -> ApiError | None:
        """The refusal of a form whose numbers did not read, before any call."""
        if not form.invalid:
            return None
        return ApiError(400, "Some fields are not valid.", "INVALID_VALUE", dict(form.invalid))

    async def submit(
        request: Request,
        session: Session,
        call: Caller,
        form: Form,
        method: grpc.aio.UnaryUnaryMultiCallable[Any, Any],
        message: Message,
        *,
        failed: str,
        succeeded: str = "",
    ) -> Response:
        """Sends a form's request and says it is done (`succeeded`, else `failed`); shows the page
        again with the refusal beside the `failed` form's fields, when the form did not read or
        the service refused it."""
        if (error := unreadable(form)) is not None:
            return await refused(request, session, call, form, failed, error)
        try:
            await call(method, message)
        except Refused as refusal:
            return await refused(request, session, call, form, failed, refusal.error)
        return done(request, succeeded or failed)

    async def edit(request: Request, session: Session, call: Caller, form: Form) -> Response:
        product = products_pb.Product(id=request.path_params["product_id"])
        for name in EDITABLE:
            setattr(product, name, form.values.get(name, ""))
        update = products_pb.UpdateProductRequest(
            product=product, update_mask=field_mask_pb2.FieldMask(paths=EDITABLE)
        )
        return await submit(
            request, session, call, form, stubs(request).products.UpdateProduct, update, failed="product"
        )

    async def record(request: Request, session: Session, call: Caller, form: Form) -> Response:
        movement = inventory_pb.RecordMovementRequest(
            product_id=request.path_params["product_id"],
            quantity=form.integer("quantity"),
            reason=form.text("reason"),
            reference=form.text("reference"),
            request_id=form.text("request_id"),
            location_id=form.text("location_id"),
        )
        if (direction := DIRECTIONS.get(form.text("type"))) is not None:  # else unset: the service names it
            movement.type = direction
        return await submit(
            request, session, call, form, stubs(request).inventory.RecordMovement, movement, failed="movement"
        )

    async def preview_count(request: Request, session: Session, call: Caller, form: Form) -> Response:
        """The confirm step of a count: the stock there now, the count, and the change."""
        counted = form.integer("quantity")
        if (error := unreadable(form)) is not None or not form.text("quantity"):
            error = error or ApiError(
                400, "Enter the counted stock.", "MISSING_QUANTITY", {"quantity": "required"}
            )
            return await refused(request, session, call, form, "stock", error)
        inventory = stubs(request).inventory
        item, places = await asyncio.gather(
            call(
                inventory.GetInventoryItem,
                inventory_pb.GetInventoryItemRequest(product_id=request.path_params["product_id"]),
            ),
            call(inventory.ListLocations, inventory_pb.ListLocationsRequest(page_size=500)),
        )
        # No location is the DEFAULT one, as SetStock reads it.
        default = next((place.id for place in places.locations if place.code == "DEFAULT"), "")
        location_id = form.text("location_id") or default
        on_hand = next((s.on_hand for s in item.item.locations if s.location_id == location_id), 0)
        confirm = {
            "location_id": location_id,
            "before": on_hand,
            "after": counted,
            "change": counted - on_hand,
        }
        return await show(request, session, call, failed="stock", form=form, confirm=confirm)

    async def count(request: Request, session: Session, call: Caller, form: Form) -> Response:
        counted = inventory_pb.SetStockRequest(
            product_id=request.path_params["product_id"],
            quantity=form.integer("quantity"),
            reason=form.text("reason"),
            request_id=form.text("request_id"),
            location_id=form.text("location_id"),
        )
        return await submit(
            request, session, call, form, stubs(request).inventory.SetStock, counted, failed="stock"
        )

    async def reorder(request: Request, session: Session, call: Caller, form: Form) -> Response:
        point = inventory_pb.SetStockRequest(
            product_id=request.path_params["product_id"],
            reorder_point=form.integer("reorder_point"),
            location_id=form.text("location_id"),
        )
        return await submit(
            request, session, call, form, stubs(request).inventory.SetStock, point, failed="reorder"
        )

    async def transfer(request: Request, session: Session, call: Caller, form: Form) -> Response:
        moved = inventory_pb.CreateTransferRequest(
            product_id=request.path_params["product_id"],
            from_location_id=form.text("from_location_id"),
            to_location_id=form.text("to_location_id"),
            quantity=form.integer("quantity"),
            reason=form.text("reason"),
            request_id=form.text("request_id"),
        )
        return await submit(
            request, session, call, form, stubs(request).inventory.CreateTransfer, moved, failed="transfer"
        )

    async def reserve(request: Request, session: Session, call: Caller, form: Form) -> Response:
        held = inventory_pb.CreateReservationRequest(
            product_id=request.path_params["product_id"],
            location_id=form.text("location_id"),
            quantity=form.integer("quantity"),
            ttl_seconds=form.integer("ttl_seconds"),
            reference=form.text("reference"),
            request_id=form.text("request_id"),
        )
        return await submit(
            request,
            session,
            call,
            form,
            stubs(request).inventory.CreateReservation,
            held,
            failed="reservation",
        )

    async def delete_page(request: Request, session: Session, call: Caller) -> Response:
        """The confirm step of a deletion, a page of its own: a GET, which deletes nothing."""
        got = await call(
            stubs(request).products.GetProduct,
            products_pb.GetProductRequest(id=request.path_params["product_id"]),
        )
        context = {"product": got.product, "path": product_path(got.product.id)}
        return console.render(request, session, "delete_product.html", context)

    async def delete(request: Request, session: Session, call: Caller, form: Form) -> Response:
        removed = products_pb.DeleteProductRequest(id=request.path_params["product_id"])
        await call(stubs(request).products.DeleteProduct, removed)  # a refusal is the problem page
        return RedirectResponse("/console/products?done=deleted", status_code=303)

    async def confirm_reservation(request: Request, session: Session, call: Caller, form: Form) -> Response:
        confirmed = inventory_pb.ConfirmReservationRequest(id=request.path_params["reservation_id"])
        return await submit(
            request,
            session,
            call,
            form,
            stubs(request).inventory.ConfirmReservation,
            confirmed,
            failed="settle",
            succeeded="confirmed",
        )

    async def release_reservation(request: Request, session: Session, call: Caller, form: Form) -> Response:
        released = inventory_pb.ReleaseReservationRequest(id=request.path_params["reservation_id"])
        return await submit(
            request,
            session,
            call,
            form,
            stubs(request).inventory.ReleaseReservation,
            released,
            failed="settle",
            succeeded="released",
        )

    base = "/products/{product_id}"
    return [
        Route(base, console.page(page), methods=["GET"]),
        Route(base, console.action(edit), methods=["POST"]),
        Route(f"{base}/movements", console.action(record), methods=["POST"]),
        Route(f"{base}/stock/preview", console.action(preview_count), methods=["POST"]),
        Route(f"{base}/stock", console.action(count), methods=["POST"]),
        Route(f"{base}/reorder-point", console.action(reorder), methods=["POST"]),
        Route(f"{base}/delete", console.page(delete_page), methods=["GET"]),
        Route(f"{base}/delete", console.action(delete), methods=["POST"]),
        Route(f"{base}/transfers", console.action(transfer), methods=["POST"]),
        Route(f"{base}/reservations", console.action(reserve), methods=["POST"]),
        Route(
            base + "/reservations/{reservation_id}/confirm",
            console.action(confirm_reservation),
            methods=["POST"],
        ),
        Route(
            base + "/reservations/{reservation_id}/release",
            console.action(release_reservation),
            methods=["POST"],
        ),
    ]


async def _reservations(
    call: Caller, inventory: inventory_service_pb2_grpc.InventoryServiceStub, product_id: str
) -> list[inventory_pb.Reservation]:
    listed = await call(
        inventory.ListReservations,
        inventory_pb.ListReservationsRequest(product_id=product_id, page_size=LEDGER_ROWS),
    )
    return list(listed.reservations)


async def _movements(
    call: Caller,
    inventory: inventory_service_pb2_grpc.InventoryServiceStub,
    listed: inventory_pb.ListMovementsRequest,
) -> tuple[inventory_pb.ListMovementsResponse, ApiError | None]:
    """A page of the ledger; or none, and the refusal of its filter or page token (a range that
    ends before it starts, a token edited), for the ledger to show where its rows would be."""
    try:
        return await call(inventory.ListMovements, listed), None
    except Refused as refusal:
        if refusal.error.status != 400:  # the product's own refusal (404) is the page's
            raise
        return inventory_pb.ListMovementsResponse(), refusal.error


async def _none() -> list[inventory_pb.Reservation]:
    return []
