"""Outgoing gRPC: channels that carry the caller's context to the next service."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from typing import Any, Protocol, cast

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh import access, context, tls, tracing
from mesh.config import Settings, parse_host_port
from mesh.errors import DeadlineExceeded
from mesh.metrics import ClientMetrics
from mesh.services import SERVICES

RETRY_POLICY = {
    "maxAttempts": 3,
    "initialBackoff": "0.05s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
# The retry budget, per target: each failed attempt takes a token, each success gives back 0.1,
# and below half of maxTokens nothing is retried (A6: at most ~1 retry per 10 successes).
RETRY_THROTTLING = {"maxTokens": 10, "tokenRatio": 0.1}
IDEMPOTENT_WRITES = {
    "invmesh.inventory.v1.InventoryService.DeleteInventoryItem",
    # Confirming a confirmed reservation answers it again; releasing a released one too.
    "invmesh.inventory.v1.InventoryService.ConfirmReservation",
    "invmesh.inventory.v1.InventoryService.ReleaseReservation",
    "invmesh.products.v1.ProductsService.UpdateStockLevels",
}


def retried_methods(services: Iterable[ServiceDescriptor]) -> list[dict[str, str]]:
    """The methods safe to send twice: reads (Get*, List*, BatchGet*) and IDEMPOTENT_WRITES.

    RecordMovement and SetStock are safe only when the request carries a request_id, which a
    per-method policy cannot see, so they are left to gRPC's transparent retries: an attempt
    the server never saw (a refused stream, a GOAWAY from a replica shutting down) is resent
    on any method. A client that sets a request_id may resend it itself."""
    return [
        {"service": service.full_name, "method": method.name}
        for service in services
        for method in service.methods
        if method.name.startswith(("Get", "List", "BatchGet")) or method.full_name in IDEMPOTENT_WRITES
    ]


SERVICE_CONFIG = {
    # Spread calls over every address a target resolves to (replicas), not just the first.
    "loadBalancingConfig": [{"round_robin": {}}],
    # Client-side health checking (gRPC A17): a replica whose health is NOT_SERVING, as one
    # shutting down is, gets no new calls while it finishes those it has (mesh/server.py).
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [
        {
            "name": retried_methods(spec.descriptor for spec in SERVICES.values()),
            "retryPolicy": RETRY_POLICY,
        }
    ],
    "retryThrottling": RETRY_THROTTLING,
}
CHANNEL_OPTIONS = [
    # Servers take a ping every 10 s or less often (mesh/server.py): 30 s is never too_many_pings.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # A replica that went away is tried again 0.1 s later, then at growing intervals (x1.6, ±20%)
    # of at most 1 s, not gRPC's 1 s to 120 s: one that comes back gets calls about a second
    # after it serves. Each attempt may take 2 s to connect (gRPC's "min_reconnect_backoff" is
    # that timeout, 20 s by default), so an address whose pod is gone soon counts as failed.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.min_reconnect_backoff_ms", 2_000),
    # A failed or recycled connection has a dns:/// target resolved again: at most once a
    # second rather than every 30 s, so replicas added or moved are found as soon.
    ("grpc.dns_min_time_between_resolutions_ms", 1_000),
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
]


def grpc_target(address: str) -> str:
    """A gRPC target for `address`: one `host:port`, a gRPC target URI such as
    `dns:///inventory:50053` (re-resolved as replicas come and go), or a comma list of
    `host:port` replicas, resolved here once into an `ipv4:`/`ipv6:` address list."""
    if "," not in address:
        return address
    resolved: dict[int, list[str]] = {socket.AF_INET: [], socket.AF_INET6: []}
    for replica in (part.strip() for part in address.split(",")):
        host, _, port = replica.rpartition(":")
        host = host.strip("[]")
        for family, *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            if family in resolved:
                ip = sockaddr[0]
                resolved[family].append(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
                break
    if resolved[socket.AF_INET]:
        return "ipv4:" + ",".join(dict.fromkeys(resolved[socket.AF_INET]))
    return "ipv6:" + ",".join(dict.fromkeys(resolved[socket.AF_INET6]))


class ForwardCallerContext(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds the current request id and the caller's access token to every outgoing call,
    so the next service logs the same request id and verifies the same caller itself, and
    gives every call a deadline: the default, or less if the caller has less time left."""

    def __init__(self, default_timeout: float) -> None:
        self._default_timeout = default_timeout

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if "x-request-id" not in metadata.keys() and (rid := context.request_id.get()) != "-":
            metadata.add("x-request-id", rid)
        if "authorization" not in metadata.keys() and (token := context.access_token.get()):
            metadata.add("authorization", f"Bearer {token}")
        timeout = details.timeout if details.timeout is not None else self._default_timeout
        if (deadline := context.deadline.get()) is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0:  # the caller has given up already: do not start work it will never see
                raise DeadlineExceeded(
                    "the deadline passed before the call to another service", reason="DEADLINE"
                )
        details = grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )
        return await continuation(details, request)


class TokenSource(Protocol):
    async def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying an access token (mesh.service_token.RenewedToken)."""
        ...


class _TokenAdder:
    """Adds the token of `source` to every call that carries none and needs one: not to the
    public methods, among them those that issue tokens."""

    def __init__(self, source: TokenSource) -> None:
        self._source = source

    async def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        if "authorization" in metadata.keys() or access.is_public(method):
            return details
        for key, value in await self._source.metadata():
            metadata.add(key, value)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# Two classes: a channel files an interceptor under the first kind it is an instance of.
class SendToken(_TokenAdder, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(await self._with_token(details), request)


class SendTokenOnStreams(_TokenAdder, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(await self._with_token(details), request)


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """How every gRPC client of the process speaks to servers: TLS, verifying them against
    GRPC_TLS_CA_FILE, and presenting GRPC_TLS_CERT_FILE when it is set (mTLS); None when
    GRPC_TLS_CA_FILE is unset (plaintext).

    The files are read here, once: gRPC Python has no client credentials that read them again,
    so a channel keeps presenting the certificate it was made with, and a renewed client
    certificate or CA is used from the next start."""
    if settings.grpc_tls_ca_file is None:
        return None
    pair = settings.grpc_server_tls
    return grpc.ssl_channel_credentials(
        root_certificates=tls.read_pem(settings.grpc_tls_ca_file, tls.CERTIFICATE),
        private_key=tls.read_pem(pair.key_path, tls.PRIVATE_KEY) if pair else None,
        certificate_chain=tls.read_pem(pair.cert_path, tls.CERTIFICATE) if pair else None,
    )


def _authority(address: str) -> list[tuple[str, str]]:
    """For a comma list of replicas, which becomes an `ipv4:` list, the host name its first
    replica gives, so that TLS checks the server certificate for a name rather than the list."""
    if "," not in address:
        return []
    host, _ = parse_host_port(address.split(",")[0])
    return [("grpc.default_authority", host)]


def channel(
    target: str,
    *,
    default_timeout: float = 3.0,
    credentials: grpc.ChannelCredentials | None = None,
    forward_context: bool = True,
    token: TokenSource | None = None,
) -> grpc.aio.Channel:
    """A long-lived channel to `target` (see `grpc_target`), over TLS with `credentials`
    (`channel_credentials`); plaintext without. With `forward_context`, every call carries
    the caller's request id, token and deadline (`ForwardCallerContext`), and is counted
    (`ClientMetrics`). With a `token`, calls that need one carry it rather than the caller's
    (`SendToken`, `SendTokenOnStreams`). When tracing is on, every call is a span whose
    context goes along in the metadata (mesh.tracing)."""
    interceptors = tracing.client_interceptors()  # a new list: empty when tracing is off
    if token is not None:
        interceptors += [SendToken(token), SendTokenOnStreams(token)]
    if forward_context:
        # ClientMetrics inside: a call the caller's deadline stops before it starts is not counted.
        interceptors += [ForwardCallerContext(default_timeout), ClientMetrics()]
    if credentials is None:
        return grpc.aio.insecure_channel(
            grpc_target(target), options=CHANNEL_OPTIONS, interceptors=interceptors or None
        )
    return grpc.aio.secure_channel(
        grpc_target(target),
        credentials,
        options=[*CHANNEL_OPTIONS, *_authority(target)],
        interceptors=interceptors or None,
    )


def open_channel(
    stack: AsyncExitStack,
    target: str,
    *,
    default_timeout: float,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """`channel(target)`, closed when `stack` closes."""
    opened = channel(target, default_timeout=default_timeout, credentials=credentials)
    stack.push_async_callback(opened.close)
    return opened


class HealthClient(Protocol):
    """grpc.health.v1.Health's client on a grpc.aio channel: its stubs leave the methods out."""

    Check: grpc.aio.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]
    Watch: grpc.aio.UnaryStreamMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]


def health_stub(channel: grpc.aio.Channel) -> HealthClient:
    return cast(HealthClient, health_pb2_grpc.HealthStub(channel))
