"""Server-streaming RPCs through the facade: InventoryService.WatchMovements as a scripted
servicer on a real gRPC server plays it, the facade under uvicorn, and a plain HTTP client
reading the bytes as they come."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from google.protobuf import timestamp_pb2

from facade.app import Backend
from invmesh.inventory.v1 import inventory_service_pb2 as pb
from invmesh.inventory.v1 import inventory_service_pb2_grpc
from mesh.errors import ResourceExhausted
from tests.conftest import free_port, settings_for
from tests.facade.conftest import facade_client

WATCH = "/inventory/movements:watch"
SSE = {"accept": "text/event-stream"}
DEFAULT_TIMEOUT = 0.5  # the facade's deadline for unary calls, which a stream outlives
SENT_AT = timestamp_pb2.Timestamp(seconds=1_767_225_600)  # 2026-01-01T00:00:00Z
MOVEMENT = pb.Movement(id="41", product_id="p1", type=pb.IN, quantity=5, balance_after=5, location_id="l1")
SIGNAL = pb.StockSignal(
    product_id="p1", location_id="l1", on_hand=5, reorder_point=8, movement_id="41", created_at=SENT_AT
)
EVENTS = [
    pb.MovementFeedEvent(cursor="82", movement=MOVEMENT),
    pb.MovementFeedEvent(cursor="83", low_stock=SIGNAL),
    pb.MovementFeedEvent(cursor="83", heartbeat=pb.Heartbeat(sent_at=SENT_AT)),
]
# A movement and its signal in one message, then the heartbeat in one of its own.
MESSAGES = [pb.WatchMovementsResponse(events=EVENTS[:2]), pb.WatchMovementsResponse(events=EVENTS[2:])]
# As the facade prints messages: snake_case, zero values present, enums by name.
MOVEMENT_JSON = {
    "id": "41",
    "product_id": "p1",
    "type": "IN",
    "quantity": 5,
    "balance_after": 5,
    "reason": "",
    "reference": "",
    "actor": "",
    "actor_email": "",
    "request_id": "",
    "location_id": "l1",
    "transfer_id": "",
    "reservation_id": "",
}
SIGNAL_JSON = {
    "product_id": "p1",
    "location_id": "l1",
    "on_hand": 5,
    "reorder_point": 8,
    "movement_id": "41",
    "created_at": "2026-01-01T00:00:00Z",
}
EVENTS_JSON = [
    {"cursor": "82", "movement": MOVEMENT_JSON},
    {"cursor": "83", "low_stock": SIGNAL_JSON},
    {"cursor": "83", "heartbeat": {"sent_at": "2026-01-01T00:00:00Z"}},
]


class ScriptedInventory(inventory_service_pb2_grpc.InventoryServiceServicer):
    """WatchMovements as the request's product_id scripts it:

    - "refused": fails before any event (RESOURCE_EXHAUSTED, TOO_MANY_WATCHERS);
    - "cut": one event, then fails (RESOURCE_EXHAUSTED, SLOW_CONSUMER);
    - "follow": one event, then waits for more until cancelled;
    - "silent": waits, before any event, until cancelled;
    - "empty": a message without events, then waits until cancelled;
    - anything else: MESSAGES, then ends.

    GetInventoryItem answers the product asked for, to tell the routes apart."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.reset()

    def reset(self) -> None:
        self.requests: list[pb.WatchMovementsRequest] = []
        self.metadata: list[dict[str, str | bytes]] = []
        self.cancelled = asyncio.Event()

    async def WatchMovements(
        self, request: pb.WatchMovementsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchMovementsResponse]:
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata() or ()))
        script = request.product_id
        if script == "refused":
            await context.abort_with_status(
                ResourceExhausted("too many watchers", reason="TOO_MANY_WATCHERS").to_status()
            )
        if script in ("cut", "follow"):
            yield pb.WatchMovementsResponse(events=EVENTS[:1])
        if script == "empty":
            yield pb.WatchMovementsResponse()
        if script == "cut":
            await context.abort_with_status(
                ResourceExhausted("the client reads too slowly", reason="SLOW_CONSUMER").to_status()
            )
        if script in ("follow", "silent", "empty"):
            try:
                await asyncio.Future()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        for message in MESSAGES:
            yield message

    async def GetInventoryItem(
        self, request: pb.GetInventoryItemRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetInventoryItemResponse:
        return pb.GetInventoryItemResponse(item=pb.InventoryItem(product_id=request.product_id))


@pytest.fixture(scope="module")
async def served() -> AsyncIterator[ScriptedInventory]:
    servicer = ScriptedInventory(f"127.0.0.1:{free_port()}")
    server = grpc.aio.server()
    inventory_service_pb2_grpc.add_InventoryServiceServicer_to_server(servicer, server)
    server.add_insecure_port(servicer.address)
    await server.start()
    try:
        yield servicer
    finally:
        await server.stop(None)


@pytest.fixture(scope="module")
async def http(
    served: ScriptedInventory,
    tmp_path_factory: pytest.TempPathFactory,
    signing_key: EllipticCurvePrivateKey,
    public_url: str,
) -> AsyncIterator[httpx.AsyncClient]:
    folder = tmp_path_factory.mktemp("streaming")
    settings = settings_for(folder, "smtp://127.0.0.1:1", signing_key, {}, public_url).model_copy(
        update={"facade_timeout_seconds": DEFAULT_TIMEOUT}
    )
    inventory = pb.DESCRIPTOR.services_by_name["InventoryService"]
    async with facade_client(settings, {inventory: Backend("inventory", served.address)}) as client:
        yield client


@pytest.fixture
def watch(served: ScriptedInventory) -> ScriptedInventory:
    served.reset()
    return served


def sse_events(text: str) -> list[dict[str, str]]:
    """The events of an SSE body, each as its fields; a blank line ends each."""
    assert text.endswith("\n\n"), text
    events = []
    for block in text[:-2].split("\n\n"):
        fields = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            assert name not in fields, block
            fields[name] = value
        events.append(fields)
    return events


async def test_server_sent_events_carry_the_id_type_and_json_of_each_event_of_each_message(
    http: httpx.AsyncClient, watch: ScriptedInventory
) -> None:
    response = await http.get(WATCH, headers=SSE)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["vary"] == "Accept"
    assert "content-length" not in response.headers  # streamed (chunked), not buffered
    events = sse_events(response.text)
    assert [(e["id"], e["event"]) for e in events] == [
        ("82", "movement"),
        ("83", "low_stock"),
        ("83", "heartbeat"),
    ]
    assert [json.loads(e["data"]) for e in events] == EVENTS_JSON


@pytest.mark.parametrize(
    "accept", [None, "*/*", "application/json", "application/x-ndjson", "text/event-stream;q=0"]
)
async def test_json_lines_unless_the_client_asks_for_events(
    http: httpx.AsyncClient, watch: ScriptedInventory, accept: str | None
) -> None:
    response = await http.get(WATCH, headers={"accept": accept} if accept else {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["cache-control"] == "no-cache"
    assert response.text.endswith("\n")
    assert [json.loads(line) for line in response.text.splitlines()] == [{"result": e} for e in EVENTS_JSON]


async def test_the_query_fills_the_request_strictly(
    http: httpx.AsyncClient, watch: ScriptedInventory
) -> None:
    response = await http.get(WATCH, params={"after": "40", "product_id": "p1", "locationId": "l1"})
    assert response.status_code == 200, response.text
    assert watch.requests == [pb.WatchMovementsRequest(after="40", product_id="p1", location_id="l1")]

    unknown = await http.get(WATCH, params={"after": "40", "cursor": "41"})
    assert unknown.status_code == 400
    assert unknown.json()["details"][0]["reason"] == "UNKNOWN_FIELD"
    assert unknown.json()["details"][1]["field_violations"][0]["field"] == "cursor"
    twice = await http.get(f"{WATCH}?after=1&after=2")
    assert twice.status_code == 400
    assert twice.json()["details"][0]["reason"] == "INVALID_QUERY"
    assert len(watch.requests) == 1  # refused before any call


async def test_last_event_id_resumes_and_wins_over_the_query(
    http: httpx.AsyncClient, watch: ScriptedInventory
) -> None:
    response = await http.get(WATCH, params={"after": "3"}, headers={**SSE, "last-event-id": "41"})
    assert response.status_code == 200, response.text
    assert watch.requests[-1].after == "41"
    # An empty one (an EventSource that received no id) leaves the query's.
    await http.get(WATCH, params={"after": "3"}, headers={**SSE, "last-event-id": ""})
    assert watch.requests[-1].after == "3"


@pytest.mark.parametrize(
    ("header", "broken"), [("abc", "a match of ^[0-9]*$"), ("4" * 41, "at most 40 characters")]
)
async def test_a_last_event_id_the_field_does_not_take_is_a_400(
    http: httpx.AsyncClient, watch: ScriptedInventory, header: str, broken: str
) -> None:
    response = await http.get(WATCH, headers={**SSE, "last-event-id": header})
    assert response.status_code == 400
    body = response.json()
    assert body["message"] == f"the Last-Event-ID header (which sets 'after') must be {broken}"
    assert body["details"][0]["reason"] == "INVALID_VALUE"
    assert body["details"][1]["field_violations"][0]["field"] == "after"
    assert watch.requests == []


@pytest.mark.parametrize("accept", ["text/event-stream", "application/x-ndjson"])
async def test_an_error_before_the_first_message_is_an_http_error(
    http: httpx.AsyncClient, watch: ScriptedInventory, accept: str
) -> None:
    response = await http.get(WATCH, params={"product_id": "refused"}, headers={"accept": accept})
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert (body["code"], body["message"]) == (8, "too many watchers")
    assert body["details"][0]["reason"] == "TOO_MANY_WATCHERS"


async def test_an_error_after_the_first_message_ends_the_events_with_an_error_event(
    http: httpx.AsyncClient, watch: ScriptedInventory
) -> None:
    response = await http.get(WATCH, params={"product_id": "cut"}, headers=SSE)
    assert response.status_code == 200  # sent with the first event
    first, last = sse_events(response.text)
    assert json.loads(first["data"]) == EVENTS_JSON[0]
    assert set(last) == {"event", "data"} and last["event"] == "error"
    error = json.loads(last["data"])
    assert (error["code"], error["message"]) == (8, "the client reads too slowly")
    assert error["details"][0]["reason"] == "SLOW_CONSUMER"


async def test_an_error_after_the_first_message_ends_the_lines_with_an_error_line(
    http: httpx.AsyncClient, watch: ScriptedInventory
) -> None:
    response = await http.get(WATCH, params={"product_id": "cut"})
    assert response.status_code == 200
    first, last = (json.loads(line) for line in response.text.splitlines())
    assert first == {"result": EVENTS_JSON[0]}
    assert list(last) == ["error"]
    assert last["error"]["code"] == 8 and last["error"]["details"][0]["reason"] == "SLOW_CONSUMER"


async def test_events_arrive_as_they_come_and_a_client_that_leaves_cancels_the_call(
    http: httpx.AsyncClient, watch: ScriptedInventory
) -> None:
    async with http.stream("GET", WATCH, params={"product_id": "follow"}, headers=SSE) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        assert await asyncio.wait_for(anext(lines), 5) == "id: 82"  # while the call goes on
        # Past the facade's deadline for unary calls: a stream has none of its own.
        await asyncio.sleep(2 * DEFAULT_TIMEOUT)
        assert not watch.cancelled.is_set()
    await asyncio.wait_for(watch.cancelled.wait(), 5)


@pytest.mark.parametrize("script", ["silent", "empty"])
async def test_a_client_that_leaves_before_the_first_event_cancels_the_call(
    http: httpx.AsyncClient, watch: ScriptedInventory, script: str
) -> None:
    # A message without events sends nothing, the response head included.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(2 * DEFAULT_TIMEOUT):
            await http.get(WATCH, params={"product_id": script})
    await asyncio.wait_for(watch.cancelled.wait(), 5)


async def test_a_client_may_give_a_stream_a_deadline(
    http: httpx.AsyncClient, watch: ScriptedInventory
) -> None:
    response = await http.get(WATCH, params={"product_id": "follow"}, headers={**SSE, "grpc-timeout": "300m"})
    assert response.status_code == 200
    first, last = sse_events(response.text)
    assert first["event"] == "movement" and last["event"] == "error"
    assert json.loads(last["data"])["details"][0]["reason"] == "BACKEND_TIMEOUT"


async def test_the_token_and_request_id_go_to_the_service(
    http: httpx.AsyncClient, watch: ScriptedInventory
) -> None:
    headers = {**SSE, "authorization": "Bearer a.b.c", "x-request-id": "watch-1"}
    response = await http.get(WATCH, headers=headers)
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "watch-1"
    (metadata,) = watch.metadata
    assert metadata["authorization"] == "Bearer a.b.c"
    assert metadata["x-request-id"] == "watch-1"


async def test_the_verb_route_wins_over_a_variable_segment(
    http: httpx.AsyncClient, watch: ScriptedInventory
) -> None:
    assert (await http.get(WATCH)).headers["content-type"] == "application/x-ndjson"
    assert len(watch.requests) == 1
    # GET /inventory/{product_id} still takes every other segment, a colon included.
    for product_id in ("p1", "movements", "movements:other"):
        item = await http.get(f"/inventory/{product_id}")
        assert item.status_code == 200, item.text
        assert item.json()["product_id"] == product_id
    assert len(watch.requests) == 1


async def test_one_access_log_line_once_the_stream_ends(
    http: httpx.AsyncClient, watch: ScriptedInventory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="facade.access"):
        async with http.stream("GET", WATCH, params={"product_id": "follow"}, headers=SSE) as response:
            lines = response.aiter_lines()  # kept: a generator collected early closes the response
            await anext(lines)
            await asyncio.sleep(0.2)
            assert not [r for r in caplog.records if r.name == "facade.access"]
        await asyncio.wait_for(watch.cancelled.wait(), 5)
        async with asyncio.timeout(5):
            while not (logged := [r for r in caplog.records if r.name == "facade.access"]):
                await asyncio.sleep(0.01)
    (line,) = logged
    assert line.getMessage() == f"GET {WATCH} 200"
    assert 200 <= line.ms < 5000  # type: ignore[attr-defined]  # the stream's time, not its head's
