"""The movement feed over REST, through the facade in front of the real mesh (issue 17): Server-
Sent Events that a plain HTTP client reads as `curl -N` would, resumed with Last-Event-ID, JSON
lines, and the low-stock signals a reorder point makes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from tests.facade.conftest import Web
from tests.facade.test_stock_locations import product_with_stock

WATCH = "/inventory/movements:watch"


async def sse(lines: AsyncIterator[str], count: int) -> list[dict[str, str]]:
    """The next `count` events of an SSE body, heartbeats left out, each as its fields."""
    found: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    async with asyncio.timeout(10):
        async for line in lines:
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if fields.get("event") != "heartbeat":
                found.append(fields)
                if len(found) == count:
                    return found
            fields = {}
    raise AssertionError(f"the stream ended after {found}")


async def test_movements_and_low_stock_signals_stream_as_server_sent_events_and_resume(web: Web) -> None:
    http, staff = web.http, web.staff
    pid = await product_with_stock(web, "SSE-1", 10)
    setting = await http.put(f"/inventory/{pid}", headers=staff, json={"reorder_point": 4})
    assert setting.status_code == 200, setting.text
    headers = staff | {"accept": "text/event-stream"}
    async with http.stream(
        "GET", WATCH, params={"after": "0", "product_id": pid}, headers=headers
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        (first,) = await sse(lines, 1)
        assert first["event"] == "movement" and json.loads(first["data"])["movement"]["quantity"] == 10
        out = await http.post(
            "/inventory", headers=staff, json={"product_id": pid, "type": "OUT", "quantity": 7}
        )
        assert out.status_code == 201, out.text
        moved, low = await sse(lines, 2)
    assert moved["event"] == "movement", moved
    assert json.loads(moved["data"])["movement"]["balance_after"] == 3
    signal = json.loads(low["data"])["low_stock"]
    assert low["event"] == "low_stock" and (signal["on_hand"], signal["reorder_point"]) == (3, 4)
    assert int(first["id"]) < int(moved["id"]) < int(low["id"])

    back = await http.post("/inventory", headers=staff, json={"product_id": pid, "type": "IN", "quantity": 5})
    assert back.status_code == 201, back.text
    # An EventSource reconnects with Last-Event-ID: the stream goes on right after it.
    resumed_headers = headers | {"last-event-id": moved["id"]}
    async with http.stream("GET", WATCH, params={"product_id": pid}, headers=resumed_headers) as response:
        again = await sse(response.aiter_lines(), 3)
    assert [e["event"] for e in again] == ["low_stock", "movement", "restocked"]
    assert again[0]["id"] == low["id"]


async def test_json_lines_for_clients_that_ask_for_them(web: Web) -> None:
    pid = await product_with_stock(web, "NDJSON-1", 2)
    headers = web.staff | {"accept": "application/x-ndjson"}
    async with web.http.stream(
        "GET", WATCH, params={"after": "0", "product_id": pid}, headers=headers
    ) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        async with asyncio.timeout(10):
            async for line in response.aiter_lines():
                result = json.loads(line)["result"]
                if "heartbeat" not in result:
                    assert result["movement"]["quantity"] == 2 and result["cursor"]
                    break


async def test_a_bad_cursor_is_a_400_and_a_missing_token_a_401(web: Web) -> None:
    bad = await web.http.get(WATCH, params={"after": "x"}, headers=web.staff)
    assert bad.status_code == 400, bad.text
    anonymous = await web.http.get(WATCH, params={"after": "0"})
    assert anonymous.status_code == 401, anonymous.text
