"""A WatchMovements stream outlives no access token: it ends with UNAUTHENTICATED once its token
has expired, and the client resumes with a fresh one (issue 17)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from invmesh.inventory.v1 import inventory_service_pb2 as pb
from mesh.config import Settings
from tests.conftest import Mesh
from tests.rpc import error_reason, expect_error

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
