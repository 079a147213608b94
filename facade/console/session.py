"""Who is signed in to the console, held in three HttpOnly, SameSite=Strict cookies scoped to
`/console`, and the CSRF tokens of its forms.

- `access`: the access token from AuthService.Login, sent as `authorization: Bearer` on every
  call; it lives a little less long than the token, so the browser drops it before auth would
  refuse it.
- `refresh`: the refresh token; when the access cookie is gone, AuthService.RefreshToken
  replaces both. Refresh tokens are single-use and a reused one revokes the whole sign-in, so
  the refreshes of one token that overlap in this process share one call.
- `session`: a random id, made on the first visit and replaced at each sign-in (no fixation).
  A form's CSRF token is an HMAC of it under the facade's secret (OWASP's signed double
  submit): a page on another site can neither read the cookie nor compute the token, and
  the facade keeps no state, so any replica checks any form.

The token's claims are read here without verifying its signature, only to choose what a page
shows (the user's email, which forms a role may use): every call is checked by the service.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from cachetools import TTLCache
from google.protobuf.descriptor import MethodDescriptor
from starlette.requests import Request
from starlette.responses import Response

from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from invmesh.auth.v1 import auth_service_pb2_grpc
from mesh import access
from mesh.config import Settings

log = logging.getLogger(__name__)

PATH = "/console"
ACCESS_COOKIE = "invmesh_console_access"
REFRESH_COOKIE = "invmesh_console_refresh"
SESSION_COOKIE = "invmesh_console_session"
CSRF_FIELD = "csrf_token"
# The access cookie expires this much before the token, so no call carries a token on its last breath.
EXPIRY_MARGIN_SECONDS = 30
# How long the answer to one refresh is shared with the same session's requests that overlap it.
_SHARED_REFRESH_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_in: int


@dataclass(slots=True)
class Session:
    """A console request's caller: signed in when `token` is set. `issued` holds tokens a
    refresh or a sign-in obtained for this request, which its response stores."""

    id: str
    csrf_token: str
    token: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict)
    issued: Tokens | None = None
    new_id: bool = False  # the id was made for this request: the response sets its cookie
    cleared: bool = False  # the response removes the tokens' cookies (signed out, or a refused refresh)

    @property
    def signed_in(self) -> bool:
        return bool(self.token)

    @property
    def email(self) -> str:
        return str(self.claims.get("email", ""))

    @property
    def rank(self) -> int:
        roles = self.claims.get("roles", [])
        return max((access.RANKS.get(role, 0) for role in roles if isinstance(role, str)), default=0)

    @property
    def role(self) -> str:
        """The highest role the token carries ("viewer", "staff", "admin"), for the page to show."""
        return next((name for name, rank in access.RANKS.items() if rank == self.rank), "")

    def may(self, method: MethodDescriptor) -> bool:
        """Whether the user's role reaches the one `method` declares in the contract: the page
        then offers its form (the service checks again, whatever the page offered)."""
        return self.rank >= access.declared_role(method)

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []


class Sessions:
    """Reads and writes the console's cookies; refreshes expired access tokens."""

    def __init__(self, settings: Settings) -> None:
        self._key = _csrf_key(settings)
        self._secure_always = settings.public_url.startswith("https://")
        self._refresh_ttl = settings.refresh_token_ttl_seconds
        self._timeout = settings.facade_timeout_seconds
        self._refreshes: TTLCache[str, asyncio.Task[Tokens | None]] = TTLCache(
            maxsize=10_000, ttl=_SHARED_REFRESH_SECONDS
        )

    def csrf_token(self, session_id: str) -> str:
        digest = hmac.new(self._key, f"console-csrf\n{session_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def csrf_valid(self, session: Session, submitted: str) -> bool:
        return hmac.compare_digest(session.csrf_token.encode(), submitted.encode())

    def fresh(self) -> Session:
        """A new session id, signed out."""
        session = Session("", "")
        self._renew_id(session)
        return session

    def sign_in(self, session: Session, tokens: Tokens) -> None:
        """Makes `session` signed in with `tokens`, under a new id, so that an id planted before
        the sign-in is worth nothing after it."""
        self._renew_id(session)
        session.token, session.claims, session.issued = (
            tokens.access_token,
            token_claims(tokens.access_token) or {},
            tokens,
        )
        session.cleared = False

    def sign_out(self, session: Session) -> None:
        self._renew_id(session)
        session.token, session.claims, session.issued = "", {}, None
        session.cleared = True

    def _renew_id(self, session: Session) -> None:
        session.id = secrets.token_urlsafe(32)
        session.csrf_token = self.csrf_token(session.id)
        session.new_id = True

    async def resolve(self, request: Request, auth: auth_service_pb2_grpc.AuthServiceStub) -> Session:
        """The caller of `request`: its access token if it still has one, else new tokens for
        its refresh token, else signed out (with a new session id if it had none)."""
        session_id = request.cookies.get(SESSION_COOKIE, "")
        if not session_id:
            return self.fresh()
        session = Session(session_id, self.csrf_token(session_id))
        if token := request.cookies.get(ACCESS_COOKIE, ""):
            claims = token_claims(token)
            if claims is not None and claims.get("exp", 0) > time.time():
                session.token, session.claims = token, claims
                return session
        if refresh_token := request.cookies.get(REFRESH_COOKIE, ""):
            tokens = await self._refreshed(auth, session_id, refresh_token)
            claims = token_claims(tokens.access_token) if tokens is not None else None
            if tokens is None or claims is None:
                session.cleared = True
                return session
            session.token, session.claims, session.issued = tokens.access_token, claims, tokens
        return session

    async def _refreshed(
        self, auth: auth_service_pb2_grpc.AuthServiceStub, session_id: str, refresh_token: str
    ) -> Tokens | None:
        # Shared within a session only: a spent token replayed from elsewhere still reaches auth.
        key = hashlib.sha256(f"{session_id}\n{refresh_token}".encode()).hexdigest()
        shared = self._refreshes.get(key)
        if shared is None:
            shared = asyncio.create_task(_refresh(auth, refresh_token, self._timeout))
            self._refreshes[key] = shared
        try:
            return await asyncio.shield(shared)  # a client leaving does not cancel the others' refresh
        except grpc.aio.AioRpcError:
            self._refreshes.pop(key, None)  # auth unreachable, say: the next request tries again
            raise

    def store(self, request: Request, session: Session, response: Response) -> Response:
        """Sets on `response` the cookies `session` changed."""
        secure = self._secure_always or request.url.scheme == "https"
        if session.cleared:
            for name in (ACCESS_COOKIE, REFRESH_COOKIE):
                response.delete_cookie(name, path=PATH, secure=secure, httponly=True, samesite="strict")
        if session.new_id:
            self._set(response, SESSION_COOKIE, session.id, self._refresh_ttl, secure)
        if session.issued is not None:
            lifetime = max(session.issued.expires_in - EXPIRY_MARGIN_SECONDS, 1)
            self._set(response, ACCESS_COOKIE, session.issued.access_token, lifetime, secure)
            self._set(response, REFRESH_COOKIE, session.issued.refresh_token, self._refresh_ttl, secure)
        return response

    @staticmethod
    def _set(response: Response, name: str, value: str, max_age: int, secure: bool) -> None:
        response.set_cookie(
            name, value, max_age=max_age, path=PATH, secure=secure, httponly=True, samesite="strict"
        )


async def _refresh(
    auth: auth_service_pb2_grpc.AuthServiceStub, refresh_token: str, deadline: float
) -> Tokens | None:
    request = auth_pb.RefreshTokenRequest(refresh_token=refresh_token)
    try:
        reply = await auth.RefreshToken(request, timeout=deadline)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            return None  # spent, expired or revoked: sign in again
        raise
    return Tokens(reply.access_token, reply.refresh_token, reply.expires_in)


def token_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, unverified (see the module's docstring); None if it is not one."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


def _csrf_key(settings: Settings) -> bytes:
    """A key of the console's own, derived from the facade's SERVICE_SECRET, which every replica
    shares; without it, a key of this process (forms from another replica or an earlier start
    are then refused)."""
    if settings.service_secret is None:
        log.warning(
            "SERVICE_SECRET is not set: the console's forms work only on the process that served them"
        )
        return secrets.token_bytes(32)
    secret = settings.service_secret.get_secret_value().encode()
    return hmac.new(secret, b"invmesh console csrf key", hashlib.sha256).digest()
