"""A backend process that dies: its routes fail fast with 503, the others keep working."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import httpx
from grpc_health.v1 import health_pb2

from auth.service import running as running_auth
from facade.app import Backend, create_app
from invmesh.auth.v1 import auth_service_pb2_grpc
from invmesh.products.v1 import products_service_pb2
from mesh.clients import health_stub
from mesh.config import Settings
from products.service import running as running_products
from tests.conftest import SmtpServer, free_port, mesh_settings, user_token
from tests.facade.conftest import serving
from tests.rpc import eventually


@asynccontextmanager
async def service_process(
    settings: Settings, name: str, *, log_level: str = "WARNING"
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`invmesh serve NAME` in its own process, with `settings` passed as its environment
    and its log on a pipe."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DATABASE_URL")} | {
        "INVMESH_DATA_DIR": str(settings.data_dir),
        "AUTH_ADDR": settings.auth_addr,
        "PRODUCTS_ADDR": settings.products_addr,
        "INVENTORY_ADDR": settings.inventory_addr,
        f"{name.upper()}_DATABASE_URL": settings.database_url(name),
        "LOG_LEVEL": log_level,
    }
    if settings.service_secret is not None:
        env["SERVICE_SECRET"] = settings.service_secret.get_secret_value()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "launcher", "serve", name, env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        address = getattr(settings, f"{name}_addr")
        async with asyncio.timeout(30), grpc.aio.insecure_channel(address) as channel:
            health = health_stub(channel)
            while True:
                try:
                    reply = await health.Check(
                        health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=True
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.05)
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_inventory_killed_fails_its_routes_fast_and_spares_products(
    settings: Settings, smtp: SmtpServer
) -> None:
    settings = mesh_settings(settings)
    async with (
        running_auth(settings),
        running_products(settings),
        service_process(settings, "inventory") as inventory,
        grpc.aio.insecure_channel(settings.auth_addr) as auth_channel,
        serving(create_app(settings)) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        stub = auth_service_pb2_grpc.AuthServiceStub(auth_channel)
        token = await user_token(stub, "ops@example.com", smtp.inbox, settings)
        me = {"authorization": f"Bearer {token}"}
        product = (
            await http.post("/products", headers=me, json={"sku": "K", "name": "K", "price": "1"})
        ).json()
        moved = await http.post(
            "/inventory", headers=me, json={"product_id": product["id"], "type": "IN", "quantity": 5}
        )
        assert moved.status_code == 201, moved.text
        reported = await eventually(
            lambda: http.get(f"/products/{product['id']}", headers=me), lambda got: got.json()["stock"] == 5
        )
        assert reported.json()["stock"] == 5  # the stock feed told products

        inventory.kill()
        await inventory.wait()

        for method, path, body in [
            ("GET", f"/inventory/{product['id']}", None),
            ("GET", "/inventory", None),
            ("POST", "/inventory", {"product_id": product["id"], "type": "IN", "quantity": 1}),
            ("PUT", f"/inventory/{product['id']}", {"quantity": 3}),
        ]:
            started = time.monotonic()
            down = await http.request(method, path, headers=me, json=body)
            assert down.status_code == 503, (path, down.text)
            assert down.json()["message"] == "the inventory service is unavailable; try again shortly"
            assert time.monotonic() - started < 2.5, f"{method} {path} took too long to fail"

        still = await http.get(f"/products/{product['id']}", headers=me)
        assert still.status_code == 200, still.text
        assert still.json()["name"] == "K" and still.json()["stock"] == 5  # as inventory last reported it


async def test_calls_are_balanced_over_a_backend_s_replicas(settings: Settings, smtp: SmtpServer) -> None:
    settings = mesh_settings(settings)
    second = settings.model_copy(update={"products_addr": f"127.0.0.1:{free_port()}"})
    products = products_service_pb2.DESCRIPTOR.services_by_name["ProductsService"]
    replicas = Backend("products", f"{settings.products_addr},{second.products_addr}")
    async with (
        running_auth(settings),
        grpc.aio.insecure_channel(settings.auth_addr) as auth_channel,
        running_products(settings),
        service_process(second, "products", log_level="INFO") as other,
        serving(create_app(settings, {products: replicas})) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        stub = auth_service_pb2_grpc.AuthServiceStub(auth_channel)
        token = await user_token(stub, "rr@example.com", smtp.inbox, settings)
        me = {"authorization": f"Bearer {token}"}
        for _ in range(10):
            assert (await http.get("/products", headers=me)).status_code == 200
        other.terminate()
        _, log = await other.communicate()
        served_there = log.decode().count("ProductsService/ListProducts")
        assert 2 <= served_there <= 8, f"the second replica served {served_there} of 10 calls"
        # With that replica gone, round-robin keeps to the one that is left.
        for _ in range(4):
            listed = await http.get("/products", headers=me)
            assert listed.status_code == 200, listed.text
