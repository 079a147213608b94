"""The facade, served by uvicorn on an ephemeral port, in front of real services."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from google.protobuf.descriptor import ServiceDescriptor
from starlette.types import ASGIApp

from facade.app import Backend, create_app
from facade.server import bind, uvicorn_config
from mesh.config import Settings
from tests.conftest import Mesh


class PromptServer(uvicorn.Server):
    """uvicorn's server, which stops when `stop` is called rather than at its next tick, up
    to 0.1 s later: a test serves the facade, and stops it, many times over."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self.should_exit = True
        self._stopping.set()

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):  # the ticks keep their work (signals, the Date header)
            counter = (counter + 1) % 864_000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.1)


@asynccontextmanager
async def serving(app: ASGIApp, port: int = 0, settings: Settings | None = None) -> AsyncIterator[str]:
    """Serves `app` over real HTTP on `port` (a free one by default); yields its base URL.
    With `settings`, uvicorn is configured as `invmesh up` configures it (facade.server)."""
    (sock,) = bind("127.0.0.1", [port])
    config = (
        uvicorn_config(app, settings)
        if settings is not None
        else uvicorn.Config(app, lifespan="on", log_config=None, access_log=False)
    )
    server = PromptServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.stop()
        await task
        sock.close()


@asynccontextmanager
async def facade_client(
    settings: Settings, backends: Mapping[ServiceDescriptor, Backend] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serving(create_app(settings, backends), settings=settings) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        yield client


@dataclass
class Web:
    """The facade in front of the mesh, with an HTTP client and the mesh's users."""

    http: httpx.AsyncClient
    mesh: Mesh

    @property
    def staff(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.mesh.verified_token}"}

    @property
    def visitor(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.mesh.unverified_token}"}


@pytest.fixture
async def web(mesh: Mesh) -> AsyncIterator[Web]:
    """The facade on the port of PUBLIC_URL (`public_url`), so mail links lead to it."""
    port = urlsplit(mesh.settings.public_url).port
    assert port is not None
    async with (
        serving(create_app(mesh.settings), port, mesh.settings) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        yield Web(http, mesh)
