"""Real parts on ephemeral ports: the auth service in-process, an aiosmtpd SMTP server,
SQLite files in a temporary folder."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import grpc
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from auth.service import running
from invmesh.auth.v1 import auth_service_pb2_grpc
from mesh.config import Settings, load_settings
from mesh.db import Database


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Inbox:
    """What a real SMTP server received, parsed."""

    messages: list[EmailMessage] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        message = email.message_from_bytes(envelope.original_content or b"", policy=email.policy.SMTP)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.arrived.set()
        return "250 OK"

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.messages


class SmtpServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.inbox = Inbox()
        self._server: asyncio.Server | None = None
        self._sessions: list[SMTP] = []

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def session() -> SMTP:
            self._sessions.append(SMTP(self.inbox, loop=loop))
            return self._sessions[-1]

        self._server = await loop.create_server(session, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            # Server.close() leaves accepted connections open on Python 3.11: close them too.
            for smtp in self._sessions:
                if smtp.transport is not None:
                    smtp.transport.close()
            await asyncio.sleep(0)


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpServer]:
    server = SmtpServer(free_port())
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def settings(tmp_path: Path, smtp: SmtpServer, signing_key: ec.EllipticCurvePrivateKey) -> Settings:
    pem = signing_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return load_settings(
        invmesh_data_dir=tmp_path,
        bcrypt_rounds=4,
        smtp_url=smtp.url,
        jwt_private_key=pem,
        shutdown_grace_seconds=1,
        mail_retry_initial_seconds=0.05,
        mail_retry_max_seconds=0.5,
        smtp_timeout_seconds=5,
    )


@dataclass
class AuthEndpoint:
    port: int
    stub: auth_service_pb2_grpc.AuthServiceStub
    settings: Settings

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def auth(settings: Settings) -> AsyncIterator[AuthEndpoint]:
    async with running(settings, address="127.0.0.1:0") as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield AuthEndpoint(server.port, auth_service_pb2_grpc.AuthServiceStub(channel), settings)


@pytest.fixture
async def auth_db(settings: Settings) -> AsyncIterator[Database]:
    """The auth service's database, opened beside it, to check what was (not) written."""
    db = Database(settings.database_url("auth"))
    yield db
    await db.dispose()


def with_smtp(settings: Settings, url: str) -> Settings:
    return settings.model_copy(update={"smtp_url": SecretStr(url)})
