"""Access-token verification, the same in every service.

The algorithm is pinned (ES256), `typ` must be `at+jwt`, `iss`/`aud`/`exp`/`sub`/`jti` are
required, and `kid` is resolved only against keys published by the auth service: never
against anything the token itself carries (RFC 8725).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from google.protobuf import json_format
from prometheus_client import Counter

from invmesh.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from mesh.config import Settings
from mesh.errors import Unauthenticated, Unavailable, describe

ALGORITHM = "ES256"
TOKEN_TYPE = "at+jwt"
REQUIRED_CLAIMS = ("iss", "aud", "sub", "exp", "iat", "jti")
VERIFIED_CACHE_SIZE = 4096

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified caller, from the claims of its access token."""

    subject: str
    email: str
    email_verified: bool
    roles: tuple[str, ...]
    token_id: str
    issued_at: int
    expires_at: int
    # When the account's password last changed (ms since the epoch, 0 if never), as the token
    # was issued: auth refuses a token whose value is no longer the account's.
    password_changed_ms: int


class KeySource(Protocol):
    async def public_key(self, kid: str) -> EllipticCurvePublicKey | None:
        """The key that `kid` names, or None if the auth service does not publish it."""


# The verified-token cache: a hit skips the ES256 check. Every call with a token is one or the other.
TOKEN_CACHE = Counter(
    "invmesh_token_cache_total", "Access tokens looked up in the verified-token cache, by result.", ["result"]
)
_CACHE_HITS = TOKEN_CACHE.labels("hit")
_CACHE_MISSES = TOKEN_CACHE.labels("miss")


class TokenVerifier:
    """Verifies access tokens, and remembers the ones it verified until they expire.

    A client sends the same token for many calls, and an ES256 check costs far more than the
    rest of a read; so a verified token's identity is kept, keyed by the token's SHA-256
    (never the token itself), until its `exp` and only while the key that signed it is still
    published. Only tokens that passed every check are kept; the size is bounded (oldest out).
    """

    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str,
        audience: str,
        clock_skew: int = 0,
        cache_size: int = VERIFIED_CACHE_SIZE,
    ) -> None:
        """`clock_skew`: seconds a token is accepted before its `iat` and after its `exp`, for
        clocks that disagree with auth's (TOKEN_CLOCK_SKEW_SECONDS)."""
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._clock_skew = clock_skew
        self._cache_size = cache_size
        # sha256(token) -> (identity, kid, the key that verified it)
        self._verified: OrderedDict[bytes, tuple[Identity, str, EllipticCurvePublicKey]] = OrderedDict()

    def expired(self, identity: Identity) -> bool:
        """Whether the token `identity` came from is no longer accepted (after its exp and the skew)."""
        return time.time() >= identity.expires_at + self._clock_skew

    async def verify(self, token: str) -> Identity:
        """Returns the token's identity; raises Unauthenticated saying what is wrong."""
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._verified.get(digest)
        if hit is not None:
            identity, kid, key = hit
            # PyJWT rejects a token once now >= exp + leeway; a key no longer published ends the
            # entry too.
            if not self.expired(identity) and await self._keys.public_key(kid) is key:
                _CACHE_HITS.inc()
                return identity
            self._verified.pop(digest, None)
        _CACHE_MISSES.inc()
        identity, kid, key = await self._verify(token)
        if len(self._verified) >= self._cache_size:
            self._verified.popitem(last=False)
        self._verified[digest] = (identity, kid, key)
        return identity

    async def _verify(self, token: str) -> tuple[Identity, str, EllipticCurvePublicKey]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _invalid("the access token is not a well-formed JWT") from None
        if header.get("alg") != ALGORITHM or header.get("typ") != TOKEN_TYPE:
            raise _invalid(f"the access token must be a {TOKEN_TYPE} JWT signed with {ALGORITHM}")
        kid = header.get("kid")
        key = await self._keys.public_key(kid) if isinstance(kid, str) and kid else None
        if key is None or not isinstance(kid, str):
            raise _invalid("the access token was not signed by a key the auth service publishes")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._clock_skew,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the access token has expired", reason="TOKEN_EXPIRED") from None
        except jwt.InvalidTokenError as exc:
            raise _invalid(f"the access token is invalid: {exc}") from None
        return _identity(claims), kid, key


def _identity(claims: Mapping[str, Any]) -> Identity:
    roles = claims.get("roles", [])
    if not (
        isinstance(claims["sub"], str)
        and isinstance(claims["jti"], str)
        and isinstance(claims.get("email", ""), str)
        and isinstance(roles, list)
        and type(claims.get("pwd_at", 0)) is int
        and all(isinstance(role, str) for role in roles)
    ):
        raise _invalid("the access token has malformed claims")
    return Identity(
        subject=claims["sub"],
        email=claims.get("email", ""),
        email_verified=claims.get("email_verified") is True,
        roles=tuple(roles),
        token_id=claims["jti"],
        issued_at=int(claims["iat"]),
        expires_at=int(claims["exp"]),
        password_changed_ms=int(claims.get("pwd_at", 0)),
    )


def _invalid(message: str) -> Unauthenticated:
    return Unauthenticated(message, reason="INVALID_TOKEN")


def public_jwk(key: EllipticCurvePublicKey, kid: str) -> dict[str, str]:
    """The public JWK of a signing key, as GetJwks publishes it."""
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True)
    return {**jwk, "kid": kid, "alg": ALGORITHM, "use": "sig"}


class JwksCache:
    """Public keys fetched from the auth service's GetJwks, refetched on an unknown `kid`.

    Refetches are rate-limited, so a flood of tokens with made-up `kid`s costs the auth
    service at most one call per interval; concurrent misses share one fetch. While the keys
    cannot be fetched, an unknown `kid` is UNAVAILABLE rather than a token error: the token may
    well be good, and a 401 would send the client back to log in for nothing.
    """

    def __init__(
        self,
        fetch: Callable[[], Coroutine[Any, Any, Sequence[Mapping[str, str]]]],
        *,
        min_refetch_interval: float,
    ) -> None:
        self._fetch = fetch
        self._interval = min_refetch_interval
        self._keys: dict[str, EllipticCurvePublicKey] = {}
        self._fetched_at = float("-inf")
        self._unreachable = False
        self._lock = asyncio.Lock()

    @classmethod
    def from_auth_service(cls, channel: grpc.aio.Channel, *, min_refetch_interval: float) -> JwksCache:
        """Keys from AuthService.GetJwks over `channel`: how every service other than auth verifies."""
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)

        async def fetch() -> list[Mapping[str, str]]:
            reply = await stub.GetJwks(auth_service_pb2.GetJwksRequest(), timeout=5)
            return [json_format.MessageToDict(key, preserving_proto_field_name=True) for key in reply.keys]

        return cls(fetch, min_refetch_interval=min_refetch_interval)

    async def public_key(self, kid: str) -> EllipticCurvePublicKey | None:
        key = self._keys.get(kid)
        if key is None and time.monotonic() - self._fetched_at >= self._interval:
            async with self._lock:
                if kid not in self._keys and time.monotonic() - self._fetched_at >= self._interval:
                    await self.refresh()
            key = self._keys.get(kid)
        if key is None and self._unreachable:
            raise Unavailable(
                "the auth service's signing keys cannot be fetched to verify the access token; retry later",
                reason="AUTH_KEYS_UNAVAILABLE",
            )
        return key

    async def refresh(self) -> None:
        # The fetch serves every caller, so it runs outside the one that triggered it: with
        # neither that caller's deadline nor its token (see mesh.clients.ForwardCallerContext).
        fetch = asyncio.get_running_loop().create_task(self._fetch(), context=contextvars.Context())
        try:
            jwks = await fetch
        except Exception as exc:
            log.warning("could not fetch the auth service's signing keys: %s", describe(exc))
            self._unreachable = True
            # Try again soon: the auth service may just be starting.
            self._fetched_at = time.monotonic() - self._interval + min(self._interval, 1.0)
            return
        self._fetched_at = time.monotonic()
        self._unreachable = False
        keys = {}
        for jwk in jwks:
            if jwk.get("alg") == ALGORITHM and jwk.get("kty") == "EC" and jwk.get("kid"):
                key = jwt.PyJWK(dict(jwk), algorithm=ALGORITHM).key
                if isinstance(key, EllipticCurvePublicKey):
                    keys[jwk["kid"]] = key
        self._keys = keys


def verifier_via_auth(auth_channel: grpc.aio.Channel, settings: Settings) -> TokenVerifier:
    """The verifier of every service but auth: keys from auth's GetJwks, cached."""
    keys = JwksCache.from_auth_service(
        auth_channel, min_refetch_interval=settings.jwks_refetch_interval_seconds
    )
    return TokenVerifier(
        keys,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        clock_skew=settings.token_clock_skew_seconds,
    )
