"""Registration never waits on SMTP; mail is persisted and delivered once SMTP answers."""

from __future__ import annotations

import asyncio
import email
import email.policy
from pathlib import Path

import grpc

from auth.service import running
from invmesh.auth.v1 import auth_service_pb2 as pb
from invmesh.auth.v1 import auth_service_pb2_grpc
from mesh.config import Settings
from tests.conftest import SmtpServer, free_port, link_token, with_smtp
from tests.test_auth_flow import PASSWORD


async def register_once(settings: Settings, email_address: str) -> None:
    async with running(settings, address="127.0.0.1:0") as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            await stub.Register(pb.RegisterRequest(email=email_address, password=PASSWORD))


async def test_mail_survives_smtp_down_and_a_restart(settings: Settings) -> None:
    smtp = SmtpServer(free_port())  # nothing listens there yet
    # A delivery attempt the stop cuts short keeps the mail leased for twice the SMTP timeout
    # before another process may take it: 2 s here, well inside the inbox's wait (10 s).
    settings = with_smtp(settings, smtp.url).model_copy(update={"smtp_timeout_seconds": 1})
    await register_once(settings, "down@example.com")  # succeeds; delivery fails and is kept

    await smtp.start()
    try:
        # The service that queued the mail is gone; a new process delivers it.
        async with running(settings, address="127.0.0.1:0"):
            (mail,) = await smtp.inbox.wait_for(1)
        assert mail["To"] == "down@example.com"
        assert link_token(mail, settings.public_url)
    finally:
        await smtp.stop()


async def test_mail_arrives_when_smtp_comes_back(settings: Settings) -> None:
    smtp = SmtpServer(free_port())
    settings = with_smtp(settings, smtp.url)
    async with running(settings, address="127.0.0.1:0") as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            await stub.Register(pb.RegisterRequest(email="later@example.com", password=PASSWORD))
            await asyncio.sleep(0.3)  # a few failed attempts
            await smtp.start()
            try:
                (mail,) = await smtp.inbox.wait_for(1)
            finally:
                await smtp.stop()
    assert mail["To"] == "later@example.com"


async def test_a_hanging_smtp_server_does_not_stall_registration(settings: Settings) -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts the connection, never sends a greeting
        writer.close()

    hanging = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = hanging.sockets[0].getsockname()[1]
    settings = with_smtp(settings, f"smtp://127.0.0.1:{port}").model_copy(update={"smtp_timeout_seconds": 60})
    try:
        async with running(settings, address="127.0.0.1:0") as server:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = auth_service_pb2_grpc.AuthServiceStub(channel)
                # Far below the SMTP timeout: registration does not wait for delivery.
                await stub.Register(
                    pb.RegisterRequest(email="slow@example.com", password=PASSWORD), timeout=10
                )
                await stub.Register(
                    pb.RegisterRequest(email="slow2@example.com", password=PASSWORD), timeout=10
                )
    finally:
        hanging.close()


async def test_without_smtp_mail_is_written_to_the_outbox_folder(settings: Settings) -> None:
    settings = settings.model_copy(update={"smtp_url": None})
    outbox: Path = settings.outbox_dir
    async with running(settings, address="127.0.0.1:0") as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            await stub.Register(pb.RegisterRequest(email="outbox@example.com", password=PASSWORD))
        async with asyncio.timeout(10):  # the relay delivers just after the call returns
            while not list(outbox.glob("*.eml")):
                await asyncio.sleep(0.02)
    (path,) = outbox.glob("*.eml")
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.SMTP)
    assert message["To"] == "outbox@example.com"
    assert link_token(message, settings.public_url)
