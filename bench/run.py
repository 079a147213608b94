"""invmesh side by side with the FastAPI peer: the same load, one target after the other, in one run.

    python -m bench.run [--quick] [--duration S] [--warmup S] [--repeat N] [--connections N]
                        [--products N] [--peer-dir DIR]

Targets: invmesh through the REST facade, the same call made directly over gRPC to the
service, and the peer (../shared/bench/peer_fastapi) with 1 and with 2 uvicorn workers,
each on its own SQLite file holding the same products. Prints a Markdown table and writes
it to bench/results/; exits 1 if any call failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path

import grpc

from bench.harness import GrpcCall, Load, Row, markdown_table, require_wrk, run_grpc, run_wrk
from bench.systems import REPO, Invmesh, Peer, invmesh, peer_running, prepare_peer
from invmesh.products.v1 import products_service_pb2 as products_pb
from invmesh.products.v1 import products_service_pb2_grpc as products_grpc

RESULTS = Path(__file__).resolve().parent / "results"
CALL_TIMEOUT = 10
FACADE, GRPC = "invmesh, facade (REST)", "invmesh, gRPC direct"
PEER_1, PEER_2 = "peer, 1 worker", "peer, 2 workers"
BASELINES = (PEER_2, PEER_1)
ORDER = {FACADE: 0, GRPC: 1, PEER_2: 2, PEER_1: 3}

# A call made directly over gRPC, given the product ids and an access token: see harness.GrpcCall.
DirectCall = Callable[[list[str], str, grpc.aio.Channel], Callable[[], Awaitable[object]]]


def get_product(ids: list[str], token: str, channel: grpc.aio.Channel) -> Callable[[], Awaitable[object]]:
    """ProductsService.GetProduct for a random id: what the facade calls for GET /products/{id}."""
    stub = products_grpc.ProductsServiceStub(channel)
    metadata = (("authorization", f"Bearer {token}"),)

    def once() -> Awaitable[object]:
        request = products_pb.GetProductRequest(id=random.choice(ids))
        return stub.GetProduct(request, metadata=metadata, timeout=CALL_TIMEOUT)

    return once


@dataclass(frozen=True)
class Scenario:
    name: str
    wrk_script: str  # in bench/wrk/, run against the facade and the peer alike
    wrk_env: dict[str, str]
    grpc_call: DirectCall | None  # the same call made directly to the service, if there is one


SCENARIOS = [
    Scenario("GET /products/{id}", "get_by_id.lua", {"PATH_PREFIX": "/products/"}, get_product),
]


@dataclass(frozen=True)
class Plan:
    load: Load
    repeat: int
    products: int
    quick: bool


def measure_http(target: str, url: str, ids_file: Path, token: str, plan: Plan) -> list[Row]:
    rows = []
    for scenario in SCENARIOS:
        env = {**scenario.wrk_env, "IDS_FILE": str(ids_file), "TOKEN": token}
        runs = [run_wrk(url, scenario.wrk_script, env, plan.load) for _ in range(plan.repeat)]
        rows.append(Row(scenario.name, target, runs))
        _progress(rows[-1])
    return rows


def measure_grpc(mesh: Invmesh, plan: Plan) -> list[Row]:
    rows = []
    for scenario in SCENARIOS:
        if scenario.grpc_call is None:
            continue
        call: GrpcCall = partial(scenario.grpc_call, mesh.product_ids, mesh.token)
        runs = [run_grpc(mesh.products_addr, call, plan.load) for _ in range(plan.repeat)]
        rows.append(Row(scenario.name, GRPC, runs))
        _progress(rows[-1])
    return rows


def _progress(row: Row) -> None:
    print(f"bench: {row.scenario}, {row.target}: {row.median.rate:,.0f} req/s", file=sys.stderr, flush=True)


def write_ids(path: Path, ids: Sequence[str]) -> Path:
    path.write_text("\n".join(ids) + "\n")
    return path


def run(plan: Plan, peer_dir: Path) -> tuple[str, list[Row], list[str]]:
    """Every target in turn; returns the report's header, the rows and what invmesh logged."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="invmesh-bench-") as tmp:
        work = Path(tmp)
        peer = prepare_peer(peer_dir, work, plan.products)  # any pip install happens before measuring
        print(f"bench: starting invmesh and seeding {plan.products} products", file=sys.stderr, flush=True)
        with invmesh(work, plan.products) as mesh:
            ids_file = write_ids(work / "invmesh-ids.txt", mesh.product_ids)
            rows = measure_http(FACADE, mesh.url, ids_file, mesh.token, plan)
            rows += measure_grpc(mesh, plan)
            problems = mesh.problems()
        peer_ids = write_ids(work / "peer-ids.txt", peer.product_ids)
        for workers, target in ((1, PEER_1), (2, PEER_2)):
            with peer_running(peer, workers) as url:
                rows += measure_http(target, url, peer_ids, "", plan)  # no token: the peer's reads need none
    names = [scenario.name for scenario in SCENARIOS]
    rows.sort(key=lambda row: (names.index(row.scenario), ORDER[row.target]))
    return header(plan, mesh, peer, load_before), rows, problems


def header(plan: Plan, mesh: Invmesh, peer: Peer, load_before: tuple[float, float, float]) -> str:
    load = plan.load
    repeat = f"median of {plan.repeat} runs (range in parentheses)" if plan.repeat > 1 else "one run"
    ours = ", ".join(f"{p} {metadata.version(p)}" for p in ("grpcio", "protobuf", "starlette", "uvicorn",
                                                           "sqlalchemy", "aiosqlite"))  # fmt: skip
    return "\n".join([
        f"# invmesh vs the FastAPI peer{' (quick)' if plan.quick else ''}",
        "",
        f"- When: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on `{socket.gethostname()}`, "
        f"{os.cpu_count()} CPUs, load average {', '.join(f'{x:.2f}' for x in load_before)} before the run.",
        "- Everything shares those CPUs: invmesh's four processes or the peer's workers, and the load "
        "generator (wrk, or the gRPC client processes).",
        f"- Data: SQLite (WAL) on each side, {plan.products} products with stock; ids picked at random.",
        f"- Load: {load.connections} calls in flight for {load.duration:g} s after a {load.warmup:g} s "
        f"warm-up, {repeat}. HTTP: `wrk -t{load.clients} -c{load.connections} --latency` with "
        f"bench/wrk/get_by_id.lua; gRPC: {load.clients} grpc.aio client processes sharing the "
        f"{load.connections} calls.",
        f"- invmesh: all healthy {mesh.healthy_after:.2f} s after `invmesh up`. "
        f"Python {platform.python_version()}; {ours}.",
        f"- Peer: {peer.versions}; its own run.sh (uvloop, httptools).",
        "- vs columns: this row's req/s over the peer's, same scenario.",
    ])  # fmt: skip


def report(head: str, rows: list[Row], problems: list[str]) -> str:
    parts = [head, "", markdown_table(rows, BASELINES)]
    if problems:
        shown = "\n".join(f"    {line}" for line in problems[:20])
        parts += ["", f"invmesh logged {len(problems)} warning or error lines; the first ones:", "", shown]
    return "\n".join(parts) + "\n"


def parse_plan(argv: list[str] | None) -> tuple[Plan, Path]:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 s runs after 2 s warm-ups, one run each")
    parser.add_argument("--duration", type=float, help="seconds measured per run (default 10; quick 4)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up before (default 3; quick 2)")
    parser.add_argument("--repeat", type=int, help="runs per target, the median shown (default 3; quick 1)")
    parser.add_argument("--connections", type=int, default=64, help="calls in flight (default 64)")
    parser.add_argument("--products", type=int, default=1000, help="products on each side (default 1000)")
    parser.add_argument(
        "--peer-dir", type=Path, default=REPO.parent / "shared" / "bench",
        help="the read-only folder holding peer_fastapi/ (default ../shared/bench)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    duration = args.duration or (4.0 if args.quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (2.0 if args.quick else 3.0)
    repeat = args.repeat or (1 if args.quick else 3)
    plan = Plan(Load(args.connections, duration, warmup), repeat, args.products, args.quick)
    return plan, args.peer_dir.resolve()


def main(argv: list[str] | None = None) -> None:
    plan, peer_dir = parse_plan(argv)
    require_wrk()
    head, rows, problems = run(plan, peer_dir)
    text = report(head, rows, problems)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{dt.datetime.now():%Y%m%d-%H%M%S}{'-quick' if plan.quick else ''}.md"
    path.write_text(text)
    print(text)
    print(f"bench: written to {path.relative_to(REPO)}", file=sys.stderr)
    failed = [f"{row.target}: {row.errors}" for row in rows if row.errors]
    if failed:
        sys.exit("bench: some calls failed:\n  " + "\n  ".join(failed))


if __name__ == "__main__":
    main()
