"""invmesh.client: logins whose tokens are renewed, the feed followed across streams that end
(against servers of the test's own that script what the services would do), the real mesh
through the client, and the complete consumer of docs/clients.md."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from inventory.models import DEFAULT_LOCATION_ID
from invmesh import client
from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from invmesh.auth.v1 import auth_service_pb2_grpc
from invmesh.inventory.v1 import inventory_service_pb2 as pb
from invmesh.inventory.v1 import inventory_service_pb2_grpc
from mesh.config import Settings, load_settings
from mesh.interceptors import ServicerContext, metadata_value
from tests.conftest import Mesh, free_port
from tests.rpc import expect_error
from tests.test_inventory import move, new_product

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Stream:
    """One WatchMovements stream as the fake serves it: a message of each list of events, then
    this end (None: the server closes it; "hang": it stays open)."""

    messages: list[list[pb.MovementFeedEvent]]
    end: grpc.StatusCode | str | None = "hang"


def movement(cursor: str) -> pb.MovementFeedEvent:
    return pb.MovementFeedEvent(cursor=cursor, movement=pb.Movement(id=f"m{cursor}"))


@dataclass
class FakeInventory(inventory_service_pb2_grpc.InventoryServiceServicer):
    """Serves the scripted `streams` one per WatchMovements call (the last one again once they
    run out), and answers GetInventoryItem; records each call's request and token."""

    streams: list[Stream] = field(default_factory=list)
    watched: list[tuple[float, pb.WatchMovementsRequest]] = field(default_factory=list)
    tokens: list[str | None] = field(default_factory=list)

    async def WatchMovements(
        self, request: pb.WatchMovementsRequest, context: ServicerContext
    ) -> AsyncIterator[pb.WatchMovementsResponse]:
        self.watched.append((time.monotonic(), request))
        self.tokens.append(metadata_value(context, "authorization"))
        stream = self.streams[min(len(self.watched), len(self.streams)) - 1]
        for events in stream.messages:
            yield pb.WatchMovementsResponse(events=events)
        if stream.end == "hang":
            await asyncio.Event().wait()
        elif isinstance(stream.end, grpc.StatusCode):
            await context.abort(stream.end, "scripted end")

    async def GetInventoryItem(
        self, request: pb.GetInventoryItemRequest, context: ServicerContext
    ) -> pb.GetInventoryItemResponse:
        self.tokens.append(metadata_value(context, "authorization"))
        return pb.GetInventoryItemResponse(item=pb.InventoryItem(product_id=request.product_id))


@dataclass
class FakeAuth(auth_service_pb2_grpc.AuthServiceServicer):
    """Issues numbered tokens that live `lifetime` seconds; refuses refresh tokens while
    `refresh_refused`; records each call."""

    lifetime: int = 1
    refresh_refused: bool = False
    calls: list[str] = field(default_factory=list)

    def _issued(self) -> tuple[str, str]:
        """Tokens numbered by the call that issues them."""
        return f"access-{len(self.calls)}", f"refresh-{len(self.calls)}"

    async def Login(self, request: auth_pb.LoginRequest, context: ServicerContext) -> auth_pb.LoginResponse:
        self.calls.append(f"Login {request.email}")
        if request.password != "right":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid email or password")
        access, refresh = self._issued()
        return auth_pb.LoginResponse(access_token=access, refresh_token=refresh, expires_in=self.lifetime)

    async def RefreshToken(
        self, request: auth_pb.RefreshTokenRequest, context: ServicerContext
    ) -> auth_pb.RefreshTokenResponse:
        self.calls.append(f"RefreshToken {request.refresh_token}")
        if self.refresh_refused:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "refresh token spent")
        access, refresh = self._issued()
        return auth_pb.RefreshTokenResponse(
            access_token=access, refresh_token=refresh, expires_in=self.lifetime
        )


@contextlib.asynccontextmanager
async def serving(
    add: Callable[[grpc.aio.Server], None],
) -> AsyncIterator[str]:
    """A gRPC server with what `add` puts on it, on a free port; its address."""
    server = grpc.aio.server()
    add(server)
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    await server.start()
    try:
        yield address
    finally:
        await server.stop(None)


@pytest.fixture
async def inventory() -> AsyncIterator[tuple[FakeInventory, Settings]]:
    """A fake inventory, and settings that name it."""
    fake = FakeInventory()
    async with serving(
        lambda server: inventory_service_pb2_grpc.add_InventoryServiceServicer_to_server(fake, server)
    ) as address:
        yield fake, load_settings(inventory_addr=address)


async def followed(
    mesh: client.MeshClient, count: int, *, after: str = "0", within: float = 10
) -> list[pb.MovementFeedEvent]:
    """The first `count` events `follow_movements` yields, within `within` seconds."""
    events = []
    async with asyncio.timeout(within), contextlib.aclosing(mesh.follow_movements(after=after)) as feed:
        async for event in feed:
            events.append(event)
            if len(events) == count:
                break
    return events


async def test_the_feed_resumes_after_the_last_cursor_read_and_keeps_heartbeats_to_itself(
    inventory: tuple[FakeInventory, Settings],
) -> None:
    fake, settings = inventory
    heartbeat = pb.MovementFeedEvent(cursor="2", heartbeat=pb.Heartbeat())
    low_stock = pb.MovementFeedEvent(cursor="4", low_stock=pb.StockSignal(product_id="p"))
    fake.streams = [
        Stream([[movement("1")], [heartbeat]], grpc.StatusCode.UNAVAILABLE),  # a replica went away
        Stream(
            [[movement("3"), low_stock, movement("6")]], grpc.StatusCode.RESOURCE_EXHAUSTED
        ),  # SLOW_CONSUMER
        Stream([[movement("8")]], None),  # closed by the server
        Stream([[movement("10")]]),
    ]
    async with client.connect(settings) as mesh:
        events = await followed(mesh, 6)
    # One by one, those of one message too, and each stream resumes after the last event read.
    assert [event.cursor for event in events] == ["1", "3", "4", "6", "8", "10"]
    assert events[2].low_stock.product_id == "p"
    assert [request.after for _, request in fake.watched] == ["0", "2", "6", "8"]


async def test_the_feed_waits_longer_after_each_failure_in_a_row(
    inventory: tuple[FakeInventory, Settings],
) -> None:
    fake, settings = inventory
    fake.streams = [Stream([], grpc.StatusCode.UNAVAILABLE)]
    async with client.connect(settings) as mesh:
        with contextlib.suppress(TimeoutError):
            await followed(mesh, 1, after="7", within=2)
    started = [at for at, _ in fake.watched]
    gaps = [later - earlier for earlier, later in itertools.pairwise(started)]
    # After 0.1 s, then 0.2, 0.4, 0.8 (±20%): five attempts in the 2 s, not a tight loop.
    assert 4 <= len(started) <= 6, gaps
    assert gaps[-1] > 3 * gaps[0], gaps
    assert {request.after for _, request in fake.watched} == {"7"}


async def test_the_feed_raises_what_a_new_stream_would_not_mend(
    inventory: tuple[FakeInventory, Settings],
) -> None:
    fake, settings = inventory
    fake.streams = [Stream([[movement("1")]], grpc.StatusCode.PERMISSION_DENIED)]
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        async with client.connect(settings) as mesh:
            await followed(mesh, 2)
    assert ended.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(fake.watched) == 1


async def test_a_user_login_is_renewed_with_the_refresh_token_then_logged_in_again(
    inventory: tuple[FakeInventory, Settings],
) -> None:
    fake, settings = inventory
    fake.streams = [Stream([[movement("1")]])]
    auth = FakeAuth(lifetime=1)  # renewed after 0.8 s
    async with serving(
        lambda server: auth_service_pb2_grpc.add_AuthServiceServicer_to_server(auth, server)
    ) as address:
        settings = settings.model_copy(update={"auth_addr": address})
        request = pb.GetInventoryItemRequest(product_id="p")
        async with client.connect(settings, login=client.UserLogin("ann@example.com", "right")) as mesh:
            await mesh.inventory.GetInventoryItem(request)
            await followed(mesh, 1)  # the same token, on a stream too
            await asyncio.sleep(0.85)
            await mesh.inventory.GetInventoryItem(request)
            auth.refresh_refused = True
            await asyncio.sleep(0.85)
            await mesh.inventory.GetInventoryItem(request)
    assert auth.calls == [
        "Login ann@example.com",
        "RefreshToken refresh-1",
        "RefreshToken refresh-2",
        "Login ann@example.com",
    ]
    assert fake.tokens == ["Bearer access-1", "Bearer access-1", "Bearer access-2", "Bearer access-4"]


async def test_users_and_services_call_the_mesh_as_themselves_and_public_methods_need_no_login(
    mesh: Mesh,
) -> None:
    as_staff = client.UserLogin("staff@example.com", "mesh-password")
    retire = pb.DeleteInventoryItemRequest(product_id=await new_product(mesh))
    async with client.connect(mesh.settings, login=as_staff) as staff:
        me = await staff.auth.GetMe(auth_pb.GetMeRequest())
        assert me.user.email == "staff@example.com"
        await expect_error(staff.inventory.DeleteInventoryItem(retire), grpc.StatusCode.PERMISSION_DENIED)
    async with client.connect(mesh.settings, login=client.ServiceLogin("products")) as products:
        await products.inventory.DeleteInventoryItem(retire)
    async with client.connect(mesh.settings, login=client.UserLogin("staff@example.com", "wrong")) as wrong:
        assert (await wrong.auth.GetJwks(auth_pb.GetJwksRequest())).keys  # public: no login
        await expect_error(wrong.auth.GetMe(auth_pb.GetMeRequest()), grpc.StatusCode.UNAUTHENTICATED)


def doc_example() -> str:
    """The complete consumer of docs/clients.md: its Python block that runs as a program."""
    page = (ROOT / "docs" / "clients.md").read_text(encoding="utf-8")
    (code,) = [
        block for block in re.findall(r"^```python\n(.*?)^```", page, re.M | re.S) if "__main__" in block
    ]
    return str(code)


async def run_example_until(capsys: pytest.CaptureFixture[str], printed: int) -> list[str]:
    """Runs the doc's example until it has printed `printed` lines, then stops it as Ctrl-C
    would; the lines."""
    namespace: dict[str, object] = {"__name__": "clients_md_example"}  # not __main__: main() is ours to run
    exec(compile(doc_example(), "docs/clients.md", "exec"), namespace)
    main = namespace["main"]
    assert callable(main)
    task = asyncio.create_task(main())
    lines: list[str] = []
    try:
        async with asyncio.timeout(10):
            while len(lines) < printed:
                await asyncio.sleep(0.05)
                lines += capsys.readouterr().out.splitlines()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return lines


async def test_the_consumer_of_the_docs_resumes_from_its_saved_cursor_after_a_restart(
    mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("auth", "products", "inventory"):
        monkeypatch.setenv(f"{name.upper()}_ADDR", mesh.settings.address(name))
    monkeypatch.setenv("INVMESH_EMAIL", "staff@example.com")
    monkeypatch.setenv("INVMESH_PASSWORD", "mesh-password")
    product = await new_product(mesh)
    await mesh.inventory.RecordMovement(move(product, pb.IN, 5), metadata=mesh.as_user())

    assert await run_example_until(capsys, 1) == [f"{product} at {DEFAULT_LOCATION_ID}: +5, now 5"]
    saved = (tmp_path / "movements.cursor").read_text()

    await mesh.inventory.RecordMovement(move(product, pb.OUT, 2), metadata=mesh.as_user())
    assert await run_example_until(capsys, 1) == [f"{product} at {DEFAULT_LOCATION_ID}: -2, now 3"]
    assert int((tmp_path / "movements.cursor").read_text()) > int(saved)
