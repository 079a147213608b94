"""One error contract: every error is a `google.rpc.Status` whose details hold an ErrorInfo
(domain "invmesh") naming its reason, and a BadRequest field violation when one field is at
fault, printed snake_case. The facade's own refusals are checked against the echo service of
the test proto (written on a raw socket, so escapes and headers go out byte for byte); the
backends' against the real mesh."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status
from starlette.requests import Request
from starlette.responses import Response

from facade.app import Backend, create_app
from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from mesh.config import Settings
from tests.facade.conftest import Web, facade_client, serving
from tests.facade.protos import echo_server, service
from tests.facade.test_hostile_http import head, raw
from tests.rpc import error_reason, expect_error

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
JSON = {"content-type": "application/json"}
CAMEL_CASE = re.compile(r"[a-z][A-Z]")


def facade_error(*, code: int, message: str, reason: str, field: str | None = None) -> dict[str, Any]:
    """The body of an error the facade makes itself."""
    details: list[dict[str, Any]] = [
        {"@type": ERROR_INFO, "reason": reason, "domain": "invmesh", "metadata": {}}
    ]
    if field is not None:
        violation = {"field": field, "description": message, "reason": reason}
        details.append({"@type": BAD_REQUEST, "field_violations": [violation]})
    return {"code": code, "message": message, "details": details}


def keys(value: object) -> set[str]:
    """Every object key in a JSON value, however deep."""
    if isinstance(value, dict):
        return set(value).union(*(keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(keys(v) for v in value))
    return set()


@pytest.fixture
async def echo_url(settings: Settings) -> AsyncIterator[str]:
    async with echo_server("EchoService") as address:
        async with facade_client(settings, {service("EchoService"): Backend("testing", address)}) as client:
            yield str(client.base_url)


# method, target, headers, body, HTTP status, gRPC code, reason, field
FACADE_ERRORS: list[tuple[str, str, Mapping[str, str], bytes, int, int, str, str | None]] = [
    ("POST", "/v1/items", JSON, b"{", 400, 3, "INVALID_JSON", None),
    ("POST", "/v1/items", JSON, b"[" * 100_000, 400, 3, "INVALID_JSON", None),
    ("POST", "/v1/items", JSON, b"[]", 400, 3, "INVALID_BODY", None),
    ("POST", "/v1/items/7:undelete", JSON, b'{"id": "8"}', 400, 3, "INVALID_BODY", None),
    ("POST", "/v1/items", JSON, b'{"nope": 1}', 400, 3, "UNKNOWN_FIELD", "nope"),
    ("POST", "/v1/items", JSON, b'{"nested": {"nope": 1}}', 400, 3, "UNKNOWN_FIELD", "nested.nope"),
    ("GET", "/v1/items/x?nope=1", {}, b"", 400, 3, "UNKNOWN_FIELD", "nope"),
    ("POST", "/v1/items", JSON, b'{"count": "x"}', 400, 3, "INVALID_VALUE", "count"),
    ("POST", "/v1/items", JSON, b'{"pageSize": 1.5}', 400, 3, "INVALID_VALUE", "page_size"),
    ("GET", "/v1/items/x?count=abc", {}, b"", 400, 3, "INVALID_VALUE", "count"),
    ("GET", "/v1/items/x?flag=yes", {}, b"", 400, 3, "INVALID_VALUE", "flag"),
    ("POST", "/v1/counts/x/true/1", {}, b"", 400, 3, "INVALID_VALUE", "count"),
    ("GET", "/v1/items/x?id=y", {}, b"", 400, 3, "INVALID_QUERY", "id"),
    ("GET", "/v1/items/x?count=1&count=2", {}, b"", 400, 3, "INVALID_QUERY", "count"),
    ("POST", "/v1/items?name=n", JSON, b"{}", 400, 3, "INVALID_QUERY", "name"),
    ("GET", "/v1/items/x?q=%zz", {}, b"", 400, 3, "INVALID_QUERY", None),
    ("GET", "/v1/items/%zz", {}, b"", 400, 3, "INVALID_PATH", None),
    ("GET", "/v1/items/%C3%28", {}, b"", 400, 3, "INVALID_PATH", None),
    ("GET", "/v1/items/x", {"grpc-timeout": "soon"}, b"", 400, 3, "INVALID_TIMEOUT", None),
    (
        "POST",
        "/v1/items",
        {"content-type": "application/xml"},
        b"<a/>",
        415,
        3,
        "UNSUPPORTED_MEDIA_TYPE",
        None,
    ),
    ("POST", "/v1/items", {**JSON, "content-length": str(2 << 20)}, b"{", 413, 8, "BODY_TOO_LARGE", None),
    ("GET", "/nowhere", {}, b"", 404, 5, "NO_ROUTE", None),
    ("GET", "/docs/assets/nope.js", {}, b"", 404, 5, "NO_ROUTE", None),
    ("POST", "/v1/items/x", JSON, b"{}", 405, 12, "METHOD_NOT_ALLOWED", None),
    ("POST", "/healthz", {}, b"", 405, 12, "METHOD_NOT_ALLOWED", None),
    ("GET", "/v1/items/x", {"authorization": "Bearer " + "a" * 5000}, b"", 431, 8, "HEADER_TOO_LARGE", None),
    ("GET", "/v1/items/x", {"authorization": "Bearer a\tb"}, b"", 401, 16, "INVALID_TOKEN", None),
    (
        "GET",
        "/v1/items/x",
        {"authorization": "Basic \xe9t\xe9"},
        b"",
        401,
        16,
        "UNSUPPORTED_AUTH_SCHEME",
        None,
    ),
]


@pytest.mark.parametrize(
    ("method", "target", "headers", "body", "status", "code", "reason", "field"),
    FACADE_ERRORS,
    ids=[f"{case[6]}-{case[0]} {case[1][:30]}" for case in FACADE_ERRORS],
)
async def test_each_error_the_facade_makes_names_its_reason(
    echo_url: str,
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: bytes,
    status: int,
    code: int,
    reason: str,
    field: str | None,
) -> None:
    sent = {"content-length": str(len(body)), **headers} if body else dict(headers)
    answer = await raw(echo_url, head(method, target, sent), body)
    assert answer.status == status, answer.body[:300]
    assert answer.headers["content-type"] == "application/json"
    error = json.loads(answer.body)
    assert error["message"], error
    assert error == facade_error(code=code, message=error["message"], reason=reason, field=field)
    if status == 405:
        assert answer.headers["allow"]


async def test_an_unreachable_backend_is_backend_unavailable(settings: Settings) -> None:
    async with facade_client(settings, {service("EchoService"): Backend("testing", "127.0.0.1:1")}) as http:
        response = await http.get("/v1/items/x")
    assert response.status_code == 503
    message = "the testing service is unavailable; try again shortly"
    assert response.json() == facade_error(code=14, message=message, reason="BACKEND_UNAVAILABLE")


async def test_a_backends_field_violation_passes_through_in_snake_case(web: Web) -> None:
    response = await web.http.post(
        "/products", headers=web.staff, json={"sku": "X", "name": "X", "price": "-1"}
    )
    assert response.status_code == 400, response.text
    error = response.json()
    info, bad_request = error["details"][:2]
    assert info["@type"] == ERROR_INFO and info["domain"] == "invmesh" and info["reason"]
    assert bad_request["@type"] == BAD_REQUEST
    assert set(bad_request["field_violations"][0]) == {"field", "description", "reason"}
    assert bad_request["field_violations"][0]["field"] == "price"
    assert not {k for k in keys(error) if CAMEL_CASE.search(k)}, error


async def test_an_authorization_that_is_not_bearer_has_its_own_reason(web: Web) -> None:
    def reason(response: httpx.Response) -> str:
        assert response.status_code == 401, response.text
        # No token at all: a bare challenge (RFC 6750 §3.1).
        assert response.headers["www-authenticate"] == 'Bearer realm="invmesh"'
        return str(response.json()["details"][0]["reason"])

    basic = {"authorization": "Basic dXNlcjpwYXNz"}
    refused = await web.http.get("/users/me", headers=basic)
    assert reason(refused) == "UNSUPPORTED_AUTH_SCHEME"
    assert "use Authorization: Bearer <token>" in refused.json()["message"]
    assert reason(await web.http.get("/users/me", headers={"authorization": web.mesh.verified_token})) == (
        "UNSUPPORTED_AUTH_SCHEME"  # a token without its scheme
    )
    assert reason(await web.http.get("/users/me")) == "MISSING_TOKEN"
    assert reason(await web.http.get("/users/me", headers={"authorization": "Bearer"})) == "MISSING_TOKEN"
    assert (
        await web.http.get("/users/me", headers={"authorization": "bearer " + web.mesh.verified_token})
    ).is_success
    invalid = await web.http.get("/users/me", headers={"authorization": "Bearer not.a.jwt"})
    assert invalid.status_code == 401 and invalid.json()["details"][0]["reason"] == "INVALID_TOKEN"
    assert invalid.headers["www-authenticate"].startswith('Bearer realm="invmesh", error="invalid_token"')

    # Over gRPC, the same reasons.
    get_me = web.mesh.auth.GetMe
    refused_rpc = await expect_error(
        get_me(auth_pb.GetMeRequest(), metadata=tuple(basic.items())), grpc.StatusCode.UNAUTHENTICATED
    )
    assert error_reason(refused_rpc) == "UNSUPPORTED_AUTH_SCHEME"
    missing = await expect_error(get_me(auth_pb.GetMeRequest()), grpc.StatusCode.UNAUTHENTICATED)
    assert error_reason(missing) == "MISSING_TOKEN"


async def test_a_bug_in_the_facade_is_a_status_that_discloses_nothing(settings: Settings) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("secret detail")

    app = create_app(settings, {service("EchoService"): Backend("testing", "127.0.0.1:1")})
    app.add_route("/broken", broken)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/broken")
    assert response.status_code == 500
    assert response.json() == facade_error(code=13, message="internal error", reason="INTERNAL")


async def test_a_backend_status_without_a_reason_gets_its_codes_name(settings: Settings) -> None:
    # A service that is not ours may attach a Status with no ErrorInfo: the facade adds one.
    async def refuse(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        status = rpc_status.to_status(status_pb2.Status(code=code_pb2.NOT_FOUND, message="no such item"))
        await context.abort(status.code, status.details, status.trailing_metadata)

    echo = service("EchoService")
    server = grpc.aio.server()
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(refuse)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(echo.full_name, {"GetItem": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with facade_client(settings, {echo: Backend("testing", f"127.0.0.1:{port}")}) as http:
            response = await http.get("/v1/items/x")
    finally:
        await server.stop(None)
    assert response.status_code == 404
    assert response.json() == facade_error(code=5, message="no such item", reason="NOT_FOUND")
