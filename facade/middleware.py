"""Pure ASGI middleware of the facade."""

from __future__ import annotations

import logging
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
