"""The facade's Starlette app, assembled from the service descriptors at startup."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import Scope

from facade import console, docs, errors, verify_page
from facade.middleware import HttpMetricsMiddleware, RequestIdMiddleware
from facade.openapi import contract_comments, openapi_document
from facade.readiness import Checked, Readiness, readyz
from facade.routing import Page, TranscodedRoutes
from facade.transcoding import Binding, bindings
from mesh import metrics, tracing
from mesh.clients import channel, channel_credentials
from mesh.config import Settings
from mesh.services import SERVICES

# The routes that answer a browser with a page: (HTTP method, RPC) → the page of a JSON answer.
PAGES: Mapping[tuple[str, str], Page] = {("GET", verify_page.METHOD.full_name): verify_page.render}

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backend:
    name: str  # as clients read it in errors: "the inventory service is unavailable"
    target: str


def default_backends(settings: Settings) -> dict[ServiceDescriptor, Backend]:
    """Every service of the registry, at its configured address."""
    return {spec.descriptor: Backend(name, settings.address(name)) for name, spec in SERVICES.items()}


def create_app(
    settings: Settings,
    backends: Mapping[ServiceDescriptor, Backend] | None = None,
    *,
    metrics_socket: socket.socket | None = None,
) -> Starlette:
    """The facade for `backends` (default: the three services). Every route comes from
    the services' google.api.http rules; a rule that cannot be served fails here. Requests and
    calls are counted unless FACADE_METRICS_ADDR is empty; the lifespan serves the metrics on
    `metrics_socket` when given (facade.server binds it)."""
    backends = dict(backends or default_backends(settings))
    counted = settings.metrics_address("facade") is not None
    found = bindings(backends)
    secret = forwarder_secret(settings)
    transcoded = TranscodedRoutes(
        found,
        backend_names={service.full_name: backend.name for service, backend in backends.items()},
        default_timeout=settings.facade_timeout_seconds,
        max_timeout=settings.facade_max_timeout_seconds,
        max_body_bytes=settings.facade_max_body_bytes,
        pages=PAGES,
        forwarder_secret=secret,
        count_calls=counted,
    )
    document = openapi_document(transcoded.bindings, comments=contract_comments(), pages=PAGES)
    with_console = console.serves([service.full_name for service in backends])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        credentials = channel_credentials(settings)
        channels = {
            service.full_name: channel(backend.target, credentials=credentials, forward_context=False)
            for service, backend in backends.items()
        }
        calls = {
            binding.grpc_path: _callable(channels[binding.service.full_name], binding) for binding in found
        }
        readiness = Readiness(
            [
                Checked(backend.name, service.full_name, channels[service.full_name])
                for service, backend in backends.items()
            ]
        )
        try:
            async with contextlib.AsyncExitStack() as stack:
                if metrics_socket is not None:
                    await stack.enter_async_context(metrics.endpoint(metrics_socket))
                state: dict[str, object] = {"calls": calls, "readiness": readiness}
                if with_console:
                    state["console"] = console.Stubs.on(channels)
                yield state
        finally:
            await readiness.close()
            for opened in channels.values():
                await opened.close()

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "SERVING"})

    middleware = [Middleware(HttpMetricsMiddleware)] if counted else []
    middleware.append(Middleware(RequestIdMiddleware))
    if settings.facade_cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.facade_cors_origins,
                allow_methods=sorted({b.http_method for b in found}),
                allow_headers=["authorization", "content-type", "grpc-timeout", "x-request-id"],
                expose_headers=["location", "retry-after", "x-request-id"],
                max_age=600,
            )
        )
    app = Starlette(
        routes=[
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *docs.routes(),
            *(console.routes(settings, found, secret) if with_console else []),
            transcoded,
        ],
        middleware=middleware,
        exception_handlers={HTTPException: _http_exception, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # `/healthz/` is an unknown route (404), not a redirect

    def route_template(scope: Scope) -> str | None:
        for route in app.routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                return (
                    transcoded.template_of(child_scope)
                    if route is transcoded
                    else getattr(route, "path", None)
                )
        return None

    tracing.instrument_app(app, route_template)  # when tracing is on; before the app starts
    return app


def _callable(opened: grpc.aio.Channel, binding: Binding) -> object:
    """The channel's multicallable for the binding's RPC: unary-stream for a stream."""
    make = opened.unary_stream if binding.stream is not None else opened.unary_unary
    return make(
        binding.grpc_path,
        request_serializer=binding.request_class.SerializeToString,
        response_deserializer=binding.response_class.FromString,
    )


def forwarder_secret(settings: Settings) -> bytes | None:
    """The facade's client secret, which proves to auth the client addresses it passes on."""
    if settings.service_secret is None:
        log.warning(
            "SERVICE_SECRET is not set: auth cannot tell the facade's clients apart and counts "
            "every login attempt against the facade's own address"
        )
        return None
    return settings.service_secret.get_secret_value().encode()


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals: an unknown route, or a method the route does not take."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return errors.method_not_allowed(request.method, (exc.headers or {})["Allow"])
    return errors.no_route(request)


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug: the client gets the one error shape and nothing of the bug (uvicorn logs it)."""
    return errors.error_response(grpc.StatusCode.INTERNAL, "internal error", reason=errors.INTERNAL)
