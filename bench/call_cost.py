"""What metrics and tracing add to one call, in one process: `python -m bench.call_cost`.

Metrics: what a call records on each side (`MethodMetrics`: a counter at the start; a counter, by
status, and a histogram at the end) and the facade's HTTP middleware around a request, against
the request without it. A request through the facade pays the middleware once and a
`MethodMetrics` twice (the facade's client side and the service's server side), plus a domain
counter or two: set the sum beside a request's CPU (`bench.cpu`, or the CPU column of `make
bench`'s "What metrics and traces cost") for the share.

Tracing off (no OTEL_EXPORTER_OTLP_ENDPOINT) the servers, channels and engines carry no instrumentation,
so what is left per call is mesh.tracing's hooks: a log line's look-up of the current span, and a
background loop's wake. On, a unary gRPC round trip in one process (a client span and a server
span) and a one-statement SQLite read (a span) are timed with and without the instrumentation,
spans going to a batch processor whose exporter drops them (what export costs is the collector's
and the network's, and happens on the processor's thread).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from sqlalchemy import text
from starlette.types import Message, Receive, Scope, Send

from facade.middleware import HttpMetricsMiddleware
from facade.routing import TEMPLATE
from mesh import tracing
from mesh.db import Database
from mesh.logs import LogFormatter
from mesh.metrics import SERVER, MethodMetrics

CALLS = 3000


class _Dropped(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _per_call_us(work: Callable[[], object], n: int = 200_000) -> float:
    started = time.perf_counter()
    for _ in range(n):
        work()
    return (time.perf_counter() - started) / n * 1e6


async def _per_call_us_async(work: Callable[[], Awaitable[object]], n: int = CALLS) -> float:
    for _ in range(200):  # warm-up
        await work()
    started = time.perf_counter()
    for _ in range(n):
        await work()
    return (time.perf_counter() - started) / n * 1e6


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def _grpc_call_us() -> float:
    server = grpc.aio.server(interceptors=tracing.server_interceptors())
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(_echo)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Call": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", interceptors=tracing.client_interceptors() or None
    )
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/bench.Echo/Call")
    try:
        return await _per_call_us_async(lambda: call(b"x"))
    finally:
        await channel.close()
        await server.stop(0)


async def _sql_us() -> float:
    db = Database("sqlite+aiosqlite:///:memory:")
    one = text("SELECT 1")
    try:
        return await _per_call_us_async(lambda: db.fetch(one))
    finally:
        await db.dispose()


async def _http_us() -> tuple[float, float]:
    """A request through a bare ASGI app that answers 200, without and with the metrics middleware."""
    scope = {"type": "http", "method": "GET", "path": "/products/x", TEMPLATE: "/products/{id}"}
    start = {"type": "http.response.start", "status": 200, "headers": []}
    body = {"type": "http.response.body", "body": b"{}"}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(start)
        await send(body)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        pass

    counted = HttpMetricsMiddleware(app)
    return (
        await _per_call_us_async(lambda: app(scope, receive, send), n=100_000),
        await _per_call_us_async(lambda: counted(scope, receive, send), n=100_000),
    )


def metrics() -> None:
    method = MethodMetrics(SERVER, "/bench.Echo/Call")

    def one_call() -> None:
        method.started()
        method.handled(grpc.StatusCode.OK, 0.001)

    bare, counted = asyncio.run(_http_us())
    print("metrics on: what one call or request adds")
    print(f"  one gRPC call's MethodMetrics (either side)  {_per_call_us(one_call):7.2f} µs")
    added = counted - bare
    print(f"  facade request, HTTP middleware             +{added:6.2f} µs ({bare:.2f} -> {counted:.2f})")


async def main() -> None:
    record = logging.LogRecord("bench", logging.INFO, __file__, 1, "rpc %s %s", ("/a/B", "OK"), None)
    formatter = LogFormatter("inventory", "text")
    causes = tracing.Causes()
    print("tracing off (no endpoint): the hooks left on the hot path")
    print(f"  current-span look-up per log line     {_per_call_us(tracing.log_ids):7.2f} µs")
    print(f"  log line formatted (with the look-up) {_per_call_us(lambda: formatter.format(record)):7.2f} µs")
    print(f"  background wake (Causes.add)          {_per_call_us(causes.add):7.2f} µs")
    off_grpc, off_sql = await _grpc_call_us(), await _sql_us()

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Dropped()))
    tracing._provider = provider  # what configure() installs, with an exporter that drops the spans
    on_grpc, on_sql = await _grpc_call_us(), await _sql_us()
    provider.shutdown()
    print(f"tracing on, every span sampled ({CALLS} calls each, one process)")
    for what, off, on in (
        ("unary gRPC round trip", off_grpc, on_grpc),
        ("one SQLite statement", off_sql, on_sql),
    ):
        print(f"  {what:22}  off {off:7.1f} µs   on {on:7.1f} µs   +{on - off:.1f} µs")


if __name__ == "__main__":
    metrics()
    asyncio.run(main())
