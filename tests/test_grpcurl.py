"""An operator's view: the real grpcurl binary, through server reflection only."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tests.conftest import AuthEndpoint

GRPCURL = Path(sys.executable).with_name("grpcurl")


async def grpcurl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        str(GRPCURL), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def test_grpcurl_lists_describes_and_calls_through_reflection(auth: AuthEndpoint) -> None:
    services = (await grpcurl("-plaintext", auth.address, "list")).split()
    assert {
        "invmesh.auth.v1.AuthService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(services)

    described = await grpcurl("-plaintext", auth.address, "describe", "invmesh.auth.v1.AuthService")
    for rpc in ("Register", "Login", "VerifyEmail", "RefreshToken", "GetMe", "GetJwks"):
        assert f"rpc {rpc} (" in described
    method = await grpcurl("-plaintext", auth.address, "describe", "invmesh.auth.v1.AuthService.GetMe")
    assert "is a method" in method and 'get:"/users/me"' in method
    message = await grpcurl("-plaintext", auth.address, "describe", "invmesh.auth.v1.RegisterRequest")
    assert "string password = 2" in message

    async def call(method: str, body: dict[str, str] | None = None, *headers: str) -> dict[str, object]:
        args = [arg for header in headers for arg in ("-H", header)]
        if body is not None:
            args += ["-d", json.dumps(body)]
        return json.loads(await grpcurl("-plaintext", *args, auth.address, method))

    assert await call("grpc.health.v1.Health/Check") == {"status": "SERVING"}
    credentials = {"email": "ops@example.com", "password": "operator-pass"}
    registered = await call("invmesh.auth.v1.AuthService/Register", credentials)
    login = await call("invmesh.auth.v1.AuthService/Login", credentials)
    me = await call(
        "invmesh.auth.v1.AuthService/GetMe", None, f"authorization: Bearer {login['access_token']}"
    )
    assert me["user"] == registered["user"]
