"""InventoryService over gRPC: translates protos to `Inventory` calls and back, nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypedDict

import grpc
from sqlalchemy import Row

from inventory import stock
from inventory.locations import Fields, Locations
from inventory.models import Location, Movement
from inventory.reservations import Held, Reservations
from inventory.stock import Inventory, LedgerFilter, Level, Recorded, Stock
from inventory.watch import HEARTBEAT, LOW_STOCK, MOVEMENT, FeedEvent, MovementWatch
from invmesh.inventory.v1 import inventory_service_pb2 as pb
from invmesh.inventory.v1 import inventory_service_pb2_grpc
from mesh.db import utcnow
from mesh.interceptors import ServicerContext
from mesh.messages import time_of, timestamp

_SERVICE = pb.DESCRIPTOR.services_by_name["InventoryService"].full_name
_TYPES = {stock.IN: pb.IN, stock.OUT: pb.OUT, stock.ADJUSTMENT: pb.ADJUSTMENT}
# A filter's type: UNSPECIFIED is every type; a number the contract does not know is passed on as
# it is, for the ledger to refuse by name.
_KINDS = {pb.MOVEMENT_TYPE_UNSPECIFIED: "", **{number: kind for kind, number in _TYPES.items()}}
_DIRECTIONS = {pb.RecordMovementRequest.IN: stock.IN, pb.RecordMovementRequest.OUT: stock.OUT}
_STATES = {"ACTIVE": pb.ACTIVE, "CONFIRMED": pb.CONFIRMED, "RELEASED": pb.RELEASED, "EXPIRED": pb.EXPIRED}
_STATE_NAMES = {number: name for name, number in _STATES.items()}


def item_message(stock: Stock) -> pb.InventoryItem:
    return pb.InventoryItem(
        product_id=stock.product_id,
        quantity=stock.quantity,
        updated_at=timestamp(stock.updated_at),
        reserved=stock.reserved,
        available=stock.available,
        locations=[_level_message(level) for level in stock.locations],
        low_stock=stock.low_stock,
    )


def _level_message(level: Level) -> pb.LocationStock:
    return pb.LocationStock(
        location_id=level.location_id,
        on_hand=level.on_hand,
        reserved=level.reserved,
        available=level.available,
        reorder_point=level.reorder_point,
        low_stock=level.low_stock,
    )


def location_message(location: Location) -> pb.Location:
    return pb.Location(
        id=location.id, code=location.code, name=location.name, created_at=timestamp(location.created_at)
    )


def reservation_message(reservation: Held) -> pb.Reservation:
    return pb.Reservation(
        id=reservation.id,
        product_id=reservation.product_id,
        location_id=reservation.location_id,
        quantity=reservation.quantity,
        state=_STATES[reservation.state],
        expires_at=timestamp(reservation.expires_at),
        reference=reservation.reference,
        created_at=timestamp(reservation.created_at),
    )


def movement_message(movement: Movement | Row[Any]) -> pb.Movement:
    return pb.Movement(
        id=str(movement.id),
        product_id=movement.product_id,
        type=_TYPES[movement.type],
        quantity=movement.quantity,
        balance_after=movement.balance_after,
        reason=movement.reason,
        reference=movement.reference,
        actor=movement.actor,
        actor_email=movement.actor_email,
        request_id=movement.request_id or "",
        created_at=timestamp(movement.created_at),
        location_id=movement.location_id,
        transfer_id=movement.transfer_id or "",
        reservation_id=movement.reservation_id or "",
    )


def feed_event(event: FeedEvent) -> bytes:
    """The event as the bytes of a WatchMovementsResponse carrying it alone. Protobuf encodes a
    repeated field as its elements one after another, so events' bytes joined are the message
    carrying them all: each event is made once, for every stream that sends it, and a stream's
    message costs a join, where one built of the events' messages would copy each."""
    return pb.WatchMovementsResponse(events=[_feed_event_message(event)]).SerializeToString()


def _feed_event_message(event: FeedEvent) -> pb.MovementFeedEvent:
    cursor = str(event.position)
    if event.kind == HEARTBEAT:
        return pb.MovementFeedEvent(cursor=cursor, heartbeat=pb.Heartbeat(sent_at=timestamp(utcnow())))
    row = event.row
    assert row is not None
    if event.kind == MOVEMENT:
        return pb.MovementFeedEvent(cursor=cursor, movement=movement_message(row))
    signal = _signal_message(row)
    if event.kind == LOW_STOCK:
        return pb.MovementFeedEvent(cursor=cursor, low_stock=signal)
    return pb.MovementFeedEvent(cursor=cursor, restocked=signal)


def _signal_message(row: Row[Any]) -> pb.StockSignal:
    return pb.StockSignal(
        product_id=row.product_id,
        location_id=row.location_id,
        on_hand=row.balance_after,
        reorder_point=row.reorder_point,
        movement_id=str(row.id),
        created_at=timestamp(row.created_at),
    )


class InventoryServicer(inventory_service_pb2_grpc.InventoryServiceServicer):
    def __init__(
        self,
        inventory: Inventory,
        locations: Locations,
        reservations: Reservations,
        watch: MovementWatch[bytes],
    ) -> None:
        self._inventory = inventory
        self._locations = locations
        self._reservations = reservations
        self._watch = watch

    async def ListInventoryItems(
        self, request: pb.ListInventoryItemsRequest, context: ServicerContext
    ) -> pb.ListInventoryItemsResponse:
        items, token = await self._inventory.list_items(
            page_size=request.page_size,
            page_token=request.page_token,
            location_id=request.location_id,
            low_stock=request.low_stock,
        )
        return pb.ListInventoryItemsResponse(items=[item_message(i) for i in items], next_page_token=token)

    async def GetInventoryItem(
        self, request: pb.GetInventoryItemRequest, context: ServicerContext
    ) -> pb.GetInventoryItemResponse:
        return pb.GetInventoryItemResponse(item=item_message(await self._inventory.get(request.product_id)))

    async def BatchGetInventoryItems(
        self, request: pb.BatchGetInventoryItemsRequest, context: ServicerContext
    ) -> pb.BatchGetInventoryItemsResponse:
        items = await self._inventory.batch_get(request.product_ids)
        return pb.BatchGetInventoryItemsResponse(items=[item_message(i) for i in items])

    async def RecordMovement(
        self, request: pb.RecordMovementRequest, context: ServicerContext
    ) -> pb.RecordMovementResponse:
        recorded = await self._inventory.record(
            product_id=request.product_id,
            kind=_DIRECTIONS.get(request.type, ""),
            quantity=request.quantity,
            reason=request.reason,
            reference=request.reference,
            request_id=request.request_id,
            location_id=request.location_id,
        )
        return pb.RecordMovementResponse(**_recorded(recorded))

    async def SetStock(self, request: pb.SetStockRequest, context: ServicerContext) -> pb.SetStockResponse:
        recorded = await self._inventory.set_stock(
            product_id=request.product_id,
            quantity=request.quantity if request.HasField("quantity") else None,
            reorder_point=request.reorder_point if request.HasField("reorder_point") else None,
            reason=request.reason,
            request_id=request.request_id,
            location_id=request.location_id,
        )
        return pb.SetStockResponse(**_recorded(recorded))

    async def ListMovements(
        self, request: pb.ListMovementsRequest, context: ServicerContext
    ) -> pb.ListMovementsResponse:
        ledger = await self._inventory.movements(
            product_id=request.product_id,
            page_size=request.page_size,
            page_token=request.page_token,
            only=LedgerFilter(
                kind=_KINDS.get(request.type, str(request.type)),
                location_id=request.location_id,
                start=time_of(request, "start_time"),
                end=time_of(request, "end_time"),
            ),
        )
        return pb.ListMovementsResponse(
            movements=[movement_message(m) for m in ledger.movements],
            next_page_token=ledger.next_page_token,
            retired=ledger.retired,
            feed_cursor=str(ledger.feed_cursor),
        )

    async def WatchMovements(  # type: ignore[override]  # bytes, which add_to_server sends as they are
        self, request: pb.WatchMovementsRequest, context: ServicerContext
    ) -> AsyncIterator[bytes]:
        """Each message the events ready at once, as feed_event made them, joined."""
        ready = self._watch.follow(
            request.after, product_id=request.product_id, location_id=request.location_id
        )
        async for events in ready:
            yield b"".join(events)

    async def DeleteInventoryItem(
        self, request: pb.DeleteInventoryItemRequest, context: ServicerContext
    ) -> pb.DeleteInventoryItemResponse:
        await self._inventory.retire(request.product_id)
        return pb.DeleteInventoryItemResponse()

    async def CreateTransfer(
        self, request: pb.CreateTransferRequest, context: ServicerContext
    ) -> pb.CreateTransferResponse:
        transferred = await self._inventory.transfer(
            product_id=request.product_id,
            from_location_id=request.from_location_id,
            to_location_id=request.to_location_id,
            quantity=request.quantity,
            reason=request.reason,
            request_id=request.request_id,
        )
        return pb.CreateTransferResponse(
            transfer_id=transferred.transfer_id,
            outgoing=movement_message(transferred.outgoing),
            incoming=movement_message(transferred.incoming),
            item=item_message(transferred.stock),
        )

    async def ListLocations(
        self, request: pb.ListLocationsRequest, context: ServicerContext
    ) -> pb.ListLocationsResponse:
        locations, token = await self._locations.list(
            page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListLocationsResponse(
            locations=[location_message(location) for location in locations], next_page_token=token
        )

    async def GetLocation(
        self, request: pb.GetLocationRequest, context: ServicerContext
    ) -> pb.GetLocationResponse:
        return pb.GetLocationResponse(location=location_message(await self._locations.get(request.id)))

    async def CreateLocation(
        self, request: pb.CreateLocationRequest, context: ServicerContext
    ) -> pb.CreateLocationResponse:
        location = await self._locations.create(_fields(request.location))
        return pb.CreateLocationResponse(location=location_message(location))

    async def UpdateLocation(
        self, request: pb.UpdateLocationRequest, context: ServicerContext
    ) -> pb.UpdateLocationResponse:
        mask = list(request.update_mask.paths) if request.HasField("update_mask") else None
        location = await self._locations.update(request.location.id, _fields(request.location), mask=mask)
        return pb.UpdateLocationResponse(location=location_message(location))

    async def DeleteLocation(
        self, request: pb.DeleteLocationRequest, context: ServicerContext
    ) -> pb.DeleteLocationResponse:
        await self._locations.delete(request.id)
        return pb.DeleteLocationResponse()

    async def CreateReservation(
        self, request: pb.CreateReservationRequest, context: ServicerContext
    ) -> pb.CreateReservationResponse:
        reservation = await self._reservations.create(
            product_id=request.product_id,
            location_id=request.location_id,
            quantity=request.quantity,
            ttl_seconds=request.ttl_seconds,
            reference=request.reference,
            request_id=request.request_id,
        )
        return pb.CreateReservationResponse(reservation=reservation_message(reservation))

    async def GetReservation(
        self, request: pb.GetReservationRequest, context: ServicerContext
    ) -> pb.GetReservationResponse:
        return pb.GetReservationResponse(
            reservation=reservation_message(await self._reservations.get(request.id))
        )

    async def ListReservations(
        self, request: pb.ListReservationsRequest, context: ServicerContext
    ) -> pb.ListReservationsResponse:
        reservations, token = await self._reservations.list(
            product_id=request.product_id,
            state=_STATE_NAMES.get(request.state, ""),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListReservationsResponse(
            reservations=[reservation_message(r) for r in reservations], next_page_token=token
        )

    async def ConfirmReservation(
        self, request: pb.ConfirmReservationRequest, context: ServicerContext
    ) -> pb.ConfirmReservationResponse:
        confirmed = await self._reservations.confirm(request.id)
        return pb.ConfirmReservationResponse(
            reservation=reservation_message(confirmed.reservation),
            movement=movement_message(confirmed.movement),
        )

    async def ReleaseReservation(
        self, request: pb.ReleaseReservationRequest, context: ServicerContext
    ) -> pb.ReleaseReservationResponse:
        reservation = await self._reservations.release(request.id)
        return pb.ReleaseReservationResponse(reservation=reservation_message(reservation))


def _fields(location: pb.Location) -> Fields:
    return Fields(code=location.code, name=location.name)


class _RecordedFields(TypedDict):
    movement: pb.Movement | None
    item: pb.InventoryItem


def _recorded(recorded: Recorded) -> _RecordedFields:
    movement = recorded.movement
    return {
        "movement": movement_message(movement) if movement is not None else None,
        "item": item_message(recorded.stock),
    }


def add_to_server(servicer: InventoryServicer, server: grpc.aio.Server) -> None:
    """Adds the servicer as add_InventoryServiceServicer_to_server does, but WatchMovements sends
    the bytes its method yields as they are (no response serializer). Registered again, the
    method's new handler replaces the first, and wins over the generic handler of the service."""
    inventory_service_pb2_grpc.add_InventoryServiceServicer_to_server(servicer, server)
    watch: grpc.RpcMethodHandler[pb.WatchMovementsRequest, bytes] = grpc.unary_stream_rpc_method_handler(
        servicer.WatchMovements, request_deserializer=pb.WatchMovementsRequest.FromString
    )
    server.add_registered_method_handlers(_SERVICE, {"WatchMovements": watch})
