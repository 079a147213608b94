"""`invmesh up`: every service and the facade in processes of their own, supervised."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from launcher.admin import migrate
from launcher.layout import FACADE, replica_addresses, settings_or_exit
from mesh.config import Settings
from mesh.services import SERVICES

# The services are still starting when the first health checks go out: retry a refused
# connection every 50-250 ms, not after gRPC's default backoff of a second and more.
_HEALTH_POLL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]


async def _wait_healthy(address: str, deadline: float) -> bool:
    async with grpc.aio.insecure_channel(address, options=_HEALTH_POLL_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            await asyncio.sleep(0.1)
    return False


async def _wait_http_healthy(host: str, port: int, deadline: float) -> bool:
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            status_line = await reader.readline()
            writer.close()
            if status_line.split(b" ")[1:2] == [b"200"]:
                return True
        await asyncio.sleep(0.1)
    return False


def _address(settings: Settings, name: str, listen: str | None) -> str:
    if name == FACADE:
        return ", ".join(f"http://{settings.facade_host}:{port}" for port in settings.facade_ports)
    return listen or settings.address(name)


async def _healthy(settings: Settings, name: str, listen: str | None, deadline: float) -> bool:
    if name == FACADE:
        host, ports = settings.facade_host, settings.facade_ports
        return all(await asyncio.gather(*(_wait_http_healthy(host, p, deadline) for p in ports)))
    return await _wait_healthy(listen or settings.address(name), deadline)


def _provision_service_secrets(settings: Settings) -> dict[str, dict[str, str]]:
    """Fresh client credentials for this run's services, unless SERVICE_SECRETS is set: the
    list for auth, each service its own secret (environment by process name)."""
    if settings.service_secrets is not None:
        return {}
    # The facade's secret proves to auth the client addresses it passes on (mesh.forwarding).
    own = {name: secrets.token_urlsafe(32) for name in [*SERVICES, FACADE] if name != "auth"}
    listed = ",".join(f"{name}:{secret}" for name, secret in own.items())
    return {"auth": {"SERVICE_SECRETS": listed}} | {
        name: {"SERVICE_SECRET": secret} for name, secret in own.items()
    }


async def up(names: list[str], replicas: dict[str, int] | None = None) -> int:
    settings = settings_or_exit()
    started = time.monotonic()
    # label -> (component, the address it listens on when it is one of several replicas)
    layout: dict[str, tuple[str, str | None]] = {}
    env = dict(os.environ)
    addresses: dict[str, list[str]] = {}
    if replicas:
        addresses = {
            service: replica_addresses(settings.address(service), count)
            for service, count in replicas.items()
        }
        env |= {f"{s.upper()}_ADDR": ",".join(a) for s, a in addresses.items()}
    # A service that would migrate its own schema at startup is migrated here, once, before it
    # starts: it then finds its schema current and never loads Alembic (about 10 MiB a process).
    migrating = [name for name in names if name in SERVICES and settings.auto_migrate(name)]
    if migrating and await migrate(migrating, tell_current=False):
        return 1
    service_secrets = _provision_service_secrets(settings)
    for name in names:
        if replicas and name in replicas:
            for k, address in enumerate(addresses[name]):
                layout[f"{name}[{k}]"] = (name, address)
        else:
            layout[name] = (name, None)
    children: dict[str, asyncio.subprocess.Process] = {}
    for label, (name, listen) in layout.items():
        args = ["serve", name, *(["--listen", listen] if listen else [])]
        child_env = env | service_secrets.get(name, {})
        children[label] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "launcher", *args, env=child_env
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def announce() -> None:
        shown = {label: _address(settings, name, listen) for label, (name, listen) in layout.items()}
        healthy = await asyncio.gather(
            *(_healthy(settings, name, listen, started + 60) for name, listen in layout.values())
        )
        for (name, address), ok in zip(shown.items(), healthy, strict=True):
            print(
                f"invmesh: {name} {'is serving on' if ok else 'did not become healthy on'} {address}",
                file=sys.stderr,
            )
        if all(healthy):
            print(f"invmesh: all healthy in {time.monotonic() - started:.2f}s; Ctrl-C stops", file=sys.stderr)

    announcer = asyncio.create_task(announce())
    exits = {asyncio.create_task(child.wait()): name for name, child in children.items()}
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *exits], return_when=asyncio.FIRST_COMPLETED)
    announcer.cancel()
    status = 0
    if stopper not in done:
        status = 1
        for task in done:
            print(
                f"invmesh: {exits[task]} exited with status {task.result()}; stopping the rest",
                file=sys.stderr,
            )
    for child in children.values():
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(settings.shutdown_lame_duck_seconds + settings.shutdown_grace_seconds + 5):
            await asyncio.gather(*(c.wait() for c in children.values()))
    except TimeoutError:
        for child in children.values():
            if child.returncode is None:
                child.kill()
        status = 1
    return status
