"""Every service rejects a bad access token with UNAUTHENTICATED (RFC 8725 checks)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import json_format

from auth.keys import KeyStore, thumbprint
from auth.service import running
from invmesh.auth.v1 import auth_service_pb2 as pb
from invmesh.auth.v1 import auth_service_pb2_grpc
from invmesh.inventory.v1 import inventory_service_pb2 as inventory_pb
from invmesh.products.v1 import products_service_pb2 as products_pb
from mesh import clients, context, migrations
from mesh.config import Settings
from mesh.db import Database
from mesh.errors import Unauthenticated, Unavailable
from mesh.tokens import JwksCache, TokenVerifier
from tests.conftest import AuthEndpoint, Mesh, SmtpServer, free_port, link_token
from tests.facade.conftest import facade_client
from tests.rpc import error_reason, expect_error

Key = ec.EllipticCurvePrivateKey


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(user_id: str, **changes: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "iss": "invmesh-auth",
        "aud": "invmesh",
        "sub": user_id,
        "email": "ann@example.com",
        "email_verified": True,
        "roles": ["viewer"],
        "iat": now,
        "exp": now + 600,
        "jti": "t1",
    }
    return {k: v for k, v in (base | changes).items() if v is not None}


def sign(key: Key, payload: dict[str, object], **header: object) -> str:
    headers = {"kid": thumbprint(key.public_key()), "typ": "at+jwt"} | header
    return jwt.encode(payload, key, algorithm="ES256", headers=headers)


def unsigned(key: Key, payload: dict[str, object]) -> str:
    header = {"alg": "none", "typ": "at+jwt", "kid": thumbprint(key.public_key())}
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}."


def hs256_with_public_key(key: Key, payload: dict[str, object]) -> str:
    # The classic confusion attack: HMAC keyed with the (public) verification key.
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "at+jwt", "kid": thumbprint(key.public_key())}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())}"


def tampered(key: Key, payload: dict[str, object]) -> str:
    header, _, signature = sign(key, payload).split(".")
    forged = b64(json.dumps(payload | {"roles": ["admin"]}).encode())
    return f"{header}.{forged}.{signature}"


def foreign_key_same_kid(key: Key, payload: dict[str, object]) -> str:
    return sign(ec.generate_private_key(ec.SECP256R1()), payload, kid=thumbprint(key.public_key()))


def embedded_jwk(key: Key, payload: dict[str, object]) -> str:
    # The forger's own key, offered in the header (`jwk`, `jku`) for the verifier to trust.
    forger = ec.generate_private_key(ec.SECP256R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(forger.public_key(), as_dict=True)
    return sign(forger, payload, jwk=jwk, jku="https://attacker.example/jwks.json")


@dataclass(frozen=True)
class Genuine:
    """What a forger starts from: the auth service's own signing key (so that every check but
    the one under test passes), a real account, and the opaque tokens auth gave it."""

    key: Key
    subject: str
    verification_token: str
    refresh_token: str


BAD_TOKENS: dict[str, Callable[[Genuine], str]] = {
    "expired": lambda g: sign(
        g.key, claims(g.subject, iat=int(time.time()) - 1000, exp=int(time.time()) - 10)
    ),
    "not yet valid": lambda g: sign(g.key, claims(g.subject, nbf=int(time.time()) + 600)),
    "issued in the future": lambda g: sign(
        g.key, claims(g.subject, iat=int(time.time()) + 600, exp=int(time.time()) + 1200)
    ),
    "tampered claims": lambda g: tampered(g.key, claims(g.subject)),
    "foreign key with a copied kid": lambda g: foreign_key_same_kid(g.key, claims(g.subject)),
    "foreign key offered in the header": lambda g: embedded_jwk(g.key, claims(g.subject)),
    "unknown kid": lambda g: sign(g.key, claims(g.subject), kid="no-such-key"),
    "alg none": lambda g: unsigned(g.key, claims(g.subject)),
    "HS256 keyed with the public key": lambda g: hs256_with_public_key(g.key, claims(g.subject)),
    "wrong issuer": lambda g: sign(g.key, claims(g.subject, iss="someone-else")),
    "wrong audience": lambda g: sign(g.key, claims(g.subject, aud="another-api")),
    "no exp": lambda g: sign(g.key, claims(g.subject, exp=None)),
    "no typ": lambda g: sign(g.key, claims(g.subject), typ="JWT"),
    "roles not a list": lambda g: sign(g.key, claims(g.subject, roles="admin")),
    "not a JWT": lambda g: "garbage",
    "a verification token": lambda g: g.verification_token,
    "a refresh token": lambda g: g.refresh_token,
}


async def genuine(mesh: Mesh, smtp: SmtpServer, key: Key) -> Genuine:
    """A new account of the mesh, its verification token (unused) and a refresh token."""
    request = pb.RegisterRequest(email="target@example.com", password="password1")
    await mesh.auth.Register(request)
    (mail,) = await smtp.inbox.mail_to("target@example.com")
    login = await mesh.auth.Login(pb.LoginRequest(email="target@example.com", password="password1"))
    me = await mesh.auth.GetMe(pb.GetMeRequest(), metadata=mesh.as_user(login.access_token))
    return Genuine(key, me.user.id, link_token(mail, mesh.settings.public_url), login.refresh_token)


@pytest.mark.parametrize("kind", BAD_TOKENS)
async def test_every_service_and_the_facade_reject_a_bad_token(
    mesh: Mesh, smtp: SmtpServer, signing_key: Key, kind: str
) -> None:
    forger = await genuine(mesh, smtp, signing_key)
    good = sign(signing_key, claims(forger.subject))
    bad = BAD_TOKENS[kind](forger)

    def calls(token: str) -> dict[str, Awaitable[object]]:
        bearer = (("authorization", f"Bearer {token}"),)
        return {
            "auth GetMe": mesh.auth.GetMe(pb.GetMeRequest(), metadata=bearer),
            "products ListProducts": mesh.products.ListProducts(
                products_pb.ListProductsRequest(), metadata=bearer
            ),
            "inventory ListInventoryItems": mesh.inventory.ListInventoryItems(
                inventory_pb.ListInventoryItemsRequest(), metadata=bearer
            ),
        }

    for call in calls(good).values():  # the forger's starting point is accepted everywhere
        await call
    for where, call in calls(bad).items():
        error = await expect_error(call, grpc.StatusCode.UNAUTHENTICATED)
        assert error_reason(error) in {"INVALID_TOKEN", "TOKEN_EXPIRED"}, where

    async with facade_client(mesh.settings) as http:
        for path in ("/users/me", "/products", "/inventory"):
            assert (await http.get(path, headers={"authorization": f"Bearer {good}"})).status_code == 200
            refused = await http.get(path, headers={"authorization": f"Bearer {bad}"})
            assert refused.status_code == 401, (path, refused.text)
            assert refused.json()["code"] == 16
            assert refused.headers["www-authenticate"].startswith(
                'Bearer realm="invmesh", error="invalid_token"'
            )


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "token-without-scheme"]
)
async def test_get_me_needs_a_bearer_token(auth: AuthEndpoint, header: str | None) -> None:
    metadata = (("authorization", header),) if header is not None else ()
    error = await expect_error(
        auth.stub.GetMe(pb.GetMeRequest(), metadata=metadata), grpc.StatusCode.UNAUTHENTICATED
    )
    assert "Bearer" in (error.details() or "")


async def test_signing_key_is_generated_once_and_persisted(settings: Settings) -> None:
    generated = settings.model_copy(update={"jwt_private_key": None})
    kids = []
    for _ in range(2):
        async with running(generated, address="127.0.0.1:0") as server:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                reply = await auth_service_pb2_grpc.AuthServiceStub(channel).GetJwks(pb.GetJwksRequest())
                kids.append([key.kid for key in reply.keys])
    assert len(kids[0]) == 1 and kids[0] == kids[1]


async def test_jwks_publishes_the_configured_key(auth: AuthEndpoint, signing_key: Key) -> None:
    (jwk,) = (await auth.stub.GetJwks(pb.GetJwksRequest())).keys
    assert (jwk.kty, jwk.crv, jwk.alg, jwk.use) == ("EC", "P-256", "ES256", "sig")
    assert jwk.kid == thumbprint(signing_key.public_key())
    assert "d" not in pb.Jwk.DESCRIPTOR.fields_by_name  # never a private member


async def test_jwks_cache_refetches_an_unknown_kid_at_most_once_per_interval(
    auth: AuthEndpoint, signing_key: Key
) -> None:
    fetches = 0

    async def fetch() -> list[dict[str, str]]:
        nonlocal fetches
        fetches += 1
        reply = await auth.stub.GetJwks(pb.GetJwksRequest())
        return [json_format.MessageToDict(key, preserving_proto_field_name=True) for key in reply.keys]

    cache = JwksCache(fetch, min_refetch_interval=30)
    kid = thumbprint(signing_key.public_key())
    assert await cache.public_key(kid) is not None
    for _ in range(5):  # a flood of made-up kids costs the auth service nothing more
        assert await cache.public_key("made-up") is None
    assert await cache.public_key(kid) is not None
    assert fetches == 1

    eager = JwksCache(fetch, min_refetch_interval=0)
    for _ in range(3):
        await eager.public_key("made-up")
    assert fetches == 4


async def test_replicas_starting_together_agree_on_one_signing_key(settings: Settings) -> None:
    # Two processes' worth of connections to one empty database, loading at the same moment:
    # both see no key, both generate one, the unique generation lets only one be stored.
    databases = [Database(settings.database_url("auth")) for _ in range(2)]
    try:
        await migrations.upgrade(databases[0], "auth")
        stores = await asyncio.gather(*(KeyStore.load(db, None) for db in databases))
    finally:
        for db in databases:
            await db.dispose()
    assert stores[0].signing_kid == stores[1].signing_kid
    assert stores[0].jwks == stores[1].jwks and len(stores[0].jwks) == 1


async def test_jwks_fetch_ignores_the_deadline_of_the_call_that_triggered_it(
    auth: AuthEndpoint, signing_key: Key
) -> None:
    # The first call to need the keys may have almost no time left; the shared fetch must not
    # inherit that deadline, or that caller (and its token) would be turned away for nothing.
    async with clients.channel(auth.address) as channel:
        cache = JwksCache.from_auth_service(channel, min_refetch_interval=30)
        token = context.deadline.set(time.monotonic() - 1)
        try:
            key = await cache.public_key(thumbprint(signing_key.public_key()))
        finally:
            context.deadline.reset(token)
    assert key is not None


async def test_jwks_cache_without_the_auth_service_is_unavailable_not_a_bad_token(
    settings: Settings, signing_key: Key
) -> None:
    port = free_port()
    async with clients.channel(f"127.0.0.1:{port}", default_timeout=1) as channel:
        cache = JwksCache.from_auth_service(channel, min_refetch_interval=0)
        kid = thumbprint(signing_key.public_key())
        with pytest.raises(Unavailable) as refused:
            await cache.public_key(kid)
        assert refused.value.reason == "AUTH_KEYS_UNAVAILABLE"
        async with running(settings, address=f"127.0.0.1:{port}"):
            for _ in range(100):  # recovers by itself once the channel has reconnected
                try:
                    assert await cache.public_key(kid) is not None
                    break
                except Unavailable:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("the keys were never fetched once the auth service was up")
            assert await cache.public_key("made-up") is None  # and a made-up kid is a bad token again


class Published:
    """A key source that publishes the keys the test puts in `keys`."""

    def __init__(self, key: Key) -> None:
        self.keys = {thumbprint(key.public_key()): key.public_key()}

    async def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        return self.keys.get(kid)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens whose signature the verifier checks (jwt.decode), in order."""
    seen: list[str] = []
    decode = jwt.decode

    def counted(token: str, *args: Any, **kwargs: Any) -> object:
        seen.append(token)
        return decode(token, *args, **kwargs)

    monkeypatch.setattr("mesh.tokens.jwt.decode", counted)
    return seen


def local_verifier(source: Published, **options: int) -> TokenVerifier:
    return TokenVerifier(source, issuer="invmesh-auth", audience="invmesh", **options)


async def test_a_verified_token_is_checked_once_while_it_is_valid(decodes: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    verifier = local_verifier(Published(key))
    token = sign(key, claims("u1"))
    first = await verifier.verify(token)
    assert await verifier.verify(token) == first and first.subject == "u1"
    assert decodes == [token]


async def test_clocks_may_disagree_by_the_allowed_skew_and_no_more(decodes: list[str]) -> None:
    """A verifier whose clock is behind auth's sees tokens issued in its future; one ahead sees
    them expire early. TOKEN_CLOCK_SKEW_SECONDS allows for both, and no more."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    ahead = sign(key, claims("u1", iat=now + 3))
    behind = sign(key, claims("u1", iat=now - 600, exp=now - 3))
    skewed = local_verifier(Published(key), clock_skew=5)
    assert (await skewed.verify(ahead)).subject == (await skewed.verify(behind)).subject == "u1"
    for token, reason in [(ahead, "not yet valid"), (behind, "expired")]:
        with pytest.raises(Unauthenticated) as refused:
            await local_verifier(Published(key)).verify(token)
        assert reason in str(refused.value)
    far_ahead = sign(key, claims("u1", iat=now + 30))
    with pytest.raises(Unauthenticated):
        await skewed.verify(far_ahead)


async def test_a_cached_token_is_refused_once_it_expires(decodes: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    verifier = local_verifier(Published(key))
    exp = int(time.time()) + 1
    token = sign(key, claims("u1", exp=exp))
    await verifier.verify(token)
    while time.time() < exp:  # wait for the clock to pass exp; nothing here is timed
        await asyncio.sleep(0.05)
    with pytest.raises(Unauthenticated) as refused:
        await verifier.verify(token)
    assert refused.value.reason == "TOKEN_EXPIRED"
    with pytest.raises(Unauthenticated):  # and it was not cached as good on the way
        await verifier.verify(token)


async def test_bad_tokens_are_never_cached_as_good(decodes: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    verifier = local_verifier(Published(key))
    good = sign(key, claims("u1"))
    await verifier.verify(good)
    for bad in (tampered(key, claims("u1")), foreign_key_same_kid(key, claims("u1")), good + "x"):
        for _ in range(2):
            with pytest.raises(Unauthenticated) as refused:
                await verifier.verify(bad)
            assert refused.value.reason == "INVALID_TOKEN"
    assert decodes.count(good) == 1


async def test_a_cached_token_is_refused_once_its_key_is_no_longer_published(decodes: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    source = Published(key)
    verifier = local_verifier(source)
    token = sign(key, claims("u1"))
    await verifier.verify(token)
    source.keys.clear()  # the key set changed: the kid is unknown now
    with pytest.raises(Unauthenticated) as refused:
        await verifier.verify(token)
    assert refused.value.reason == "INVALID_TOKEN"
    # A key published again under the same kid is a new object: checked again, not trusted from before.
    source.keys[thumbprint(key.public_key())] = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), key.public_key().public_bytes(*POINT)
    )
    await verifier.verify(token)
    assert decodes == [token, token]


POINT = (serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


async def test_the_verified_cache_is_bounded(decodes: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    verifier = local_verifier(Published(key), cache_size=2)
    tokens = [sign(key, claims("u1", jti=f"t{i}")) for i in range(3)]
    for token in tokens:
        await verifier.verify(token)
    await verifier.verify(tokens[2])  # still kept
    await verifier.verify(tokens[0])  # the oldest went out: checked again
    assert decodes == [*tokens, tokens[0]]
