"""A WatchMovements stream outlives no access token: it ends with UNAUTHENTICATED once its token
has expired, and invmesh.client resumes it with a renewed one (issue 17)."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from invmesh import client
from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from invmesh.inventory.v1 import inventory_service_pb2 as pb
from mesh.config import Settings
from tests.conftest import Mesh
from tests.rpc import error_reason, expect_error
from tests.test_inventory import move, new_product

TOKEN_SECONDS = 3


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Below the setting's floor on purpose (model_copy does not validate): a test cannot wait 30 s.
    return settings.model_copy(
        update={"access_token_ttl_seconds": TOKEN_SECONDS, "watch_heartbeat_seconds": 0.2}
    )


async def test_a_stream_ends_once_its_token_expires(mesh: Mesh) -> None:
    stream = mesh.inventory.WatchMovements(pb.WatchMovementsRequest(), metadata=mesh.as_user())
    beats = 0

    async def follow() -> None:
        nonlocal beats
        async with asyncio.timeout(TOKEN_SECONDS + 10):
            async for _ in stream:
                beats += 1

    error = await expect_error(follow(), grpc.StatusCode.UNAUTHENTICATED)
    assert error_reason(error) == "TOKEN_EXPIRED"
    assert beats > 2  # it served until then


async def test_the_client_follows_on_past_its_tokens_expiry_with_a_renewed_one(mesh: Mesh) -> None:
    """invmesh.client renews a user's token before it expires, and resumes the stream the
    old token's expiry ended from its cursor, so the consumer sees every movement."""
    pid = await new_product(mesh)
    login = client.UserLogin("staff@example.com", "mesh-password")
    seen: list[int] = []
    async with client.connect(mesh.settings, login=login) as mesh_client:

        async def consume() -> None:
            async for event in mesh_client.follow_movements(after="0", product_id=pid):
                seen.append(event.movement.balance_after)

        consumer = asyncio.create_task(consume())
        try:
            # Past the first token's life and the verifier's skew (5 s): its stream has ended.
            for _ in range(2 * (TOKEN_SECONDS + 6)):
                await mesh.inventory.RecordMovement(
                    move(pid, pb.IN, 1), metadata=mesh.as_user(await fresh(mesh))
                )
                await asyncio.sleep(0.5)
            # A consumer that died says why; one that lost a movement shows what it saw.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(15):
                    while len(seen) < 2 * (TOKEN_SECONDS + 6) and not consumer.done():
                        await asyncio.sleep(0.05)
            if consumer.done():
                consumer.result()
        finally:
            consumer.cancel()
    assert seen == list(range(1, 2 * (TOKEN_SECONDS + 6) + 1))


async def fresh(mesh: Mesh) -> str:
    """A new access token of the staff user: the fixture's expires within the test."""
    login = await mesh.auth.Login(auth_pb.LoginRequest(email="staff@example.com", password="mesh-password"))
    return login.access_token
