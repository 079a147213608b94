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
    message = await grpcurl("-plaintext", auth.address, "describe", "invmesh.auth.v1.RegisterRequest")
    assert "string password = 2" in message

    health = json.loads(await grpcurl("-plaintext", auth.address, "grpc.health.v1.Health/Check"))
    assert health == {"status": "SERVING"}

    registered = json.loads(
        await grpcurl(
            "-plaintext",
            "-d",
            json.dumps({"email": "ops@example.com", "password": "operator-pass"}),
            auth.address,
            "invmesh.auth.v1.AuthService/Register",
        )
    )
    assert registered["user"]["email"] == "ops@example.com"
    login = json.loads(
        await grpcurl(
            "-plaintext",
            "-d",
            json.dumps({"email": "ops@example.com", "password": "operator-pass"}),
            auth.address,
            "invmesh.auth.v1.AuthService/Login",
        )
    )
    me = json.loads(
        await grpcurl(
            "-plaintext",
            "-H",
            f"authorization: Bearer {login['access_token']}",
            auth.address,
            "invmesh.auth.v1.AuthService/GetMe",
        )
    )
    assert me["user"]["id"] == registered["user"]["id"]
