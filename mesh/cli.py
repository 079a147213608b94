"""`invmesh`: run the services.

invmesh up             every service and the REST facade, each in its own process,
                       until Ctrl-C or SIGTERM
invmesh serve NAME     one service (or the facade) in this process
invmesh migrate [NAME…] bring the services' database schemas to the newest migration
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import signal
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.config import ConfigError, Settings, load_settings
from mesh.db import StartupError
from mesh.logs import configure_logging
from mesh.server import serve_until_signalled

# name -> (module with `running(settings)`, the setting holding its address)
SERVICES: dict[str, tuple[str, str]] = {
    "auth": ("auth.service", "auth_addr"),
    "products": ("products.service", "products_addr"),
    "inventory": ("inventory.service", "inventory_addr"),
}
FACADE = "facade"
COMPONENTS = [*SERVICES, FACADE]


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        sys.exit(f"invmesh: {exc}")


def serve(name: str) -> None:
    settings = _settings_or_exit()
    configure_logging(name, settings.log_level, settings.log_format)
    if name == FACADE:
        from facade.server import run  # only the facade process needs uvicorn and starlette

        run(settings)
        return
    module, _ = SERVICES[name]
    running: Callable[[Settings], AbstractAsyncContextManager[Any]] = importlib.import_module(module).running
    try:
        asyncio.run(serve_until_signalled(running(settings)))
    except StartupError as exc:  # an outdated schema or an unreachable database: say what to do
        sys.exit(f"invmesh: {name}: {exc}")


async def migrate(names: list[str]) -> int:
    """Upgrades each service's database to its newest migration; 1 if any could not be."""
    from mesh import migrations  # alembic is only needed here and at startup
    from mesh.db import Database, describe_error

    settings = _settings_or_exit()
    status = 0
    for name in names:
        db = Database.for_service(settings, name)
        try:
            before = await migrations.current(db, name)
            await migrations.upgrade(db, name)
            head = migrations.head(name)
            done = "already at" if before == head else f"migrated from {before or 'empty'} to"
            print(f"invmesh: {name}: {done} revision {head}", file=sys.stderr)
        except Exception as exc:
            print(f"invmesh: {name}: migration failed: {describe_error(exc)}", file=sys.stderr)
            status = 1
        finally:
            await db.dispose()
    return status


async def _wait_healthy(address: str, deadline: float) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
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


def _address(settings: Settings, name: str) -> str:
    if name == FACADE:
        return ", ".join(f"http://{settings.facade_host}:{port}" for port in settings.facade_ports)
    return getattr(settings, SERVICES[name][1])


async def _healthy(settings: Settings, name: str, deadline: float) -> bool:
    if name == FACADE:
        host, ports = settings.facade_host, settings.facade_ports
        return all(await asyncio.gather(*(_wait_http_healthy(host, p, deadline) for p in ports)))
    return await _wait_healthy(getattr(settings, SERVICES[name][1]), deadline)


async def up(names: list[str]) -> int:
    settings = _settings_or_exit()
    started = time.monotonic()
    children = {
        name: await asyncio.create_subprocess_exec(sys.executable, "-m", "mesh", "serve", name)
        for name in names
    }
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def announce() -> None:
        addresses = {name: _address(settings, name) for name in names}
        healthy = await asyncio.gather(*(_healthy(settings, name, started + 60) for name in names))
        for (name, address), ok in zip(addresses.items(), healthy, strict=True):
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
        async with asyncio.timeout(settings.shutdown_grace_seconds + 5):
            await asyncio.gather(*(c.wait() for c in children.values()))
    except TimeoutError:
        for child in children.values():
            if child.returncode is None:
                child.kill()
        status = 1
    return status


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="invmesh", description="Run the invmesh services.")
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="start every service and supervise them")
    up_parser.add_argument(
        "services", nargs="*", metavar="SERVICE", help=f"a subset of: {', '.join(COMPONENTS)}"
    )
    serve_parser = commands.add_parser("serve", help="run one service in this process")
    serve_parser.add_argument("service", choices=COMPONENTS)
    migrate_parser = commands.add_parser("migrate", help="apply the database migrations of services")
    migrate_parser.add_argument(
        "services", nargs="*", metavar="SERVICE", help=f"a subset of: {', '.join(SERVICES)} (default: all)"
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.service)
        return
    if args.command == "migrate":
        unknown = set(args.services) - set(SERVICES)
        if unknown:
            parser.error(f"unknown service {', '.join(sorted(unknown))}; choose from {', '.join(SERVICES)}")
        configure_logging("migrate", "WARNING", "text")
        sys.exit(asyncio.run(migrate(args.services or list(SERVICES))))
    unknown = set(args.services) - set(COMPONENTS)
    if unknown:
        parser.error(f"unknown service {', '.join(sorted(unknown))}; choose from {', '.join(COMPONENTS)}")
    sys.exit(asyncio.run(up(args.services or COMPONENTS)))
