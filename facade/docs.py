"""Interactive API docs at /docs, served from the bundled Swagger UI (no internet needed).

The page is ours (it points Swagger UI at /openapi.json); the assets it loads come from the
installed `swagger_ui_bundle` package, and only those, under /docs/assets/.
"""

from __future__ import annotations

import html
from pathlib import Path

import swagger_ui_bundle
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from facade import errors

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
OPENAPI_PATH = "/openapi.json"
ASSETS = Path(swagger_ui_bundle.swagger_ui_path)
# What the page below loads; the bundle's own index.html and initializer (pointing elsewhere) are not served.
ASSET_FILES = frozenset(
    {
        "swagger-ui.css",
        "index.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "favicon-32x32.png",
        "favicon-16x16.png",
    }
)

_PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>{title}</title>
    <link rel="stylesheet" type="text/css" href="{assets}/swagger-ui.css">
    <link rel="stylesheet" type="text/css" href="{assets}/index.css">
    <link rel="icon" type="image/png" href="{assets}/favicon-32x32.png" sizes="32x32">
    <link rel="icon" type="image/png" href="{assets}/favicon-16x16.png" sizes="16x16">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="{assets}/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="{assets}/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script>
      window.onload = function () {{
        window.ui = SwaggerUIBundle({{
          url: "{openapi}",
          dom_id: "#swagger-ui",
          deepLinking: true,
          persistAuthorization: true,
          presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
          layout: "StandaloneLayout",
        }});
      }};
    </script>
  </body>
</html>
"""


def page(title: str = "invmesh API") -> str:
    return _PAGE.format(title=html.escape(title), assets=ASSETS_PATH, openapi=OPENAPI_PATH)


def routes() -> list[BaseRoute]:
    body = page()

    async def docs(request: Request) -> Response:
        return HTMLResponse(body)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSET_FILES:
            return errors.no_route(request)
        return FileResponse(ASSETS / name, headers={"cache-control": "public, max-age=86400"})

    return [
        Route(DOCS_PATH, docs, methods=["GET"]),
        Route(ASSETS_PATH + "/{name}", asset, methods=["GET"]),
    ]
