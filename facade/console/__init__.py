"""The console: server-rendered pages for people who manage stock, at /console/ on the
facade's origin (docs/console.md). Every page calls the services over gRPC with the signed-in
user's token, as the REST routes do, so the services' rules and errors are the console's."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from facade.console import admin, feed, product, products, signin
from facade.console.calls import Stubs
from facade.console.web import STATIC, Console, SecurityHeaders
from facade.transcoding import Binding
from mesh.config import Settings
from mesh.services import SERVICES

__all__ = ["Stubs", "routes", "serves"]

WATCH = "invmesh.inventory.v1.InventoryService.WatchMovements"


def serves(services: Sequence[str]) -> bool:
    """Whether the facade fronts every service the console calls (a test's facade may not)."""
    return {spec.descriptor.full_name for spec in SERVICES.values()} <= set(services)


def routes(
    settings: Settings, bindings: Sequence[Binding], forwarder_secret: bytes | None
) -> list[BaseRoute]:
    """The console's routes under /console; the lifespan state must hold `console`: Stubs."""
    console = Console(settings)
    (watch,) = [binding for binding in bindings if binding.method.full_name == WATCH]

    async def to_console(request: Request) -> Response:
        return RedirectResponse("/console/", status_code=308)

    return [
        Route("/console", to_console, methods=["GET"]),
        Mount(
            "/console",
            routes=[
                Mount("/static", StaticFiles(directory=STATIC), name="static"),
                *signin.routes(console, forwarder_secret),
                *products.routes(console),
                *product.routes(console),
                *admin.routes(console),
                *feed.routes(console, watch),
            ],
            middleware=[Middleware(SecurityHeaders)],
        ),
    ]
