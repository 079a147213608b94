"""Log lines carry the request id, and no credential ever reaches one."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator

import grpc
import pytest

from invmesh.auth.v1 import auth_service_pb2 as pb
from invmesh.auth.v1 import auth_service_pb2_grpc
from mesh import clients, context
from mesh.errors import DeadlineExceeded
from mesh.logs import LogFormatter, redact
from tests.conftest import AuthEndpoint, SmtpServer, link_token
from tests.rpc import expect_error


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogFormatter("auth", "json"))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


async def test_no_secret_reaches_a_log_line(
    auth: AuthEndpoint, smtp: SmtpServer, log_lines: io.StringIO
) -> None:
    password = "Sup3r-secret-passphrase"
    await auth.stub.Register(pb.RegisterRequest(email="sec@example.com", password=password))
    (mail,) = await smtp.inbox.wait_for(1)
    verification = link_token(mail, auth.settings.public_url)
    await auth.stub.VerifyEmail(pb.VerifyEmailRequest(token=verification))
    # Failing calls log too.
    await expect_error(
        auth.stub.VerifyEmail(pb.VerifyEmailRequest(token=verification)), grpc.StatusCode.INVALID_ARGUMENT
    )
    login = await auth.stub.Login(pb.LoginRequest(email="sec@example.com", password=password))
    await expect_error(
        auth.stub.Login(pb.LoginRequest(email="sec@example.com", password=password + "x")),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    refreshed = await auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=login.refresh_token))
    await auth.stub.GetMe(
        pb.GetMeRequest(), metadata=(("authorization", f"Bearer {refreshed.access_token}"),)
    )

    text = log_lines.getvalue()
    assert "rpc /invmesh.auth.v1.AuthService/Login UNAUTHENTICATED" in text
    for secret in (
        password,
        verification,
        login.access_token,
        login.refresh_token,
        refreshed.access_token,
        refreshed.refresh_token,
        "$2b$",
    ):
        assert secret not in text


def test_redact_masks_credentials_formatted_into_a_message() -> None:
    jwt_like = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"
    line = redact(f"Authorization: Bearer abc.def token=t0ps3cret {jwt_like} password: hunter22 ok")
    for secret in ("abc.def", "t0ps3cret", jwt_like, "hunter22"):
        assert secret not in line
    assert line.endswith("ok")


async def test_outgoing_calls_carry_the_request_id_and_the_callers_token(
    auth: AuthEndpoint, log_lines: io.StringIO
) -> None:
    await auth.stub.Register(pb.RegisterRequest(email="fwd@example.com", password="password1"))
    login = await auth.stub.Login(pb.LoginRequest(email="fwd@example.com", password="password1"))
    # As a handler in another service would: its context holds the caller's request id and token.
    context.request_id.set("req-42")
    context.access_token.set(login.access_token)
    channel = clients.channel(auth.address)
    try:
        reply = await auth_service_pb2_grpc.AuthServiceStub(channel).GetMe(pb.GetMeRequest())
    finally:
        await channel.close()
    assert reply.user.email == "fwd@example.com"
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    (served,) = [line for line in lines if line["msg"].startswith("rpc /invmesh.auth.v1.AuthService/GetMe")]
    assert served["request_id"] == "req-42" and served["msg"].endswith("OK")


async def test_outgoing_calls_never_outlive_the_callers_deadline(auth: AuthEndpoint) -> None:
    channel = clients.channel(auth.address, default_timeout=30)
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)
    try:
        await stub.GetJwks(pb.GetJwksRequest())  # no caller deadline: the default applies
        context.deadline.set(time.monotonic() - 0.001)  # the caller's own time is up
        with pytest.raises(DeadlineExceeded):
            await stub.GetJwks(pb.GetJwksRequest())
    finally:
        await channel.close()


@pytest.mark.parametrize(
    "line",
    [
        "BEARER abc.def",
        "Authorization: bearer abc",
        "sent EYJhbGciOi.eyJzdWIi.c2ln back",
        "Password=hunter2",
        "refresh_TOKEN: 'abc'",
        "pa\u017f\u017fword=hunter2",  # a long s folds to s, as in the regex's case-insensitive match
    ],
)
def test_redaction_catches_every_case_of_a_secret(line: str) -> None:
    assert "[redacted]" in redact(line)


def test_lines_without_secrets_are_kept_as_they_are() -> None:
    for line in ("rpc /invmesh.products.v1.ProductsService/GetProduct OK", "Straße é", ""):
        assert redact(line) == line
