"""Replicas: two inventory and two products processes (`invmesh serve NAME --listen …`) on the
run's one database, with every `*_ADDR` the comma list of a backend's replicas, never oversell
under 400 concurrent exits spread over both inventory replicas by a round-robin channel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from email import policy
from email.parser import BytesParser
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auth.service import running as running_auth
from invmesh.auth.v1 import auth_service_pb2_grpc
from invmesh.inventory.v1 import inventory_service_pb2 as pb
from invmesh.inventory.v1 import inventory_service_pb2_grpc
from invmesh.products.v1 import products_service_pb2 as products_pb
from invmesh.products.v1 import products_service_pb2_grpc
from mesh import migrations
from mesh.cli import main as invmesh
from mesh.clients import grpc_target, open_channel
from mesh.config import Settings
from mesh.db import Database
from tests.conftest import SmtpServer, free_port, user_token
from tests.rpc import error_reason

REPLICAS = 2


async def wait_serving(address: str, timeout: float = 30) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            assert time.monotonic() < deadline, f"no replica became healthy on {address}"
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def replicas(settings: Settings, logs: Path) -> AsyncIterator[dict[str, list[str]]]:
    """Two processes each of products and inventory, every one told of all the replicas."""
    addresses = {
        name: [f"127.0.0.1:{free_port()}" for _ in range(REPLICAS)] for name in ("products", "inventory")
    }
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SMTP_URL", "JWT_PRIVATE_KEY") and not k.endswith(("_DATABASE_URL", "_ADDR"))
    } | {
        "INVMESH_DATA_DIR": str(settings.data_dir),
        "AUTH_ADDR": settings.auth_addr,
        "PRODUCTS_ADDR": ",".join(addresses["products"]),
        "INVENTORY_ADDR": ",".join(addresses["inventory"]),
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "text",
        "SHUTDOWN_GRACE_SECONDS": "1",
        **{f"{name.upper()}_DATABASE_URL": settings.database_url(name) for name in addresses},
    }
    for name in addresses:  # migrated once here, not raced by two replicas (a no-op on a server)
        db = Database(settings.database_url(name))
        try:
            await migrations.upgrade(db, name)
        finally:
            await db.dispose()
    processes: list[asyncio.subprocess.Process] = []
    try:
        for name, listens in addresses.items():
            for k, listen in enumerate(listens):
                with (logs / f"{name}-{k}.log").open("wb") as log:
                    processes.append(
                        await asyncio.create_subprocess_exec(
                            *(sys.executable, "-m", "mesh", "serve", name, "--listen", listen),
                            env=env,
                            stdout=asyncio.subprocess.DEVNULL,
                            stderr=log,
                        )
                    )
        await asyncio.gather(*(wait_serving(a) for listens in addresses.values() for a in listens))
        yield addresses
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            await asyncio.gather(*(p.wait() for p in processes))


async def test_two_inventory_replicas_never_oversell(
    settings: Settings, smtp: SmtpServer, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"auth_addr": f"127.0.0.1:{free_port()}"})
    async with (
        running_auth(settings),
        replicas(settings, tmp_path) as addresses,
        grpc.aio.insecure_channel(settings.auth_addr) as auth_channel,
        contextlib.AsyncExitStack() as stack,
    ):
        assert grpc_target(",".join(addresses["inventory"])).startswith("ipv4:")
        auth = auth_service_pb2_grpc.AuthServiceStub(auth_channel)
        token = await user_token(auth, "staff@example.com", smtp.inbox, settings.public_url)
        user = (("authorization", f"Bearer {token}"),)
        products = products_service_pb2_grpc.ProductsServiceStub(
            open_channel(stack, ",".join(addresses["products"]), default_timeout=30)
        )
        inventory = inventory_service_pb2_grpc.InventoryServiceStub(
            open_channel(stack, ",".join(addresses["inventory"]), default_timeout=30)
        )
        product = products_pb.Product(sku="REPLICA-1", name="Replicated", price="1.00")
        pid = (
            await products.CreateProduct(products_pb.CreateProductRequest(product=product), metadata=user)
        ).product.id
        await inventory.RecordMovement(
            pb.RecordMovementRequest(product_id=pid, type=pb.IN, quantity=100), metadata=user
        )

        results = await asyncio.gather(
            *(
                inventory.RecordMovement(
                    pb.RecordMovementRequest(product_id=pid, type=pb.OUT, quantity=1), metadata=user
                )
                for _ in range(400)
            ),
            return_exceptions=True,
        )
        succeeded = [r for r in results if isinstance(r, pb.RecordMovementResponse)]
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(succeeded) + len(refused) == 400, [
            r for r in results if not isinstance(r, pb.RecordMovementResponse | grpc.aio.AioRpcError)
        ]
        unexpected = [
            (r.code(), r.details())
            for r in refused
            if r.code() != grpc.StatusCode.FAILED_PRECONDITION or error_reason(r) != "INSUFFICIENT_STOCK"
        ]
        assert not unexpected, unexpected[:5]
        assert len(succeeded) == 100 and len(refused) == 300
        assert sorted(r.movement.balance_after for r in succeeded) == list(range(100))

        item = await inventory.GetInventoryItem(pb.GetInventoryItemRequest(product_id=pid), metadata=user)
        assert item.item.quantity == 0
        movements: list[pb.Movement] = []
        page_token = ""
        while True:
            page = await inventory.ListMovements(
                pb.ListMovementsRequest(product_id=pid, page_size=50, page_token=page_token), metadata=user
            )
            movements.extend(page.movements)
            if not (page_token := page.next_page_token):
                break
        assert len(movements) == 101 and len({m.id for m in movements}) == 101
        assert sum(m.quantity for m in movements) == item.item.quantity == 0

    served = {
        log.stem: log.read_text().count("RecordMovement") for log in sorted(tmp_path.glob("inventory-*.log"))
    }
    print("RecordMovement calls served per inventory replica:", served)
    assert len(served) == REPLICAS and all(served.values()), served  # both replicas took calls
    assert sum(served.values()) >= 401, served
    # The inventory replicas, given both products replicas as PRODUCTS_ADDR, spread their calls too.
    looked_up = {
        log.stem: log.read_text().count("BatchGetProducts") for log in sorted(tmp_path.glob("products-*.log"))
    }
    assert len(looked_up) == REPLICAS and all(looked_up.values()), looked_up


async def test_invmesh_up_starts_replicas_on_port_steps_of_ten(tmp_path: Path) -> None:
    """`invmesh up --replicas inventory=2,products=2`: replica k on the port + 10*k, each healthy,
    and the facade, given both lists, serves a signed-in user's REST calls."""
    auth, products, inventory, web = (free_port() for _ in range(4))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SMTP_URL", "JWT_PRIVATE_KEY") and not k.endswith(("_DATABASE_URL", "_ADDR"))
    } | {
        "INVMESH_DATA_DIR": str(tmp_path),
        "AUTH_ADDR": f"127.0.0.1:{auth}",
        "PRODUCTS_ADDR": f"127.0.0.1:{products}",
        "INVENTORY_ADDR": f"127.0.0.1:{inventory}",
        "FACADE_PORTS": str(web),
        "PUBLIC_URL": f"http://127.0.0.1:{web}",
        "BCRYPT_ROUNDS": "4",
        "LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "mesh", "up", "--replicas", "inventory=2,products=2"),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    said: list[str] = []
    try:
        async with asyncio.timeout(60):
            while "all healthy" not in (line := (await process.stderr.readline()).decode()):
                assert line, f"invmesh up exited before its services were healthy: {said}"
                said.append(line)
        for expected in (
            f"products[0] is serving on 127.0.0.1:{products}",
            f"products[1] is serving on 127.0.0.1:{products + 10}",
            f"inventory[0] is serving on 127.0.0.1:{inventory}",
            f"inventory[1] is serving on 127.0.0.1:{inventory + 10}",
        ):
            assert any(expected in line for line in said), (expected, said)
        for port in (products, products + 10, inventory, inventory + 10):
            await wait_serving(f"127.0.0.1:{port}", timeout=5)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web}") as http:
            account = {"email": "new@example.com", "password": "password1"}
            assert (await http.post("/users/register", json=account)).status_code == 201
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
            for _ in range(4):  # over both products replicas, and both inventory ones for the stock
                listed = await http.get("/products", headers={"authorization": f"Bearer {token}"})
                assert listed.status_code == 200, listed.text
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.communicate()
    assert process.returncode == 0


def test_replicas_flag_is_validated(capsys: pytest.CaptureFixture[str]) -> None:
    for value, message in [
        ("inventory=0", "at least 1"),
        ("warehouse=2", "unknown service 'warehouse'"),
        ("inventory", "not SERVICE=COUNT"),
        ("inventory=two", "whole number"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            invmesh(["up", "--replicas", value])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
