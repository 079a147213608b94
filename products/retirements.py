"""The relay that tells inventory about deleted products.

A delete commits with a `retired_products` row (see Catalog.delete); this relay calls
InventoryService.DeleteInventoryItem for each row, as the products service itself (a
service token, not the deleting user's), retrying with backoff until inventory has it.
Inventory takes a repeat as a no-op, so delivering twice after a crash is harmless.
"""

from __future__ import annotations

from invmesh.inventory.v1 import inventory_service_pb2, inventory_service_pb2_grpc
from mesh.config import Settings
from mesh.db import Database
from mesh.outbox import OutboxRelay
from mesh.service_token import ServiceToken
from products.models import RetiredProduct


def retirement_relay(
    db: Database,
    inventory: inventory_service_pb2_grpc.InventoryServiceStub,
    identity: ServiceToken,
    settings: Settings,
) -> OutboxRelay[RetiredProduct]:
    async def retire(row: RetiredProduct) -> None:
        request = inventory_service_pb2.DeleteInventoryItemRequest(product_id=row.id)
        await inventory.DeleteInventoryItem(request, metadata=await identity.metadata())

    return OutboxRelay(
        db,
        RetiredProduct,
        retire,
        name="retirement",
        retry_initial=settings.outbox_retry_initial_seconds,
        retry_max=settings.outbox_retry_max_seconds,
        lease=2 * settings.peer_timeout_seconds,
    )
