"""Pure ASGI middleware of the facade."""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facade.routing import TEMPLATE
from mesh import context

log = logging.getLogger("facade.access")


class RequestIdMiddleware:
    """Takes `X-Request-Id` (or makes one), passes it to the backends, echoes it in the
    response, and writes one access log line per request. The query string is never
    logged: it can carry a verification token."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        request_id = context.request_id_or_new(incoming.decode("latin-1") if incoming else None)
        scope["invmesh.request_id"] = request_id
        token = context.request_id.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={"ms": round((time.perf_counter() - started) * 1000, 2)},
            )
            context.request_id.reset(token)


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNKNOWN_ROUTE = "none"  # the `handler` of a request no route matched
# In the process's registry (mesh.metrics), shared by the apps of a process (a test's, say).
HTTP_REQUESTS = Counter(
    "http_requests_total", "Total number of requests by method, status and handler.",
    ["handler", "method", "status"],
)  # fmt: skip
HTTP_DURATION = Histogram(
    "http_request_duration_seconds", "Latency with only few buckets by handler.", ["handler", "method"]
)


class HttpMetricsMiddleware:
    """`http_requests_total{handler,method,status}` and `http_request_duration_seconds{handler,
    method}`, prometheus-fastapi-instrumentator's names. `handler` is the route template the
    request matched (`/products/{id}`), never the path itself, and `none` for an unknown route;
    a method outside the HTTP ones is `other`. Label children are bound once and cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        handler = scope.get(TEMPLATE) or getattr(scope.get("route"), "path", None) or UNKNOWN_ROUTE
        method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
        counted = self._counted.get((handler, method, status))
        if counted is None:
            counted = self._counted[handler, method, status] = HTTP_REQUESTS.labels(handler, method, status)
        counted.inc()
        timed = self._timed.get((handler, method))
        if timed is None:
            timed = self._timed[handler, method] = HTTP_DURATION.labels(handler, method)
        timed.observe(seconds)
