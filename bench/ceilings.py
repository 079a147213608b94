"""Issue 19's two ceilings, measured in the same run as the rows they bound: the shared baselines' bare
grpc.aio echo server and bare Starlette app (../shared/bench/micro), run from that read-only folder.

- `GetProduct over gRPC / echo`: the echo server, driven by the same gRPC client processes (harness.run_grpc)
  as ProductsService.GetProduct direct, at the same load.
- `GET /products/{id} through the facade / hop`: starlette_app.py's GET /hop/{id} (one grpc.aio call to the
  echo server per request, the reply as JSON) under the same wrk script and load as the facade's row.

Both serve as the baselines' driver.py starts them: the echo server `aio-uvloop` (the services run on
uvloop too), the app under uvicorn with `--loop uvloop --http httptools --no-access-log`, one process, as
the facade runs. micro/pb.py generates its protobuf code into micro/gen on first use, which a read-only
folder does not allow: the code is generated into the run's folder instead, beside a `pb` module that
imports it, which comes first on the servers' path.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc

from bench.harness import Figures, Load, process_group, run_grpc, run_wrk, wait_for, wait_idle
from bench.systems import answers

ECHO = "ceiling: grpc.aio echo"
HOP = "ceiling: Starlette + 1 grpc.aio call"
CALL_TIMEOUT = 10


@dataclass(frozen=True)
class Micro:
    folder: Path  # ../shared/bench/micro: the servers run from there
    generated: Path  # bench_pb2, bench_pb2_grpc from its proto, and a `pb` that imports them
    request: bytes  # the echoed Product, serialized: the clients need no generated code

    def env(self, **extra: str) -> dict[str, str]:
        # `python -P` leaves the script's folder off the path, so this `pb` wins over micro/pb.py.
        return {**os.environ, "PYTHONPATH": f"{self.generated}{os.pathsep}{self.folder}", **extra}


def prepare(folder: Path, workdir: Path) -> Micro:
    """The echo service's code, generated from micro/proto/bench.proto into `workdir`."""
    from grpc_tools import protoc  # a dev dependency, as for the project's own code generation

    if not (folder / "grpc_server.py").is_file() or not (folder / "starlette_app.py").is_file():
        sys.exit(f"bench: no grpc_server.py and starlette_app.py in {folder}; see --peer-dir")
    generated = workdir / "micro-gen"
    generated.mkdir()
    proto = folder / "proto"
    args = ["protoc", f"-I{proto}", f"--python_out={generated}", f"--grpc_python_out={generated}"]
    if protoc.main([*args, str(proto / "bench.proto")]) != 0:
        raise RuntimeError(f"protoc failed on {proto / 'bench.proto'}")
    (generated / "pb.py").write_text("import bench_pb2, bench_pb2_grpc  # noqa: F401\n")
    return Micro(folder, generated, _sample_product(generated / "bench_pb2.py"))


def _sample_product(module: Path) -> bytes:
    """micro/pb.py's sample_product(), the message its own gRPC client echoes."""
    spec = importlib.util.spec_from_file_location("bench_pb2", module)
    assert spec is not None and spec.loader is not None
    bench_pb2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_pb2)
    product = bench_pb2.Product(
        id=123, sku="SKU-00123", name="Product 123", description="Description of product 123",
        price_cents=12399, currency="EUR", category="cat-3", quantity=1000, tags=["new", "promo"],
        created_at_unix=1764288000,
    )  # fmt: skip
    return bytes(product.SerializeToString())


def echo(request: bytes, channel: grpc.aio.Channel) -> Callable[[], Awaitable[object]]:
    """bench.Echo/Unary with the serialized product; the reply is left as bytes."""
    unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/bench.Echo/Unary")
    return lambda: unary(request, timeout=CALL_TIMEOUT)


@dataclass(frozen=True)
class Served:
    address: str  # host:port, or the app's URL
    pid: int


@contextlib.contextmanager
def echo_server(micro: Micro, workdir: Path, port: int) -> Iterator[Served]:
    command = [sys.executable, "-P", str(micro.folder / "grpc_server.py"), "aio-uvloop", str(port)]
    log = workdir / "echo.log"
    with process_group(command, env=micro.env(), cwd=micro.generated, log=log) as process:
        wait_for(lambda: _listens(port), what="the echo server", process=process, log=log)
        yield Served(f"127.0.0.1:{port}", process.pid)


@contextlib.contextmanager
def hop_app(micro: Micro, workdir: Path, port: int, echo_address: str) -> Iterator[Served]:
    command = [
        sys.executable, "-P", "-m", "uvicorn", "starlette_app:app", "--host", "127.0.0.1",
        "--port", str(port),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    log = workdir / "hop.log"
    env = micro.env(GRPC_TARGET=echo_address)
    with process_group(command, env=env, cwd=micro.generated, log=log) as process:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers(f"{url}/hop/1"), what="the Starlette hop", process=process, log=log)
        yield Served(url, process.pid)


def measure_echo(served: Served, micro: Micro, load: Load, repeat: int) -> list[Figures]:
    runs = []
    for _ in range(repeat):
        runs.append(run_grpc(served.address, partial(echo, micro.request), load))
        wait_idle(served.pid)
    return runs


def measure_hop(served: Served, ids_file: Path, load: Load, repeat: int) -> tuple[Figures, list[Figures]]:
    """The facade's GET /products/{id} load: get.lua, an id at random per request, no token (none is
    checked)."""
    env = {"URL_PATH": "/hop/{id}", "IDS_FILE": str(ids_file), "TOKEN": ""}
    return run_wrk(served.address, "get.lua", env, load, repeat, served.pid)


def _listens(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False
