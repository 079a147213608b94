"""`invmesh`: run the services.

invmesh up             every service and the REST facade, each in its own process,
                       until Ctrl-C or SIGTERM
invmesh up --replicas inventory=2,products=2
                       the same with several processes of a service: replica k listens on
                       the port of its `<SERVICE>_ADDR` + 10*k, and every process is given
                       the comma list of all replicas as that `<SERVICE>_ADDR`
invmesh serve NAME [--listen HOST:PORT]
                       one service (or the facade) in this process; a service listens on
                       HOST:PORT (default: the first address of its `<SERVICE>_ADDR`)
invmesh migrate [NAME…] bring the services' database schemas to the newest migration
invmesh keys rotate    store a new token signing key: published at once, signing once every
                       verifier can know it; older keys are dropped once their tokens expired
invmesh users grant EMAIL ROLE
                       give an account the role viewer, staff or admin, straight in the
                       auth database (how the first admin is made without ADMIN_EMAILS)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.config import ConfigError, Settings, load_settings
from mesh.logs import configure_logging
from mesh.services import SERVICES

FACADE = "facade"
COMPONENTS = [*SERVICES, FACADE]


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        sys.exit(f"invmesh: {exc}")


REPLICA_PORT_STEP = 10  # replica k of a service listens on the port of its address + 10*k


def first_address(address: str) -> str:
    """The first `host:port` of a `*_ADDR` that may be a comma list of replicas."""
    return address.split(",", 1)[0].strip()


def replica_addresses(address: str, count: int) -> list[str]:
    """`count` addresses from one `host:port`: the port, then the port + 10, + 20, …"""
    host, _, port = first_address(address).rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return [f"{host}:{int(port) + REPLICA_PORT_STEP * k}" for k in range(count)]


def parse_replicas(text: str) -> dict[str, int]:
    """`inventory=2,products=2` -> {"inventory": 2, "products": 2} (argparse type)."""
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, count = part.partition("=")
        name = name.strip()
        if not sep:
            raise argparse.ArgumentTypeError(f"{part!r} is not SERVICE=COUNT")
        if name not in SERVICES:
            raise argparse.ArgumentTypeError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")
        try:
            counts[name] = int(count)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"the count of {name} must be a whole number, not {count!r}"
            ) from None
        if counts[name] < 1:
            raise argparse.ArgumentTypeError(f"the count of {name} must be at least 1, not {counts[name]}")
    if not counts:
        raise argparse.ArgumentTypeError("expected SERVICE=COUNT[,SERVICE=COUNT…]")
    return counts


def serve(name: str, listen: str | None = None) -> None:
    settings = _settings_or_exit()
    configure_logging(name, settings.log_level, settings.log_format)
    if name == FACADE:
        from facade.server import run  # only the facade process needs uvicorn and starlette

        run(settings)
        return
    # Only a service process needs the database and the gRPC server: the facade's stays smaller.
    from mesh.db import StartupError
    from mesh.server import serve_until_signalled

    module = importlib.import_module(SERVICES[name].module)
    running: Callable[..., AbstractAsyncContextManager[Any]] = module.running
    try:
        address = listen or first_address(settings.address(name))
        # uvloop, as the facade under uvicorn: grpc.aio runs on it, and its loop costs less per call.
        uvloop.run(serve_until_signalled(running(settings, address=address)))
    except StartupError as exc:  # an outdated schema or an unreachable database: say what to do
        sys.exit(f"invmesh: {name}: {exc}")


async def migrate(names: list[str], *, tell_current: bool = True) -> int:
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
            if before != head or tell_current:
                done = "already at" if before == head else f"migrated from {before or 'empty'} to"
                print(f"invmesh: {name}: {done} revision {head}", file=sys.stderr)
        except Exception as exc:
            print(f"invmesh: {name}: migration failed: {describe_error(exc)}", file=sys.stderr)
            status = 1
        finally:
            await db.dispose()
    return status


async def grant(email: str, role: str) -> int:
    """Gives the account `role` in the auth database; it shows in tokens from its next sign-in."""
    from auth.accounts import grant_role
    from mesh.db import Database, describe_error
    from mesh.errors import DomainError

    db = Database.for_service(_settings_or_exit(), "auth")
    try:
        user = await grant_role(db, email=email, role=role)
    except DomainError as exc:
        print(f"invmesh: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"invmesh: auth: {describe_error(exc)}", file=sys.stderr)
        return 1
    finally:
        await db.dispose()
    print(f"invmesh: {user.email} is now {role}; it takes effect at the next sign-in", file=sys.stderr)
    return 0


async def rotate_keys() -> int:
    """Stores a new signing key in the auth database (see auth.keys); 1 if it could not."""
    from auth.keys import Schedule, rotate
    from mesh.db import Database, describe_error
    from mesh.errors import DomainError

    settings = _settings_or_exit()
    if settings.jwt_private_key is not None:
        print(
            "invmesh: JWT_PRIVATE_KEY is set, so that key alone signs; to rotate it, set another "
            "key (tokens of the old one then stop verifying), or unset it to use rotating keys",
            file=sys.stderr,
        )
        return 1
    db = Database.for_service(settings, "auth")
    try:
        rotation = await rotate(db, Schedule.from_settings(settings))
    except DomainError as exc:
        print(f"invmesh: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"invmesh: auth: {describe_error(exc)}", file=sys.stderr)
        return 1
    finally:
        await db.dispose()
    print(
        f"invmesh: new signing key {rotation.kid} (generation {rotation.generation}), published now, "
        f"signs from {rotation.signs_from:%Y-%m-%d %H:%M:%S} UTC",
        file=sys.stderr,
    )
    for kid in rotation.retired:
        print(f"invmesh: retired signing key {kid}: every token it signed has expired", file=sys.stderr)
    return 0


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
    own = {name: secrets.token_urlsafe(32) for name in SERVICES if name != "auth"}
    listed = ",".join(f"{name}:{secret}" for name, secret in own.items())
    return {"auth": {"SERVICE_SECRETS": listed}} | {
        name: {"SERVICE_SECRET": secret} for name, secret in own.items()
    }


async def up(names: list[str], replicas: dict[str, int] | None = None) -> int:
    settings = _settings_or_exit()
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="invmesh", description="Run the invmesh services.")
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="start every service and supervise them")
    up_parser.add_argument(
        "services", nargs="*", metavar="SERVICE", help=f"a subset of: {', '.join(COMPONENTS)}"
    )
    up_parser.add_argument(
        "--replicas",
        type=parse_replicas,
        metavar="SERVICE=N[,…]",
        help="run N processes of a service; replica k listens on the port of <SERVICE>_ADDR + 10*k",
    )
    serve_parser = commands.add_parser("serve", help="run one service in this process")
    serve_parser.add_argument("service", choices=COMPONENTS)
    serve_parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="the address a service listens on (default: the first address of its <SERVICE>_ADDR)",
    )
    migrate_parser = commands.add_parser("migrate", help="apply the database migrations of services")
    migrate_parser.add_argument(
        "services", nargs="*", metavar="SERVICE", help=f"a subset of: {', '.join(SERVICES)} (default: all)"
    )
    keys_parser = commands.add_parser("keys", help="manage the token signing keys")
    keys_commands = keys_parser.add_subparsers(dest="action", required=True)
    keys_commands.add_parser("rotate", help="store a new signing key; old ones retire as tokens expire")
    users_parser = commands.add_parser("users", help="manage accounts")
    users_commands = users_parser.add_subparsers(dest="action", required=True)
    grant_parser = users_commands.add_parser("grant", help="give an account a role")
    grant_parser.add_argument("email")
    grant_parser.add_argument("role", choices=["viewer", "staff", "admin"])
    args = parser.parse_args(argv)
    if args.command == "keys":
        configure_logging("keys", "WARNING", "text")
        sys.exit(asyncio.run(rotate_keys()))
    if args.command == "users":
        configure_logging("users", "WARNING", "text")
        sys.exit(asyncio.run(grant(args.email, args.role)))
    if args.command == "serve":
        if args.listen is not None and args.service == FACADE:
            serve_parser.error(
                "--listen is for a gRPC service; the facade listens on FACADE_HOST and FACADE_PORTS"
            )
        serve(args.service, args.listen)
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
    names = args.services or COMPONENTS
    if args.replicas:
        idle = set(args.replicas) - set(names)
        if idle:
            up_parser.error(f"--replicas names {', '.join(sorted(idle))}, which this command does not start")
        settings = _settings_or_exit()
        for service in args.replicas:
            try:
                replica_addresses(settings.address(service), 1)
            except ValueError as exc:
                up_parser.error(f"--replicas {service}: {service.upper()}_ADDR {exc}")
    sys.exit(asyncio.run(up(names, args.replicas)))
