"""Hostile HTTP against the facade: every answer is a 4xx in the one error shape, never a 5xx.

Most requests go to the real mesh (`web`); a few go to the echo service of the test proto, whose
routes have shapes the mesh lacks. Requests whose bytes matter (raw escapes, bodies that never
end) are written on a raw socket, since an HTTP client would normalize or complete them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import pytest

from facade.app import Backend, default_backends
from facade.httprule import Kind, PathTemplate
from facade.transcoding import bindings
from mesh.config import Settings
from tests.facade.conftest import Web, facade_client
from tests.facade.protos import echo_server, service

MIB = 1024 * 1024


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self, label: str, expected: int | None = None) -> str | None:
        """What is wrong with this answer to a hostile request, or None if it is a proper refusal."""
        if expected is not None and self.status != expected:
            return f"{label}: {self.status} (expected {expected}) {self.body[:200]!r}"
        if not 400 <= self.status < 500:
            return f"{label}: {self.status} {self.body[:200]!r}"
        try:
            error = json.loads(self.body)
        except ValueError:
            return f"{label}: {self.status} with a body that is not JSON: {self.body[:200]!r}"
        if not (
            isinstance(error, dict)
            and set(error) == {"code", "message", "details"}
            and isinstance(error["code"], int)
            and 0 < error["code"] <= 16
            and isinstance(error["message"], str)
            and error["message"]
            and isinstance(error["details"], list)
        ):
            return f"{label}: {self.status} with a body not in the error shape: {error!r}"
        if self.headers.get("content-type") != "application/json":
            return f"{label}: content-type {self.headers.get('content-type')!r}"
        return None

    @property
    def error(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.body))


def of(response: httpx.Response) -> Answer:
    return Answer(response.status_code, dict(response.headers), response.content)


async def raw(base_url: str, head: bytes, body: bytes = b"") -> Answer:
    """Sends `head` (request line and headers, without the blank line) and `body` as they are,
    on a connection the server closes after answering."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(head + b"\r\nHost: test\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        async with asyncio.timeout(10):
            data = await reader.read()
    finally:
        writer.close()
    return parse_answer(data)


def parse_answer(data: bytes) -> Answer:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split(" ")[1]), headers, body)


def head(method: str, target: str, headers: Mapping[str, str]) -> bytes:
    """A raw request head (request line and headers), written byte for byte."""
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items())]
    return "\r\n".join(lines).encode("latin-1")


def get(target: str, headers: Mapping[str, str]) -> bytes:
    return head("GET", target, headers)


def assert_all_refused(problems: list[str | None]) -> None:
    found = [p for p in problems if p]
    assert not found, "\n".join(found)


@pytest.fixture
async def product(web: Web) -> str:
    created = await web.http.post(
        "/products", headers=web.staff, json={"sku": "HOSTILE-1", "name": "Target", "price": "5"}
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


@pytest.fixture
async def echo(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with echo_server("EchoService") as address:
        backends = {service("EchoService"): Backend("testing", address)}
        async with facade_client(settings, backends) as client:
            yield client


# --- bodies ----------------------------------------------------------------------------------------------

NOT_JSON = [
    b"{",
    b"{'sku': 'a'}",
    b'{"sku": "a",}',
    b"sku=a&name=b",
    b"\xff\xfe{}",
    b'{"sku": "\xff"}',
    b"NaN",
    b'{"sku": "a"} {"sku": "b"}',
    b"1" * 5000,  # over Python's integer-string limit
    b"[" * 100_000,
    b'{"a":' * 100_000,
]
NOT_AN_OBJECT = [b"[]", b'[{"sku": "a"}]', b'"a string"', b"42", b"-1.5e3", b"null", b"true"]


async def test_malformed_and_non_object_bodies(web: Web, product: str) -> None:
    problems = []
    for url, method in [("/products", "POST"), (f"/products/{product}", "PUT"), ("/inventory", "POST")]:
        for body in [*NOT_JSON, *NOT_AN_OBJECT]:
            response = await web.http.request(method, url, headers=web.staff, content=body)
            problems.append(of(response).problem(f"{method} {url} {body[:30]!r}", 400))
    assert_all_refused(problems)
    invalid = await web.http.post("/products", headers=web.staff, content=b"{")
    assert invalid.json()["message"] == "the request body is not valid JSON"
    listed = await web.http.post("/products", headers=web.staff, content=b"[]")
    assert listed.json()["message"] == "the request body must be a JSON object"


def example_path(template: PathTemplate, value: str = "x") -> str:
    """A path that `template` matches, with `value` in every variable segment."""
    parts = [s.literal if s.kind is Kind.LITERAL else value for s in template.segments]
    return "/" + "/".join(parts) + (f":{template.verb}" if template.verb else "")


async def test_every_route_refuses_garbage(web: Web) -> None:
    # Every binding of the mesh, whatever it takes: broken JSON, a list, an empty body.
    problems = []
    for binding in bindings(default_backends(web.mesh.settings)):
        path = example_path(binding.template)
        label = f"{binding.http_method} {path}"
        for body in (b"{", b"[]", b"", b'{"nope": 1}'):
            if not body and not binding.body:
                continue  # a plain call: nothing hostile about it
            for headers in (web.staff, {}):
                response = await web.http.request(binding.http_method, path, headers=headers, content=body)
                problems.append(of(response).problem(f"{label} {body!r} {'as staff' if headers else ''}"))
        response = await web.http.request(binding.http_method, f"{path}?nope=1", headers=web.staff)
        problems.append(of(response).problem(f"{label}?nope=1", 400))
    assert_all_refused(problems)


WRONG_TYPES: list[tuple[str, str, object, str]] = [
    ("POST", "/products", {"sku": 5, "name": "a", "price": "1"}, "sku"),
    ("POST", "/products", {"sku": "a", "name": ["a"], "price": "1"}, "name"),
    ("POST", "/products", {"sku": "a", "name": "a", "price": {"units": 1}}, "price"),
    ("POST", "/products", {"sku": "a", "name": "a", "price": "1", "stock": "many"}, "stock"),
    ("POST", "/products", {"sku": "a", "name": "a", "price": "1", "createdAt": "yesterday"}, "created_at"),
    ("POST", "/products", {"sku": "a", "name": "a", "price": "1", "created_at": 5}, "created_at"),
    ("POST", "/products", {"sku": "\ud800", "name": "a", "price": "1"}, "sku"),
    ("POST", "/inventory", {"product_id": "p", "type": "SIDEWAYS", "quantity": 1}, "type"),
    ("POST", "/inventory", {"product_id": "p", "type": "IN", "quantity": "x"}, "quantity"),
    ("POST", "/inventory", {"product_id": "p", "type": "IN", "quantity": 1.5}, "quantity"),
    ("POST", "/inventory", {"product_id": "p", "type": "IN", "quantity": 1e10}, "quantity"),
    ("POST", "/inventory", {"product_id": "p", "type": "IN", "quantity": 1e400}, "quantity"),
    ("POST", "/inventory", {"product_id": "p", "type": "IN", "quantity": True}, "quantity"),
    ("POST", "/inventory", {"productId": ["p"], "type": "IN", "quantity": 1}, "product_id"),
    ("POST", "/users/login", {"email": {"a": 1}, "password": "p"}, "email"),
    ("POST", "/users/register", {"email": "a@example.com", "password": 12345678}, "password"),
]


async def test_wrong_types_name_the_field(web: Web, product: str) -> None:
    problems = []
    cases = [*WRONG_TYPES, ("PUT", f"/inventory/{product}", {"quantity": "ten"}, "quantity")]
    cases.append(("PUT", f"/products/{product}", {"sku": "a", "name": "a", "price": 1.5}, "price"))
    for method, url, body, field in cases:
        response = await web.http.request(method, url, headers=web.staff, content=json.dumps(body))
        answer = of(response)
        problem = answer.problem(f"{method} {url} {body}", 400)
        if problem is None:
            violations = [d for d in answer.error["details"] if "field_violations" in d]
            named = violations[0]["field_violations"][0]["field"] if violations else None
            if named != field:
                problem = f"{method} {url} {body}: names {named!r}, not {field!r}"
        problems.append(problem)
    assert_all_refused(problems)


async def test_unknown_fields_and_query_parameters_are_named(web: Web, product: str) -> None:
    problems = []
    for method, url, body, name in [
        ("POST", "/products", {"sku": "a", "name": "a", "price": "1", "colour": "red"}, "colour"),
        ("POST", "/inventory", {"product_id": product, "type": "IN", "quantity": 1, "why": "x"}, "why"),
        ("POST", "/users/login", {"email": "a@example.com", "password": "p", "otp": "1"}, "otp"),
        ("GET", "/products?colour=red", None, "colour"),
        ("GET", "/products?page_size=1&pageSize=2", None, "pageSize"),
        ("GET", "/products?page_size=1&page_size=2", None, "page_size"),
        ("GET", f"/products/{product}?id=other", None, "id"),
        ("GET", "/inventory?q=x", None, "q"),
        ("POST", "/inventory?type=IN", {"product_id": product, "type": "IN", "quantity": 1}, "type"),
        ("POST", "/products?sku=x", {"sku": "a", "name": "a", "price": "1"}, "sku"),
    ]:
        content = json.dumps(body) if body is not None else None
        response = await web.http.request(method, url, headers=web.staff, content=content)
        answer = of(response)
        problem = answer.problem(f"{method} {url}", 400)
        if problem is None and repr(name) not in str(answer.error["message"]):
            problem = f"{method} {url}: {answer.error['message']!r} does not name {name!r}"
        problems.append(problem)
    assert_all_refused(problems)


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_eight_mebibytes_announced_are_refused_before_they_are_sent(web: Web, method: str) -> None:
    # Only the head and a few bytes go out: a 413 that arrives proves the server did not wait
    # for (or buffer) the rest.
    url = "/products" if method == "POST" else "/inventory/p1"
    announced = {**web.staff, "content-length": str(8 * MIB), "content-type": "application/json"}
    answer = await raw(str(web.http.base_url), head(method, url, announced), b'{"sku": "')
    assert_all_refused([answer.problem(f"{method} {url}", 413)])
    assert "byte limit" in str(answer.error["message"])


async def test_eight_mebibytes_chunked_are_refused_at_the_limit(web: Web) -> None:
    url = urlsplit(str(web.http.base_url))
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    # Kept alive, so the server answers and then drops the rest of the body as it comes.
    writer.write(head("POST", "/products", {**web.staff, "transfer-encoding": "chunked"}) + b"\r\n\r\n")
    answer = asyncio.create_task(read_answer(reader))
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024)
    sent = 0
    try:
        async with asyncio.timeout(10):
            while sent < 8 * MIB and not answer.done():
                writer.write(chunk)
                await writer.drain()
                sent += 64 * 1024
                await asyncio.sleep(0.001)
            refused = await answer
    finally:
        writer.close()
    assert_all_refused([refused.problem("chunked POST /products", 413)])
    assert sent < 8 * MIB, "the answer came only once the whole body was sent"


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    start = parse_answer(await reader.readuntil(b"\r\n\r\n"))
    start.body = await reader.readexactly(int(start.headers["content-length"]))
    return start


async def test_a_body_just_under_the_limit_is_read(web: Web) -> None:
    body = b'{"sku": "a", "name": "a", "price": "1", "description": "' + b"x" * (MIB - 100) + b'"}'
    response = await web.http.post("/products", headers=web.staff, content=body)
    assert response.status_code != 413
    assert_all_refused([of(response).problem("1 MiB - 44 bytes")])  # the service's own limits refuse it


async def test_a_get_or_delete_with_a_body(web: Web, product: str) -> None:
    problems = []
    for method, url in [
        ("GET", f"/products/{product}"),
        ("GET", "/products"),
        ("DELETE", f"/products/{product}"),
    ]:
        response = await web.http.request(method, url, headers=web.staff, content=b'{"id": "x"}')
        problems.append(of(response).problem(f"{method} {url} with a body", 400))
        response = await web.http.request(method, url, headers=web.staff, content=b"[" * 50_000)
        problems.append(of(response).problem(f"{method} {url} with a deep body", 400))
    assert_all_refused(problems)
    assert (await web.http.get(f"/products/{product}", headers=web.staff)).status_code == 200


async def test_deep_json_in_a_known_field(echo: httpx.AsyncClient) -> None:
    problems = []
    for depth in (10, 500, 5000, 50_000):
        for body in (
            b'{"nested": ' + b'{"inner": ' * depth + b"{}" + b"}" * depth + b"}",
            b'{"tags": ' + b"[" * depth + b"]" * depth + b"}",
            b'{"children": [' + b'{"a": ' * depth + b'"x"' + b"}" * depth + b"]}",
        ):
            response = await echo.post("/v1/items", content=body)
            problems.append(of(response).problem(f"depth {depth}: {body[:30]!r}", 400))
    assert_all_refused(problems)


# --- paths -----------------------------------------------------------------------------------------------


async def test_bad_percent_escapes(web: Web) -> None:
    problems = []
    for path in [
        "/products/%zz",
        "/products/%",
        "/products/abc%",
        "/products/%4",
        "/products/%ff",
        "/products/%C3%28",
        "/products/%ED%A0%80",  # an encoded UTF-16 surrogate
        "/products/%C0%AF",  # an overlong "/"
        "/inventory/%zz/movements",
        "/nowhere/%zz",
        "/products?q=%zz",
        "/products?q=%ff",
        "/products?%ff=1",
        "/products?q=%",
    ]:
        answer = await raw(str(web.http.base_url), get(path, web.staff))
        problems.append(answer.problem(f"GET {path}", 400))
    assert_all_refused(problems)


async def test_odd_path_values_reach_the_service_and_are_refused_there(web: Web) -> None:
    problems = []
    for value in ["a%00b", "%00", "9" * 10_000, "x" * 60_000, "%2F", "..", "%2e%2e", "-1", "%20", "%0A"]:
        for path in (f"/products/{value}", f"/inventory/{value}", f"/inventory/{value}/movements"):
            answer = await raw(str(web.http.base_url), get(path, web.staff))
            problems.append(answer.problem(f"GET {path[:60]}"))
    assert_all_refused(problems)


async def test_odd_query_values(web: Web) -> None:
    problems = []
    for query in [
        "q=%00",
        "q=" + "x" * 60_000,
        "q=%25%5F",
        "page_token=%00",
        "page_token=garbage",
        "page_token=" + "A" * 10_000,
        "page_size=-1",
        "page_size=2147483648",
        "page_size=1e3",
        "page_size=",
        "pageSize=0x10",
    ]:
        answer = await raw(str(web.http.base_url), get(f"/products?{query}", web.staff))
        if answer.status != 200:
            problems.append(answer.problem(f"GET /products?{query[:40]}"))
    for query in ["page_size=-1", "page_token=garbage", "page_token=%00"]:
        answer = await raw(str(web.http.base_url), get(f"/inventory?{query}", web.staff))
        if answer.status != 200:
            problems.append(answer.problem(f"GET /inventory?{query}"))
    assert_all_refused(problems)


async def test_unknown_routes(web: Web) -> None:
    problems = []
    for method, path in [
        ("GET", "/"),
        ("GET", "/nope"),
        ("GET", "/products/a/b"),
        ("GET", "/products/a/b/c/d"),
        ("POST", "/products/a/b"),
        ("GET", "/inventory/a/movements/b"),
        ("GET", "/users/everyone/now"),
        ("DELETE", "/users/me/now"),
        ("GET", "/products/"),
        ("GET", "//products"),
        ("GET", "/products//x"),
        ("GET", "/.well-known/other.json"),
        ("GET", "/products:search"),
    ]:
        answer = await raw(str(web.http.base_url), head(method, path, web.staff))
        problems.append(answer.problem(f"{method} {path}", 404))
    assert_all_refused(problems)


async def test_wrong_methods_answer_405_with_allow(web: Web, product: str) -> None:
    problems = []
    for method, path, allow in [
        ("PATCH", "/products", {"GET", "POST"}),
        ("DELETE", "/products", {"GET", "POST"}),
        ("POST", f"/products/{product}", {"GET", "PUT", "PATCH", "DELETE"}),
        ("PATCH", f"/inventory/{product}", {"GET", "PUT"}),
        ("DELETE", "/inventory", {"GET", "POST"}),
        ("GET", "/users/login", {"POST"}),
        ("PUT", "/users/verify", {"GET", "POST"}),
        ("POST", "/users/me", {"GET"}),
        ("HEAD", f"/products/{product}", {"GET", "PUT", "PATCH", "DELETE"}),
        ("OPTIONS", "/products", {"GET", "POST"}),
        ("TRACE", "/products", {"GET", "POST"}),
    ]:
        answer = await raw(str(web.http.base_url), head(method, path, web.staff))
        if method == "HEAD":  # no body, by definition
            problem = None if answer.status == 405 else f"HEAD {path}: {answer.status}"
        else:
            problem = answer.problem(f"{method} {path}", 405)
        if problem is None and set(answer.headers["allow"].split(", ")) != allow:
            problem = f"{method} {path}: Allow: {answer.headers['allow']}, not {sorted(allow)}"
        problems.append(problem)
    assert_all_refused(problems)


# --- headers ---------------------------------------------------------------------------------------------


async def test_header_oddities(web: Web) -> None:
    problems = []
    for headers in [
        {"grpc-timeout": "soon"},
        {"grpc-timeout": "0S"},
        {"grpc-timeout": "0n"},
        {"grpc-timeout": "-1S"},
        {"grpc-timeout": "1.5S"},
        {"grpc-timeout": "123456789S"},
        {"grpc-timeout": "1s"},
        {"grpc-timeout": "1"},
        {"grpc-timeout": ""},
        {"authorization": "Bearer"},
        {"authorization": "Bearer "},
        {"authorization": "Basic dXNlcjpwYXNz"},
        {"authorization": "Bearer not.a.jwt"},
        {"authorization": "Bearer " + "a" * 3000},
        {"authorization": "Bearer \xe9t\xe9"},
        {"authorization": "Bearer a\tb"},
    ]:
        answer = await raw(str(web.http.base_url), get("/products", {**web.staff, **headers}))
        problems.append(answer.problem(f"{headers!r:.60}"))
    assert_all_refused(problems)


async def test_an_oversized_authorization_header(web: Web) -> None:
    for size in (5_000, 20_000, 60_000):
        answer = await raw(
            str(web.http.base_url), get("/products", {"authorization": "Bearer " + "a" * size})
        )
        assert_all_refused([answer.problem(f"Authorization of {size} bytes", 431)])


async def test_bodies_declared_as_what_json_cannot_be_are_415(web: Web) -> None:
    # JSON, and what clients send JSON as by default (curl -d, fetch), is read as JSON.
    problems = []
    for content_type in ["application/json", "application/x-www-form-urlencoded", "text/plain;charset=UTF-8"]:
        response = await web.http.post(
            "/products", headers={**web.staff, "content-type": content_type}, content=b"<a/>"
        )
        problems.append(of(response).problem(content_type, 400))
    for content_type in ["application/xml", "text/plain; charset=latin-1", "multipart/form-data", "x"]:
        response = await web.http.post(
            "/products", headers={**web.staff, "content-type": content_type}, content=b"<a/>"
        )
        problems.append(of(response).problem(content_type, 415))
    assert_all_refused(problems)


async def test_what_the_http_server_cannot_parse_never_reaches_the_app(web: Web) -> None:
    # uvicorn (httptools) answers these itself, in plain text: a 400 all the same. (A head over
    # the size limit is a 431: tests/facade/test_connection_limits.py.)
    for request in [
        get("/products/\xe9", web.staff),
        get("/products", {"content-length": "abc"}),
        get("/products", {"x-odd": "a\x01b"}),
        head("GET", "/products HTTP/1.1 extra", {}),
    ]:
        answer = await raw(str(web.http.base_url), request)
        assert answer.status == 400, (request[:60], answer)
