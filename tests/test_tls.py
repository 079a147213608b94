"""TLS on every hop, with real servers and certificates from `invmesh certs init`: TLS and
mTLS ports refuse what they should, a renewed certificate is served without a restart, the
plaintext probe listener answers health checks only, and grpcurl speaks to an mTLS server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from facade.app import create_app
from launcher import certs
from launcher.cli import main as invmesh
from mesh.clients import channel, channel_credentials, health_stub
from mesh.config import ConfigError, Settings, load_settings
from mesh.server import MeshServer
from mesh.tls import KeyPair
from mesh.tokens import TokenVerifier
from tests.facade.conftest import serving
from tests.test_supervisor import admin_token, invmesh_up, up_env

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
GRPCURL = Path(sys.executable).with_name("grpcurl")


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and every component's certificate, as `invmesh certs init` writes them."""
    directory = tmp_path_factory.mktemp("tls")
    certs.init(directory)
    return directory


@pytest.fixture(scope="module")
def other_ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same layout from another CA, whose certificates the first CA's servers refuse."""
    directory = tmp_path_factory.mktemp("other-tls")
    certs.init(directory)
    return directory


def server_pair(tls_dir: Path, name: str = "auth", *, mtls: bool = False) -> KeyPair:
    return KeyPair(
        tls_dir / name / "tls.crt", tls_dir / name / "tls.key", tls_dir / "ca.crt" if mtls else None
    )


def client_settings(ca: Path, pair_dir: Path | None = None) -> Settings:
    """A client's settings: trusting `ca`, presenting `pair_dir`'s certificate if given."""
    files: dict[str, object] = {"grpc_tls_ca_file": ca}
    if pair_dir is not None:
        files |= {"grpc_tls_cert_file": pair_dir / "tls.crt", "grpc_tls_key_file": pair_dir / "tls.key"}
    return load_settings(**files)


def health_server(tls: KeyPair | None, *, probe: bool = False, lame_duck: float = 0) -> MeshServer:
    """A MeshServer with no servicer of its own (health and reflection), for free ports."""
    return MeshServer(
        [],
        address="127.0.0.1:0",
        verifier=cast(TokenVerifier, None),  # health and reflection are public
        tls=tls,
        probe_address="127.0.0.1:0" if probe else "",
        lame_duck_seconds=lame_duck,
        grace_seconds=1,
    )


@asynccontextmanager
async def health_only(tls: KeyPair | None) -> AsyncIterator[MeshServer]:
    server = health_server(tls)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def check(address: str, credentials: grpc.ChannelCredentials | None) -> int:
    """The server's health over a new channel; AioRpcError if the call fails."""
    async with channel(address, credentials=credentials, forward_context=False) as opened:
        reply = await health_stub(opened).Check(health_pb2.HealthCheckRequest(), timeout=5)
        status: int = reply.status
        return status


async def kubelet_check(address: str) -> int:
    """A health check as kubelet's gRPC probe makes it: plaintext, no service config."""
    async with grpc.aio.insecure_channel(address) as opened:
        reply = await health_stub(opened).Check(health_pb2.HealthCheckRequest(), timeout=5)
        status: int = reply.status
        return status


def served_serial(port: int, ca: Path, client_dir: Path | None = None) -> int:
    """The serial number of the certificate a TLS server on `port` presents to a new
    connection (presenting `client_dir`'s certificate if given)."""
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    if client_dir is not None:
        context.load_cert_chain(client_dir / "tls.crt", client_dir / "tls.key")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as wrapped:
            der = wrapped.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def renew(tls_dir: Path, name: str) -> int:
    """A new certificate and key for `name` from the same CA, written over the old files in
    place (the least atomic way); its serial number."""
    authority = certs.load_authority(tls_dir)
    certificate, key = certs.issue(authority, name)
    certs.write_leaf(tls_dir / name, authority, certificate, key)
    return certificate.serial_number


# --- settings ---


def test_a_certificate_without_its_key_is_a_config_error(tls_dir: Path) -> None:
    with pytest.raises(ConfigError, match="GRPC_TLS_CERT_FILE is set without GRPC_TLS_KEY_FILE"):
        load_settings(grpc_tls_cert_file=tls_dir / "auth" / "tls.crt")
    with pytest.raises(ConfigError, match="FACADE_TLS_KEY_FILE is set without FACADE_TLS_CERT_FILE"):
        load_settings(facade_tls_key_file=tls_dir / "facade" / "tls.key")
    with pytest.raises(ConfigError, match=r"GRPC_TLS_CLIENT_CA_FILE \(mTLS\) needs"):
        load_settings(grpc_tls_client_ca_file=tls_dir / "ca.crt")


def test_a_missing_or_wrong_file_is_named_with_its_setting(tls_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.crt"
    with pytest.raises(ConfigError, match=re.escape(f"GRPC_TLS_CA_FILE: {missing} does not exist")):
        load_settings(grpc_tls_ca_file=missing)
    key = tls_dir / "auth" / "tls.key"
    with pytest.raises(ConfigError, match=re.escape(f"GRPC_TLS_CERT_FILE: {key} is not a PEM certificate")):
        load_settings(grpc_tls_cert_file=key, grpc_tls_key_file=key)
    certificate = tls_dir / "auth" / "tls.crt"
    with pytest.raises(
        ConfigError, match=re.escape(f"FACADE_TLS_KEY_FILE: {certificate} is not a PEM private key")
    ):
        load_settings(facade_tls_cert_file=certificate, facade_tls_key_file=certificate)
    other_key = tls_dir / "products" / "tls.key"
    with pytest.raises(
        ConfigError, match=re.escape(f"the key {other_key} does not belong to the certificate")
    ):
        load_settings(grpc_tls_cert_file=certificate, grpc_tls_key_file=other_key)


def test_serve_with_a_missing_certificate_says_so_in_one_line(tmp_path: Path) -> None:
    env = os.environ | {
        "GRPC_TLS_CERT_FILE": str(tmp_path / "tls.crt"),
        "GRPC_TLS_KEY_FILE": str(tmp_path / "tls.key"),
        "AUTH_ADDR": "127.0.0.1:1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "launcher", "serve", "auth"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"GRPC_TLS_CERT_FILE: {tmp_path / 'tls.crt'} does not exist" in done.stderr


# --- gRPC servers ---


async def test_a_tls_port_refuses_plaintext_and_serves_tls(tls_dir: Path) -> None:
    async with health_only(server_pair(tls_dir)) as server:
        address = f"127.0.0.1:{server.port}"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await check(address, None)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await check(address, channel_credentials(client_settings(tls_dir / "ca.crt"))) == SERVING


async def test_a_client_of_another_ca_refuses_the_server(tls_dir: Path, other_ca_dir: Path) -> None:
    async with health_only(server_pair(tls_dir)) as server:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await check(
                f"127.0.0.1:{server.port}", channel_credentials(client_settings(other_ca_dir / "ca.crt"))
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_refuses_clients_without_a_certificate_or_with_another_cas(
    tls_dir: Path, other_ca_dir: Path
) -> None:
    async with health_only(server_pair(tls_dir, mtls=True)) as server:
        address = f"127.0.0.1:{server.port}"
        ca = tls_dir / "ca.crt"
        refused = [
            client_settings(ca),  # no certificate
            client_settings(ca, other_ca_dir / "facade"),  # signed by another CA
        ]
        for settings in refused:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await check(address, channel_credentials(settings))
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await check(address, channel_credentials(client_settings(ca, tls_dir / "facade"))) == SERVING


async def test_a_renewed_certificate_is_served_to_new_connections_without_a_restart(
    tmp_path: Path,
) -> None:
    certs.init(tmp_path)
    ca, client_dir = tmp_path / "ca.crt", tmp_path / "facade"
    async with health_only(server_pair(tmp_path, mtls=True)) as server:
        address = f"127.0.0.1:{server.port}"
        client = channel_credentials(client_settings(ca, client_dir))
        async with channel(address, credentials=client, forward_context=False) as kept:
            assert (await health_stub(kept).Check(health_pb2.HealthCheckRequest())).status == SERVING
            first = x509.load_pem_x509_certificate((tmp_path / "auth" / "tls.crt").read_bytes())
            assert await asyncio.to_thread(served_serial, server.port, ca, client_dir) == first.serial_number
            renewed = renew(tmp_path, "auth")
            assert await asyncio.to_thread(served_serial, server.port, ca, client_dir) == renewed
            assert await check(address, client) == SERVING  # a gRPC client's new connection
            # The connection opened before goes on with the certificate it was given.
            assert (await health_stub(kept).Check(health_pb2.HealthCheckRequest())).status == SERVING


async def test_the_probe_listener_answers_plaintext_health_checks_while_the_main_port_is_tls(
    tls_dir: Path,
) -> None:
    server = health_server(server_pair(tls_dir, mtls=True), probe=True, lame_duck=1)
    await server.start()
    try:
        probe = f"127.0.0.1:{server.probe_port}"
        assert await kubelet_check(probe) == SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await check(f"127.0.0.1:{server.port}", None)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # Health only: no reflection, no other service.
        async with grpc.aio.insecure_channel(probe) as opened:
            reflection = opened.stream_stream(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                async for _ in reflection(iter([request])):
                    pass
            assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        # Stopping: the probe turns NOT_SERVING with the main server, then stops with it.
        stopping = asyncio.create_task(server.stop())
    await asyncio.sleep(0.2)  # within the lame duck
    assert await kubelet_check(probe) == NOT_SERVING
    await stopping
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await kubelet_check(probe)
    assert gone.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_comma_list_of_tls_replicas_is_checked_for_its_host_name(tls_dir: Path) -> None:
    """`invmesh up --replicas` gives callers `127.0.0.1:P,127.0.0.1:Q`, which the channel
    turns into an ipv4: list: the certificate is checked for the replicas' host."""
    credentials = channel_credentials(client_settings(tls_dir / "ca.crt"))
    async with health_only(server_pair(tls_dir)) as first, health_only(server_pair(tls_dir)) as second:
        for host in ("127.0.0.1", "localhost"):
            replicas = f"{host}:{first.port},{host}:{second.port}"
            assert await check(replicas, credentials) == SERVING


# --- invmesh up --tls: every hop ---


@pytest.mark.slow
async def test_up_with_tls_serves_the_journey_over_https_and_mtls(tmp_path: Path) -> None:
    """`invmesh up --tls` makes the certificates, and the whole system serves over them: an
    HTTPS client → the facade → mTLS gRPC → the services (and between them)."""
    env = up_env(tmp_path / "data")
    env["PUBLIC_URL"] = env["PUBLIC_URL"].replace("http://", "https://")
    tls = tmp_path / "data" / "tls"
    async with invmesh_up(env, "--tls") as up:
        await up.line("all healthy")
        facade = await up.line("facade is serving on")
        assert f"https://127.0.0.1:{env['FACADE_PORTS']}" in facade
        assert any(f"made a development CA and certificates in {tls}" in line for line in up.said)
        for name in ("auth", "products", "inventory"):
            mode = (tls / name / "tls.key").stat().st_mode & 0o777
            assert mode == 0o600, name
            # The services refuse plaintext, and clients without a certificate.
            with pytest.raises(grpc.aio.AioRpcError):
                await kubelet_check(up.address(name))
            with pytest.raises(grpc.aio.AioRpcError):
                await check(up.address(name), channel_credentials(client_settings(tls / "ca.crt")))
        base = f"https://127.0.0.1:{env['FACADE_PORTS']}"
        verified = ssl.create_default_context(cafile=tls / "ca.crt")
        async with httpx.AsyncClient(base_url=base, verify=verified, timeout=10) as http:
            token = await admin_token(http, tmp_path / "data" / "outbox")
            staff = {"authorization": f"Bearer {token}"}
            product = {"sku": "TLS-1", "name": "Sealed", "price": "1.50"}
            created = await http.post("/products", json=product, headers=staff)
            assert created.status_code == 201, created.text
            pid = created.json()["id"]
            # inventory checks the product with products: a call between services, over mTLS
            movement = {"product_id": pid, "type": "IN", "quantity": 5}
            moved = await http.post("/inventory", json=movement, headers=staff)
            assert moved.status_code == 201, moved.text
            # and reports the stock to products, another
            async with asyncio.timeout(10):
                while (await http.get(f"/products/{pid}", headers=staff)).json().get("stock") != 5:
                    await asyncio.sleep(0.1)
        with pytest.raises(httpx.HTTPError):  # HTTPS only
            async with httpx.AsyncClient(timeout=5) as plain:
                await plain.get(f"http://127.0.0.1:{env['FACADE_PORTS']}/healthz")


# --- the facade's HTTPS ---


async def test_the_facade_serves_https_and_a_renewed_certificate_without_a_restart(tmp_path: Path) -> None:
    certs.init(tmp_path)
    ca = tmp_path / "ca.crt"
    settings = load_settings(
        invmesh_data_dir=tmp_path,
        facade_tls_cert_file=tmp_path / "facade" / "tls.crt",
        facade_tls_key_file=tmp_path / "facade" / "tls.key",
        facade_max_head_bytes=4096,
    )
    async with serving(create_app(settings), settings=settings) as url:
        port = urlsplit(url).port
        assert port is not None
        verified = ssl.create_default_context(cafile=ca)
        async with httpx.AsyncClient(base_url=f"https://localhost:{port}", verify=verified) as http:
            assert (await http.get("/healthz")).json() == {"status": "SERVING"}
            # facade.limits' protocol keeps its limits under TLS: a head too large gets 431.
            refused = await http.get("/healthz", headers={"x-big": "x" * 8192})
            assert refused.status_code == 431
        with pytest.raises(httpx.HTTPError):
            async with httpx.AsyncClient() as plain:
                await plain.get(f"http://127.0.0.1:{port}/healthz")
        first = x509.load_pem_x509_certificate((tmp_path / "facade" / "tls.crt").read_bytes())
        assert await asyncio.to_thread(served_serial, port, ca) == first.serial_number
        renewed = renew(tmp_path, "facade")
        assert await asyncio.to_thread(served_serial, port, ca) == renewed
        async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", verify=verified) as http:
            assert (await http.get("/healthz")).status_code == 200


# --- operators ---


async def grpcurl(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(GRPCURL), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_grpcurl_lists_and_checks_health_with_a_client_certificate(tls_dir: Path) -> None:
    async with health_only(server_pair(tls_dir, mtls=True)) as server:
        address = f"127.0.0.1:{server.port}"
        tls = ["-cacert", str(tls_dir / "ca.crt")]
        mtls = [
            *tls,
            "-cert",
            str(tls_dir / "facade" / "tls.crt"),
            "-key",
            str(tls_dir / "facade" / "tls.key"),
        ]
        status, listed = await grpcurl(*mtls, address, "list")
        assert status == 0, listed
        assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(listed.split())
        status, checked = await grpcurl(*mtls, address, "grpc.health.v1.Health/Check")
        assert status == 0 and json.loads(checked) == {"status": "SERVING"}, checked
        for refused in (tls, ["-plaintext"]):  # no client certificate; no TLS
            status, said = await grpcurl(*refused, "-connect-timeout", "2", address, "list")
            assert status != 0, said


def test_certs_init_writes_the_secret_layout_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        invmesh(["certs", "init", str(tmp_path), "--namespace", "shop", "--days", "30"])
    assert done.value.code == 0
    said = capsys.readouterr().out
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    for name in ("auth", "products", "inventory", "facade"):
        for leaf in ("tls.crt", "tls.key", "ca.crt"):
            assert f"wrote {tmp_path / name / leaf}" in said
        assert (tmp_path / name / "tls.key").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / name / "ca.crt").read_bytes() == (tmp_path / "ca.crt").read_bytes()
        certificate = x509.load_pem_x509_certificate((tmp_path / name / "tls.crt").read_bytes())
        certificate.verify_directly_issued_by(ca)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(names.get_values_for_type(x509.DNSName)) == {
            "localhost",
            name,
            f"{name}-headless",
            f"{name}.shop.svc",
            f"{name}.shop.svc.cluster.local",
            f"{name}-headless.shop.svc",
            f"{name}-headless.shop.svc.cluster.local",
        }
        assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        assert 30 <= lifetime.days <= 31
    before = (tmp_path / "auth" / "tls.crt").read_bytes()
    with pytest.raises(SystemExit) as again:
        invmesh(["certs", "init", str(tmp_path)])
    assert again.value.code == 1
    assert "--force replaces them" in capsys.readouterr().err
    assert (tmp_path / "auth" / "tls.crt").read_bytes() == before
    with pytest.raises(SystemExit) as forced:
        invmesh(["certs", "init", str(tmp_path), "--force"])
    assert forced.value.code == 0
    assert (tmp_path / "auth" / "tls.crt").read_bytes() != before
