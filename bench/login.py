"""Logins per second against a real auth service, compared with what bcrypt alone allows.

    python -m bench.login [--duration SECONDS | --quick] [--processes N] [--concurrency N]

Starts `mesh serve auth` on a free port with a throwaway data directory, registers a few
users, then drives Login from several client processes for a fixed time. Login is bound by
one bcrypt check per call, so the ceiling is os.cpu_count() checks per bcrypt-check time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from threading import Barrier
from typing import Protocol, cast

import bcrypt
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from invmesh.auth.v1 import auth_service_pb2 as pb
from invmesh.auth.v1 import auth_service_pb2_grpc as pb_grpc
from mesh.config import ConfigError, load_settings

USERS = [(f"bench{i}@example.com", f"bench-password-{i}") for i in range(8)]
STARTUP_SECONDS = 60
CALL_TIMEOUT = 60


class _BlockingAuth(Protocol):
    Register: grpc.UnaryUnaryMultiCallable[pb.RegisterRequest, pb.RegisterResponse]


class _BlockingHealth(Protocol):
    Check: grpc.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]


# The generated stubs work on blocking channels too; their .pyi types the grpc.aio ones only.
_blocking_auth = cast(Callable[[grpc.Channel], _BlockingAuth], pb_grpc.AuthServiceStub)
_blocking_health = cast(Callable[[grpc.Channel], _BlockingHealth], health_pb2_grpc.HealthStub)


@dataclass
class Outcome:
    """One client process's tally: logins done in the window, latencies (s), errors by code."""

    logins: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


def bcrypt_check_seconds(rounds: int, samples: int = 5) -> float:
    """Median wall time of one bcrypt check at this cost, on an otherwise idle machine."""
    hashed = bcrypt.hashpw(b"bench-password", bcrypt.gensalt(rounds))
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        bcrypt.checkpw(b"bench-password", hashed)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def auth_service(rounds: int) -> Iterator[str]:
    """The auth service in a subprocess, healthy; yields its address and always stops it."""
    address = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="invmesh-bench-") as data_dir:
        env = {
            **os.environ,
            "INVMESH_DATA_DIR": data_dir,
            "AUTH_ADDR": address,
            "AUTH_METRICS_ADDR": f"127.0.0.1:{free_port()}",
            "LOG_LEVEL": "WARNING",
            "BCRYPT_ROUNDS": str(rounds),
            # Never touch a configured database or send real mail from a benchmark.
            "AUTH_DATABASE_URL": "",
            "SMTP_URL": "",
        }
        server = subprocess.Popen([sys.executable, "-m", "launcher", "serve", "auth"], env=env)
        try:
            wait_serving(address, server)
            yield address
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def wait_serving(address: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    with grpc.insecure_channel(address) as channel:
        health = _blocking_health(channel)
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"the auth service exited with status {server.returncode}")
            with contextlib.suppress(grpc.RpcError):
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.1)
    raise RuntimeError(f"the auth service did not become healthy on {address} in {STARTUP_SECONDS}s")


def register_users(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = _blocking_auth(channel)
        # Concurrently, so the server's bcrypt pool hashes them in parallel.
        calls = [
            stub.Register.future(pb.RegisterRequest(email=email, password=password, name="bench"))
            for email, password in USERS
        ]
        for call in calls:
            call.result(timeout=STARTUP_SECONDS)


def client(address: str, concurrency: int, duration: float, start: Barrier) -> Outcome:
    """One client process: `concurrency` back-to-back Login loops for `duration` seconds."""
    return asyncio.run(drive(address, concurrency, duration, start))


async def drive(address: str, concurrency: int, duration: float, start: Barrier) -> Outcome:
    outcome = Outcome()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.AuthServiceStub(channel)
        await channel.channel_ready()
        start.wait(timeout=STARTUP_SECONDS)  # every process measures the same window
        deadline = time.perf_counter() + duration

        async def loop() -> None:
            # The first calls all start at once on an idle server, so their latencies are
            # a ramp, not the steady state; later calls join a full queue.
            steady = False
            while (started := time.perf_counter()) < deadline:
                email, password = random.choice(USERS)
                try:
                    await stub.Login(pb.LoginRequest(email=email, password=password), timeout=CALL_TIMEOUT)
                except grpc.aio.AioRpcError as exc:
                    outcome.errors[exc.code().name] += 1
                else:
                    finished = time.perf_counter()
                    if finished <= deadline:
                        outcome.logins += 1
                    if steady:
                        outcome.latencies.append(finished - started)
                steady = True

        # Calls in flight at the deadline finish (for their latency) but add no logins.
        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return outcome


def run_clients(address: str, processes: int, concurrency: int, duration: float) -> Outcome:
    # spawn, not fork: gRPC's core does not survive a fork of a process that has used it.
    context = get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(processes, mp_context=context) as pool:
        start = manager.Barrier(processes)
        futures = [pool.submit(client, address, concurrency, duration, start) for _ in range(processes)]
        total = Outcome()
        for future in futures:
            outcome = future.result()
            total.logins += outcome.logins
            total.latencies += outcome.latencies
            total.errors += outcome.errors
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.login", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load (default 10)")
    parser.add_argument("--quick", action="store_true", help="3 seconds of load")
    parser.add_argument("--processes", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight per process (default 8)")
    args = parser.parse_args(argv)
    duration = 3.0 if args.quick else args.duration
    try:
        rounds = load_settings().bcrypt_rounds  # BCRYPT_ROUNDS, read as the service reads it
    except ConfigError as exc:
        sys.exit(f"bench: {exc}")
    cpus = os.cpu_count() or 1

    bound = cpus / bcrypt_check_seconds(rounds)  # measured before the server competes for the CPU
    with auth_service(rounds) as address:
        register_users(address)
        total = run_clients(address, args.processes, args.concurrency, duration)

    errors = sum(total.errors.values())
    rate = total.logins / duration
    if len(total.latencies) >= 2:
        cuts = statistics.quantiles(total.latencies, n=100, method="inclusive")
        p50, p99 = f"{cuts[49] * 1000:.0f}", f"{cuts[98] * 1000:.0f}"
    else:
        p50 = p99 = "n/a"
    print(
        f"Login, bcrypt cost {rounds}, {cpus} CPUs, {args.processes} client processes x "
        f"{args.concurrency} calls in flight, {duration:g} s\n"
    )
    print("| logins/s | p50 ms | p99 ms | errors | bcrypt bound (checks/s) | % of bound |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {rate:.2f} | {p50} | {p99} | {errors} | {bound:.2f} | {100 * rate / bound:.0f}% |")
    if errors:
        sys.exit("bench: logins failed: " + ", ".join(f"{code} x {n}" for code, n in total.errors.items()))


if __name__ == "__main__":
    main()
