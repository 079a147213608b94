"""The OpenAPI document: valid 3.1, every route with its method, path and status, no drift
from the router, and /docs working offline."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any, cast
from urllib.parse import urljoin

import httpx
import pytest
from google.api import field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from openapi_spec_validator import validate
from starlette.applications import Starlette
from starlette.routing import Match

from facade.app import create_app
from facade.openapi import openapi_document, openapi_path
from facade.routing import TranscodedRoutes
from facade.transcoding import bindings
from invmesh.auth.v1 import auth_service_pb2
from mesh.access import is_public
from mesh.config import Settings
from mesh.options import FIELD_BEHAVIOR, HTTP
from tests.facade.conftest import serving

# The routes the issue and the README document, with their success status.
DOCUMENTED = {
    ("POST", "/users/register", 202),
    ("POST", "/users/login", 200),
    ("POST", "/users/verify", 200),
    ("GET", "/users/verify", 200),
    ("POST", "/users/refresh", 200),
    ("POST", "/users/logout", 200),
    ("GET", "/users/me", 200),
    ("POST", "/users/me:changePassword", 200),
    ("POST", "/users:setRole", 200),
    ("GET", "/users", 200),
    ("GET", "/.well-known/jwks.json", 200),
    ("GET", "/products", 200),
    ("POST", "/products", 201),
    ("GET", "/products/{id}", 200),
    ("PUT", "/products/{id}", 200),
    ("PATCH", "/products/{id}", 200),
    ("DELETE", "/products/{id}", 204),
    ("GET", "/inventory", 200),
    ("POST", "/inventory", 201),
    ("GET", "/inventory/{product_id}", 200),
    ("PUT", "/inventory/{product_id}", 200),
    ("GET", "/inventory/{product_id}/movements", 200),
    ("GET", "/inventory/movements:watch", 200),
    ("POST", "/inventory/transfers", 201),
    ("GET", "/locations", 200),
    ("POST", "/locations", 201),
    ("GET", "/locations/{id}", 200),
    ("PATCH", "/locations/{id}", 200),
    ("DELETE", "/locations/{id}", 204),
    ("POST", "/reservations", 201),
    ("GET", "/reservations", 200),
    ("GET", "/reservations/{id}", 200),
    ("POST", "/reservations/{id}:confirm", 200),
    ("POST", "/reservations/{id}:release", 200),
}
PUBLIC = {
    ("POST", "/users/register"),
    ("POST", "/users/login"),
    ("POST", "/users/verify"),
    ("GET", "/users/verify"),
    ("POST", "/users/refresh"),
    ("POST", "/users/logout"),
    ("GET", "/.well-known/jwks.json"),
}


@pytest.fixture
def app(settings: Settings) -> Starlette:
    return create_app(settings)


@pytest.fixture
async def http(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client


@pytest.fixture
async def document(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    return cast(dict[str, Any], response.json())


def router(app: Starlette) -> TranscodedRoutes:
    (found,) = [route for route in app.routes if isinstance(route, TranscodedRoutes)]
    return found


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def deref(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def undescribed(node: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in node.items() if key != "description"}


def concrete(path: str) -> str:
    """A request path for an OpenAPI path: each parameter filled with a sample value."""
    return re.sub(r"\{[^}]+\}", "sample-1", path)


async def test_the_served_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    validate(document)  # raises, naming the first error


async def test_every_documented_route_is_there_with_its_method_and_status(document: dict[str, Any]) -> None:
    found = set()
    for (method, path), operation in operations(document).items():
        (success,) = [int(code) for code in operation["responses"] if code.startswith("2")]
        found.add((method, path, success))
    assert found == DOCUMENTED


async def test_the_document_and_the_router_describe_the_same_routes(
    app: Starlette, document: dict[str, Any]
) -> None:
    routes = router(app)
    served = {(b.http_method, openapi_path(b.template)): b for b in routes.bindings}
    documented = operations(document)
    # Templates of one shape share a path (PUT /products/{product.id} is PUT /products/{id}).
    assert {(m, concrete(p)) for m, p in documented} == {(m, concrete(p)) for m, p in served}
    for (method, path), operation in documented.items():
        scope = {
            "type": "http",
            "method": method,
            "path": concrete(path),
            "raw_path": concrete(path).encode(),
            "query_string": b"",
            "headers": [],
        }
        match, child = routes.matches(scope)
        assert match is Match.FULL, (method, path)
        binding = child["invmesh.binding"]
        assert operation["operationId"].startswith(f"{binding.service.name}_{binding.method.name}")
        assert str(binding.status) in operation["responses"]


async def test_a_method_the_document_does_not_list_is_refused_with_the_documented_ones(
    http: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    for path, item in document["paths"].items():
        documented = {method.upper() for method in item}
        taking = methods_taking(document, concrete(path))
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - documented:
            response = await http.request(method, concrete(path))
            if method in taking:
                # A less specific path takes it: GET `/reservations/{id}` takes
                # `/reservations/sample-1:confirm` (a colon is data where no verb is declared),
                # PUT `/inventory/{product_id}` takes `/inventory/transfers`. Routed, not refused.
                assert response.status_code != 405, (method, path)
                continue
            assert response.status_code == 405, (method, path)
            # The methods of every path that takes it (only its own, but where paths overlap).
            assert set(response.headers["allow"].split(", ")) == taking, (method, path)


def methods_taking(document: dict[str, Any], request_path: str) -> set[str]:
    """The methods of every documented path that takes `request_path`; a variable takes any
    one segment, a colon included."""
    methods: set[str] = set()
    for path, item in document["paths"].items():
        parts = re.split(r"(\{[^}]+\})", path)
        pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
        if re.fullmatch(pattern, request_path):
            methods |= {method.upper() for method in item}
    return methods


async def test_operation_ids_are_unique_and_name_the_rpc(document: dict[str, Any]) -> None:
    ids = [operation["operationId"] for operation in operations(document).values()]
    assert len(ids) == len(set(ids))
    assert {"AuthService_VerifyEmail", "AuthService_VerifyEmail_2", "ProductsService_GetProduct"} <= set(ids)


async def test_bearer_security_everywhere_but_the_public_methods(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert document["security"] == [{"bearer": []}]
    public = {key for key, operation in operations(document).items() if operation.get("security") == []}
    assert public == PUBLIC
    # The contract's access option is what the document reads; IssueServiceToken has no route.
    auth_service = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"]
    declared = [m for m in auth_service.methods if is_public(f"/{auth_service.full_name}/{m.name}")]
    assert len(declared) == 7
    for key, operation in operations(document).items():
        unauthenticated = deref(document, operation["responses"]["401"])
        assert unauthenticated["headers"]["WWW-Authenticate"]["required"] is True
        assert ("403" in operation["responses"]) is (key not in PUBLIC)


async def test_errors_share_the_status_shape(document: dict[str, Any]) -> None:
    status = document["components"]["schemas"]["Status"]
    assert status["required"] == ["code", "message", "details"]
    details = [deref(document, d) for d in status["properties"]["details"]["items"]["oneOf"]]
    assert [d["properties"]["@type"]["const"].rsplit("/", 1)[1] for d in details] == [
        "google.rpc.ErrorInfo",
        "google.rpc.BadRequest",
        "google.rpc.RetryInfo",
    ]
    # Snake_case, as the facade prints them.
    assert details[0]["required"] == ["@type", "reason", "domain", "metadata"]
    assert list(details[1]["properties"]) == ["@type", "field_violations"]
    assert list(details[2]["properties"]) == ["@type", "retry_delay"]
    for (method, _), operation in operations(document).items():
        codes = set(operation["responses"])
        assert {"400", "401", "404", "409", "429", "500", "503", "504"} <= codes
        assert ("413" in codes) is ("415" in codes) is (method in ("POST", "PUT", "PATCH"))
        for code in codes - {c for c in codes if c.startswith("2")}:
            response = deref(document, operation["responses"][code])
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Status"}
            assert deref(document, response["headers"]["X-Request-Id"])["required"] is True


async def test_schemas_use_the_facades_json_names_and_types(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    product = schemas["Product"]
    assert list(product["properties"]) == [
        "id", "sku", "name", "description", "price", "currency", "stock", "created_at", "updated_at"
    ]  # fmt: skip
    assert product["additionalProperties"] is False
    # Printed always, except a field with presence: `optional int32 stock` and the timestamps.
    assert product["required"] == ["id", "sku", "name", "description", "price", "currency"]
    assert undescribed(product["properties"]["stock"]) == {
        "type": "integer",
        "format": "int32",
        "readOnly": True,
    }
    assert product["properties"]["created_at"] == {"type": "string", "format": "date-time", "readOnly": True}
    # As a request: field_behavior REQUIRED.
    assert schemas["ProductInput"]["required"] == ["sku", "name", "price"]
    user = schemas["User"]
    assert undescribed(user["properties"]["roles"]) == {
        "type": "array",
        "items": {"type": "string"},
        "readOnly": True,
    }
    assert user["properties"]["email_verified"]["type"] == "boolean"
    movement = schemas["Movement"]["properties"]["type"]
    assert movement == {"type": "string", "enum": ["MOVEMENT_TYPE_UNSPECIFIED", "IN", "OUT", "ADJUSTMENT"]}


async def test_request_bodies_and_responses_follow_the_http_rules(document: dict[str, Any]) -> None:
    ops = operations(document)

    def body(key: tuple[str, str]) -> dict[str, Any]:
        return deref(document, ops[key]["requestBody"]["content"]["application/json"]["schema"])

    def reply(key: tuple[str, str], status: str) -> dict[str, Any]:
        return cast(dict[str, Any], ops[key]["responses"][status])

    # body "*": the request minus the path's fields, unknown fields refused.
    movement = body(("POST", "/inventory"))
    assert movement["required"] == ["product_id", "type", "quantity"]
    assert movement["additionalProperties"] is False
    # A count is PUT /inventory/{product_id}: the movement types a POST records are IN and OUT only.
    assert movement["properties"]["type"]["enum"] == ["IN", "OUT"]
    stock = body(("PUT", "/inventory/{product_id}"))
    assert "product_id" not in stock["properties"] and stock["additionalProperties"] is False
    # body "product": that field's message; response_body "product".
    assert ops[("POST", "/products")]["requestBody"]["required"] is True
    assert body(("POST", "/products")) == document["components"]["schemas"]["ProductInput"]
    created = reply(("POST", "/products"), "201")
    assert created["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Product"}
    assert created["headers"]["Location"]["required"] is True
    assert "Location" not in reply(("POST", "/inventory"), "201")["headers"]
    # 204: no content. GET binds no body.
    assert "content" not in reply(("DELETE", "/products/{id}"), "204")
    assert all("requestBody" not in op for (m, _), op in ops.items() if m in ("GET", "DELETE"))
    # Path parameters, including the nested product.id of UpdateProduct.
    for method in ("PUT", "PATCH"):
        update_id, update_mask = ops[(method, "/products/{id}")]["parameters"]
        assert update_id["in"] == "path" and update_id["required"] is True
        assert "product.id" in update_id["description"]
        # The AIP-134 field mask, a string in JSON, is a query parameter.
        assert {**update_mask, "description": "", "schema": {}} == {
            "name": "update_mask",
            "in": "query",
            "schema": {},
            "description": "",
        }
        assert update_mask["schema"]["type"] == "string"
        assert re.fullmatch(update_mask["schema"]["pattern"], "sku,createdAt")  # JSON names: lowerCamelCase
        assert not re.fullmatch(update_mask["schema"]["pattern"], "sku,nickname")
        assert "The fields of `product` to update" in update_mask["description"]  # the proto's comment
    # Query parameters: the request's fields that neither the path nor the body binds.
    listing = {p["name"]: p for p in ops[("GET", "/inventory/{product_id}/movements")]["parameters"]}
    assert set(listing) == {
        "product_id",
        "page_size",
        "page_token",
        "type",
        "location_id",
        "start_time",
        "end_time",
    }
    # A Timestamp is a string in JSON, so the query carries it.
    assert listing["start_time"]["schema"] == {"type": "string", "format": "date-time"}
    assert undescribed(listing["page_size"]) == {
        "name": "page_size",
        "in": "query",
        "schema": {"type": "integer", "format": "int32", "minimum": 0},
    }
    verify = {p["name"] for p in ops[("GET", "/users/verify")]["parameters"]}
    assert verify == {"email", "token"}


async def test_a_streamed_operation_answers_events_or_json_lines(document: dict[str, Any]) -> None:
    ops = operations(document)
    watch = ops[("GET", "/inventory/movements:watch")]
    content = watch["responses"]["200"]["content"]
    assert list(content) == ["text/event-stream", "application/x-ndjson"]
    assert content["text/event-stream"]["schema"] == {"type": "string"}
    line = content["application/x-ndjson"]["schema"]
    # A line holds one event: an element of the messages' `events`, as rest_stream says.
    assert line["properties"] == {
        "result": {"$ref": "#/components/schemas/MovementFeedEvent"},
        "error": {"$ref": "#/components/schemas/Status"},
    }
    assert "WatchMovementsResponse" not in document["components"]["schemas"]
    assert (line["minProperties"], line["maxProperties"], line["additionalProperties"]) == (1, 1, False)
    parameters = {(p["in"], p["name"]): p for p in watch["parameters"]}
    assert set(parameters) == {
        ("query", "after"),
        ("query", "product_id"),
        ("query", "location_id"),
        ("header", "Last-Event-ID"),
    }
    # The header sets `after`, so it takes what `after` takes.
    assert parameters["header", "Last-Event-ID"]["schema"] == parameters["query", "after"]["schema"]
    assert parameters["header", "Last-Event-ID"]["schema"]["pattern"] == "^[0-9]*$"
    # Unary operations answer JSON.
    assert all(
        "text/event-stream" not in op["responses"]["200"]["content"]
        and "application/json" in op["responses"]["200"]["content"]
        for key, op in ops.items()
        if key[0] == "GET" and op is not watch
    )


async def test_operations_carry_the_comments_of_their_rpcs(document: dict[str, Any]) -> None:
    ops = operations(document)
    for (method, path), operation in ops.items():
        summary, description = operation["summary"], operation["description"]
        # The summary is the comment's first sentence, the description the whole comment and what
        # the facade adds: every RPC is commented (buf lint COMMENT_RPC), so none goes without.
        assert summary.endswith(".") and "\n" not in summary, (method, path, summary)
        assert " ".join(description.split()).startswith(summary), (method, path)
        assert "Calls `invmesh." in description
    get_product = ops[("GET", "/products/{id}")]
    assert get_product["summary"] == "Gets a product."
    assert get_product["description"].startswith(
        "Gets a product. Returns NOT_FOUND if it does not exist or was deleted.\n\n"
    )
    verify = ops[("GET", "/users/verify")]
    assert verify["summary"].startswith("With `email`, re-sends the verification mail;")
    assert "Returns INVALID_ARGUMENT if neither is set" in verify["description"]
    tags = {tag["name"]: tag["description"] for tag in document["tags"]}
    assert tags["ProductsService"].startswith("The product catalog.")


async def test_schemas_and_parameters_carry_the_comments_of_their_fields(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["Product"]["description"] == "A catalog entry."
    assert (
        schemas["Product"]["properties"]["sku"]["description"]
        == "Stock-keeping unit: 1 to 64 characters, unique."
    )
    assert "decimal string" in schemas["ProductInput"]["properties"]["price"]["description"]
    ops = operations(document)
    token = {p["name"]: p for p in ops[("GET", "/users/verify")]["parameters"]}["token"]
    assert token["description"] == "Confirm the address with the token from the verification mail."
    movements = {p["name"]: p for p in ops[("GET", "/inventory/{product_id}/movements")]["parameters"]}
    assert movements["page_size"]["description"] == "At most this many movements; 50 when 0, capped at 500."
    # A path parameter says what it sets, then what the field is.
    (product_id,) = [p for p in ops[("PUT", "/products/{id}")]["parameters"] if p["in"] == "path"]
    assert product_id["description"] == "Sets `product.id`. Opaque product id."


def _test_service() -> Any:
    """A service (in the default pool, like generated code) whose rules use the HttpRule
    features our own protos do not: multi-segment variables, `**`, a verb, and query
    parameters of every kind."""
    file = descriptor_pb2.FileDescriptorProto(
        name="invmesh_tests/openapi_shapes.proto",
        package="invmesh_tests.openapi",
        syntax="proto3",
        dependency=["google/api/annotations.proto", "google/api/field_behavior.proto"],
    )
    color = file.enum_type.add(name="Color")
    for number, name in enumerate(["COLOR_UNSPECIFIED", "RED", "GREEN"]):
        color.value.add(name=name, number=number)
    t = descriptor_pb2.FieldDescriptorProto
    request = file.message_type.add(name="ShapeRequest")
    for number, (name, kind, label, type_name) in enumerate(
        [
            ("name", t.TYPE_STRING, t.LABEL_OPTIONAL, ""),
            ("path", t.TYPE_STRING, t.LABEL_OPTIONAL, ""),
            ("count", t.TYPE_INT64, t.LABEL_OPTIONAL, ""),
            ("big", t.TYPE_UINT64, t.LABEL_OPTIONAL, ""),
            ("flag", t.TYPE_BOOL, t.LABEL_OPTIONAL, ""),
            ("colors", t.TYPE_ENUM, t.LABEL_REPEATED, ".invmesh_tests.openapi.Color"),
            ("ids", t.TYPE_STRING, t.LABEL_REPEATED, ""),
            ("must", t.TYPE_STRING, t.LABEL_OPTIONAL, ""),
        ],
        start=1,
    ):
        field = request.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name
        field.json_name = re.sub(r"_(\w)", lambda m: m.group(1).upper(), name)
        if name == "must":
            field.options.Extensions[FIELD_BEHAVIOR].append(field_behavior_pb2.REQUIRED)
    file.message_type.add(name="ShapeResponse")
    service = file.service.add(name="ShapeService")
    rules = {
        "GetShelf": http_pb2.HttpRule(get="/v1/{name=shelves/*}"),
        "GetBook": http_pb2.HttpRule(get="/v1/{name=shelves/*/books/*}"),
        "GetFile": http_pb2.HttpRule(get="/files/{path=**}"),
        "GetTopFile": http_pb2.HttpRule(get="/files/{path}"),
        "Cancel": http_pb2.HttpRule(post="/v1/{name=jobs/*}:cancel", body="*"),
        "Any": http_pb2.HttpRule(get="/any/*/x"),
    }
    for name, rule in rules.items():
        method = service.method.add(
            name=name,
            input_type=".invmesh_tests.openapi.ShapeRequest",
            output_type=".invmesh_tests.openapi.ShapeResponse",
        )
        method.options.Extensions[HTTP].CopyFrom(rule)
    pool = descriptor_pool.Default()
    try:
        found = pool.FindFileByName(file.name)
    except KeyError:
        pool.Add(file)
        found = pool.FindFileByName(file.name)
    return found.services_by_name["ShapeService"]


def test_path_templates_and_query_types_beyond_our_protos() -> None:
    found = bindings([_test_service()])
    document = openapi_document(found)
    validate(document)
    paths = document["paths"]
    assert set(paths) == {
        "/v1/shelves/{name}",
        "/v1/shelves/{name_1}/books/{name_2}",
        "/files/{path}",
        "/files/{path_rest}",
        "/v1/jobs/{name}:cancel",
        "/any/{_2}/x",
    }
    (shelf,) = [p for p in paths["/v1/shelves/{name}"]["get"]["parameters"] if p["in"] == "path"]
    assert "`shelves/{name}`" in shelf["description"]
    book = [p for p in paths["/v1/shelves/{name_1}/books/{name_2}"]["get"]["parameters"] if p["in"] == "path"]
    assert [p["name"] for p in book] == ["name_1", "name_2"]
    assert "`shelves/{name_1}/books/{name_2}`" in book[0]["description"]
    # `/files/{path}` and `/files/{path=**}` are two routes, so two paths.
    (rest,) = [p for p in paths["/files/{path_rest}"]["get"]["parameters"] if p["in"] == "path"]
    assert rest["description"] == "Sets `path`. Spans the rest of the path: send its `/` unescaped."
    (top,) = [p for p in paths["/files/{path}"]["get"]["parameters"] if p["in"] == "path"]
    assert top["description"] == "Sets `path`."
    (anything,) = paths["/any/{_2}/x"]["get"]["parameters"][:1]
    assert anything["name"] == "_2" and "no field" in anything["description"]
    # A body "*" binding reads no query parameters.
    assert [p["in"] for p in paths["/v1/jobs/{name}:cancel"]["post"]["parameters"]] == ["path"]
    query = {p["name"]: p for p in paths["/files/{path_rest}"]["get"]["parameters"] if p["in"] == "query"}
    assert query["count"]["schema"] == {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
    assert query["big"]["schema"]["format"] == "uint64"
    assert query["flag"]["schema"] == {"type": "boolean"}
    assert query["colors"] == {
        "name": "colors",
        "in": "query",
        "schema": {"type": "array", "items": {"type": "string", "enum": ["RED", "GREEN"]}},
        "style": "form",
        "explode": True,
    }
    assert query["ids"]["schema"]["type"] == "array"
    assert query["must"]["required"] is True
    assert "required" not in query["name"]


async def test_docs_serve_swagger_ui_from_local_assets(http: httpx.AsyncClient) -> None:
    page = await http.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in page.text
    assert "SwaggerUIBundle(" in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets, page.text
    assert not [url for url in assets if "://" in url], "the page loads nothing from the internet"
    kinds = set()
    for asset in assets:
        response = await http.get(urljoin(str(http.base_url) + "/docs", asset))
        assert response.status_code == 200, asset
        assert len(response.content) > 0
        kinds.add(response.headers["content-type"].split(";")[0])
    assert {"text/css", "image/png"} <= kinds
    assert kinds & {"text/javascript", "application/javascript"}
    assert (await http.get("/docs/assets/index.html")).status_code == 404  # only what the page needs
    assert (await http.get("/docs/assets/..%2Fswagger-ui.css")).status_code == 404


async def test_the_verification_link_documents_its_html_page(document: dict[str, Any]) -> None:
    ops = operations(document)
    link = ops[("GET", "/users/verify")]
    assert "text/html" in link["description"]
    for status in ("200", "400", "503"):
        assert set(link["responses"][status]["content"]) == {"application/json", "text/html"}, status
    # The shared error responses stay JSON only, as does the POST.
    assert "text/html" not in document["components"]["responses"]["BadRequest"]["content"]
    posted = deref(document, ops[("POST", "/users/verify")]["responses"]["400"])
    assert set(posted["content"]) == {"application/json"}
    assert set(ops[("POST", "/users/verify")]["responses"]["200"]["content"]) == {"application/json"}


def set_stock_body(document: dict[str, Any]) -> dict[str, Any]:
    """PUT /inventory/{product_id}'s body: SetStockRequest but the path's product_id."""
    put = operations(document)[("PUT", "/inventory/{product_id}")]
    return cast(dict[str, Any], put["requestBody"]["content"]["application/json"]["schema"])


def test_request_schemas_carry_the_limits_the_services_enforce(document: dict[str, Any]) -> None:
    """`invmesh.api.v1.limits` becomes JSON Schema keywords on requests; responses stay unbounded,
    as they print what is stored."""
    schemas = document["components"]["schemas"]
    movement = schemas["RecordMovementRequestInput"]["properties"]
    assert (movement["quantity"]["minimum"], movement["quantity"]["maximum"]) == (1, 2**31 - 1)
    assert movement["request_id"]["pattern"] == "^[A-Za-z0-9._:-]*$"
    assert movement["request_id"]["maxLength"] == 64
    count = set_stock_body(document)["properties"]
    for name in ("quantity", "reorder_point"):
        assert (count[name]["minimum"], count[name]["maximum"]) == (0, 2**31 - 1)
    product = schemas["ProductInput"]["properties"]
    assert (product["sku"]["maxLength"], product["name"]["maxLength"]) == (64, 200)
    assert product["description"]["maxLength"] == 5000
    register = schemas["RegisterRequestInput"]["properties"]
    assert register["password"] | {"description": ""} == {
        "type": "string",
        "minLength": 8,
        "maxLength": 72,
        "description": "",
    }
    assert register["email"]["format"] == "email"
    assert "maxLength" not in schemas["Product"]["properties"]["sku"]


def test_verify_takes_exactly_one_of_email_or_token(document: dict[str, Any]) -> None:
    verify = document["components"]["schemas"]["VerifyEmailRequestInput"]
    not_null = {"not": {"type": "null"}}
    assert verify["oneOf"] == [
        {"required": ["email"], "properties": {"email": not_null}},
        {"required": ["token"], "properties": {"token": not_null}},
    ]
    assert "required" not in verify


def test_optional_request_fields_may_be_null_as_proto3_json_reads_them(document: dict[str, Any]) -> None:
    """null sets the default, which an optional field may keep; a REQUIRED field may not be null."""
    schemas = document["components"]["schemas"]
    register = schemas["RegisterRequestInput"]["properties"]
    assert register["name"]["type"] == ["string", "null"]
    assert register["email"]["type"] == "string"
    movement = schemas["RecordMovementRequestInput"]["properties"]
    assert movement["request_id"]["type"] == ["string", "null"]
    assert movement["type"]["enum"] == ["IN", "OUT"]  # REQUIRED: neither null nor unspecified
    count = set_stock_body(document)  # either may be left out, or null: the service wants one
    assert "required" not in count
    properties = count["properties"]
    assert properties["quantity"]["type"] == properties["reorder_point"]["type"] == ["integer", "null"]


def test_a_patch_body_may_hold_any_of_the_fields_it_changes(document: dict[str, Any]) -> None:
    """PATCH updates the fields its body holds, so none is required; PUT replaces, so they are."""
    paths = document["paths"]["/products/{id}"]
    patch = paths["patch"]["requestBody"]["content"]["application/json"]["schema"]
    put = paths["put"]["requestBody"]["content"]["application/json"]["schema"]
    schemas = document["components"]["schemas"]
    assert (patch, put) == (
        {"$ref": "#/components/schemas/ProductPatch"},
        {"$ref": "#/components/schemas/ProductInput"},
    )
    assert "required" not in schemas["ProductPatch"]
    assert schemas["ProductInput"]["required"] == ["sku", "name", "price"]
    assert schemas["ProductPatch"]["properties"] == schemas["ProductInput"]["properties"]
