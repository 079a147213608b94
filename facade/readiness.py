"""`GET /readyz`: the facade is ready when every backend it calls answers grpc.health.v1
Check SERVING. `/healthz` (liveness) calls no backend."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mesh.clients import health_stub

CHECK_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Checked:
    """A backend's service, checked over the facade's channel to it."""

    backend: str  # its name, as errors give it: "inventory"
    service: str  # the full service name its health reports on
    channel: grpc.aio.Channel


class Readiness:
    """Checks every backend at once over the facade's own channels. Probes that come while a
    check runs wait for its answer, so a burst of probes costs one Check a backend."""

    def __init__(self, checked: Sequence[Checked], *, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
        self._checked = checked
        self._timeout = timeout
        self._running: asyncio.Task[dict[str, str]] | None = None

    async def not_serving(self) -> dict[str, str]:
        """Each backend that is not serving, and why: NOT_SERVING (or another health status),
        or the code the Check failed with (UNAVAILABLE, DEADLINE_EXCEEDED)."""
        if self._running is None:
            self._running = asyncio.create_task(self._check_all())
            self._running.add_done_callback(self._finished)
        # A probe that gives up (its client went away) leaves the check to the others.
        return await asyncio.shield(self._running)

    async def close(self) -> None:
        """Waits for a check under way, before the channels close."""
        if self._running is not None:
            await asyncio.wait([self._running])

    def _finished(self, task: asyncio.Task[dict[str, str]]) -> None:
        if self._running is task:
            self._running = None

    async def _check_all(self) -> dict[str, str]:
        reasons = await asyncio.gather(*(self._check(checked) for checked in self._checked))
        return {
            checked.backend: reason
            for checked, reason in zip(self._checked, reasons, strict=True)
            if reason is not None
        }

    async def _check(self, checked: Checked) -> str | None:
        request = health_pb2.HealthCheckRequest(service=checked.service)
        try:
            reply = await health_stub(checked.channel).Check(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def readyz(request: Request) -> Response:
    """200 `{"status": "SERVING"}`, or 503 naming each backend not serving and why."""
    readiness: Readiness = request.state.readiness
    if not_serving := await readiness.not_serving():
        return JSONResponse({"status": "NOT_SERVING", "backends": not_serving}, status_code=503)
    return JSONResponse({"status": "SERVING"})
