"""InventoryService over gRPC: translates protos to `Inventory` calls and back, nothing more."""

from __future__ import annotations

from typing import TypedDict

from inventory import stock
from inventory.models import Movement
from inventory.stock import Inventory, Recorded, Stock
from invmesh.inventory.v1 import inventory_service_pb2 as pb
from invmesh.inventory.v1 import inventory_service_pb2_grpc
from mesh.interceptors import ServicerContext
from mesh.messages import timestamp

_TYPES = {stock.IN: pb.IN, stock.OUT: pb.OUT, stock.ADJUSTMENT: pb.ADJUSTMENT}
_DIRECTIONS = {pb.RecordMovementRequest.IN: stock.IN, pb.RecordMovementRequest.OUT: stock.OUT}


def item_message(stock: Stock) -> pb.InventoryItem:
    return pb.InventoryItem(
        product_id=stock.product_id,
        quantity=stock.quantity,
        updated_at=timestamp(stock.updated_at),
    )


def movement_message(movement: Movement) -> pb.Movement:
    return pb.Movement(
        id=str(movement.id),
        product_id=movement.product_id,
        type=_TYPES[movement.type],
        quantity=movement.quantity,
        balance_after=movement.balance_after,
        reason=movement.reason,
        reference=movement.reference,
        actor=movement.actor,
        request_id=movement.request_id or "",
        created_at=timestamp(movement.created_at),
    )


class InventoryServicer(inventory_service_pb2_grpc.InventoryServiceServicer):
    def __init__(self, inventory: Inventory) -> None:
        self._inventory = inventory

    async def ListInventoryItems(
        self, request: pb.ListInventoryItemsRequest, context: ServicerContext
    ) -> pb.ListInventoryItemsResponse:
        items, token = await self._inventory.list_items(
            page_size=request.page_size, page_token=request.page_token
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
        )
        return pb.RecordMovementResponse(**_recorded(recorded))

    async def SetStock(self, request: pb.SetStockRequest, context: ServicerContext) -> pb.SetStockResponse:
        recorded = await self._inventory.set_count(
            product_id=request.product_id,
            quantity=request.quantity,
            reason=request.reason,
            request_id=request.request_id,
        )
        return pb.SetStockResponse(**_recorded(recorded))

    async def ListMovements(
        self, request: pb.ListMovementsRequest, context: ServicerContext
    ) -> pb.ListMovementsResponse:
        ledger = await self._inventory.movements(
            product_id=request.product_id, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListMovementsResponse(
            movements=[movement_message(m) for m in ledger.movements],
            next_page_token=ledger.next_page_token,
            retired=ledger.retired,
        )

    async def DeleteInventoryItem(
        self, request: pb.DeleteInventoryItemRequest, context: ServicerContext
    ) -> pb.DeleteInventoryItemResponse:
        await self._inventory.retire(request.product_id)
        return pb.DeleteInventoryItemResponse()


class _RecordedFields(TypedDict):
    movement: pb.Movement
    item: pb.InventoryItem


def _recorded(recorded: Recorded) -> _RecordedFields:
    return {"movement": movement_message(recorded.movement), "item": item_message(recorded.stock)}
