"""The server bootstrap: graceful drain on stop, and `invmesh up` as `make run` uses it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from email import policy
from email.parser import BytesParser
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY
from sqlalchemy import insert

from auth.models import User
from auth.service import running
from invmesh.auth.v1 import auth_service_pb2 as pb
from invmesh.auth.v1 import auth_service_pb2_grpc
from mesh.clients import health_stub
from mesh.config import Settings
from mesh.db import Database
from mesh.server import ListenError
from tests.conftest import METRICS_OFF, free_port


async def test_stop_lets_in_flight_calls_finish(settings: Settings) -> None:
    slow = settings.model_copy(update={"bcrypt_rounds": 12, "shutdown_grace_seconds": 10})
    async with running(slow, address="127.0.0.1:0") as server:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        await stub.GetJwks(pb.GetJwksRequest())  # connected
        in_flight = asyncio.ensure_future(
            stub.Register(pb.RegisterRequest(email="d@example.com", password="password1"))
        )
        await asyncio.sleep(0.05)  # the call is hashing its password when the stop begins
    reply = await in_flight
    assert reply.user.email == "d@example.com"
    await channel.close()


@contextlib.asynccontextmanager
async def auth_with_an_email_held(
    settings: Settings, auth_db: Database, email: str
) -> AsyncIterator[auth_service_pb2_grpc.AuthServiceStub]:
    """The auth service, connected, while another transaction inserting `email` is left open:
    a Register of that email waits on its lock until the block ends."""
    user = {"id": str(uuid.uuid4()), "email": email, "password_hash": "-", "roles": ["viewer"]}
    async with (
        running(settings, address="127.0.0.1:0") as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        auth_db.engine.connect() as holder,
    ):
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        await stub.GetJwks(pb.GetJwksRequest())  # connected
        transaction = await holder.begin()
        await holder.execute(insert(User).values(**user))
        try:
            yield stub
        finally:
            await transaction.rollback()


async def test_a_call_past_its_deadline_is_counted_and_logged_as_deadline_exceeded(
    settings: Settings, auth_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """The server cancels a handler whose caller's deadline passed: that call's status is
    DEADLINE_EXCEEDED in grpc_server_handled_total and in its log line, as the client saw it."""
    labels = {"grpc_type": "unary", "grpc_service": "invmesh.auth.v1.AuthService",
              "grpc_method": "Register", "grpc_code": "DeadlineExceeded"}  # fmt: skip

    def expired() -> float:
        return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0

    before = expired()
    caplog.set_level(logging.INFO, logger="mesh.rpc")
    async with auth_with_an_email_held(settings, auth_db, "late@example.com") as stub:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            request = pb.RegisterRequest(email="late@example.com", password="password1")
            await stub.Register(request, timeout=1.0)
        assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        async with asyncio.timeout(5):  # the server's side of the call ends after the client's
            while expired() == before:
                await asyncio.sleep(0.01)
    assert expired() == before + 1
    assert "rpc /invmesh.auth.v1.AuthService/Register DEADLINE_EXCEEDED" in caplog.messages


async def test_a_call_its_client_cancels_well_before_the_deadline_is_logged_as_cancelled(
    settings: Settings, auth_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a cancel that comes within DEADLINE_SLACK_SECONDS of the deadline counts as the
    deadline: the handler waits on the same lock, and the client gives up long before."""
    caplog.set_level(logging.INFO, logger="mesh.rpc")
    async with auth_with_an_email_held(settings, auth_db, "gone@example.com") as stub:
        call = stub.Register(pb.RegisterRequest(email="gone@example.com", password="password1"), timeout=30)
        await asyncio.sleep(0.5)  # the handler is waiting for the lock
        call.cancel()
        cancelled = "rpc /invmesh.auth.v1.AuthService/Register CANCELLED"
        async with asyncio.timeout(5):
            while cancelled not in caplog.messages:
                await asyncio.sleep(0.01)


async def test_a_second_server_cannot_share_a_taken_port(settings: Settings) -> None:
    """gRPC sets SO_REUSEPORT unless told not to, and two servers on one port would then take
    turns at its calls."""
    async with running(settings, address="127.0.0.1:0") as first:
        with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{first.port}$"):
            async with running(settings, address=f"127.0.0.1:{first.port}"):
                pass


async def test_serve_on_a_taken_port_says_so_in_one_line(settings: Settings, tmp_path: Path) -> None:
    async with running(settings, address="127.0.0.1:0") as first:
        env = service_env(tmp_path / "second", first.port)
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "launcher", "serve", "auth"), env=env, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(30):
            _, stderr = await process.communicate()
    assert process.returncode == 1
    assert stderr.decode().splitlines() == [
        f"invmesh: auth: cannot listen on 127.0.0.1:{first.port}: Address already in use"
    ]
    assert not (tmp_path / "second").exists(), "the database was opened before the port was checked"


def service_env(tmp_path: Path, port: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SMTP_URL", "JWT_PRIVATE_KEY") and not k.endswith("_DATABASE_URL")
    }
    return (
        env
        | METRICS_OFF
        | {
            "INVMESH_DATA_DIR": str(tmp_path),
            "AUTH_ADDR": f"127.0.0.1:{port}",
            "PRODUCTS_ADDR": f"127.0.0.1:{free_port()}",
            "INVENTORY_ADDR": f"127.0.0.1:{free_port()}",
            "BCRYPT_ROUNDS": "4",
            "LOG_LEVEL": "WARNING",
        }
    )


async def test_invmesh_up_serves_until_sigterm(tmp_path: Path) -> None:
    """What `make run` starts: the services and the facade on each of its ports, where a
    newcomer's whole first session works over REST, the verification link included."""
    port, web_ports = free_port(), (free_port(), free_port())
    env = service_env(tmp_path, port) | {
        "FACADE_PORTS": ",".join(map(str, web_ports)),
        "PUBLIC_URL": f"http://127.0.0.1:{web_ports[0]}",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "launcher", "up", env=env, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    try:
        async with asyncio.timeout(60):
            while b"all healthy" not in (line := await process.stderr.readline()):
                assert line, "invmesh up exited before its services were healthy"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = await health_stub(channel).Check(
                health_pb2.HealthCheckRequest(service="invmesh.auth.v1.AuthService")
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web_ports[0]}") as http:
            account = {"email": "new@example.com", "password": "password1"}
            assert (await http.post("/users/register", json=account)).status_code == 202
            async with asyncio.timeout(10):
                while not (mails := list((tmp_path / "outbox").glob("*.eml"))):
                    await asyncio.sleep(0.05)
            mail = BytesParser(policy=policy.default).parsebytes(mails[0].read_bytes())
            body = mail.get_body(("plain",))
            assert body is not None
            link = re.search(r"https?://\S+", body.get_content())
            assert link is not None
            assert (await http.get(link.group(0))).status_code == 200
            token = (await http.post("/users/login", json=account)).json()["access_token"]
            for web_port in web_ports:  # every route on every port, as the original layout had
                listed = await http.get(
                    f"http://127.0.0.1:{web_port}/products", headers={"authorization": f"Bearer {token}"}
                )
                assert listed.status_code == 200, listed.text
        for service in ("auth", "products", "inventory"):
            assert (tmp_path / f"{service}.db").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.communicate()
    assert process.returncode == 0


async def test_a_bad_setting_stops_the_service_with_a_clear_message(tmp_path: Path) -> None:
    env = service_env(tmp_path, free_port()) | {"BCRYPT_ROUNDS": "many", "SMTP_URL": "smtp://u:hunter2@"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "launcher", "serve", "auth", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    assert process.returncode == 1
    message = stderr.decode()
    assert "BCRYPT_ROUNDS" in message and "SMTP_URL" in message
    assert "hunter2" not in message and "Traceback" not in message


def test_the_facade_process_loads_no_database_token_or_mail_library() -> None:
    """The facade only transcodes: what a service needs stays out of its memory (its process
    was about 35 MiB larger with them)."""
    loaded = (
        "import sys, launcher.cli, facade.server\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'sqlalchemy', 'alembic', 'jwt', 'cryptography', 'bcrypt', 'aiosmtplib'}))\n"
    )
    run = subprocess.run([sys.executable, "-c", loaded], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
