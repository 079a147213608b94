"""Replicas: two inventory and two products processes (`invmesh serve NAME --listen …`) on the
run's one database, with every `*_ADDR` the comma list of a backend's replicas: they never
oversell under 400 concurrent exits spread over both inventory replicas by a round-robin channel,
and a randomized mix of entries, exits and counts with retried request_ids keeps the ledger whole."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2

from auth.service import running as running_auth
from invmesh.auth.v1 import auth_service_pb2_grpc
from invmesh.inventory.v1 import inventory_service_pb2 as pb
from invmesh.inventory.v1 import inventory_service_pb2_grpc
from invmesh.products.v1 import products_service_pb2 as products_pb
from invmesh.products.v1 import products_service_pb2_grpc
from launcher.cli import main as invmesh
from mesh import migrations
from mesh.clients import grpc_target, health_stub, open_channel
from mesh.config import Settings
from mesh.db import Database
from tests.conftest import METRICS_OFF, SmtpServer, free_port, user_token
from tests.rpc import error_reason

REPLICAS = 2


async def wait_serving(address: str, timeout: float = 30) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_stub(channel)
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            assert time.monotonic() < deadline, f"no replica became healthy on {address}"
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def replicas(
    settings: Settings, logs: Path, *, grace_seconds: float = 1
) -> AsyncIterator[tuple[dict[str, list[str]], dict[str, asyncio.subprocess.Process]]]:
    """Two processes each of products and inventory, every one told of all the replicas:
    their addresses by service, and their processes by address."""
    addresses = {
        name: [f"127.0.0.1:{free_port()}" for _ in range(REPLICAS)] for name in ("products", "inventory")
    }
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SMTP_URL", "JWT_PRIVATE_KEY") and not k.endswith(("_DATABASE_URL", "_ADDR"))
    } | {
        **METRICS_OFF,
        "INVMESH_DATA_DIR": str(settings.data_dir),
        "AUTH_ADDR": settings.auth_addr,
        "PRODUCTS_ADDR": ",".join(addresses["products"]),
        "INVENTORY_ADDR": ",".join(addresses["inventory"]),
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "text",
        "SHUTDOWN_GRACE_SECONDS": str(grace_seconds),
        "DB_POOL_SIZE": str(settings.db_pool_size),  # the tests' pools (tests/conftest.py)
        **{f"{name.upper()}_DATABASE_URL": settings.database_url(name) for name in addresses},
    }
    if settings.service_secret is not None:  # the relay and the stock feed call as their service
        env["SERVICE_SECRET"] = settings.service_secret.get_secret_value()
    for name in addresses:  # migrated once here, not raced by two replicas (a no-op on a server)
        db = Database(settings.database_url(name))
        try:
            await migrations.upgrade(db, name)
        finally:
            await db.dispose()
    processes: dict[str, asyncio.subprocess.Process] = {}
    try:
        for name, listens in addresses.items():
            for k, listen in enumerate(listens):
                with (logs / f"{name}-{k}.log").open("wb") as log:
                    processes[listen] = await asyncio.create_subprocess_exec(
                        *(sys.executable, "-m", "launcher", "serve", name, "--listen", listen),
                        env=env,
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=log,
                    )
        await asyncio.gather(*(wait_serving(a) for a in processes))
        yield addresses, processes
    finally:
        for process in processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            await asyncio.gather(*(p.wait() for p in processes.values()))


@dataclass
class ReplicatedMesh:
    """Stubs on round-robin channels over both replicas of each service, and a staff user."""

    addresses: dict[str, list[str]]
    processes: dict[str, asyncio.subprocess.Process]  # by address
    products: products_service_pb2_grpc.ProductsServiceStub
    inventory: inventory_service_pb2_grpc.InventoryServiceStub
    user: tuple[tuple[str, str], ...]  # an admin: locations are admin's

    async def new_product(self, sku: str) -> str:
        product = products_pb.Product(sku=sku, name=sku.title(), price="1.00")
        request = products_pb.CreateProductRequest(product=product)
        return (await self.products.CreateProduct(request, metadata=self.user)).product.id

    async def ledger(self, product_id: str) -> list[pb.Movement]:
        """Every movement of the product, oldest first."""
        movements: list[pb.Movement] = []
        page_token = ""
        while True:
            page = await self.inventory.ListMovements(
                pb.ListMovementsRequest(product_id=product_id, page_size=500, page_token=page_token),
                metadata=self.user,
            )
            movements.extend(page.movements)
            if not (page_token := page.next_page_token):
                return movements[::-1]

    async def balance(self, product_id: str) -> int:
        request = pb.GetInventoryItemRequest(product_id=product_id)
        return (await self.inventory.GetInventoryItem(request, metadata=self.user)).item.quantity


@contextlib.asynccontextmanager
async def replicated_mesh(
    settings: Settings, smtp: SmtpServer, logs: Path, *, grace_seconds: float = 1
) -> AsyncIterator[ReplicatedMesh]:
    settings = settings.model_copy(update={"auth_addr": f"127.0.0.1:{free_port()}"})
    async with (
        running_auth(settings),
        replicas(settings, logs, grace_seconds=grace_seconds) as (addresses, processes),
        grpc.aio.insecure_channel(settings.auth_addr) as auth_channel,
        contextlib.AsyncExitStack() as stack,
    ):
        auth = auth_service_pb2_grpc.AuthServiceStub(auth_channel)
        token = await user_token(auth, "staff@example.com", smtp.inbox, settings, role="admin")
        yield ReplicatedMesh(
            addresses,
            processes,
            products_service_pb2_grpc.ProductsServiceStub(
                open_channel(stack, ",".join(addresses["products"]), default_timeout=30)
            ),
            inventory_service_pb2_grpc.InventoryServiceStub(
                open_channel(stack, ",".join(addresses["inventory"]), default_timeout=30)
            ),
            (("authorization", f"Bearer {token}"),),
        )


def assert_chained(ledger: list[pb.Movement], balance: int) -> None:
    """Each movement moves the balance the one before it left, never below 0, ending at `balance`."""
    before = 0
    for movement in ledger:
        assert movement.balance_after == before + movement.quantity >= 0, (movement, before)
        before = movement.balance_after
    assert before == balance


async def test_two_inventory_replicas_never_oversell(
    settings: Settings, smtp: SmtpServer, tmp_path: Path
) -> None:
    async with replicated_mesh(settings, smtp, tmp_path) as mesh:
        assert grpc_target(",".join(mesh.addresses["inventory"])).startswith("ipv4:")
        pid = await mesh.new_product("REPLICA-1")
        await mesh.inventory.RecordMovement(
            pb.RecordMovementRequest(product_id=pid, type=pb.RecordMovementRequest.IN, quantity=100),
            metadata=mesh.user,
        )

        results = await asyncio.gather(
            *(
                mesh.inventory.RecordMovement(
                    pb.RecordMovementRequest(product_id=pid, type=pb.RecordMovementRequest.OUT, quantity=1),
                    metadata=mesh.user,
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

        assert await mesh.balance(pid) == 0
        ledger = await mesh.ledger(pid)
        assert len(ledger) == 101 and len({m.id for m in ledger}) == 101
        assert_chained(ledger, 0)

        # Each inventory replica asks the products service about a product it has not seen. Its
        # channel connects on its first call and sends that burst to whichever products replica
        # answered first; from here on both are connected, and the calls must alternate.
        for number in range(8):
            await mesh.inventory.RecordMovement(
                pb.RecordMovementRequest(
                    product_id=await mesh.new_product(f"SPREAD-{number}"),
                    type=pb.RecordMovementRequest.IN,
                    quantity=1,
                ),
                metadata=mesh.user,
            )

    served = {
        log.stem: log.read_text().count("RecordMovement") for log in sorted(tmp_path.glob("inventory-*.log"))
    }
    print("RecordMovement calls served per inventory replica:", served)
    assert len(served) == REPLICAS and all(served.values()), served  # both replicas took calls
    assert sum(served.values()) >= 409, served
    # The inventory replicas, given both products replicas as PRODUCTS_ADDR, spread their calls too.
    looked_up = {
        log.stem: log.read_text().count("BatchGetProducts") for log in sorted(tmp_path.glob("products-*.log"))
    }
    assert len(looked_up) == REPLICAS and all(looked_up.values()), looked_up


@pytest.mark.slow
async def test_reservations_confirms_releases_exits_and_transfers_never_commit_more_than_there_is(
    settings: Settings, smtp: SmtpServer, tmp_path: Path
) -> None:
    """Issue 16's proof: 300 concurrent requests over both replicas (reservations, each then
    confirmed or released, exits and transfers) against 50 available units commit at most 50,
    never leave a negative balance, conserve what transfers move, and leave a ledger that replays
    to every balance per location; an expired reservation gives its units back."""
    async with replicated_mesh(settings, smtp, tmp_path) as mesh:
        user, inventory = mesh.user, mesh.inventory
        pid = await mesh.new_product("CONTENDED-1")
        default = (await inventory.ListLocations(pb.ListLocationsRequest(), metadata=user)).locations[0].id
        other = (
            await inventory.CreateLocation(
                pb.CreateLocationRequest(location=pb.Location(code="WH-2", name="Second")), metadata=user
            )
        ).location.id
        await inventory.RecordMovement(
            pb.RecordMovementRequest(product_id=pid, type=pb.RecordMovementRequest.IN, quantity=50),
            metadata=user,
        )
        # Expired by the time the storm starts, never swept (the sweeper runs every 30 s): its
        # 10 units must count as available again.
        reserve = inventory.CreateReservation
        stale = (
            await reserve(
                pb.CreateReservationRequest(product_id=pid, quantity=10, ttl_seconds=1), metadata=user
            )
        ).reservation
        await asyncio.sleep(1.1)

        async def reserve_then(settle: str) -> tuple[str, int]:
            """A checkout: reserve one unit, then confirm or release it (two requests)."""
            try:
                held = (
                    await reserve(pb.CreateReservationRequest(product_id=pid, quantity=1), metadata=user)
                ).reservation
            except grpc.aio.AioRpcError as refused:
                assert error_reason(refused) == "INSUFFICIENT_STOCK", refused.details()
                await asyncio.sleep(0)  # its second request is not sent: count it refused too
                return "refused", 0
            if settle == "confirm":
                done = await inventory.ConfirmReservation(
                    pb.ConfirmReservationRequest(id=held.id), metadata=user
                )
                assert done.reservation.state == pb.CONFIRMED and done.movement.quantity == -1
                return "confirmed", 1
            released = await inventory.ReleaseReservation(
                pb.ReleaseReservationRequest(id=held.id), metadata=user
            )
            assert released.reservation.state == pb.RELEASED
            return "released", 0

        async def take(kind: str) -> tuple[str, int]:
            try:
                if kind == "out":
                    await inventory.RecordMovement(
                        pb.RecordMovementRequest(
                            product_id=pid, type=pb.RecordMovementRequest.OUT, quantity=1
                        ),
                        metadata=user,
                    )
                    return "out", 1
                await inventory.CreateTransfer(
                    pb.CreateTransferRequest(
                        product_id=pid, from_location_id=default, to_location_id=other, quantity=1
                    ),
                    metadata=user,
                )
                return "transferred", 1
            except grpc.aio.AioRpcError as refused:
                assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.details()
                assert error_reason(refused) == "INSUFFICIENT_STOCK", refused.details()
                return f"{kind} refused", 0

        # 50 reserve+confirm and 25 reserve+release (150 requests), 100 exits, 50 transfers.
        jobs = (
            [reserve_then("confirm") for _ in range(50)]
            + [reserve_then("release") for _ in range(25)]
            + [take("out") for _ in range(100)]
            + [take("transfer") for _ in range(50)]
        )
        outcomes = await asyncio.gather(*jobs)
        tally: dict[str, int] = {}
        for outcome, _ in outcomes:
            tally[outcome] = tally.get(outcome, 0) + 1
        print("outcomes:", tally)
        committed = tally.get("confirmed", 0) + tally.get("out", 0)
        transferred = tally.get("transferred", 0)
        assert 0 < committed + transferred <= 50, tally

        item = (
            await inventory.GetInventoryItem(pb.GetInventoryItemRequest(product_id=pid), metadata=user)
        ).item
        on_hand = {level.location_id: level.on_hand for level in item.locations}
        assert item.reserved == 0 and all(level.reserved == 0 for level in item.locations)
        # Never below 0; the second location has a row once a transfer reached it (the storm's
        # reservations may take every unit before any transfer runs).
        assert on_hand == {default: 50 - committed - transferred} | (
            {other: transferred} if transferred else {}
        )
        assert item.quantity == 50 - committed  # transfers conserve the total

        ledger = await mesh.ledger(pid)
        balances: dict[str, int] = {}
        for movement in ledger:  # replays to every balance, per location
            balances[movement.location_id] = balances.get(movement.location_id, 0) + movement.quantity
            assert movement.balance_after == balances[movement.location_id] >= 0, movement
        assert {k: v for k, v in balances.items()} == on_hand
        assert sum(1 for m in ledger if m.reservation_id) == tally.get("confirmed", 0)
        assert sum(1 for m in ledger if m.transfer_id) == 2 * transferred

        # The expired reservation's units were back all along: whatever is left can be reserved.
        left = on_hand[default]
        if left:
            await reserve(pb.CreateReservationRequest(product_id=pid, quantity=left), metadata=user)
        got = await inventory.GetReservation(pb.GetReservationRequest(id=stale.id), metadata=user)
        assert got.reservation.state == pb.EXPIRED


@pytest.mark.slow
async def test_concurrent_entries_exits_transfers_and_reservations_keep_total_levels_and_ledger_in_step(
    settings: Settings, smtp: SmtpServer, tmp_path: Path
) -> None:
    """Entries (on PostgreSQL one statement each, but the first at a location), exits, transfers
    and reservations confirmed or released, all at once over both replicas, some entries at a
    location where the product has no stock yet: the item's total stays the sum of its levels
    and what the ledger replays to, and every entry's answer is a state the product was in."""
    seed = int(os.environ.get("MIXED_WORKLOAD_SEED", random.randrange(2**32)))
    print(f"MIXED_WORKLOAD_SEED={seed}")
    rng = random.Random(seed)
    async with replicated_mesh(settings, smtp, tmp_path) as mesh:
        user, inventory = mesh.user, mesh.inventory
        pid = await mesh.new_product("CONTENDED-IN")
        sites = [(await inventory.ListLocations(pb.ListLocationsRequest(), metadata=user)).locations[0].id]
        for code in ("WH-2", "WH-3"):  # the product has no stock row at either yet
            made = pb.CreateLocationRequest(location=pb.Location(code=code, name=code))
            sites.append((await inventory.CreateLocation(made, metadata=user)).location.id)
        await inventory.RecordMovement(
            pb.RecordMovementRequest(product_id=pid, type=pb.RecordMovementRequest.IN, quantity=30),
            metadata=user,
        )

        async def enter(units: int, location_id: str) -> tuple[str, int]:
            request = pb.RecordMovementRequest(
                product_id=pid, type=pb.RecordMovementRequest.IN, quantity=units, location_id=location_id
            )
            answer = await inventory.RecordMovement(request, metadata=user)
            found = answer.item
            assert found.quantity == sum(level.on_hand for level in found.locations), answer
            assert found.reserved == sum(level.reserved for level in found.locations), answer
            assert found.available == found.quantity - found.reserved, answer
            (there,) = [level for level in found.locations if level.location_id == location_id]
            assert there.on_hand == answer.movement.balance_after, answer
            return "in", units

        async def settle(confirm: bool) -> tuple[str, int]:
            reserve = pb.CreateReservationRequest(product_id=pid, quantity=1)
            try:
                held = (await inventory.CreateReservation(reserve, metadata=user)).reservation
            except grpc.aio.AioRpcError as refused:
                assert error_reason(refused) == "INSUFFICIENT_STOCK", refused.details()
                return "refused", 0
            if confirm:
                await inventory.ConfirmReservation(pb.ConfirmReservationRequest(id=held.id), metadata=user)
                return "confirmed", 1
            await inventory.ReleaseReservation(pb.ReleaseReservationRequest(id=held.id), metadata=user)
            return "released", 0

        async def take(transfer: bool) -> tuple[str, int]:
            try:
                if transfer:
                    await inventory.CreateTransfer(
                        pb.CreateTransferRequest(
                            product_id=pid, from_location_id=sites[0], to_location_id=sites[1], quantity=1
                        ),
                        metadata=user,
                    )
                    return "transferred", 1
                request = pb.RecordMovementRequest(
                    product_id=pid, type=pb.RecordMovementRequest.OUT, quantity=1
                )
                await inventory.RecordMovement(request, metadata=user)
                return "out", 1
            except grpc.aio.AioRpcError as refused:
                assert error_reason(refused) == "INSUFFICIENT_STOCK", refused.details()
                return "refused", 0

        jobs = (
            [enter(rng.randint(1, 3), rng.choice(sites)) for _ in range(90)]
            + [settle(confirm=True) for _ in range(30)]
            + [settle(confirm=False) for _ in range(15)]
            + [take(transfer=False) for _ in range(60)]
            + [take(transfer=True) for _ in range(30)]
        )
        rng.shuffle(jobs)
        tally: dict[str, int] = {}
        for outcome, units in await asyncio.gather(*jobs):
            tally[outcome] = tally.get(outcome, 0) + units
        print("units by outcome:", tally)

        item = (
            await inventory.GetInventoryItem(pb.GetInventoryItemRequest(product_id=pid), metadata=user)
        ).item
        on_hand = {level.location_id: level.on_hand for level in item.locations}
        assert (
            item.quantity
            == sum(on_hand.values())
            == 30 + tally["in"] - tally.get("out", 0) - tally.get("confirmed", 0)
        )
        assert item.reserved == 0
        ledger = await mesh.ledger(pid)
        balances: dict[str, int] = {}
        for movement in ledger:  # replays to every balance, per location
            balances[movement.location_id] = balances.get(movement.location_id, 0) + movement.quantity
            assert movement.balance_after == balances[movement.location_id] >= 0, movement
        assert balances == on_hand
        assert sum(m.quantity for m in ledger if m.type == pb.IN and not m.transfer_id) == 30 + tally["in"]


@dataclass(frozen=True)
class Operation:
    """One client request of the mixed workload: an entry, an exit or a count."""

    product_id: str
    kind: str  # IN, OUT or PUT
    quantity: int
    request_id: str

    async def send(self, mesh: ReplicatedMesh, *, quantity: int | None = None) -> pb.Movement:
        quantity = self.quantity if quantity is None else quantity
        if self.kind == "PUT":
            count = pb.SetStockRequest(
                product_id=self.product_id, quantity=quantity, request_id=self.request_id
            )
            return (await mesh.inventory.SetStock(count, metadata=mesh.user)).movement
        move = pb.RecordMovementRequest(
            product_id=self.product_id,
            type=self.kind,
            quantity=quantity,
            request_id=self.request_id,
        )
        return (await mesh.inventory.RecordMovement(move, metadata=mesh.user)).movement


async def test_a_randomized_mixed_workload_with_retries_keeps_every_invariant(
    settings: Settings, smtp: SmtpServer, tmp_path: Path
) -> None:
    """Entries, exits and counts on a few products, a quarter of them sent twice at once (a client
    retrying before the first answer), all at once over both replicas; then every request retried
    and some request_ids reused for other bodies. The ledger must chain, hold each acknowledged
    request exactly once, and agree with every answer; the only refusal is insufficient stock."""
    seed = int(os.environ.get("MIXED_WORKLOAD_SEED", random.randrange(2**32)))
    print(f"MIXED_WORKLOAD_SEED={seed}")
    rng = random.Random(seed)
    async with replicated_mesh(settings, smtp, tmp_path) as mesh:
        products = [await mesh.new_product(f"MIXED-{n}") for n in range(4)]
        operations = []
        for n in range(300):
            kind = rng.choice(["IN", "OUT", "OUT", "PUT"])
            quantity = rng.randint(0, 12) if kind == "PUT" else rng.randint(1, 6)
            operations.append(Operation(rng.choice(products), kind, quantity, f"mixed-{seed}-{n}"))
        sends = [op for op in operations for _ in range(2 if rng.random() < 0.25 else 1)]
        rng.shuffle(sends)
        results = await asyncio.gather(*(op.send(mesh) for op in sends), return_exceptions=True)

        acknowledged: dict[str, pb.Movement] = {}
        for op, result in zip(sends, results, strict=True):
            if isinstance(result, pb.Movement):
                first = acknowledged.setdefault(op.request_id, result)
                assert result == first, f"two answers to request {op.request_id}: {first} and {result}"
            else:  # the only refusal: an exit beyond the stock, nothing written
                assert isinstance(result, grpc.aio.AioRpcError), result
                assert (op.kind, result.code(), error_reason(result)) == (
                    "OUT",
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "INSUFFICIENT_STOCK",
                ), (op, result.code(), result.details())

        for op in operations:  # a late retry of an acknowledged request returns its first answer
            if op.request_id in acknowledged:
                assert await op.send(mesh) == acknowledged[op.request_id]
        for op in rng.sample([op for op in operations if op.request_id in acknowledged], 20):
            with pytest.raises(grpc.aio.AioRpcError) as reused:
                await op.send(mesh, quantity=op.quantity + 1)
            assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert error_reason(reused.value) == "REQUEST_ID_REUSED"

        for pid in products:
            ledger = await mesh.ledger(pid)
            assert_chained(ledger, await mesh.balance(pid))
            mine = {op.request_id: op for op in operations if op.product_id == pid}
            recorded = {m.request_id: m for m in ledger}
            assert len(recorded) == len(ledger), "a request recorded twice"
            assert recorded.keys() == {r for r in mine if r in acknowledged}, "an acknowledged request lost"
            for request_id, movement in recorded.items():
                assert movement == acknowledged[request_id]
                op = mine[request_id]
                if op.kind == "PUT":
                    assert movement.type == pb.ADJUSTMENT and movement.balance_after == op.quantity
                else:
                    assert movement.type == pb.MovementType.Value(op.kind)
                    assert movement.quantity == (op.quantity if op.kind == "IN" else -op.quantity)

    served = [log.read_text().count("SetStock") for log in sorted(tmp_path.glob("inventory-*.log"))]
    assert len(served) == REPLICAS and all(served), served


async def test_invmesh_up_starts_replicas_on_port_steps_of_ten(tmp_path: Path) -> None:
    """`invmesh up --replicas inventory=2,products=2`: replica k on the port + 10*k, each healthy,
    and the facade, given both lists, serves a signed-in user's REST calls."""
    auth, products, inventory, web = (free_port() for _ in range(4))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SMTP_URL", "JWT_PRIVATE_KEY") and not k.endswith(("_DATABASE_URL", "_ADDR"))
    } | {
        **METRICS_OFF,
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
        *(sys.executable, "-m", "launcher", "up", "--replicas", "inventory=2,products=2"),
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
