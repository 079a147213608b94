"""`invmesh up`: every service and the facade in processes of their own, supervised.

Before it starts anything, `up` checks that every address it will listen on is free. It then
runs each component as `python -m launcher serve NAME` and restarts one that exits: after
0.5 s, the wait doubling with each restart up to 30 s, and back to 0.5 s once the component
had been healthy for a minute. A component that exits 5 times within 2 minutes is given up,
and the others go on serving. `up` exits 1 when it has given up every component, and 0 when
SIGTERM or Ctrl-C stops it (1 if a component then had to be killed after its grace).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import signal
import ssl
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import grpc
from grpc_health.v1 import health_pb2

from launcher.admin import migrate
from launcher.layout import (
    COMPONENTS,
    FACADE,
    REPLICA_PORT_STEP,
    listen_address,
    replica_addresses,
    replica_metrics_address,
    settings_or_exit,
)
from launcher.lifetime import SUPERVISOR_PID
from launcher.ports import listen_problem, port_holder
from mesh.clients import channel_credentials
from mesh.config import ConfigError, Settings, join_host_port, load_settings, parse_host_port
from mesh.services import SERVICES

RESTART_DELAY_FIRST_SECONDS = 0.5
RESTART_DELAY_MOST_SECONDS = 30.0
# A component healthy this long before it exits is restarted after the first delay again.
HEALTHY_RESETS_DELAY_SECONDS = 60.0
# This many exits within the window is a crash loop: the component is given up.
CRASH_LOOP_EXITS = 5
CRASH_LOOP_WINDOW_SECONDS = 120.0
# How long a started component has to answer its health check.
STARTUP_SECONDS = 60.0

# The services are still starting when the first health checks go out: retry a refused
# connection every 50-250 ms, not after gRPC's default backoff of a second and more.
_HEALTH_POLL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]


def _health_check(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]:
    # What HealthStub(channel).Check is, typed: the stubs of grpcio-health-checking omit it.
    return channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )


@dataclass(frozen=True)
class HealthChecks:
    """How `up` checks its children: gRPC credentials for the services (None: plaintext), and
    an SSL context for the facade when it serves HTTPS (None: HTTP)."""

    credentials: grpc.ChannelCredentials | None = None
    facade_ssl: ssl.SSLContext | None = None

    @classmethod
    def from_settings(cls, settings: Settings, ca: Path | None = None) -> HealthChecks:
        """The checks for children configured like `settings`; `ca` verifies the facade's
        certificate (without it, the facade's HTTPS is used unverified: the check only asks
        whether the child that up started answers)."""
        facade_ssl = None
        if settings.facade_tls is not None or ca is not None:
            facade_ssl = ssl.create_default_context(cafile=ca)
            facade_ssl.check_hostname = False  # FACADE_HOST may be 0.0.0.0, in no certificate
            if ca is None:
                facade_ssl.verify_mode = ssl.CERT_NONE
        return cls(channel_credentials(settings), facade_ssl)


def _channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=_HEALTH_POLL_OPTIONS)
    return grpc.aio.secure_channel(address, credentials, options=_HEALTH_POLL_OPTIONS)


async def _wait_healthy(
    address: str, deadline: float, credentials: grpc.ChannelCredentials | None, service: str = ""
) -> bool:
    """Whether `service`'s health at `address` turned SERVING before `deadline`: a service's
    own name is its readiness (its database answers too), "" the server's liveness."""
    async with _channel(address, credentials) as channel:
        check = _health_check(channel)
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError):
                request = health_pb2.HealthCheckRequest(service=service)
                reply = await check(request, timeout=1, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            await asyncio.sleep(0.1)
    return False


async def _wait_http_healthy(
    host: str, port: int, deadline: float, context: ssl.SSLContext | None, path: str = "/healthz"
) -> bool:
    """Whether `path` answered 200 before `deadline`: `/readyz` once every backend serves."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # ssl.SSLError is one
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
            writer.write(request)
            status_line = await reader.readline()
            writer.close()
            if status_line.split(b" ")[1:2] == [b"200"]:
                return True
        await asyncio.sleep(0.1)
    return False


@dataclass(frozen=True, eq=False)
class Component:
    """One supervised process: a service, one replica of a service, or the facade."""

    label: str  # "inventory", or "inventory[1]" for a replica
    argv: list[str]
    env: dict[str, str]
    listen: str | None  # where a service listens; None for the facade
    setting: str  # what configures where it listens, such as "INVENTORY_ADDR + 10"
    metrics: str | None = None  # where it serves its metrics, if it does
    metrics_setting: str = ""  # what configures that, such as "INVENTORY_METRICS_ADDR + 10"
    # The health a service is ready by (its service's full name); "" for the facade.
    health_service: str = ""


class Listener(NamedTuple):
    address: str  # host:port, or unix:PATH
    owner: str  # the label of the component that listens there
    setting: str  # what configures it, such as "FACADE_PORTS"


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


def _components(
    settings: Settings, names: list[str], replicas: dict[str, int], tls_env: dict[str, dict[str, str]]
) -> list[Component]:
    addresses = {
        service: replica_addresses(settings.address(service), count) for service, count in replicas.items()
    }
    # Every process is told of all replicas of a service, so that its calls spread over them.
    env = dict(os.environ) | {f"{s.upper()}_ADDR": ",".join(a) for s, a in addresses.items()}
    env[SUPERVISOR_PID] = str(os.getpid())  # so a child stops should up die (launcher.cli)
    env.pop("GRPC_PROBE_ADDR", None)  # one address for one process (a container's), not for each
    # glibc gives each thread that allocates (gRPC's, SQLite's readers) an arena of its own, up to
    # 8 per core, and keeps what they free: two hold a service's peak about 3 MiB lower, at the
    # same speed (docs/performance.md). The operator's setting wins; the image sets the same.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    service_secrets = _provision_service_secrets(settings)
    serve = [sys.executable, "-m", "launcher", "serve"]
    components = []
    for name in names:
        child_env = env | service_secrets.get(name, {}) | tls_env.get(name, {})
        metrics, metrics_setting = settings.metrics_address(name), f"{name.upper()}_METRICS_ADDR"
        ready_by = SERVICES[name].descriptor.full_name if name in SERVICES else ""
        if name == FACADE:
            components.append(
                Component(name, [*serve, name], child_env, None, "FACADE_PORTS", metrics, metrics_setting)
            )
        elif name in addresses:
            for k, address in enumerate(addresses[name]):
                step = f" + {REPLICA_PORT_STEP * k}" if k else ""
                argv = [*serve, name, "--listen", address]
                # Each replica serves its metrics on a port of its own, as it listens on one.
                moved = replica_metrics_address(metrics, k) if metrics else None
                replica_env = child_env | ({metrics_setting: moved} if moved else {})
                components.append(
                    Component(
                        f"{name}[{k}]",
                        argv,
                        replica_env,
                        address,
                        f"{name.upper()}_ADDR{step}",
                        metrics=moved,
                        metrics_setting=metrics_setting + step,
                        health_service=ready_by,
                    )
                )
        else:
            address = listen_address(settings.address(name))
            components.append(
                Component(
                    name,
                    [*serve, name],
                    child_env,
                    address,
                    f"{name.upper()}_ADDR",
                    metrics=metrics,
                    metrics_setting=metrics_setting,
                    health_service=ready_by,
                )
            )
    return components


def _listeners(settings: Settings, components: list[Component]) -> list[Listener]:
    listeners = []
    for component in components:
        if component.listen is not None:
            listeners.append(Listener(component.listen, component.label, component.setting))
        else:
            listeners += [
                Listener(join_host_port(settings.facade_host, port), component.label, component.setting)
                for port in settings.facade_ports
            ]
        if component.metrics is not None:
            listeners.append(Listener(component.metrics, component.label, component.metrics_setting))
    return listeners


def _listen_problems(listeners: list[Listener]) -> list[str]:
    """What stands in the way of listening everywhere, one line each; none when all is free.
    An address that answers health checks is not enough: it may be another system's."""
    problems = []
    claimed: dict[str, Listener] = {}
    for listener in listeners:
        address, owner, setting = listener
        if (first := claimed.setdefault(address, listener)) is not listener:
            problems.append(
                f"invmesh: {first.owner} ({first.setting}) and {owner} ({setting}) "
                f"would both listen on {address}"
            )
            continue
        problem = listen_problem(address)
        if problem is None:
            continue
        if problem.errno != errno.EADDRINUSE:
            problems.append(f"invmesh: {owner} cannot listen on {address} ({setting}): {problem.strerror}")
        elif address.startswith("unix:"):
            problems.append(f"invmesh: {address} ({owner}, {setting}) is taken by another process")
        else:
            port = parse_host_port(address)[1]
            holder = port_holder(port)
            ours = holder is not None and ("launcher" in holder or "invmesh" in holder)
            problems.append(
                f"invmesh: port {port} ({owner}, {setting}) is taken, "
                f"probably by {holder or 'another process'}"
                + (" — is another invmesh up running?" if ours else "")
            )
    return problems


def _how_it_ended(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class RestartPolicy:
    """When to restart a component that exited, and when to give it up: one per component."""

    def __init__(self) -> None:
        self._delay = RESTART_DELAY_FIRST_SECONDS
        self._exits: deque[float] = deque()  # times of the exits within the crash-loop window

    def after_exit(self, at: float, healthy_since: float | None) -> float | None:
        """How long to wait before restarting a component that exited `at` (time.monotonic()),
        healthy since `healthy_since` if it became healthy; None to give it up."""
        if healthy_since is not None and at - healthy_since >= HEALTHY_RESETS_DELAY_SECONDS:
            self._delay = RESTART_DELAY_FIRST_SECONDS
        self._exits.append(at)
        while at - self._exits[0] > CRASH_LOOP_WINDOW_SECONDS:
            self._exits.popleft()
        if len(self._exits) >= CRASH_LOOP_EXITS:
            return None
        delay, self._delay = self._delay, min(2 * self._delay, RESTART_DELAY_MOST_SECONDS)
        return delay


class Supervisor:
    """Runs the components, restarts those that exit, and stops them all on SIGTERM or SIGINT."""

    def __init__(self, settings: Settings, components: list[Component], checks: HealthChecks) -> None:
        self._settings = settings
        self._components = components
        self._checks = checks
        self._stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Whether each became healthy the first time, once known: what `up` announces.
        self._first_health = {c: loop.create_future() for c in components}

    async def run(self, started: float) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        stop_requested = asyncio.create_task(self._stopping.wait())
        announcer = asyncio.create_task(self._announce(started))
        # Each component's supervision ends when `up` stops, or when it gives the component up.
        stopped_in_time = await asyncio.gather(
            *(self._supervise(c, stop_requested) for c in self._components)
        )
        announcer.cancel()
        if not self._stopping.is_set():
            print("invmesh: every component has been given up; exiting", file=sys.stderr)
            stop_requested.cancel()
            return 1
        return 0 if all(stopped_in_time) else 1

    async def _supervise(self, component: Component, stop_requested: asyncio.Task[bool]) -> bool:
        """Keeps `component` running until `up` stops (True if it then stopped within its grace)
        or gives it up (True)."""
        policy = RestartPolicy()
        restarted = False
        while True:
            process = await asyncio.create_subprocess_exec(*component.argv, env=component.env)
            health = asyncio.create_task(self._watch_health(component, restarted=restarted))
            ended = asyncio.create_task(process.wait())
            await asyncio.wait([ended, stop_requested], return_when=asyncio.FIRST_COMPLETED)
            healthy_since = health.result() if health.done() else None
            health.cancel()
            if self._stopping.is_set():
                ended.cancel()
                return await self._stop(process)
            how = _how_it_ended(ended.result())
            delay = policy.after_exit(time.monotonic(), healthy_since)
            if delay is None:
                print(
                    f"invmesh: {component.label} {how}: {CRASH_LOOP_EXITS} exits within "
                    f"{CRASH_LOOP_WINDOW_SECONDS:.0f}s; giving up on it (the rest go on)",
                    file=sys.stderr,
                )
                if not self._first_health[component].done():
                    self._first_health[component].set_result(False)
                return True
            print(f"invmesh: {component.label} {how}; restarting it in {delay:g}s", file=sys.stderr)
            stopped, _ = await asyncio.wait([stop_requested], timeout=delay)
            if stopped:
                return True
            restarted = True

    async def _watch_health(self, component: Component, *, restarted: bool) -> float | None:
        """When the started component became ready (time.monotonic()): a service's own health
        SERVING, the facade's `/readyz` 200; None if it did not within STARTUP_SECONDS."""
        deadline = time.monotonic() + STARTUP_SECONDS
        if component.listen is not None:
            credentials = self._checks.credentials
            healthy = await _wait_healthy(component.listen, deadline, credentials, component.health_service)
        else:
            healthy = await self._facade_ready(deadline)
        first = self._first_health[component]
        if not first.done():
            first.set_result(healthy)
        elif restarted:
            again = "is serving again on" if healthy else "did not become healthy again on"
            print(f"invmesh: {component.label} {again} {self._shown(component)}", file=sys.stderr)
        return time.monotonic() if healthy else None

    async def _facade_ready(self, deadline: float) -> bool:
        """Whether every facade port answered `/readyz` 200 (every backend serving) before
        `deadline`. It is asked once the services `up` runs are ready, so that the facade's
        channels connect at the first try rather than after reconnect backoffs; False at once if
        one of them did not become ready, as the facade cannot be ready then."""
        services = [first for component, first in self._first_health.items() if component.listen is not None]
        if services:
            await asyncio.wait(services)  # not gather: cancelling this must not cancel them
            if not all(first.result() for first in services):
                return False
        host, ports = self._settings.facade_host, self._settings.facade_ports
        context = self._checks.facade_ssl
        waits = (_wait_http_healthy(host, p, deadline, context, "/readyz") for p in ports)
        return all(await asyncio.gather(*waits))

    async def _announce(self, started: float) -> None:
        healthy = await asyncio.gather(*self._first_health.values())
        for component, ok in zip(self._components, healthy, strict=True):
            said = "is serving on" if ok else "did not become healthy on"
            print(f"invmesh: {component.label} {said} {self._shown(component)}", file=sys.stderr)
        if all(healthy):
            print(f"invmesh: all healthy in {time.monotonic() - started:.2f}s; Ctrl-C stops", file=sys.stderr)

    def _shown(self, component: Component) -> str:
        if component.listen is not None:
            return component.listen
        host = self._settings.facade_host
        scheme = "http" if self._checks.facade_ssl is None else "https"
        return ", ".join(f"{scheme}://{join_host_port(host, port)}" for port in self._settings.facade_ports)

    async def _stop(self, process: asyncio.subprocess.Process) -> bool:
        """SIGTERM, then SIGKILL if the process outlives its lame duck and grace; True if it
        stopped by itself."""
        with contextlib.suppress(ProcessLookupError):  # it may have exited meanwhile
            process.send_signal(signal.SIGTERM)
        settings = self._settings
        try:
            async with asyncio.timeout(
                settings.shutdown_lame_duck_seconds + settings.shutdown_grace_seconds + 5
            ):
                await process.wait()
            return True
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return False


async def up(names: list[str], replicas: dict[str, int] | None = None, tls_dir: Path | None = None) -> int:
    """Runs the components; with `tls_dir` (`--tls`), each over TLS with its own certificate
    from there (made first if there are none)."""
    settings = settings_or_exit()
    started = time.monotonic()
    checks = HealthChecks.from_settings(settings)
    tls_env: dict[str, dict[str, str]] = {}
    if tls_dir is not None:
        from launcher import certs  # cryptography, which only --tls needs

        try:
            if certs.ensure(tls_dir):
                print(f"invmesh: made a development CA and certificates in {tls_dir}", file=sys.stderr)
            # up checks the services as the facade calls them, with the facade's certificate.
            as_facade = load_settings(**certs.settings_of(tls_dir, FACADE))
        except (OSError, ConfigError) as exc:
            print(f"invmesh: --tls: {exc}", file=sys.stderr)
            return 1
        checks = HealthChecks.from_settings(as_facade, tls_dir / "ca.crt")
        tls_env = {name: certs.component_env(tls_dir, name) for name in COMPONENTS}
        if "PUBLIC_URL" not in os.environ and settings.public_url.startswith("http://"):
            # Verification links lead to the facade, which now speaks HTTPS only.
            https = "https://" + settings.public_url.removeprefix("http://")
            tls_env = {name: env | {"PUBLIC_URL": https} for name, env in tls_env.items()}
    if settings.grpc_probe_addr:
        print("invmesh: GRPC_PROBE_ADDR is for one process (a container); up ignores it", file=sys.stderr)
    components = _components(settings, names, replicas or {}, tls_env)
    if problems := _listen_problems(_listeners(settings, components)):
        print("\n".join(problems), file=sys.stderr)
        return 1
    # A service that would migrate its own schema at startup is migrated here, once, before it
    # starts: it then finds its schema current and never loads Alembic (about 10 MiB a process).
    migrating = [name for name in names if name in SERVICES and settings.auto_migrate(name)]
    if migrating and await migrate(migrating, tell_current=False):
        return 1
    return await Supervisor(settings, components, checks).run(started)
