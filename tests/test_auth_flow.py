"""Register → mail over SMTP → confirm → login → tokens that verify against GetJwks."""

from __future__ import annotations

import asyncio

import bcrypt
import grpc
import jwt
import pytest
from google.protobuf import json_format
from sqlalchemy import func, select

from auth.models import OutgoingMail, RefreshToken, User, VerificationToken
from auth.passwords import PasswordHasher
from invmesh.auth.v1 import auth_service_pb2 as pb
from mesh.db import Database
from mesh.tokens import JwksCache, TokenVerifier
from tests.conftest import AuthEndpoint, SmtpServer, link_token
from tests.rpc import error_reason, eventually, expect_error, field_violations

PASSWORD = "correct horse battery"


async def register(auth: AuthEndpoint, email: str = "Ann@Example.com", name: str = "Ann") -> pb.User:
    reply = await auth.stub.Register(pb.RegisterRequest(email=email, password=PASSWORD, name=name))
    return reply.user


async def count(db: Database, model: type) -> int:
    async with db.session() as session:
        return await session.scalar(select(func.count()).select_from(model)) or 0


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def test_register_confirm_login_and_verify_the_token(auth: AuthEndpoint, smtp: SmtpServer) -> None:
    user = await register(auth)
    assert user.email == "ann@example.com" and user.name == "Ann"
    assert not user.email_verified and list(user.roles) == ["viewer"]
    assert not user.id and not user.HasField("created_at")  # they would tell new from taken
    assert "password" not in json_format.MessageToJson(user).lower()

    (mail,) = await smtp.inbox.wait_for(1)
    assert mail["To"] == "ann@example.com"
    token = link_token(mail, auth.settings.public_url)
    assert len(token) >= 43  # 256 random bits, base64url

    confirmed = await auth.stub.VerifyEmail(pb.VerifyEmailRequest(token=token))
    assert confirmed.user.id and confirmed.user.email_verified

    login = await auth.stub.Login(pb.LoginRequest(email="ANN@example.com", password=PASSWORD))
    assert login.token_type == "Bearer" and login.expires_in == 900 and login.refresh_token

    # Verify the way any other service does: keys fetched from GetJwks, nothing else.
    async with grpc.aio.insecure_channel(auth.address) as channel:
        keys = JwksCache.from_auth_service(channel, min_refetch_interval=30)
        verifier = TokenVerifier(keys, issuer="invmesh-auth", audience="invmesh")
        identity = await verifier.verify(login.access_token)
    assert identity.subject == confirmed.user.id and identity.email == "ann@example.com"
    assert identity.email_verified and identity.roles == ("viewer",)

    header = jwt.get_unverified_header(login.access_token)
    claims = jwt.decode(login.access_token, options={"verify_signature": False})
    assert header["alg"] == "ES256" and header["typ"] == "at+jwt" and header["kid"]
    assert set(claims) == {
        "iss",
        "aud",
        "sub",
        "email",
        "email_verified",
        "roles",
        "pwd_at",
        "iat",
        "exp",
        "jti",
    }
    assert claims["pwd_at"] == 0  # the password never changed
    assert claims["exp"] - claims["iat"] == 900

    me = await auth.stub.GetMe(pb.GetMeRequest(), metadata=bearer(login.access_token))
    assert me.user.id == confirmed.user.id and me.user.email_verified


@pytest.mark.parametrize(
    ("request_fields", "field", "reason"),
    [
        ({"email": "not-an-email"}, "email", "INVALID_EMAIL"),
        ({"email": "a@b"}, "email", "INVALID_EMAIL"),
        ({"email": ""}, "email", "INVALID_EMAIL"),
        ({"password": "short"}, "password", "PASSWORD_TOO_SHORT"),
        ({"password": "é" * 37}, "password", "PASSWORD_TOO_LONG"),  # 37 characters, 74 bytes
        ({"password": "a" * 73}, "password", "PASSWORD_TOO_LONG"),
        ({"name": "n" * 201}, "name", "INVALID_NAME"),
    ],
)
async def test_register_rejects_bad_input_and_writes_nothing(
    auth: AuthEndpoint,
    auth_db: Database,
    smtp: SmtpServer,
    request_fields: dict[str, str],
    field: str,
    reason: str,
) -> None:
    fields = {"email": "bob@example.com", "password": PASSWORD, "name": "Bob"} | request_fields
    error = await expect_error(
        auth.stub.Register(pb.RegisterRequest(**fields)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert field in (error.details() or "")
    assert error_reason(error) == reason
    assert await count(auth_db, User) == 0
    assert await count(auth_db, OutgoingMail) == 0
    assert smtp.inbox.messages == []


async def test_register_names_every_bad_field_at_once(auth: AuthEndpoint, auth_db: Database) -> None:
    request = pb.RegisterRequest(email="not-an-address", password="short", name="n" * 201)
    error = await expect_error(auth.stub.Register(request), grpc.StatusCode.INVALID_ARGUMENT)
    assert field_violations(error) == {
        "email": "INVALID_EMAIL",
        "password": "PASSWORD_TOO_SHORT",
        "name": "INVALID_NAME",
    }
    assert error_reason(error) == "INVALID_FIELDS"
    assert "at least 8 characters" in str(error.details()) and "at most 200 characters" in str(
        error.details()
    )
    assert await count(auth_db, User) == 0


async def test_password_limit_counts_bytes_not_characters(auth: AuthEndpoint) -> None:
    user = await auth.stub.Register(pb.RegisterRequest(email="c@example.com", password="é" * 36, name=""))
    assert user.user.email == "c@example.com"  # 72 bytes is the limit, and allowed


async def test_a_taken_email_answers_as_a_new_one_and_its_owner_is_told(
    auth: AuthEndpoint, auth_db: Database, smtp: SmtpServer
) -> None:
    first = await register(auth, "dup@example.com")
    await smtp.inbox.wait_for(1)
    again = await register(auth, "DUP@Example.COM")  # case-insensitively the same address
    assert again == first  # nothing tells that the address has an account
    assert await count(auth_db, User) == 1
    assert await count(auth_db, VerificationToken) == 1
    _, notice = await smtp.inbox.wait_for(2)
    assert notice["To"] == "dup@example.com" and notice["Subject"] == "You already have an invmesh account"
    body = notice.get_body(("plain",))
    assert body is not None and "/users/verify" not in body.get_content()  # no link to take over
    for _ in range(5):  # the owner is told a few times an hour at most; the answer stays the same
        assert await register(auth, "dup@example.com") == first
    # Mails to the address, its link included, are limited per hour.
    await smtp.inbox.wait_for(auth.settings.verification_resends_per_account)
    async with asyncio.timeout(5):
        while await count(auth_db, OutgoingMail):  # until the relay has sent all it will
            await asyncio.sleep(0.05)
    assert len(smtp.inbox.messages) == auth.settings.verification_resends_per_account


async def test_login_answers_alike_for_unknown_email_and_wrong_password(auth: AuthEndpoint) -> None:
    await register(auth, "eve@example.com")
    answers = []
    for email, password in [
        ("eve@example.com", "wrong password"),
        ("nobody@example.com", PASSWORD),
        ("not an email", PASSWORD),
        ("eve@example.com", "x" * 100),  # past bcrypt's 72 bytes: still a plain refusal, not an error
    ]:
        error = await expect_error(
            auth.stub.Login(pb.LoginRequest(email=email, password=password)), grpc.StatusCode.UNAUTHENTICATED
        )
        answers.append((error.details(), error_reason(error)))
    assert len(set(answers)) == 1
    assert answers[0][1] == "INVALID_CREDENTIALS"


async def test_a_long_password_is_not_truncated(auth: AuthEndpoint) -> None:
    await auth.stub.Register(pb.RegisterRequest(email="f@example.com", password="a" * 72))
    await auth.stub.Login(pb.LoginRequest(email="f@example.com", password="a" * 72))
    await expect_error(
        auth.stub.Login(pb.LoginRequest(email="f@example.com", password="a" * 72 + "X")),
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def test_verification_tokens_are_single_use(auth: AuthEndpoint, smtp: SmtpServer) -> None:
    await register(auth, "g@example.com")
    (mail,) = await smtp.inbox.wait_for(1)
    token = link_token(mail, auth.settings.public_url)
    await auth.stub.VerifyEmail(pb.VerifyEmailRequest(token=token))
    for bad in (token, "unknown-token", ""):
        error = await expect_error(
            auth.stub.VerifyEmail(pb.VerifyEmailRequest(token=bad)), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert error_reason(error) == "INVALID_VERIFICATION_TOKEN"


async def test_resend_invalidates_older_tokens(
    auth: AuthEndpoint, auth_db: Database, smtp: SmtpServer
) -> None:
    await register(auth, "h@example.com")
    (first,) = await smtp.inbox.wait_for(1)
    await auth.stub.VerifyEmail(pb.VerifyEmailRequest(email="H@example.com"))
    second = (await smtp.inbox.wait_for(2))[1]
    old, new = (link_token(m, auth.settings.public_url) for m in (first, second))
    await expect_error(
        auth.stub.VerifyEmail(pb.VerifyEmailRequest(token=old)), grpc.StatusCode.INVALID_ARGUMENT
    )
    reply = await auth.stub.VerifyEmail(pb.VerifyEmailRequest(token=new))
    assert reply.user.email_verified
    # Verified: a re-send now mails nothing, and says so no differently.
    assert (
        await auth.stub.VerifyEmail(pb.VerifyEmailRequest(email="h@example.com")) == pb.VerifyEmailResponse()
    )
    # The relay deletes a row once the server accepted its mail, so just after the inbox has it.
    assert await eventually(lambda: count(auth_db, OutgoingMail), lambda queued: queued == 0) == 0
    assert len(smtp.inbox.messages) == 2


async def test_expired_verification_token_is_refused(
    auth: AuthEndpoint, auth_db: Database, smtp: SmtpServer
) -> None:
    await register(auth, "i@example.com")
    (mail,) = await smtp.inbox.wait_for(1)
    async with auth_db.transaction() as session:
        row = await session.scalar(select(VerificationToken))
        assert row is not None
        row.expires_at = row.expires_at.replace(year=2000)
    await expect_error(
        auth.stub.VerifyEmail(pb.VerifyEmailRequest(token=link_token(mail, auth.settings.public_url))),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_resend_answers_the_same_for_unknown_addresses(auth: AuthEndpoint, smtp: SmtpServer) -> None:
    await register(auth, "j@example.com")
    await smtp.inbox.wait_for(1)
    known = await auth.stub.VerifyEmail(pb.VerifyEmailRequest(email="j@example.com"))
    unknown = await auth.stub.VerifyEmail(pb.VerifyEmailRequest(email="nobody@example.com"))
    assert known == unknown == pb.VerifyEmailResponse()
    await smtp.inbox.wait_for(2)
    assert [m["To"] for m in smtp.inbox.messages] == ["j@example.com", "j@example.com"]


@pytest.mark.parametrize("email", ["", "   ", "nonsense", "a@", "@example.com", "a b@example.com"])
async def test_resend_to_an_empty_or_malformed_address_is_invalid_argument(
    auth: AuthEndpoint, email: str
) -> None:
    error = await expect_error(
        auth.stub.VerifyEmail(pb.VerifyEmailRequest(email=email)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (error.details() or "").startswith("email ")


async def test_verify_needs_an_email_or_a_token(auth: AuthEndpoint) -> None:
    error = await expect_error(
        auth.stub.VerifyEmail(pb.VerifyEmailRequest()), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "email" in (error.details() or "") and "token" in (error.details() or "")


async def test_refresh_rotates_and_reuse_revokes_the_family(auth: AuthEndpoint, auth_db: Database) -> None:
    await register(auth, "k@example.com")
    login = await auth.stub.Login(pb.LoginRequest(email="k@example.com", password=PASSWORD))
    rotated = await auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=login.refresh_token))
    assert rotated.refresh_token != login.refresh_token
    await auth.stub.GetMe(pb.GetMeRequest(), metadata=bearer(rotated.access_token))

    error = await expect_error(
        auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=login.refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert error_reason(error) == "REFRESH_TOKEN_REUSED"
    # The reuse revoked the token rotated from it as well.
    error = await expect_error(
        auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=rotated.refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert error_reason(error) == "INVALID_REFRESH_TOKEN"
    async with auth_db.session() as session:
        stored = (await session.scalars(select(RefreshToken.token_hash))).all()
    assert login.refresh_token not in stored and rotated.refresh_token not in stored  # hashes only

    await expect_error(
        auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token="made-up")),
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def test_passwords_are_stored_as_bcrypt_hashes(auth: AuthEndpoint, auth_db: Database) -> None:
    await register(auth, "l@example.com")
    async with auth_db.session() as session:
        stored = await session.scalar(select(User.password_hash))
    assert stored is not None and stored.startswith("$2b$04$") and PASSWORD not in stored


async def test_an_unknown_email_costs_a_full_bcrypt_check_at_the_configured_cost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked: list[bytes] = []
    check = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        checked.append(hashed)
        return check(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    hasher = PasswordHasher(rounds=5)
    assert await hasher.verify(PASSWORD, await hasher.hash(PASSWORD.encode()))
    assert not await hasher.verify(PASSWORD, None)
    assert not await hasher.verify("", None)
    (real, dummy, _) = checked
    assert dummy.startswith(b"$2b$05$") and len(dummy) == len(real)  # bcrypt ran, at cost 5


async def test_logout_revokes_that_sign_in_and_answers_alike_for_any_token(auth: AuthEndpoint) -> None:
    await register(auth, "l@example.com")
    phone = await auth.stub.Login(pb.LoginRequest(email="l@example.com", password=PASSWORD))
    laptop = await auth.stub.Login(pb.LoginRequest(email="l@example.com", password=PASSWORD))
    rotated = await auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=phone.refresh_token))

    # Signing out with the spent first token still ends the sign-in, its rotation included.
    assert await auth.stub.Logout(pb.LogoutRequest(refresh_token=phone.refresh_token)) == pb.LogoutResponse()
    error = await expect_error(
        auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=rotated.refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert error_reason(error) == "INVALID_REFRESH_TOKEN"
    # Again, or with a token never issued: the same answer.
    for token in (phone.refresh_token, rotated.refresh_token, "made-up"):
        assert await auth.stub.Logout(pb.LogoutRequest(refresh_token=token)) == pb.LogoutResponse()
    # The laptop signed in separately: its session goes on.
    assert (
        await auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=laptop.refresh_token))
    ).access_token
    error = await expect_error(auth.stub.Logout(pb.LogoutRequest()), grpc.StatusCode.INVALID_ARGUMENT)
    assert "refresh_token" in (error.details() or "")


async def test_reuse_revokes_every_descendant_of_that_sign_in_only(auth: AuthEndpoint) -> None:
    await register(auth, "m@example.com")
    phone = await auth.stub.Login(pb.LoginRequest(email="m@example.com", password=PASSWORD))
    laptop = await auth.stub.Login(pb.LoginRequest(email="m@example.com", password=PASSWORD))
    first = await auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=phone.refresh_token))
    second = await auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=first.refresh_token))

    # The phone's first token, stolen and replayed two rotations later:
    error = await expect_error(
        auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=phone.refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert error_reason(error) == "REFRESH_TOKEN_REUSED"
    for spent in (first.refresh_token, second.refresh_token):  # the whole chain is revoked
        error = await expect_error(
            auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=spent)),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        assert error_reason(error) in {"INVALID_REFRESH_TOKEN", "REFRESH_TOKEN_REUSED"}
    # The laptop signed in separately: its session goes on.
    assert (
        await auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=laptop.refresh_token))
    ).access_token
