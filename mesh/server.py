"""The one gRPC server bootstrap every service uses (grpc.aio).

A `MeshServer` serves a service's servicers behind the standard interceptors (request ids,
logging, errors, and the token check for every method not listed as public), the
`grpc.health.v1` health service and server reflection. `stop()` is the graceful path:
health goes NOT_SERVING, and the server goes on serving for a lame-duck period while the
channels that watch its health send their calls to other replicas (mesh/clients.py); then
new calls are refused, and in-flight calls get the grace period to finish; any still running
fail with UNAVAILABLE, and `stop()` returns once their handlers have ended. A connection that
reaches its maximum age is asked to go away, so clients resolve their target again (gRFC A9).
`serve_until_signalled` runs a service until SIGTERM or SIGINT.

With a key pair (GRPC_TLS_CERT_FILE, GRPC_TLS_KEY_FILE) the server speaks TLS, and reads its
certificate again at a handshake once the files changed (mesh.tls); with a client CA
(GRPC_TLS_CLIENT_CA_FILE) it accepts only clients presenting a certificate the CA signed.
A probe address (GRPC_PROBE_ADDR) adds a plaintext listener serving the same health states
and nothing else, for probes that cannot speak TLS, such as kubelet's gRPC probe.

Health has two meanings here. The server's overall health ("") is liveness: SERVING from start
to shutdown. Each service's own name (`invmesh.inventory.v1.InventoryService`) is readiness:
it also turns NOT_SERVING while the service's database does not answer (a `DatabaseWatch`,
mesh/health.py). Shutdown's NOT_SERVING is final: nothing turns a stopping server SERVING.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mesh import access, tracing
from mesh.config import Settings
from mesh.db import Database
from mesh.health import DatabaseWatch
from mesh.interceptors import AuthInterceptor, RequestInterceptor
from mesh.tls import KeyPair, ServerCredentialsSource
from mesh.tokens import TokenVerifier

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Servicer(Generic[S]):
    """A servicer and how to add it: `(name, add_XServicer_to_server, instance)`."""

    name: str  # the full service name, e.g. "invmesh.auth.v1.AuthService"
    add_to_server: Callable[[S, grpc.aio.Server], None]
    instance: S


class ListenError(Exception):
    """The server cannot listen on its address (taken, or not this machine's)."""


class _MethodAwarePool:
    """The default descriptor pool, plus lookups of RPC methods by full name.

    protobuf's pool cannot find the file of `pkg.Service.Method` (grpc/grpc#34743), so
    `grpcurl describe pkg.Service.Method` fails against Python servers; this finds it
    through the service.
    """

    def __init__(self) -> None:
        self._pool = descriptor_pool.Default()

    def FindFileContainingSymbol(self, symbol: str) -> FileDescriptor:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service, _, method = symbol.rpartition(".")
            try:
                found = self._pool.FindServiceByName(service)
            except KeyError:
                found = None
            if found is None or method not in found.methods_by_name:
                raise
            return found.file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def connection_age_options(age_seconds: float, grace_seconds: float) -> list[tuple[str, int]]:
    """gRFC A9: a connection `age_seconds` old (give or take 10%) is asked to go away; its
    client reconnects, resolving its target again, and so finds new replicas. Calls running
    on it get `grace_seconds` more. 0 is no limit, gRPC's default."""
    options = []
    if age_seconds > 0:
        options.append(("grpc.max_connection_age_ms", _milliseconds(age_seconds)))
        if grace_seconds > 0:
            options.append(("grpc.max_connection_age_grace_ms", _milliseconds(grace_seconds)))
    return options


def _milliseconds(seconds: float) -> int:
    return min(round(seconds * 1000), 2**31 - 1)  # a C int: 2**31 - 1 is gRPC's "no limit"


class MeshServer:
    def __init__(
        self,
        servicers: Sequence[Servicer[Any]],
        *,
        address: str,
        verifier: TokenVerifier,
        is_public: Callable[[str], bool] = access.is_public,
        grace_seconds: float = 10.0,
        lame_duck_seconds: float = 0.0,
        max_connection_age_seconds: float = 300.0,
        max_connection_age_grace_seconds: float = 30.0,
        tls: KeyPair | None = None,
        probe_address: str = "",
        metrics: bool = True,
        database_watch: DatabaseWatch | None = None,
    ) -> None:
        """`metrics`: count every call in `grpc_server_*` (mesh.metrics)."""
        self._servicers = servicers
        self._address = address
        # Read now: a bad file fails the start, before any port opens.
        self._credentials = ServerCredentialsSource(tls) if tls is not None else None
        self._probe_address = probe_address
        self._probe: grpc.aio.Server | None = None
        self._grace = grace_seconds
        self._lame_duck = lame_duck_seconds
        self._health = health.aio.HealthServicer()
        self._database_watch = database_watch
        self._stopping = False
        self._requests = RequestInterceptor(metrics=metrics)
        interceptors: list[grpc.aio.ServerInterceptor] = [
            self._requests,
            AuthInterceptor(verifier, is_public),
        ]
        # The trace's span first, so the others' log lines and error mapping run inside it.
        interceptors[:0] = tracing.server_interceptors()
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
                # Clients ping every 30 s (mesh/clients.py); more often than this is too_many_pings.
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                *connection_age_options(max_connection_age_seconds, max_connection_age_grace_seconds),
            ],
        )
        self.port = 0
        self.probe_port = 0

    @classmethod
    def of_service(
        cls,
        name: str,
        servicer: Servicer[Any],
        settings: Settings,
        *,
        address: str,
        verifier: TokenVerifier,
        database: Database,
    ) -> MeshServer:
        """The server of the service `name` (`auth`, `products`, `inventory`) as the settings
        configure it: shutdown, connection age, TLS, the probe listener, metrics, and readiness
        following `database`."""
        return cls(
            [servicer],
            address=address,
            verifier=verifier,
            grace_seconds=settings.shutdown_grace_seconds,
            lame_duck_seconds=settings.shutdown_lame_duck_seconds,
            max_connection_age_seconds=settings.grpc_max_connection_age_seconds,
            max_connection_age_grace_seconds=settings.grpc_max_connection_age_grace_seconds,
            tls=settings.grpc_server_tls,
            probe_address=settings.grpc_probe_addr,
            metrics=settings.metrics_address(name) is not None,
            database_watch=DatabaseWatch.from_settings(database, settings),
        )

    async def start(self) -> None:
        for servicer in self._servicers:
            servicer.add_to_server(servicer.instance, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        names = [s.name for s in self._servicers]
        reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME, reflection.SERVICE_NAME],
            self._server,
            pool=cast(descriptor_pool.DescriptorPool, _MethodAwarePool()),
        )
        try:
            if self._credentials is not None:
                self.port = self._server.add_secure_port(self._address, self._credentials.credentials())
            else:
                self.port = self._server.add_insecure_port(self._address)
        except RuntimeError:  # gRPC has logged its reason, such as "Address already in use"
            raise ListenError(f"cannot listen on {self._address}") from None
        if self._probe_address:
            await self._start_probe()
        await self._server.start()
        for name in ["", *names]:  # "" is the server as a whole
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self._database_watch is not None:
            self._database_watch.start_reporting(self._follow_database)
        scheme = "plaintext" if self._credentials is None else "TLS"
        log.info(
            "serving %s on %s (%s)",
            ", ".join(names),
            self._address.rsplit(":", 1)[0] + f":{self.port}",
            scheme + (", client certificates required" if self._mtls else ""),
        )

    @property
    def _mtls(self) -> bool:
        return self._credentials is not None and self._credentials.requires_client_certificates

    async def _start_probe(self) -> None:
        """The plaintext listener for probes that cannot speak TLS (kubelet's gRPC probe): the
        same HealthServicer, so it turns NOT_SERVING with the main server, and nothing else."""
        self._probe = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._probe)
        try:
            self.probe_port = self._probe.add_insecure_port(self._probe_address)
        except RuntimeError:
            raise ListenError(f"cannot listen on {self._probe_address} (GRPC_PROBE_ADDR)") from None
        await self._probe.start()
        where = self._probe_address.rsplit(":", 1)[0] + f":{self.probe_port}"
        log.info("serving health checks in plaintext on %s (GRPC_PROBE_ADDR)", where)

    async def _follow_database(self, reachable: bool) -> None:
        """The services' own names (readiness) follow the database; "" (liveness) does not."""
        if self._stopping:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if reachable
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for servicer in self._servicers:
            await self._health.set(servicer.name, status)

    async def start_in(self, stack: AsyncExitStack) -> MeshServer:
        """Starts serving; `stack` stops the server when it closes."""
        await self.start()
        stack.push_async_callback(self.stop)
        return self

    async def stop(self) -> None:
        self._stopping = True
        await self._health.enter_graceful_shutdown()
        if self._database_watch is not None:
            await self._database_watch.stop()
        # Calls a server stops taking can fail (UNAVAILABLE, or CANCELLED when grpc.aio had
        # read them but not yet run them): first let the watching clients go elsewhere.
        await asyncio.sleep(self._lame_duck)
        # grpc.aio's own cut at the end of a grace is only the backstop: its clients see
        # CANCELLED, and it returns before the handlers end (grpc/grpc#37239).
        stopping = asyncio.ensure_future(self._server.stop(self._grace + 1))
        await self._requests.drain(self._grace)
        await self._server.stop(0)  # what is left, such as health watches, ends now
        await stopping
        if self._probe is not None:
            await self._probe.stop(0)
        log.info("stopped")


async def serve_until_signalled(service: AbstractAsyncContextManager[object]) -> None:
    """Enters the service (which starts its server) and leaves it on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with service:
        await stop.wait()
        log.info("shutting down")
