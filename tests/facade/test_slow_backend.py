"""A backend that answers too slowly, or accepts connections and never answers: the facade gives
up at its deadline with a 504, the backend stops working on calls nobody waits for any more,
and once it is quick again calls succeed."""

from __future__ import annotations

import asyncio
import time

from facade.app import Backend
from invmesh.products.v1 import products_service_pb2
from mesh.config import Settings
from tests.facade.conftest import facade_client
from tests.test_retries import fake_products

DEADLINE = 0.5


async def test_a_slow_backend_is_a_504_at_the_deadline_and_piles_nothing_up(settings: Settings) -> None:
    settings = settings.model_copy(update={"facade_timeout_seconds": DEADLINE})
    products = products_service_pb2.DESCRIPTOR.services_by_name["ProductsService"]
    async with (
        fake_products() as (address, backend, _),
        facade_client(settings, {products: Backend("products", address)}) as http,
    ):
        assert (await http.get("/products/p1")).status_code == 200

        backend.delay = 60
        started = time.monotonic()
        answers = await asyncio.gather(*(http.get("/products/p1") for _ in range(10)))
        assert time.monotonic() - started < 3 * DEADLINE  # at the deadline, not at the backend's pace
        assert {a.status_code for a in answers} == {504}, [a.text for a in answers]
        assert answers[0].json()["message"] == "the products service did not answer in time"
        # The deadline travels with each call: the backend's handlers are cancelled, not left running.
        async with asyncio.timeout(3 * DEADLINE):
            while backend.in_flight:
                await asyncio.sleep(0.01)

        backend.delay = 0
        recovered = await http.get("/products/p1")
        assert recovered.status_code == 200, recovered.text
        assert recovered.json()["id"] == "p1"
        assert backend.attempts["GetProduct"] == 12  # a deadline is not retried


async def test_a_backend_that_accepts_and_never_answers_is_a_504_at_the_deadline(settings: Settings) -> None:
    settings = settings.model_copy(update={"facade_timeout_seconds": DEADLINE})
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # no HTTP/2 handshake, no answer, no close

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    products = products_service_pb2.DESCRIPTOR.services_by_name["ProductsService"]
    try:
        async with facade_client(settings, {products: Backend("products", f"127.0.0.1:{port}")}) as http:
            for _ in range(3):
                started = time.monotonic()
                answer = await http.get("/products/p1")
                assert answer.status_code == 504, answer.text
                assert time.monotonic() - started < 3 * DEADLINE
    finally:
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()
