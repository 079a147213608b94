"""The ledger rules of inventory (inventory/stock.py), as properties of any sequence of requests.

Hypothesis draws sequences of requests (IN q, OUT q, SET q, each with or without a request_id,
retries of an earlier request, and reuses of an earlier request_id with another body) and sends
each one, over real gRPC, to the inventory service of one mesh (auth, products and inventory
running for the whole test); each sequence moves a product of its own, and its request_ids are
its own. A model of the rules predicts every answer:

* the balance is never negative: an OUT beyond the stock is FAILED_PRECONDITION
  INSUFFICIENT_STOCK and writes nothing (a request_id it carried stays unused);
* a retry (same request_id, same body) answers exactly what the first one did, balance as it was;
* a request_id reused with another body is ALREADY_EXISTS REQUEST_ID_REUSED and writes nothing;
* every other request moves the balance as the model does, and the ledger holds exactly the
  model's movements, oldest first: each balance_after is the one before plus its quantity, from
  0, and the last is the product's balance.

Hypothesis runs in a worker thread, and each sequence runs on the test's event loop (where the
services serve), so one mesh serves every example.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from invmesh.inventory.v1 import inventory_service_pb2 as pb
from invmesh.products.v1 import products_service_pb2 as products_pb
from tests.conftest import Mesh
from tests.rpc import error_reason

TYPES = {"IN": pb.IN, "OUT": pb.OUT, "SET": pb.ADJUSTMENT}
_sequences = itertools.count()


@dataclass(frozen=True)
class Request:
    kind: str  # IN, OUT or SET
    quantity: int
    reason: str
    request_id: str | None  # unique within a sequence; None sends none

    @property
    def body(self) -> tuple[object, ...]:
        """What a retry must repeat for the service to take it as the same request."""
        return (self.kind, self.quantity, self.reason)


@st.composite
def sequences(draw: st.DrawFn) -> list[Request]:
    requests: list[Request] = []
    for index in range(draw(st.integers(1, 12))):
        with_ids = [r for r in requests if r.request_id]
        step = draw(st.sampled_from(["new", "new", "new", "retry", "reuse"] if with_ids else ["new"]))
        if step == "retry":
            requests.append(draw(st.sampled_from(with_ids)))
            continue
        kind = draw(st.sampled_from(sorted(TYPES)))
        quantity = draw(st.integers(0 if kind == "SET" else 1, 30))
        reason = draw(st.sampled_from(["", "delivery", "count"]))
        request_id = draw(st.one_of(st.none(), st.just(f"r{index}")))
        if step == "reuse":  # an earlier request_id with a body of its own (maybe the same one)
            request_id = draw(st.sampled_from(with_ids)).request_id
        requests.append(Request(kind, quantity, reason, request_id))
    return requests


Reply = pb.RecordMovementResponse | pb.SetStockResponse


@dataclass
class Model:
    """What the rules say the service holds and answers."""

    balance: int = 0
    ledger: list[tuple[int, int, int]] = field(default_factory=list)  # (type, quantity, balance_after)
    first: dict[str, tuple[tuple[object, ...], Reply]] = field(default_factory=dict)  # request_id → answer


async def _send(mesh: Mesh, product_id: str, request: Request, prefix: str) -> Any:
    request_id = f"{prefix}-{request.request_id}" if request.request_id else ""
    if request.kind == "SET":
        message = pb.SetStockRequest(
            product_id=product_id, quantity=request.quantity, reason=request.reason, request_id=request_id
        )
        return await mesh.inventory.SetStock(message, metadata=mesh.as_user())
    movement = pb.RecordMovementRequest(
        product_id=product_id,
        type=request.kind,  # "IN" or "OUT": the names are the JSON ones
        quantity=request.quantity,
        reason=request.reason,
        request_id=request_id,
    )
    return await mesh.inventory.RecordMovement(movement, metadata=mesh.as_user())


async def _refused(call: Coroutine[Any, Any, Any]) -> grpc.aio.AioRpcError | None:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    return None


async def run_sequence(mesh: Mesh, requests: list[Request]) -> None:
    number = next(_sequences)
    prefix = f"s{number}"
    product = products_pb.Product(sku=f"LEDGER-{number}", name=f"Ledger {number}", price="1.00")
    created = await mesh.products.CreateProduct(
        products_pb.CreateProductRequest(product=product), metadata=mesh.as_user()
    )
    product_id = created.product.id
    model = Model()
    for step, request in enumerate(requests):
        where = f"step {step}: {request}"
        known = model.first.get(request.request_id) if request.request_id else None
        if known is not None:
            body, reply = known
            if body == request.body:  # a retry: the first answer, whatever happened since
                assert await _send(mesh, product_id, request, prefix) == reply, where
            else:
                error = await _refused(_send(mesh, product_id, request, prefix))
                assert error is not None and error.code() == grpc.StatusCode.ALREADY_EXISTS, where
                assert error_reason(error) == "REQUEST_ID_REUSED", where
            continue
        if request.kind == "OUT" and request.quantity > model.balance:
            error = await _refused(_send(mesh, product_id, request, prefix))
            assert error is not None and error.code() == grpc.StatusCode.FAILED_PRECONDITION, where
            assert error_reason(error) == "INSUFFICIENT_STOCK", where
            continue
        delta = {"IN": request.quantity, "OUT": -request.quantity}.get(
            request.kind, request.quantity - model.balance
        )
        reply = await _send(mesh, product_id, request, prefix)
        model.balance += delta
        model.ledger.append((TYPES[request.kind], delta, model.balance))
        assert (reply.movement.type, reply.movement.quantity) == (TYPES[request.kind], delta), where
        assert reply.movement.balance_after == reply.item.quantity == model.balance, where
        if request.request_id:
            model.first[request.request_id] = (request.body, reply)

    movements = await _ledger(mesh, product_id)
    assert [(m.type, m.quantity, m.balance_after) for m in movements] == model.ledger
    balance = 0
    for movement in movements:
        assert movement.balance_after == balance + movement.quantity >= 0
        balance = movement.balance_after
    item = await mesh.inventory.GetInventoryItem(
        pb.GetInventoryItemRequest(product_id=product_id), metadata=mesh.as_user()
    )
    assert item.item.quantity == balance == model.balance


async def _ledger(mesh: Mesh, product_id: str) -> list[pb.Movement]:
    """The product's movements, oldest first."""
    movements: list[pb.Movement] = []
    token = ""
    while True:
        page = await mesh.inventory.ListMovements(
            pb.ListMovementsRequest(product_id=product_id, page_size=100, page_token=token),
            metadata=mesh.as_user(),
        )
        movements.extend(page.movements)
        if not (token := page.next_page_token):
            return movements[::-1]  # the service lists newest first


async def test_any_sequence_of_requests_keeps_the_ledger_rules(mesh: Mesh) -> None:
    loop = asyncio.get_running_loop()

    @settings(derandomize=True, database=None, deadline=None, max_examples=40)
    @given(sequences())
    def each_sequence(requests: list[Request]) -> None:
        asyncio.run_coroutine_threadsafe(run_sequence(mesh, requests), loop).result(timeout=60)

    await asyncio.to_thread(each_sequence)
