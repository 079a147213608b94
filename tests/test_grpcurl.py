"""An operator's view: the real grpcurl binary, through server reflection only."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from invmesh.inventory.v1 import inventory_service_pb2 as inventory_pb
from invmesh.products.v1 import products_service_pb2 as products_pb
from tests.conftest import SERVICE_SECRET, AuthEndpoint, Mesh

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
    for rpc in ("Register", "Login", "VerifyEmail", "RefreshToken", "GetMe", "IssueServiceToken", "GetJwks"):
        assert f"rpc {rpc} (" in described
    method = await grpcurl("-plaintext", auth.address, "describe", "invmesh.auth.v1.AuthService.GetMe")
    assert "is a method" in method and 'get:"/users/me"' in method
    message = await grpcurl("-plaintext", auth.address, "describe", "invmesh.auth.v1.RegisterRequest")
    assert "string password = 2" in message

    async def call(method: str, body: dict[str, str] | None = None, *headers: str) -> dict[str, Any]:
        args = [arg for header in headers for arg in ("-H", header)]
        if body is not None:
            args += ["-d", json.dumps(body)]
        return cast(dict[str, Any], json.loads(await grpcurl("-plaintext", *args, auth.address, method)))

    assert await call("grpc.health.v1.Health/Check") == {"status": "SERVING"}
    credentials = {"email": "ops@example.com", "password": "operator-pass"}
    registered = await call("invmesh.auth.v1.AuthService/Register", credentials)
    login = await call("invmesh.auth.v1.AuthService/Login", credentials)
    me = await call(
        "invmesh.auth.v1.AuthService/GetMe", None, f"authorization: Bearer {login['access_token']}"
    )
    assert {k: v for k, v in me["user"].items() if k not in ("id", "created_at")} == registered["user"]


async def test_grpcurl_calls_every_products_and_inventory_rpc(mesh: Mesh) -> None:
    async def call(
        address: str, method: str, body: Mapping[str, object], token: str = mesh.verified_token
    ) -> dict[str, Any]:
        bearer = f"authorization: Bearer {token}"
        reply = await grpcurl("-plaintext", "-H", bearer, "-d", json.dumps(body), address, method)
        return cast(dict[str, Any], json.loads(reply))

    products, inventory = mesh.settings.products_addr, mesh.settings.inventory_addr
    p, i = "invmesh.products.v1.ProductsService/", "invmesh.inventory.v1.InventoryService/"
    created = await call(
        products, p + "CreateProduct", {"product": {"sku": "G-1", "name": "Gear", "price": "2.50"}}
    )
    pid = created["product"]["id"]
    calls: list[tuple[str, str, dict[str, object]]] = [
        (products, p + "GetProduct", {"id": pid}),
        (products, p + "ListProducts", {"page_size": 5, "q": "gear"}),
        (products, p + "BatchGetProducts", {"ids": [pid]}),
        (
            products,
            p + "UpdateProduct",
            {"product": {"id": pid, "sku": "G-1", "name": "Gear 2", "price": "3.00"}},
        ),
        (
            inventory,
            i + "RecordMovement",
            {"product_id": pid, "type": "IN", "quantity": 4, "request_id": "g-1"},
        ),
        (inventory, i + "SetStock", {"product_id": pid, "quantity": 3}),
        (inventory, i + "GetInventoryItem", {"product_id": pid}),
        (inventory, i + "BatchGetInventoryItems", {"product_ids": [pid]}),
        (inventory, i + "ListInventoryItems", {"page_size": 10}),
        (inventory, i + "ListMovements", {"product_id": pid}),
        (products, p + "DeleteProduct", {"id": pid}),
    ]
    replies = {method.rsplit("/", 1)[1]: await call(address, method, body) for address, method, body in calls}
    # Only a service retires items: an operator does it with the token a service secret gets.
    credentials = {"client_id": "products", "client_secret": SERVICE_SECRET}
    issued = await call(mesh.settings.auth_addr, "invmesh.auth.v1.AuthService/IssueServiceToken", credentials)
    await call(inventory, i + "DeleteInventoryItem", {"product_id": pid}, token=str(issued["access_token"]))
    assert replies["GetInventoryItem"]["item"]["quantity"] == 3
    assert [m["type"] for m in replies["ListMovements"]["movements"]] == ["ADJUSTMENT", "IN"]
    described = await grpcurl("-plaintext", inventory, "describe", "invmesh.inventory.v1.InventoryService")
    assert "rpc RecordMovement" in described


async def test_grpcurl_follows_the_movement_feed(mesh: Mesh) -> None:
    """`grpcurl … InventoryService/WatchMovements` prints each message as it comes, its events
    in `events`, as the README shows; `-max-time` ends it (exit status 64 + DEADLINE_EXCEEDED)."""
    created = await mesh.products.CreateProduct(
        products_pb.CreateProductRequest(product=products_pb.Product(sku="FEED-1", name="Fed", price="1")),
        metadata=mesh.as_user(),
    )
    pid = created.product.id
    for quantity in (4, 2):
        await mesh.inventory.RecordMovement(
            inventory_pb.RecordMovementRequest(
                product_id=pid, type=inventory_pb.RecordMovementRequest.IN, quantity=quantity
            ),
            metadata=mesh.as_user(),
        )
    await asyncio.sleep(0.2)  # numbered in the feed
    process = await asyncio.create_subprocess_exec(
        *(str(GRPCURL), "-plaintext", "-max-time", "2", "-H", f"authorization: Bearer {mesh.verified_token}"),
        *("-d", json.dumps({"after": "0", "product_id": pid}), mesh.settings.inventory_addr),
        "invmesh.inventory.v1.InventoryService/WatchMovements",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 64 + 4, stderr.decode()  # DEADLINE_EXCEEDED: it followed until then
    decoder, text, messages = json.JSONDecoder(), stdout.decode().strip(), []
    while text:
        message, end = decoder.raw_decode(text)
        messages.append(message)
        text = text[end:].strip()
    # The history in one message (a page), then the heartbeat that says the stream is live.
    history, *beats = messages
    moved = [e["movement"] for e in history["events"]]
    assert [(m["quantity"], m["balance_after"]) for m in moved] == [(4, 4), (2, 6)]
    (live,) = beats[0]["events"]
    assert "heartbeat" in live and int(live["cursor"]) > int(history["events"][-1]["cursor"])
