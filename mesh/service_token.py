"""Access tokens a client holds for itself, renewed before they expire: `ServiceToken`, a
service's own, for the calls it makes on its own behalf rather than a user's (the client
credentials grant of AuthService.IssueServiceToken)."""

from __future__ import annotations

import asyncio
import contextvars
import time

import grpc

from invmesh.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from mesh.config import Settings
from mesh.errors import Unavailable

RENEW_AT = 0.8  # of a token's lifetime: renewed well before it expires


class RenewedToken:
    """A token obtained when first needed and again at RENEW_AT of its lifetime; subclasses
    write `_obtain`."""

    def __init__(self) -> None:
        self._token = ""
        self._renew_at = float("-inf")
        self._lock = asyncio.Lock()

    async def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the token; the error of `_obtain` if there is none now."""
        if time.monotonic() >= self._renew_at:
            async with self._lock:
                if time.monotonic() >= self._renew_at:
                    await self._renew()
        return (("authorization", f"Bearer {self._token}"),)

    async def _obtain(self) -> tuple[str, int]:
        """A new access token and its lifetime in seconds."""
        raise NotImplementedError

    async def _renew(self) -> None:
        # Outside any caller's context: neither its deadline nor its token belong to this call.
        task = asyncio.get_running_loop().create_task(self._obtain(), context=contextvars.Context())
        self._token, lifetime = await task
        self._renew_at = time.monotonic() + lifetime * RENEW_AT


class ServiceToken(RenewedToken):
    def __init__(self, auth_channel: grpc.aio.Channel, *, client_id: str, client_secret: str | None) -> None:
        super().__init__()
        self._auth = auth_service_pb2_grpc.AuthServiceStub(auth_channel)
        self._client_id = client_id
        self._secret = client_secret

    @classmethod
    def from_settings(cls, auth_channel: grpc.aio.Channel, settings: Settings, service: str) -> ServiceToken:
        secret = settings.service_secret.get_secret_value() if settings.service_secret else None
        return cls(auth_channel, client_id=service, client_secret=secret)

    async def _obtain(self) -> tuple[str, int]:
        if self._secret is None:
            raise Unavailable(
                f"SERVICE_SECRET is not set, so the {self._client_id} service cannot call on its own behalf",
                reason="NO_SERVICE_CREDENTIALS",
            )
        request = auth_service_pb2.IssueServiceTokenRequest(
            client_id=self._client_id, client_secret=self._secret
        )
        reply = await self._auth.IssueServiceToken(request, timeout=5)
        return reply.access_token, reply.expires_in
