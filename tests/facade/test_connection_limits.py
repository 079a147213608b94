"""The HTTP server's own limits (facade.limits), on the facade as `invmesh up` serves it: the
size of a request head, the time to send it, and the number of open connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest

from facade.app import Backend, create_app
from invmesh.products.v1 import products_service_pb2
from mesh.config import Settings
from tests.facade.conftest import serving
from tests.facade.test_hostile_http import Answer, assert_all_refused, parse_answer
from tests.test_retries import fake_products

MIB = 1024 * 1024


@pytest.fixture
def limited(settings: Settings) -> Settings:
    return settings.model_copy(update={"facade_head_timeout_seconds": 1.0, "facade_max_connections": 6})


@pytest.fixture
async def facade(limited: Settings) -> AsyncIterator[str]:
    """The facade's base URL; /healthz answers without any backend."""
    async with serving(create_app(limited), settings=limited) as url:
        yield url


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    return await asyncio.open_connection(parts.hostname, parts.port)


async def answer_and_close(reader: asyncio.StreamReader, timeout: float = 5) -> Answer:
    """The answer, once the server has ended the connection."""
    async with asyncio.timeout(timeout):
        data = await reader.read()
    return parse_answer(data)


async def test_a_one_mebibyte_header_gets_431_at_once_while_other_clients_stay_fast(facade: str) -> None:
    reader, writer = await connect(facade)
    started = time.monotonic()
    # The head never ends: an answer proves the server did not wait for (or buffer) all of it.
    writer.write(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * MIB)
    slowest = 0.0
    async with httpx.AsyncClient(base_url=facade, timeout=10) as other:
        for _ in range(20):
            before = time.monotonic()
            assert (await other.get("/healthz")).status_code == 200
            slowest = max(slowest, time.monotonic() - before)
    refused = await answer_and_close(reader)
    writer.close()
    assert_all_refused([refused.problem("a 1 MiB header", 431)])
    assert "32768 byte limit" in str(refused.error["message"])
    assert time.monotonic() - started < 5, "the 431 came late"
    assert slowest < 2, f"a concurrent request took {slowest:.1f} s"


async def test_a_huge_request_line_gets_431(facade: str) -> None:
    reader, writer = await connect(facade)
    writer.write(b"GET /products/" + b"x" * 100_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    refused = await answer_and_close(reader)
    writer.close()
    assert_all_refused([refused.problem("a 100 KB request line", 431)])


async def test_many_headers_that_add_up_past_the_limit_get_431(facade: str) -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (n, b"v" * 100) for n in range(400))  # ~44 KB
    async with httpx.AsyncClient(base_url=facade) as client:
        reader, writer = await connect(facade)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n")
        refused = await answer_and_close(reader)
        writer.close()
        assert_all_refused([refused.problem("400 headers", 431)])
        # Just under the limit, the same request is served.
        under = {f"x-h{n}": "v" * 100 for n in range(250)}  # ~28 KB
        assert (await client.get("/healthz", headers=under)).status_code == 200


async def test_a_head_sent_a_byte_at_a_time_is_answered_408_and_closed(facade: str) -> None:
    reader, writer = await connect(facade)
    started = time.monotonic()
    trickle = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 1000
    answer = asyncio.create_task(answer_and_close(reader, timeout=10))
    try:
        for byte in trickle:
            if answer.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)
        refused = await answer
    except (ConnectionResetError, BrokenPipeError):
        refused = await answer
    finally:
        writer.close()
    assert_all_refused([refused.problem("a head sent byte by byte", 408)])
    assert time.monotonic() - started < 5, "the slow head was not cut off"


async def test_a_connection_that_sends_nothing_is_closed(facade: str) -> None:
    reader, writer = await connect(facade)
    started = time.monotonic()
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()
    assert time.monotonic() - started < 5


async def test_a_slow_backend_is_not_a_slow_head(facade: str) -> None:
    # The head timer stops once the head is complete: a request whose head took almost all of
    # the time is served, and so is a second request on the same connection later.
    async with httpx.AsyncClient(base_url=facade) as client:
        assert (await client.get("/healthz")).status_code == 200
        await asyncio.sleep(1.5)  # longer than the head timeout, shorter than keep-alive (5 s)
        assert (await client.get("/healthz")).status_code == 200


async def test_connections_over_the_limit_get_503_until_one_closes(facade: str) -> None:
    idle = [await connect(facade) for _ in range(6)]
    for _, writer in idle:
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # a head begun: each holds its place
    await asyncio.sleep(0.2)
    async with httpx.AsyncClient(base_url=facade, timeout=5) as client:
        refused = await client.get("/healthz")
    answer = Answer(refused.status_code, dict(refused.headers), refused.content)
    assert answer.status == 503, answer
    assert answer.error["code"] == 14 and refused.headers["retry-after"] == "1"
    for _, writer in idle:
        writer.close()
    async with asyncio.timeout(5):
        while True:
            async with httpx.AsyncClient(base_url=facade, timeout=5) as client:
                if (await client.get("/healthz")).status_code == 200:
                    break
            await asyncio.sleep(0.05)


async def test_a_pipelined_head_waits_while_the_request_ahead_is_answered(limited: Settings) -> None:
    # The head timer (1 s here) of a pipelined, unfinished head runs out while the request ahead
    # (2 s at the backend) is being answered: that answer goes out whole, then the 408.
    products = products_service_pb2.DESCRIPTOR.services_by_name["ProductsService"]
    async with (
        fake_products() as (address, backend, _),
        serving(create_app(limited, {products: Backend("products", address)}), settings=limited) as url,
    ):
        backend.delay = 2
        reader, writer = await connect(url)
        writer.write(b"GET /products/p1 HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHo")
        try:
            async with asyncio.timeout(10):
                first = await reader.readuntil(b"\r\n\r\n")
                assert first.startswith(b"HTTP/1.1 200 "), first
                length = int(parse_answer(first).headers["content-length"])
                assert b'"id":"p1"' in await reader.readexactly(length)
                second = parse_answer(await reader.read())
        finally:
            writer.close()
        assert_all_refused([second.problem("the pipelined head", 408)])
