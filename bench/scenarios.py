"""What is measured: one REST request per scenario, run with the same wrk script against invmesh's
facade and the FastAPI peer, and, where there is one, the same call made directly over gRPC.

The peer's own load (../shared/bench/driver.py, BASELINES.md) is what each scenario mirrors: the
same method, path and body, ids at random among the seeded products, and a bearer token only where
the peer needs one (invmesh needs one on every call, so it always gets it).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from bench.systems import USER
from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from invmesh.auth.v1 import auth_service_pb2_grpc as auth_grpc
from invmesh.products.v1 import products_service_pb2 as products_pb
from invmesh.products.v1 import products_service_pb2_grpc as products_grpc

CALL_TIMEOUT = 10
HOT = 20  # the mixes' products, shared by their reads and writes
NEW_ROWS_REPEAT = 2

# A call made directly over gRPC, given the product ids and an access token: a picklable
# module-level function (see harness.GrpcCall) returning the call to repeat.
DirectCall = Callable[[list[str], str, grpc.aio.Channel], Callable[[], Awaitable[object]]]


def get_product(ids: list[str], token: str, channel: grpc.aio.Channel) -> Callable[[], Awaitable[object]]:
    """ProductsService.GetProduct for a random id: what the facade calls for GET /products/{id}."""
    stub = products_grpc.ProductsServiceStub(channel)
    metadata = (("authorization", f"Bearer {token}"),)

    def once() -> Awaitable[object]:
        request = products_pb.GetProductRequest(id=random.choice(ids))
        return stub.GetProduct(request, metadata=metadata, timeout=CALL_TIMEOUT)

    return once


def login(ids: list[str], token: str, channel: grpc.aio.Channel) -> Callable[[], Awaitable[object]]:
    """AuthService.Login with the benchmark user's password: what the facade calls for POST /users/login."""
    stub = auth_grpc.AuthServiceStub(channel)
    request = auth_pb.LoginRequest(email=USER["email"], password=USER["password"])
    return lambda: stub.Login(request, timeout=CALL_TIMEOUT)


@dataclass(frozen=True)
class Direct:
    service: str  # the invmesh service called: auth, products or inventory
    rpc: str  # for the report
    call: DirectCall


@dataclass(frozen=True)
class Scenario:
    key: str  # its name for --scenarios
    name: str  # the REST request, as the table shows it
    script: str  # in bench/wrk/, the same for invmesh and the peer
    mirrors: str  # the peer's own load it reproduces (../shared/bench/peer_fastapi/wrk/, driver.py)
    env: dict[str, str] = field(default_factory=dict)  # for the script
    connections: int | None = None  # calls in flight, when not --connections
    # At least this long a warm-up and measured run (s): a login takes ~0.3 s of CPU, and 8 of them
    # started together on the peer (a thread each) all finish after ~1.2 s.
    min_warmup: float = 0.0
    min_duration: float = 0.0
    peer_token: bool = False  # the peer needs a token for it too
    # How it changes the stock, checked before and after each row (run.check_stock): "adds" 1 per 2xx
    # answer (per 201 where the script counts them: a mix's INs), "sets" a count; "" leaves it alone.
    stock: str = ""
    direct: Direct | None = None  # the same call made straight to the service over gRPC
    peer: bool = True  # the peer serves it too; else invmesh alone is measured (no ratio)
    max_repeat: int | None = None  # at most this many runs per row, whatever --repeat says


SCENARIOS = [
    Scenario(
        "get-product", "GET /products/{id}", "get.lua", "wrk/product_id.lua",
        {"URL_PATH": "/products/{id}"}, direct=Direct("products", "ProductsService.GetProduct", get_product),
    ),
    Scenario(
        "list-products", "GET /products?page_size=20", "get.lua", "wrk .../products?page_size=20",
        {"URL_PATH": "/products?page_size=20"},
    ),
    Scenario(
        "get-stock", "GET /inventory/{id}", "get.lua", "WRK_PREFIX=/inventory/ wrk/product_id.lua",
        {"URL_PATH": "/inventory/{id}"},
    ),
    Scenario(
        "list-stock", "GET /inventory?page_size=20", "get.lua", "wrk .../inventory?page_size=20",
        {"URL_PATH": "/inventory?page_size=20"},
    ),
    Scenario(
        "movement", "POST /inventory (IN, quantity 1)", "movement_in.lua", "wrk/movement_in.lua",
        peer_token=True, stock="adds",
    ),
    # The peer has no script of its own for these: the same request as its app.py takes. These and the
# mixes run at most twice per row, which keeps a full make bench within about 35 minutes.
    Scenario(
        "set-stock", "PUT /inventory/{id} (a count)", "set_stock.lua", "app.py's PUT /inventory/{pid}",
        peer_token=True, stock="sets", max_repeat=NEW_ROWS_REPEAT,
    ),
    Scenario(
        "create-product", "POST /products", "create_product.lua", "app.py's POST /products", peer_token=True,
        max_repeat=NEW_ROWS_REPEAT,
    ),
    Scenario(
        "update-product", "PUT /products/{id}", "update_product.lua", "app.py's PUT /products/{pid}",
        peer_token=True, max_repeat=NEW_ROWS_REPEAT,
    ),
    # Reads and writes on the same few products (HOT), a request chosen at random by its share.
    Scenario(
        "mix-80-10-10", "mix 80/10/10: product, stock, IN", "mix.lua", "wrk/product_id.lua, movement_in.lua",
        {"MIX": "80,10,10", "HOT": str(HOT)}, peer_token=True, stock="adds", max_repeat=NEW_ROWS_REPEAT,
    ),
    Scenario(
        "mix-50-50", "mix 50/50: stock, IN", "mix.lua", "WRK_PREFIX=/inventory/ wrk/product_id.lua, "
        "movement_in.lua", {"MIX": "0,50,50", "HOT": str(HOT)}, peer_token=True, stock="adds",
        max_repeat=NEW_ROWS_REPEAT,
    ),
    # invmesh alone: the peer keeps no locations or reservations.
    Scenario(
        "transfer", "POST /inventory/transfers (1 unit)", "transfer.lua", "(invmesh only)", peer=False,
    ),
    Scenario(
        "reserve-confirm", "POST /reservations, then :confirm (in turn)", "reserve_confirm.lua",
        "(invmesh only)", peer=False,
    ),
    # bcrypt-bound: 8 in flight, as the peer's baseline (at 64 the queue outlasts any timeout).
    Scenario(
        "login", "POST /users/login", "login.lua", "wrk/login.lua, -c8",
        connections=8, min_warmup=2, min_duration=4, direct=Direct("auth", "AuthService.Login", login),
    ),
]  # fmt: skip
BY_KEY = {scenario.key: scenario for scenario in SCENARIOS}
