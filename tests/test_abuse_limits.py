"""Abuse limits: failed logins per account and per client address, verification re-sends,
all counted in the auth database, refused before bcrypt runs, alike for unknown emails."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any

import grpc
import pytest
from sqlalchemy import delete, func, select, update

from auth import throttle
from auth.models import OutgoingMail, Throttle
from auth.passwords import BcryptQueue, Lane, PasswordHasher
from invmesh.auth.v1 import auth_service_pb2 as pb
from launcher.supervisor import _provision_service_secrets
from mesh import forwarding
from mesh.config import Settings, load_settings, parse_service_secrets
from mesh.db import Database, utcnow
from mesh.errors import ResourceExhausted
from tests.conftest import SERVICE_SECRET, AuthEndpoint, SmtpServer
from tests.rpc import error_reason, eventually, expect_error, retry_delay

PASSWORD = "correct horse battery"
LIMITED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "login_failures_per_account": 3,
            "login_failures_per_address": 8,
            "login_failure_window_seconds": 900,
            "verification_resends_per_account": 2,
            "verification_resends_per_address": 4,
        }
    )


@pytest.fixture
def bcrypt_checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every bcrypt check the auth service (in this process) runs, by password."""
    checks: list[str] = []
    verify = PasswordHasher.verify

    async def counted(self: PasswordHasher, password: str, hashed: str | None, **kwargs: Any) -> bool:
        checks.append(password)
        return await verify(self, password, hashed, **kwargs)

    monkeypatch.setattr(PasswordHasher, "verify", counted)
    yield checks


def as_facade(address: str, secret: str = SERVICE_SECRET) -> list[tuple[str, str]]:
    """Metadata naming `address` as the client, proven with the facade's secret (as the facade sends it)."""
    return forwarding.metadata(address, secret.encode())


def login(
    auth: AuthEndpoint, email: str, password: str = "wrong password", address: str | None = None
) -> grpc.aio.UnaryUnaryCall[pb.LoginRequest, pb.LoginResponse]:
    metadata = as_facade(address) if address else ()
    return auth.stub.Login(pb.LoginRequest(email=email, password=password), metadata=metadata)


async def refused_login(
    auth: AuthEndpoint, email: str, address: str | None = None
) -> tuple[str | None, str | None]:
    error = await expect_error(login(auth, email, address=address), grpc.StatusCode.UNAUTHENTICATED)
    return error.details(), error_reason(error)


async def limited(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    error = await expect_error(call, LIMITED)
    delay = retry_delay(error)
    assert delay is not None and 0 < delay <= 3600, delay
    return error


async def test_failed_logins_are_limited_per_account_before_bcrypt_runs(
    auth: AuthEndpoint, bcrypt_checks: list[str]
) -> None:
    await auth.stub.Register(pb.RegisterRequest(email="ann@example.com", password=PASSWORD))
    for _ in range(3):
        await refused_login(auth, "ann@example.com")
    checks = len(bcrypt_checks)

    # Throttled: even the right password is refused (or the limit would be a guessing oracle),
    # in any spelling of the address, and bcrypt never runs for it.
    for email, password in [("ann@example.com", PASSWORD), ("ANN@Example.com", "wrong password")]:
        error = await limited(login(auth, email, password))
        assert error_reason(error) == "TOO_MANY_LOGIN_ATTEMPTS"
        assert "too many failed logins" in (error.details() or "")
    assert len(bcrypt_checks) == checks

    # Another account, from the same address, is not affected.
    await auth.stub.Register(pb.RegisterRequest(email="bob@example.com", password=PASSWORD))
    assert (await login(auth, "bob@example.com", PASSWORD)).access_token


async def test_unknown_emails_are_limited_with_the_same_answers(auth: AuthEndpoint) -> None:
    await auth.stub.Register(pb.RegisterRequest(email="known@example.com", password=PASSWORD))
    answers: dict[str, list[tuple[object, ...]]] = {}
    for email in ("known@example.com", "unknown@example.com", "not an email"):
        answers[email] = [await refused_login(auth, email, address=f"198.51.100.{len(answers)}")]
        answers[email] += [await refused_login(auth, email, address=f"198.51.100.{len(answers)}")]
        answers[email] += [await refused_login(auth, email, address=f"198.51.100.{len(answers)}")]
        error = await limited(login(auth, email, address=f"198.51.100.{len(answers)}"))
        answers[email].append((error.code(), error.details(), error_reason(error)))
    assert answers["known@example.com"] == answers["unknown@example.com"] == answers["not an email"]


async def test_a_success_resets_the_accounts_count(auth: AuthEndpoint) -> None:
    await auth.stub.Register(pb.RegisterRequest(email="cy@example.com", password=PASSWORD))
    for _ in range(2):
        await refused_login(auth, "cy@example.com")
    await login(auth, "cy@example.com", PASSWORD)
    for _ in range(3):  # a full allowance again
        await refused_login(auth, "cy@example.com")
    await limited(login(auth, "cy@example.com", PASSWORD))


async def test_the_limit_lifts_when_the_window_ends(auth: AuthEndpoint, auth_db: Database) -> None:
    await auth.stub.Register(pb.RegisterRequest(email="di@example.com", password=PASSWORD))
    async with auth_db.transaction() as session:  # the registration's own counter is not this test's
        await session.execute(delete(Throttle))
    for _ in range(3):
        await refused_login(auth, "di@example.com")
    await limited(login(auth, "di@example.com", PASSWORD))
    async with auth_db.transaction() as session:  # the window ends: as if 15 minutes went by
        await session.execute(update(Throttle).values(window_ends_at=utcnow()))
    assert (await login(auth, "di@example.com", PASSWORD)).access_token

    # Ended windows are pruned; current ones are kept.
    await refused_login(auth, "di@example.com")
    await refused_login(auth, "other@example.com")
    account = throttle.Limit("login-account", "di@example.com", 3, dt.timedelta(minutes=15))
    async with auth_db.transaction() as session:
        ended = update(Throttle).where(Throttle.key == account.key)
        await session.execute(ended.values(window_ends_at=utcnow().replace(year=2000)))
    assert await throttle.prune(auth_db, utcnow()) == 1
    async with auth_db.session() as session:
        assert await session.scalar(select(func.count()).select_from(Throttle)) == 2  # other's, the address's


async def test_failed_logins_are_limited_per_client_address(auth: AuthEndpoint) -> None:
    # Like the facade, the test names the client in x-forwarded-for, with the facade's proof.
    # Eight failures on eight accounts from one client...
    for n in range(8):
        await refused_login(auth, f"spray{n}@example.com", address="203.0.113.7")
    # ...and the ninth account is refused too, from that client only.
    error = await limited(login(auth, "spray9@example.com", address="203.0.113.7"))
    assert error_reason(error) == "TOO_MANY_LOGIN_ATTEMPTS"
    await refused_login(auth, "spray9@example.com", address="203.0.113.8")


async def test_a_loopback_caller_without_the_facades_proof_cannot_name_another_address(
    auth: AuthEndpoint,
) -> None:
    stale = forwarding.metadata("192.0.2.250", SERVICE_SECRET.encode(), now=time.time() - 3600)
    for n, metadata in enumerate(
        [
            [("x-forwarded-for", "192.0.2.1")],  # no proof at all
            forwarding.metadata("192.0.2.2", b"not-the-facade-secret-0123456789"),
            [("x-forwarded-for", "192.0.2.3"), as_facade("192.0.2.99")[1]],  # another address's proof
            [("x-forwarded-for", "192.0.2.4"), stale[1]],  # an old proof
            [("x-forwarded-for", "192.0.2.5"), ("x-invmesh-forwarder", "1.")],
            [("x-forwarded-for", "192.0.2.6"), ("x-invmesh-forwarder", "garbage")],
            [("x-forwarded-for", "192.0.2.7")],
            [("x-forwarded-for", "192.0.2.8")],
        ]
    ):
        # A new made-up address each time, from 127.0.0.1: all counted against 127.0.0.1.
        request = pb.LoginRequest(email=f"spray{n}@example.com", password="wrong password")
        await expect_error(auth.stub.Login(request, metadata=metadata), grpc.StatusCode.UNAUTHENTICATED)
    await limited(auth.stub.Login(pb.LoginRequest(email="spray9@example.com", password="x"), metadata=[]))
    # The facade's own client, proven, is another client.
    await refused_login(auth, "spray9@example.com", address="192.0.2.200")


async def test_the_facades_secret_gets_no_service_token(auth: AuthEndpoint) -> None:
    request = pb.IssueServiceTokenRequest(client_id="facade", client_secret=SERVICE_SECRET)
    error = await expect_error(auth.stub.IssueServiceToken(request), grpc.StatusCode.UNAUTHENTICATED)
    assert error_reason(error) == "INVALID_CLIENT"


def test_invmesh_up_gives_the_facade_a_secret_that_auth_lists() -> None:
    provisioned = _provision_service_secrets(load_settings(service_secrets=None))
    listed = parse_service_secrets(provisioned["auth"]["SERVICE_SECRETS"])
    assert listed["facade"] == provisioned["facade"]["SERVICE_SECRET"].encode()
    assert set(listed) == {"products", "inventory", "facade"}


async def test_with_the_shared_bcrypt_lane_full_a_client_that_failed_lately_is_refused_before_any_write(
    auth: AuthEndpoint, auth_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await refused_login(auth, "first@example.com", address="203.0.113.5")
    check = BcryptQueue.check

    def shared_lane_full(self: BcryptQueue, lane: Lane) -> None:
        if lane is Lane.SHARED:
            raise ResourceExhausted(
                "full", reason="TOO_MANY_CONCURRENT_LOGINS", retry_after=dt.timedelta(seconds=2)
            )
        check(self, lane)

    monkeypatch.setattr(BcryptQueue, "check", shared_lane_full)
    counted = []
    take = throttle.take

    async def counting_take(*args: Any, **kwargs: Any) -> int:
        counted.append(args)
        return await take(*args, **kwargs)

    monkeypatch.setattr(throttle, "take", counting_take)
    error = await limited(login(auth, "second@example.com", address="203.0.113.5"))
    assert error_reason(error) == "TOO_MANY_CONCURRENT_LOGINS"
    assert counted == [], "the refusal went through the database"
    address_key = throttle.Limit("login-address", "203.0.113.5", 1, dt.timedelta(1)).key
    account_key = throttle.Limit("login-account", "second@example.com", 1, dt.timedelta(1)).key
    async with auth_db.session() as session:
        assert await session.scalar(select(Throttle.attempts).where(Throttle.key == address_key)) == 1
        assert await session.scalar(select(Throttle.attempts).where(Throttle.key == account_key)) is None
    # A client and an account with nothing counted take the clean lane: still checked.
    await refused_login(auth, "third@example.com", address="203.0.113.6")


async def test_concurrent_attempts_cannot_slip_past_the_limit(
    auth: AuthEndpoint, bcrypt_checks: list[str]
) -> None:
    await auth.stub.Register(pb.RegisterRequest(email="eve@example.com", password=PASSWORD))
    results = await asyncio.gather(
        *(login(auth, "eve@example.com", f"guess {n}") for n in range(12)),
        return_exceptions=True,
    )
    codes = sorted(r.code().name for r in results if isinstance(r, grpc.aio.AioRpcError))
    assert codes == ["RESOURCE_EXHAUSTED"] * 9 + ["UNAUTHENTICATED"] * 3
    assert len([p for p in bcrypt_checks if p.startswith("guess")]) == 3


async def test_verification_resends_are_limited_alike_for_unknown_emails(
    auth: AuthEndpoint, auth_db: Database, smtp: SmtpServer
) -> None:
    await auth.stub.Register(pb.RegisterRequest(email="fay@example.com", password=PASSWORD))
    await smtp.inbox.wait_for(1)
    answers = {}
    for n, email in enumerate(("fay@example.com", "nobody@example.com")):
        client = as_facade(f"192.0.2.{n}")
        request = pb.VerifyEmailRequest(email=email)
        replies = [await auth.stub.VerifyEmail(request, metadata=client) for _ in range(2)]
        assert replies == [pb.VerifyEmailResponse()] * 2
        error = await limited(auth.stub.VerifyEmail(request, metadata=client))
        assert error_reason(error) == "TOO_MANY_VERIFICATION_MAILS"
        answers[email] = (error.code(), error.details(), error_reason(error))
        # The limit is per address typed, from any client.
        await limited(auth.stub.VerifyEmail(request, metadata=as_facade(f"198.51.100.{n}")))
    assert len(set(answers.values())) == 1
    messages = await smtp.inbox.wait_for(3)
    assert [m["To"] for m in messages] == ["fay@example.com"] * 3  # the first mail and two re-sends
    # The relay deletes a row once the server accepted its mail, so just after the inbox has it.
    assert await eventually(lambda: outbox_size(auth_db), lambda size: size == 0) == 0


async def outbox_size(db: Database) -> int:
    async with db.session() as session:
        return await session.scalar(select(func.count()).select_from(OutgoingMail)) or 0


async def test_verification_resends_are_limited_per_client_address(auth: AuthEndpoint) -> None:
    for n in range(4):
        await auth.stub.VerifyEmail(pb.VerifyEmailRequest(email=f"x{n}@example.com"))
    await limited(auth.stub.VerifyEmail(pb.VerifyEmailRequest(email="x9@example.com")))


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("ipv4:203.0.113.5:40000", None, "203.0.113.5"),
        ("ipv4:127.0.0.1:40000", "192.0.2.1", "192.0.2.1"),
        ("ipv6:[::1]:40000", "2001:db8::1", "2001:db8::1"),
        ("ipv6:[::ffff:127.0.0.1]:40000", None, "127.0.0.1"),
        ("ipv4:127.0.0.1:40000", "::ffff:192.0.2.1", "192.0.2.1"),
        ("ipv4:127.0.0.1:40000", "[2001:db8::2]", "2001:db8::2"),
        ("ipv4:127.0.0.1:40000", "not-an-ip", "127.0.0.1"),
        ("ipv4:127.0.0.1:40000", "", "127.0.0.1"),
        ("unix:/run/auth.sock", None, "unix:/run/auth.sock"),
        (None, None, "unknown"),
    ],
)
def test_client_address(peer: str | None, forwarded: str | None, client: str) -> None:
    assert throttle.client_address(peer, forwarded) == client


def test_a_forwarding_proof_holds_for_its_address_secret_and_time_only() -> None:
    secret, now = b"the-facade-secret-0123456789", 1_800_000_000.0
    (_, (_, proof)) = forwarding.metadata("192.0.2.1", secret, now=now)
    assert forwarding.proven_address("192.0.2.1", proof, secret, now=now + 60) == "192.0.2.1"
    assert forwarding.proven_address("192.0.2.2", proof, secret, now=now) is None
    assert forwarding.proven_address("192.0.2.1", proof, b"another-secret-0123456789", now=now) is None
    assert forwarding.proven_address("192.0.2.1", proof, None, now=now) is None
    assert forwarding.proven_address("192.0.2.1", proof, secret, now=now + 301) is None
    assert forwarding.proven_address("192.0.2.1", None, secret, now=now) is None


@pytest.fixture
async def auth_db(settings: Settings) -> AsyncIterator[Database]:
    db = Database(settings.database_url("auth"))
    yield db
    await db.dispose()


async def test_a_stolen_access_token_cannot_guess_the_password_through_change_password(
    auth: AuthEndpoint, bcrypt_checks: list[str]
) -> None:
    await auth.stub.Register(pb.RegisterRequest(email="gus@example.com", password=PASSWORD))
    signed_in = await auth.stub.Login(pb.LoginRequest(email="gus@example.com", password=PASSWORD))
    bearer = (("authorization", f"Bearer {signed_in.access_token}"),)
    for n in range(3):
        await expect_error(
            auth.stub.ChangePassword(
                pb.ChangePasswordRequest(current_password=f"guess {n}", new_password="a new password"),
                metadata=bearer,
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    right = pb.ChangePasswordRequest(current_password=PASSWORD, new_password="a new password")
    error = await limited(auth.stub.ChangePassword(right, metadata=bearer))
    assert error_reason(error) == "TOO_MANY_LOGIN_ATTEMPTS"
    await limited(login(auth, "gus@example.com", PASSWORD))  # one count for both ways in
    assert bcrypt_checks.count(PASSWORD) == 1  # the first login's; none while throttled
