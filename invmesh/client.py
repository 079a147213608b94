"""The mesh's client for Python programs, the one the services use to call each other: typed
stubs of the three services over the mesh's channels, from the same settings as a service
(docs/clients.md).

    async with client.connect(load_settings(), login=client.UserLogin(email, password)) as mesh:
        reply = await mesh.inventory.GetInventoryItem(GetInventoryItemRequest(product_id=product_id))

Each service gets one channel, opened on first use (mesh.clients.channel): round robin over
its replicas, the safe methods retried on UNAVAILABLE, TLS when GRPC_TLS_CA_FILE is set, and a
deadline of PEER_TIMEOUT_SECONDS on every unary call that sets none. Written by hand, unlike
the rest of the package."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property

import grpc

from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from invmesh.auth.v1 import auth_service_pb2_grpc
from invmesh.inventory.v1 import inventory_service_pb2 as inventory_pb
from invmesh.inventory.v1 import inventory_service_pb2_grpc
from invmesh.products.v1 import products_service_pb2_grpc
from mesh import clients
from mesh.background import backoff
from mesh.config import Settings
from mesh.errors import describe
from mesh.service_token import RenewedToken, ServiceToken

log = logging.getLogger(__name__)

# How soon a followed feed that ended is resumed: the delay doubles while no event comes, so
# that a mesh that is down is not called in a tight loop.
RESUME_INITIAL_SECONDS = 0.1
RESUME_MAX_SECONDS = 10.0
# The ends of a stream that a new one after the last cursor mends: a replica going away,
# inventory out of reach, the client too slow (SLOW_CONSUMER), the server full (TOO_MANY_WATCHERS).
RESUMABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


@dataclass(frozen=True, slots=True)
class UserLogin:
    """Calls as this user: logs in with the password, then renews the access token with the
    refresh token before it expires, and logs in again when that is spent or expired."""

    email: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ServiceLogin:
    """Calls as the service `name`, with a token from AuthService.IssueServiceToken for the
    name and SERVICE_SECRET (auth's SERVICE_SECRETS must list them), renewed before it expires."""

    name: str


class UserToken(RenewedToken):
    """A user's token: from Login, then from RefreshToken until the refresh token is refused."""

    def __init__(self, auth_channel: grpc.aio.Channel, login: UserLogin) -> None:
        super().__init__()
        self._auth = auth_service_pb2_grpc.AuthServiceStub(auth_channel)
        self._login = login
        self._refresh_token = ""

    async def _obtain(self) -> tuple[str, int]:
        reply: auth_pb.RefreshTokenResponse | auth_pb.LoginResponse | None = None
        if self._refresh_token:
            reply = await self._refreshed()
        if reply is None:
            login = auth_pb.LoginRequest(email=self._login.email, password=self._login.password)
            reply = await self._auth.Login(login)
        self._refresh_token = reply.refresh_token
        return reply.access_token, reply.expires_in

    async def _refreshed(self) -> auth_pb.RefreshTokenResponse | None:
        """New tokens for the refresh token; None if it was spent or has expired."""
        request = auth_pb.RefreshTokenRequest(refresh_token=self._refresh_token)
        try:
            return await self._auth.RefreshToken(request)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                return None
            raise


class MeshClient:
    """The stubs of the three services, each on its own channel, and the feed of movements.
    Made by `connect`, which closes it."""

    def __init__(self, settings: Settings, login: UserLogin | ServiceLogin | None = None) -> None:
        self._settings = settings
        self._credentials = clients.channel_credentials(settings)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._opened: list[grpc.aio.Channel] = []
        self._token: RenewedToken | None = None
        if login is not None:
            # A channel of its own: the token is never obtained over a channel that waits for it.
            token_channel = self._open("auth", token=None)
            if isinstance(login, UserLogin):
                self._token = UserToken(token_channel, login)
            else:
                self._token = ServiceToken.from_settings(token_channel, settings, login.name)

    @cached_property
    def auth(self) -> auth_service_pb2_grpc.AuthServiceStub:
        return auth_service_pb2_grpc.AuthServiceStub(self.channel("auth"))

    @cached_property
    def products(self) -> products_service_pb2_grpc.ProductsServiceStub:
        return products_service_pb2_grpc.ProductsServiceStub(self.channel("products"))

    @cached_property
    def inventory(self) -> inventory_service_pb2_grpc.InventoryServiceStub:
        return inventory_service_pb2_grpc.InventoryServiceStub(self.channel("inventory"))

    def channel(self, service: str) -> grpc.aio.Channel:
        """The channel to `service` (a name of mesh.services.SERVICES), opened on first use."""
        if service not in self._channels:
            self._channels[service] = self._open(service, token=self._token)
        return self._channels[service]

    async def follow_movements(
        self, *, after: str = "", product_id: str = "", location_id: str = ""
    ) -> AsyncGenerator[inventory_pb.MovementFeedEvent, None]:
        """Every event of InventoryService.WatchMovements after the cursor `after` ("" from
        now, "0" from the first movement), of one product or at one location if given, for
        ever, one by one however the stream grouped them in messages: movements, low_stock
        and restocked signals, each with the `cursor` to resume after it. A stream that ends
        (RESUMABLE, closed by the server, or, with a login, ended by its token's expiry) is
        opened again after the last cursor read (the last event yielded, wherever it was in
        its message), RESUME_INITIAL_SECONDS later, and then after a delay that doubles while
        no event comes. Heartbeats move that cursor and are not yielded. Other errors raise."""
        failures = 0
        while True:
            request = inventory_pb.WatchMovementsRequest(
                after=after, product_id=product_id, location_id=location_id
            )
            call = self.inventory.WatchMovements(request)
            served = False
            try:
                async for message in call:
                    failures, served = 0, True
                    for event in message.events:
                        after = event.cursor
                        if not event.HasField("heartbeat"):
                            yield event
                ended = "the server closed the stream"
            except grpc.aio.AioRpcError as error:
                # A stream ends when the token it opened with expires; the login has renewed it.
                renewed = (
                    error.code() == grpc.StatusCode.UNAUTHENTICATED and served and self._token is not None
                )
                if error.code() not in RESUMABLE and not renewed:
                    raise
                ended = describe(error)
            finally:
                call.cancel()  # a consumer that stops reading ends the stream
            delay = backoff(failures, initial=RESUME_INITIAL_SECONDS, maximum=RESUME_MAX_SECONDS)
            failures += 1
            log.warning("the movements feed ended (%s): resuming after %r in %.1fs", ended, after, delay)
            await asyncio.sleep(delay)

    async def close(self) -> None:
        for opened in self._opened:
            await opened.close()

    def _open(self, service: str, *, token: RenewedToken | None) -> grpc.aio.Channel:
        opened = clients.channel(
            self._settings.address(service),
            default_timeout=self._settings.peer_timeout_seconds,
            credentials=self._credentials,
            token=token,
        )
        self._opened.append(opened)
        return opened


@asynccontextmanager
async def connect(
    settings: Settings, *, login: UserLogin | ServiceLogin | None = None
) -> AsyncIterator[MeshClient]:
    """A client of the mesh that `settings` describe (`*_ADDR`, `GRPC_TLS_*`,
    `PEER_TIMEOUT_SECONDS`, and `SERVICE_SECRET` for a ServiceLogin), whose channels close when
    the block exits. Without `login`, calls carry the token of the call being served, if any (a
    service calling another on its caller's behalf), or none; with one, calls that need a token
    carry the login's."""
    client = MeshClient(settings, login)
    try:
        yield client
    finally:
        await client.close()
