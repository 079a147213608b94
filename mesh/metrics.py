"""Prometheus metrics: gRPC calls by go-grpc-prometheus's names, and the `/metrics` endpoint.

Each process (a service, or the facade) runs alone and keeps its metrics in prometheus-client's
default registry, which also holds the `process_*` and `python_*` collectors; so no
multiprocess mode. `grpc_server_*` come from `mesh.interceptors.RequestInterceptor`, which
makes each call's status (of a domain error, an abort or a crash) and times it anyway, and
`grpc_client_*` from `ClientMetrics` on every channel of `mesh.clients` (the facade
counts its own calls, with `client_method()`). Labels are the call's type, service, method and
code: never an id, an address or a token. Only unary calls are counted: the streams (health
Watch, reflection) are not. Each method's label children are bound once and cached, so a call
costs two clock reads, two counter increments and one histogram observation.

`endpoint(address)` serves the registry as Prometheus (or OpenMetrics) text at `/metrics`,
from the process's event loop: a scrape needs no thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder

from mesh.config import join_host_port

log = logging.getLogger(__name__)

# One series a counter and a histogram's buckets, sum and count, as go-grpc-prometheus exports:
# no `*_created` series beside each (prometheus-client's default, a switch for the whole process).
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated

# go's codes.Code.String(): the grpc_code label as go-grpc-prometheus writes it.
GO_CODE_NAMES = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}

T = TypeVar("T")
_LABELS = ["grpc_type", "grpc_service", "grpc_method"]


class _CallMetrics:
    """`grpc_<side>_started_total`, `_handled_total` and `_handling_seconds` of one side."""

    def __init__(self, side: str, registry: CollectorRegistry = REGISTRY) -> None:
        self.started = Counter(
            f"grpc_{side}_started_total",
            f"Total number of RPCs started on the {side}.",
            _LABELS,
            registry=registry,
        )
        self.handled = Counter(
            f"grpc_{side}_handled_total",
            f"Total number of RPCs completed on the {side}, regardless of success or failure.",
            [*_LABELS, "grpc_code"],
            registry=registry,
        )
        self.seconds = Histogram(
            f"grpc_{side}_handling_seconds",
            f"Histogram of response latency (seconds) of gRPC that had been application-level "
            f"handled by the {side}.",
            _LABELS,
            registry=registry,
        )


SERVER = _CallMetrics("server")
CLIENT = _CallMetrics("client")


class MethodMetrics:
    """One method's label children on one side, bound once: what a call records."""

    __slots__ = ("_by_code", "_handled", "_labels", "_seconds", "_started")

    def __init__(self, metrics: _CallMetrics, full_method: str) -> None:
        """`full_method`: `/package.Service/Method`, as gRPC names a call."""
        service, _, method = full_method.lstrip("/").partition("/")
        self._labels = ("unary", service, method)
        self._started = metrics.started.labels(*self._labels)
        self._seconds = metrics.seconds.labels(*self._labels)
        self._handled = metrics.handled
        self._by_code: dict[grpc.StatusCode, Any] = {}

    def started(self) -> None:
        self._started.inc()

    def handled(self, code: grpc.StatusCode, seconds: float) -> None:
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._handled.labels(*self._labels, GO_CODE_NAMES[code])
        child.inc()
        self._seconds.observe(seconds)


class ClientMetrics(grpc.aio.UnaryUnaryClientInterceptor):
    """`grpc_client_*` of every unary call made on the channel."""

    def __init__(self) -> None:
        self._methods: dict[str | bytes, MethodMetrics] = {}

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = details.method
        metrics = self._methods.get(method)
        if metrics is None:
            name = method.decode() if isinstance(method, bytes) else method
            metrics = self._methods[method] = MethodMetrics(CLIENT, name)
        metrics.started()
        started = time.perf_counter()
        call = await continuation(details, request)
        try:
            code = await call.code()  # once the call has ended; the caller reads its answer
        except asyncio.CancelledError:
            metrics.handled(grpc.StatusCode.CANCELLED, time.perf_counter() - started)
            raise
        metrics.handled(code, time.perf_counter() - started)
        return call


@contextlib.asynccontextmanager
async def serving(service: AbstractAsyncContextManager[T], address: str | None) -> AsyncIterator[T]:
    """`service`, with its metrics served at `address` (None: not served) from before it starts
    until after it stops."""
    async with contextlib.AsyncExitStack() as stack:
        if address is not None:
            await stack.enter_async_context(endpoint(address))
        yield await stack.enter_async_context(service)


# The domain and the machinery. A refusal's reason is its ErrorInfo reason, one of a fixed set
# (`NOT_FOUND`, `INSUFFICIENT_STOCK`, `TOO_MANY_LOGIN_ATTEMPTS`…): throttled logins are counted there.
REFUSALS = Counter(
    "invmesh_refusals_total", "Calls refused with a domain error, by its ErrorInfo reason.", ["reason"]
)
OUTBOX_DELIVERIES = Counter(
    "invmesh_outbox_deliveries_total",
    "Outbox rows delivered or failed (to be retried), by relay (mail, retirement).",
    ["relay", "result"],
)

OUTBOX_BACKLOG = Gauge(
    "invmesh_outbox_backlog", "Outbox rows waiting for delivery, by relay (mail, retirement).", ["relay"]
)
OUTBOX_OLDEST_AGE = Gauge(
    "invmesh_outbox_oldest_age_seconds",
    "Age of the oldest outbox row waiting for delivery (0 when none), by relay.",
    ["relay"],
)

STOCK_FEED_BACKLOG = Gauge(
    "invmesh_stock_feed_backlog", "Inventory items whose stock products has not yet been told."
)
STOCK_FEED_LAG = Gauge(
    "invmesh_stock_feed_lag_seconds",
    "Age of the oldest stock change products has not yet been told (0 when caught up).",
)
STOCK_REPORT_WAITS_TIMED_OUT = Counter(
    "invmesh_stock_report_waits_timed_out_total",
    "Stock writes that answered before the stock feed had reported them to products "
    "(STOCK_REPORT_WAIT_SECONDS passed): products showed them later.",
)
WATCH_STREAMS = Gauge("invmesh_watch_streams", "WatchMovements streams this process follows now.")

CHANGE_LOG_LAG = Gauge(
    "invmesh_change_log_lag_seconds",
    "Seconds since this products process's cache invalidation last read to the end of the product "
    "change log (0 when caught up).",
)


def client_method(full_method: str) -> MethodMetrics:
    """The `grpc_client_*` children of a method, for a caller that records its calls itself."""
    return MethodMetrics(CLIENT, full_method)


# The endpoint: a small HTTP/1.1 server on the event loop. One request a connection.

_HEAD_TIMEOUT_SECONDS = 5.0


@contextlib.asynccontextmanager
async def endpoint(where: str | socket.socket, registry: CollectorRegistry = REGISTRY) -> AsyncIterator[int]:
    """Serves `registry` at `http://<where>/metrics` while in the block: `where` is an address
    (`host:port`) or a socket bound already. Yields the port (useful with port 0); OSError if it
    cannot listen."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _answer(reader, writer, registry)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()

    if isinstance(where, socket.socket):
        server = await asyncio.start_server(answer, sock=where)
    else:
        host, _, port = where.rpartition(":")  # the address was checked (Settings), or is a test's
        server = await asyncio.start_server(answer, host.strip("[]"), int(port), reuse_address=True)
    host, bound = server.sockets[0].getsockname()[:2]
    log.info("metrics on http://%s/metrics", join_host_port(host, bound))
    try:
        yield bound
    finally:
        server.close()
        await server.wait_closed()


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, registry: CollectorRegistry
) -> None:
    async with asyncio.timeout(_HEAD_TIMEOUT_SECONDS):
        head = await reader.readuntil(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, _, rest = request_line.partition(" ")
    path = rest.partition(" ")[0].partition("?")[0]
    headers = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    content_type = "text/plain; charset=utf-8"
    if path != "/metrics":
        status, body = "404 Not Found", b"not found: try /metrics\n"
    elif method not in ("GET", "HEAD"):
        status, body = "405 Method Not Allowed", b"GET only\n"
    else:
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        status, body = "200 OK", encoder(registry)
    writer.write(
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n".encode("latin-1")
        + (body if method != "HEAD" else b"")
    )
    await writer.drain()
