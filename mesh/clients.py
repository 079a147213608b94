"""Outgoing gRPC: channels that carry the caller's context to the next service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from mesh import context

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class ForwardCallerContext(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds the current request id and the caller's access token to every outgoing call,
    so the next service logs the same request id and verifies the same caller itself."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if "x-request-id" not in metadata and (rid := context.request_id.get()) != "-":
            metadata.add("x-request-id", rid)
        if "authorization" not in metadata and (token := context.access_token.get()):
            metadata.add("authorization", f"Bearer {token}")
        details = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        return await continuation(details, request)


def channel(target: str) -> grpc.aio.Channel:
    """A long-lived channel to `target` (`host:port`, or any gRPC target such as `dns:///…`)."""
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=[ForwardCallerContext()])
