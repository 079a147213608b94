"""Traces: OpenTelemetry spans for the facade's requests, every gRPC call (client and server),
every database statement and the background loops, exported over OTLP/HTTP.

Tracing is on only when the standard OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, and OTEL_SDK_DISABLED is not true. Off, no SDK is
loaded, no provider is installed, and the servers, channels, engines and the app get no
instrumentation at all: each helper here returns nothing to add. On, `configure` installs a
TracerProvider for the process (service.name: OTEL_SERVICE_NAME, else the component: auth,
products, inventory or facade) with a batch processor and an OTLP/HTTP exporter; the SDK reads
the other standard variables itself (OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG,
OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS, OTEL_BSP_*...). The context travels
between services as W3C `traceparent` in the gRPC metadata, beside `authorization`.

What a span records: the RPC's service, method and status code; the route template of an HTTP
request (never its query string, which can carry a verification token); the SQL of a statement
with its placeholders, never the values bound to them. No request or response body, no header
and no metadata value is recorded.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

if TYPE_CHECKING:
    import grpc
    from opentelemetry.sdk.trace import TracerProvider
    from sqlalchemy.engine import Engine
    from starlette.applications import Starlette
    from starlette.types import Scope

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
TIMEOUT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
# Seconds an export may take, unless OTEL_EXPORTER_OTLP_TIMEOUT says otherwise: the SDK's
# default, 10 s, retried, kept a process whose collector was gone from stopping within its
# grace. A span batch that cannot be sent in this time is dropped.
EXPORT_TIMEOUT = 2.0
# The services whose calls make no spans: the health checks (probes and readiness every few
# seconds; Watch is a streaming call that the aio instrumentation cannot wrap) and reflection.
_UNTRACED_SERVICES = ("grpc.health.v1.", "grpc.reflection.")
# How many requests' spans a background batch links to, at most.
MAX_LINKS = 32

_provider: TracerProvider | None = None


def requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint, and the SDK not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def active() -> bool:
    """Whether this process records spans (`configure` found an endpoint)."""
    return _provider is not None


def configure(component: str) -> bool:
    """Installs the process's TracerProvider if the environment asks for traces; True if it did.
    Called once, by the process's entry point, before its servers, channels and app are made."""
    global _provider
    if _provider is not None or not requested():
        return _provider is not None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME, else a service.name in OTEL_RESOURCE_ATTRIBUTES, else the component.
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "unknown_service")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: component}))
    name = resource.attributes[SERVICE_NAME]
    # The sampler comes from OTEL_TRACES_SAMPLER(_ARG): parentbased_always_on by default.
    provider = TracerProvider(resource=resource)
    timeout = None if any(os.environ.get(v) for v in TIMEOUT_VARIABLES) else EXPORT_TIMEOUT
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(timeout=timeout)))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("exporting traces as %s over OTLP/HTTP", name)
    return True


def shutdown(timeout: float = EXPORT_TIMEOUT) -> None:
    """Sends the spans still buffered, waiting `timeout` seconds at most for them, then stops
    the exporter (whose own retries the export timeout bounds)."""
    if _provider is None:
        return
    _provider.force_flush(timeout_millis=round(timeout * 1000))
    _provider.shutdown()


def _traced(method: str) -> bool:
    return not method.lstrip("/").startswith(_UNTRACED_SERVICES)


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The server interceptor that continues the caller's trace with a span per call (put it
    first, so the others' log lines and error mapping run inside the span); none when off."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    def traced(details: grpc.HandlerCallDetails) -> bool:
        return _traced(details.method)

    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(_provider, filter_=traced)
    return [interceptor]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """The client interceptors that make a span per outgoing call and send its context in the
    metadata (`traceparent`); none when off."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    def traced(details: grpc.aio.ClientCallDetails) -> bool:
        method = details.method
        return _traced(method.decode() if isinstance(method, bytes) else method)

    interceptors: list[grpc.aio.ClientInterceptor] = aio_client_interceptors(_provider, filter_=traced)
    return interceptors


def instrument_engine(engine: Engine) -> None:
    """A span per statement of `engine`: its SQL with placeholders, never the bound values.

    The engine is instrumented directly: the contrib instrumentor would also patch every
    engine made later, once per process, and skips SQLAlchemy 2.1 unless told not to check."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.instrumentation.sqlalchemy.version import __version__
    from opentelemetry.metrics import NoOpMeterProvider

    tracer = trace.get_tracer("opentelemetry.instrumentation.sqlalchemy", __version__, _provider)
    unused = NoOpMeterProvider().get_meter(__name__).create_up_down_counter("db.client.connections.usage")
    EngineTracer(tracer, engine, unused)


def instrument_app(app: Starlette, route: Callable[[Scope], str | None]) -> None:
    """A server span per HTTP request, continuing the client's `traceparent`, named
    `METHOD route` by `route` (the route template of the request, or None); the outermost
    middleware, so the access log line is written inside it. Call it before the app starts."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.trace import Span

    def details(scope: Scope) -> tuple[str, dict[str, Any]]:
        method: str = scope.get("method", "HTTP")
        template = route(scope)
        return (f"{method} {template}", {"http.route": template}) if template else (method, {})

    def without_query(span: Span, scope: Scope) -> None:
        # The instrumentation records the URL with its query string, which can carry a token.
        if span.is_recording() and scope.get("query_string"):
            path: str = scope.get("path", "")
            span.set_attribute("http.target", path)
            host = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1")
            span.set_attribute("http.url", f"{scope.get('scheme', 'http')}://{host}{path}")
            attributes = getattr(span, "attributes", None) or {}
            for name in ("url.query", "url.full"):
                if name in attributes:
                    span.set_attribute(name, "")

    app.add_middleware(
        OpenTelemetryMiddleware,
        default_span_details=details,
        server_request_hook=without_query,
        tracer_provider=_provider,
        exclude_spans=["receive", "send"],
    )


def log_ids() -> tuple[str, str] | None:
    """The current span's trace id and span id, in hex, for log lines; None outside a span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


class Causes:
    """The spans of the requests that woke a background loop, for the next batch to link to:
    a batch serves many requests, so it is a trace of its own with a link to each (at most
    MAX_LINKS), rather than a part of any one of them."""

    def __init__(self) -> None:
        self._contexts: list[trace.SpanContext] = []

    def add(self) -> None:
        """Remembers the current span, if there is one and it is sampled."""
        if _provider is None or len(self._contexts) >= MAX_LINKS:
            return
        context = trace.get_current_span().get_span_context()
        if context.is_valid and context.trace_flags.sampled:
            self._contexts.append(context)

    def take(self) -> list[trace.Link]:
        links = [trace.Link(context) for context in self._contexts]
        self._contexts = []
        return links


@contextlib.contextmanager
def background_span(name: str, causes: Causes | None = None, **attributes: Any) -> Iterator[None]:
    """A span for a round of background work that did something (`name`, e.g. "stock-feed
    publish"), linking to the requests in `causes`. Within a request (an outbox row its writer
    delivers) it is a child of the request's span."""
    if _provider is None:
        yield
        return
    tracer = trace.get_tracer(__name__, tracer_provider=_provider)
    links = causes.take() if causes is not None else []
    with tracer.start_as_current_span(name, links=links, attributes=attributes):
        yield


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """No spans within: a background loop's polls, which mostly find nothing, would otherwise
    make a trace of one statement every second."""
    if _provider is None:
        yield
        return
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield
