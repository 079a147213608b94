"""Every HttpRule feature, end to end: HTTP → facade → a real gRPC server that echoes the request
it got (tests/facade/protos), so each test sees exactly which fields were bound, and from where."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

from facade.app import Backend, create_app
from facade.transcoding import RuleError
from mesh.config import Settings
from tests.conftest import settings_for
from tests.facade.conftest import facade_client
from tests.facade.protos import echo_server, service

# EchoRequest with nothing set, as the facade writes it: snake_case names, zero values present,
# enums by name, 64-bit integers as strings.
ZERO = {
    "id": "",
    "name": "",
    "count": 0,
    "big": "0",
    "small": 0,
    "flag": False,
    "ratio": 0.0,
    "color": "COLOR_UNSPECIFIED",
    "tags": [],
    "colors": [],
    "numbers": [],
    "display_name": "",
    "lines": [],
    "note": "",
    "children": [],
    "huge": "0",
    "page_size": 0,
}


@asynccontextmanager
async def facade_of(settings: Settings, *names: str) -> AsyncIterator[httpx.AsyncClient]:
    """The facade in front of an echo server of the named test services."""
    async with echo_server(*names) as address:
        backends = {service(name): Backend("testing", address) for name in names}
        async with facade_client(settings, backends) as client:
            yield client


@pytest.fixture(scope="module")
async def http(
    tmp_path_factory: pytest.TempPathFactory, signing_key: EllipticCurvePrivateKey, public_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    """One facade and echo server for the module: neither keeps anything from a request to the
    next, and stopping uvicorn takes 0.1 s."""
    folder = tmp_path_factory.mktemp("transcoding")
    settings = settings_for(folder, "smtp://127.0.0.1:1", signing_key, {}, public_url)  # sends no mail
    async with facade_of(settings, "EchoService") as client:
        yield client


async def bound(
    http: httpx.AsyncClient, method: str, url: str, rpc: str, *, status: int = 200, **kwargs: Any
) -> dict[str, Any]:
    """The request `rpc` received for this HTTP request (asserting it was `rpc` that got it)."""
    response = await http.request(method, url, **kwargs)
    assert response.status_code == status, response.text
    reply = response.json()
    assert reply["method"] == rpc
    return cast(dict[str, Any], reply["request"])


def with_zero(**fields: Any) -> dict[str, Any]:
    return {**ZERO, **fields}


def violated_field(response: httpx.Response) -> str:
    """The field the BadRequest detail of an error names."""
    (bad_request,) = [d for d in response.json()["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    (violation,) = bad_request["field_violations"]
    return str(violation["field"])


# --- path templates --------------------------------------------------------------------------------------


async def test_a_field_variable(http: httpx.AsyncClient) -> None:
    assert await bound(http, "GET", "/v1/items/abc", "GetItem") == with_zero(id="abc")


async def test_a_literal_segment_beats_a_variable(http: httpx.AsyncClient) -> None:
    assert await bound(http, "GET", "/v1/items/search", "SearchItems") == ZERO
    assert (await bound(http, "GET", "/v1/items/searc", "GetItem"))["id"] == "searc"
    # An encoded literal is the literal.
    assert await bound(http, "GET", "/v1/items/s%65arch", "SearchItems") == ZERO


async def test_nested_field_variables(http: httpx.AsyncClient) -> None:
    request = await bound(http, "GET", "/v1/nested/one/inner/two", "GetNested")
    assert request["nested"] == {"a": "one", "b": 0, "inner": {"c": "two"}}


async def test_a_variable_with_a_one_star_template(http: httpx.AsyncClient) -> None:
    assert (await bound(http, "GET", "/v2/items/42", "GetNamed"))["name"] == "items/42"
    assert (await http.get("/v2/things/42")).status_code == 404


async def test_a_variable_with_a_multi_segment_template(http: httpx.AsyncClient) -> None:
    request = await bound(http, "GET", "/v1/shelves/s1/books/b2", "GetBook")
    assert request["name"] == "shelves/s1/books/b2"
    assert (await http.get("/v1/shelves/s1/books")).status_code == 404


async def test_an_anonymous_star(http: httpx.AsyncClient) -> None:
    assert await bound(http, "GET", "/v1/wild/anything/items/7", "GetWild") == with_zero(id="7")


async def test_double_star_matches_zero_or_more_segments(http: httpx.AsyncClient) -> None:
    assert (await bound(http, "GET", "/v1/files/a/b/c.txt", "GetFile"))["name"] == "a/b/c.txt"
    assert (await bound(http, "GET", "/v1/files/a", "GetFile"))["name"] == "a"
    assert (await bound(http, "GET", "/v1/files", "GetFile"))["name"] == ""
    assert await bound(http, "GET", "/v1/raw/x/y/z", "GetAnything") == ZERO
    assert await bound(http, "GET", "/v1/raw", "GetAnything") == ZERO


async def test_verbs(http: httpx.AsyncClient) -> None:
    assert await bound(http, "POST", "/v1/items/7:cancel", "CancelItem", json={}) == with_zero(id="7")
    assert await bound(http, "POST", "/v1/items/7:undelete", "UndeleteItem") == with_zero(id="7")
    assert (await bound(http, "GET", "/v1/files/a/b:info", "GetFileInfo"))["name"] == "a/b"
    assert (await bound(http, "GET", "/v1/files/a/b", "GetFile"))["name"] == "a/b"
    # Without a verb of its own, a colon is data; an encoded colon is never a verb.
    assert (await bound(http, "GET", "/v1/items/7:cancel", "GetItem"))["id"] == "7:cancel"
    assert (await http.post("/v1/items/7%3Acancel", json={})).status_code == 405
    assert (await http.post("/v1/items/7:explode", json={})).status_code == 405


async def test_single_segment_variables_are_fully_decoded(http: httpx.AsyncClient) -> None:
    assert (await bound(http, "GET", "/v1/items/a%2Fb", "GetItem"))["id"] == "a/b"
    assert (await bound(http, "GET", "/v1/items/a%2fb", "GetItem"))["id"] == "a/b"
    assert (await bound(http, "GET", "/v1/items/%E2%82%AC%20%25%3F%23+", "GetItem"))["id"] == "€ %?#+"


async def test_multi_segment_variables_keep_encoded_slashes(http: httpx.AsyncClient) -> None:
    request = await bound(http, "GET", "/v1/files/dir%2Fwith%2fslash/f%20g", "GetFile")
    assert request["name"] == "dir%2Fwith%2fslash/f g"
    # {name=items/*} is two segments: "a%2Fb" stays one segment, its slash encoded.
    assert (await bound(http, "GET", "/v2/items/a%2Fb", "GetNamed"))["name"] == "items/a%2Fb"
    request = await bound(http, "GET", "/v1/shelves/s%2F1/books/b%3A2", "GetBook")
    assert request["name"] == "shelves/s%2F1/books/b:2"


async def test_path_values_of_other_types(http: httpx.AsyncClient) -> None:
    request = await bound(http, "POST", "/v1/counts/-3/true/COLOR_GREEN", "SetCount")
    assert request == with_zero(count=-3, flag=True, color="COLOR_GREEN")
    request = await bound(http, "POST", "/v1/counts/3/false/1", "SetCount")
    assert request == with_zero(count=3, flag=False, color="COLOR_RED")


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/counts/x/true/1", "count"),
        ("/v1/counts/1.5/true/1", "count"),
        ("/v1/counts/99999999999/true/1", "count"),
        ("/v1/counts/1/yes/1", "flag"),
        ("/v1/counts/1/true/COLOR_BLUE", "color"),
    ],
)
async def test_path_values_of_the_wrong_type(http: httpx.AsyncClient, path: str, field: str) -> None:
    response = await http.post(path)
    assert response.status_code == 400, response.text
    assert violated_field(response) == field


# --- query parameters ------------------------------------------------------------------------------------


async def test_every_scalar_type_from_the_query(http: httpx.AsyncClient) -> None:
    query = (
        "name=n&count=-7&big=9007199254740993&small=4294967295&flag=true&ratio=2.5&color=COLOR_RED"
        "&huge=18446744073709551615&note=a%20b%26c%3Dd"
    )
    request = await bound(http, "GET", f"/v1/items/x?{query}", "GetItem")
    assert request == with_zero(
        id="x",
        name="n",
        count=-7,
        big="9007199254740993",
        small=4294967295,
        flag=True,
        ratio=2.5,
        color="COLOR_RED",
        huge="18446744073709551615",
        note="a b&c=d",
    )


async def test_nested_and_repeated_query_parameters(http: httpx.AsyncClient) -> None:
    query = "nested.a=x&nested.b=2&nested.inner.c=y&tags=a&tags=b&tags=a&colors=COLOR_GREEN&colors=1"
    query += "&numbers=1&numbers=-9223372036854775808"
    request = await bound(http, "GET", f"/v1/items/x?{query}", "GetItem")
    assert request["nested"] == {"a": "x", "b": 2, "inner": {"c": "y"}}
    assert request["tags"] == ["a", "b", "a"]
    assert request["colors"] == ["COLOR_GREEN", "COLOR_RED"]
    assert request["numbers"] == ["1", "-9223372036854775808"]


async def test_query_names_in_either_form(http: httpx.AsyncClient) -> None:
    request = await bound(http, "GET", "/v1/items/x?displayName=d&pageSize=3", "GetItem")
    assert request == with_zero(id="x", display_name="d", page_size=3)
    request = await bound(http, "GET", "/v1/items/x?display_name=d&page_size=3", "GetItem")
    assert request == with_zero(id="x", display_name="d", page_size=3)


async def test_enum_numbers_in_the_query(http: httpx.AsyncClient) -> None:
    assert (await bound(http, "GET", "/v1/items/x?color=2", "GetItem"))["color"] == "COLOR_GREEN"


async def test_booleans_and_empty_values(http: httpx.AsyncClient) -> None:
    assert (await bound(http, "GET", "/v1/items/x?flag=false", "GetItem"))["flag"] is False
    assert (await bound(http, "GET", "/v1/items/x?name=", "GetItem"))["name"] == ""
    assert (await bound(http, "GET", "/v1/items/x?&&", "GetItem")) == with_zero(id="x")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("count=abc", "count"),
        ("count=1.5", "count"),
        ("count=1e3", "count"),
        ("count=", "count"),
        ("count=2147483648", "count"),
        ("big=9223372036854775808", "big"),
        ("small=-1", "small"),
        ("huge=-1", "huge"),
        ("flag=yes", "flag"),
        ("flag=1", "flag"),
        ("ratio=abc", "ratio"),
        ("color=COLOR_BLUE", "color"),
        ("colors=COLOR_RED&colors=nope", "colors"),
        ("numbers=1&numbers=x", "numbers"),
        ("nested.b=x", "nested.b"),
        ("pageSize=x", "page_size"),
    ],
)
async def test_bad_numbers_and_values_in_the_query(http: httpx.AsyncClient, query: str, field: str) -> None:
    response = await http.get(f"/v1/items/x?{query}")
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == 3
    assert violated_field(response) == field, body


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("nope=1", "nope"),
        ("nested.nope=1", "nested.nope"),
        ("nested=1", "nested"),  # a message, not a leaf
        ("children.a=1", "children.a"),  # a repeated message is not a query parameter
        ("id=y", "id"),  # bound by the path
        ("count=1&count=2", "count"),  # not repeated
        ("count=1&count=1", "count"),
        ("page_size=1&pageSize=2", "page_size"),  # the same field in both forms
    ],
)
async def test_query_parameters_that_cannot_be_bound(http: httpx.AsyncClient, query: str, named: str) -> None:
    response = await http.get(f"/v1/items/x?{query}")
    assert response.status_code == 400, response.text
    assert violated_field(response) == named


async def test_no_query_parameters_when_the_body_is_star(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/items?name=n", json={})
    assert response.status_code == 400
    assert "'name'" in response.json()["message"]
    # An empty query string has no parameters.
    assert (await bound(http, "POST", "/v1/items?", "CreateItem", status=201, json={})) == ZERO
    assert (await bound(http, "POST", "/v1/items?&", "CreateItem", status=201, json={})) == ZERO


async def test_query_beside_a_field_body(http: httpx.AsyncClient) -> None:
    request = await bound(http, "PATCH", "/v1/items/x?name=n", "UpdateItem", json={"a": "z"})
    assert request == with_zero(id="x", name="n", payload={"a": "z", "b": 0})
    response = await http.patch("/v1/items/x?payload.a=q", json={"a": "z"})
    assert response.status_code == 400
    assert "payload.a" in response.json()["message"]


# --- bodies ----------------------------------------------------------------------------------------------


async def test_body_star_binds_every_field_not_in_the_path(http: httpx.AsyncClient) -> None:
    body = {
        "id": "7",
        "display_name": "d",
        "nested": {"a": "x", "inner": {"c": "y"}},
        "tags": ["a"],
        "color": "COLOR_GREEN",
        "big": 5,
        "children": [{"a": "c1"}, {"b": 2}],
    }
    request = await bound(http, "POST", "/v1/items", "CreateItem", status=201, json=body)
    assert request == with_zero(
        id="7",
        display_name="d",
        nested={"a": "x", "b": 0, "inner": {"c": "y"}},
        tags=["a"],
        color="COLOR_GREEN",
        big="5",
        children=[{"a": "c1", "b": 0}, {"a": "", "b": 2}],
    )


async def test_body_star_beside_path_variables(http: httpx.AsyncClient) -> None:
    request = await bound(http, "POST", "/v1/items/7:cancel", "CancelItem", json={"note": "late"})
    assert request == with_zero(id="7", note="late")
    # The path wins over a body that names the same field, in either form.
    request = await bound(http, "PUT", "/v1/things/7", "PutAnything", json={"id": "8", "name": "no"})
    assert (request["id"], request["name"]) == ("7", "things")


async def test_body_field_names_in_either_form(http: httpx.AsyncClient) -> None:
    body = {"displayName": "d", "pageSize": 3, "nested": {"inner": {"c": "y"}}}
    request = await bound(http, "POST", "/v1/items", "CreateItem", status=201, json=body)
    assert request == with_zero(display_name="d", page_size=3, nested={"a": "", "b": 0, "inner": {"c": "y"}})


async def test_an_empty_body_is_an_empty_message(http: httpx.AsyncClient) -> None:
    assert await bound(http, "POST", "/v1/items", "CreateItem", status=201) == ZERO
    request = await bound(http, "PATCH", "/v1/items/x", "UpdateItem", content=b"")
    assert request == with_zero(id="x")


async def test_a_message_field_body(http: httpx.AsyncClient) -> None:
    request = await bound(http, "PATCH", "/v1/items/x", "UpdateItem", json={"a": "z", "b": 3})
    assert request == with_zero(id="x", payload={"a": "z", "b": 3})


async def test_a_repeated_field_body(http: httpx.AsyncClient) -> None:
    request = await bound(http, "PUT", "/v1/items/x/lines", "SetLines", json=["one", "two"])
    assert request == with_zero(id="x", lines=["one", "two"])
    assert (await bound(http, "PUT", "/v1/items/x/lines", "SetLines", json=[]))["lines"] == []


async def test_a_scalar_field_body(http: httpx.AsyncClient) -> None:
    request = await bound(http, "PUT", "/v1/items/x/note", "SetNote", json="hello")
    assert request == with_zero(id="x", note="hello")


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/v1/items/x/lines", "one"),
        ("/v1/items/x/lines", [1]),
        ("/v1/items/x/lines", {"a": 1}),
        ("/v1/items/x/note", 5),
        ("/v1/items/x/note", ["a"]),
        ("/v1/items/x/note", {"a": 1}),
    ],
)
async def test_field_bodies_of_the_wrong_type(http: httpx.AsyncClient, url: str, body: object) -> None:
    response = await http.put(url, json=body)
    assert response.status_code == 400, response.text
    assert violated_field(response) == url.rsplit("/", 1)[1]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"count": "x"}, "count"),
        ({"pageSize": "x"}, "page_size"),  # named as the contract spells it, whatever the client wrote
        ({"nested": {"inner": {"c": 5}}}, "nested.inner.c"),
        ({"nested": "x"}, "nested"),
        ({"nested": ["a"]}, "nested"),
        ({"nested": [1]}, "nested"),
        ({"nested": 5}, "nested"),
        ({"children": [{"a": 1}]}, "children.a"),
        ({"children": [{"zz": 1}]}, "children.zz"),
        ({"children": {"a": "x"}}, "children"),
        ({"children": "ab"}, "children"),
        ({"children": ["a"]}, "children"),
        ({"tags": "x"}, "tags"),
        ({"color": "BLUE"}, "color"),
        ({"big": "1.5e400"}, "big"),
        ({"count": 2**31}, "count"),
        ({"nope": 1}, "nope"),
        ({"nested": {"nope": 1}}, "nested.nope"),
        ({"displayName": {"x": 1}}, "display_name"),
    ],
)
async def test_body_fields_of_the_wrong_type_are_named(
    http: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await http.post("/v1/items", json=body)
    assert response.status_code == 400, response.text
    assert violated_field(response) == field


async def test_no_body_where_the_rule_has_none(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/items/7:undelete", json={"id": "8"})
    assert response.status_code == 400
    assert "takes no request body" in response.json()["message"]


# --- responses -------------------------------------------------------------------------------------------


async def test_the_whole_response_in_snake_case_with_zero_values(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/items/x")
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"method": "GetItem", "request": with_zero(id="x")}


async def test_response_body_as_a_message_field(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/items/x/request?big=12")
    assert response.status_code == 200
    assert response.json() == with_zero(id="x", big="12")


async def test_response_body_as_a_scalar_field(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/items/x/method")
    assert response.status_code == 200
    assert response.json() == "GetMethodName"


async def test_rest_conventions_from_the_contract(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/items", json={})
    assert response.status_code == 201
    assert response.headers["location"] == "/v1/items/CreateItem"
    response = await http.delete("/v1/items/x")
    assert response.status_code == 204
    assert response.content == b""


# --- additional bindings and custom methods --------------------------------------------------------------


async def test_additional_bindings(http: httpx.AsyncClient) -> None:
    assert await bound(http, "GET", "/v1/items?name=n", "ListItems") == with_zero(name="n")
    assert await bound(http, "GET", "/v1/shelves/s1/items", "ListItems") == with_zero(name="s1")
    request = await bound(http, "POST", "/v1/items:list", "ListItems", json={"name": "b", "tags": ["t"]})
    assert request == with_zero(name="b", tags=["t"])


async def test_a_custom_method(http: httpx.AsyncClient) -> None:
    assert await bound(http, "OPTIONS", "/v1/items/x?name=n", "OptionsItem") == with_zero(id="x", name="n")


# --- routing errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/", "/v1", "/v1/items/x/y/z", "/v3/items/x", "/v1/items/", "/v1/items//x", "/v1/nested/a/inner", "/x"],
)
async def test_unknown_routes_are_404(http: httpx.AsyncClient, path: str) -> None:
    response = await http.get(path)
    assert response.status_code == 404, response.text
    assert response.json() == {
        "code": 5,
        "message": f"no route for GET {path}",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "NO_ROUTE",
                "domain": "invmesh",
                "metadata": {},
            }
        ],
    }


async def test_a_wrong_method_lists_every_method_of_every_matching_template(http: httpx.AsyncClient) -> None:
    # /v1/items/{id} has GET, PATCH, DELETE and OPTIONS; /v1/{name}/{id} has PUT.
    response = await http.post("/v1/items/x", json={})
    assert response.status_code == 405
    assert sorted(response.headers["allow"].split(", ")) == ["DELETE", "GET", "OPTIONS", "PATCH", "PUT"]
    body = response.json()
    assert body["code"] == 12
    assert [d["reason"] for d in body["details"]] == ["METHOD_NOT_ALLOWED"]
    # /v1/items/search is a literal (GET) but /v1/items/{id} and /v1/{name}/{id} match it too.
    response = await http.post("/v1/items/search", json={})
    assert sorted(response.headers["allow"].split(", ")) == ["DELETE", "GET", "OPTIONS", "PATCH", "PUT"]
    response = await http.delete("/v1/items")
    assert response.status_code == 405
    assert sorted(response.headers["allow"].split(", ")) == ["GET", "POST"]
    response = await http.get("/v1/items/x:cancel/more")
    assert response.status_code == 404


async def test_the_method_picks_among_matching_templates(http: httpx.AsyncClient) -> None:
    # DELETE /v1/items/search: the literal template has no DELETE, the variable one has.
    response = await http.delete("/v1/items/search")
    assert response.status_code == 204
    assert (await bound(http, "PUT", "/v1/items/search", "PutAnything", json={}))["id"] == "search"


# --- rules that cannot be served fail at startup ---------------------------------------------------------


async def test_two_rpcs_on_the_same_route_fail_at_startup(settings: Settings) -> None:
    backends = {
        service("EchoService"): Backend("testing", "127.0.0.1:1"),
        service("ClashingService"): Backend("clashing", "127.0.0.1:1"),
    }
    with pytest.raises(RuleError, match=r"GET /v1/items/\{name\} is bound twice.*GetItem.*Clash"):
        create_app(settings, backends)


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("SameRpcTwiceService", "bound twice"),
        ("BodyOnGetService", "GET binding cannot take a body"),
        ("MessagePathService", "singular scalar"),
        ("RepeatedPathService", "singular scalar"),
        ("UnknownPathFieldService", "does not have"),
        ("UnknownBodyService", "top-level request field"),
        ("UnknownResponseBodyService", "top-level response field"),
        ("NestedBindingsService", "may not nest"),
        ("BadTemplateService", "must be the last segment"),
        ("AnyMethodService", "custom kind '\\*' is not one of GET"),
        ("ExtensionMethodService", "custom kind 'PURGE' is not one of GET"),
        ("ClientStreamService", "a client-streaming RPC has no REST binding"),
        ("UnaryRestStreamService", "rest_stream is for a server-streaming RPC"),
        ("MessageEventIdService", "event_id must name a singular scalar field of the event"),
        ("UnknownEventTypeService", "event_type must name a oneof of the event"),
        ("SingularEventsService", "events must name a repeated message field of the response"),
        ("ScalarEventsService", "events must name a repeated message field of the response"),
        ("ElementEventIdService", "event_id must name a singular scalar field of the event"),
        ("EventsAndResponseBodyService", "rest_stream.events, or response_body: not both"),
        ("RepeatedResumeService", "resume_from must name a singular scalar request field"),
        ("ResumeInPathService", "resume_from 'id' is bound by the path"),
    ],
)
async def test_rules_that_cannot_be_served_fail_at_startup(settings: Settings, name: str, says: str) -> None:
    with pytest.raises(RuleError, match=says):
        create_app(settings, {service(name): Backend("testing", "127.0.0.1:1")})


# --- the examples of google/api/http.proto ---------------------------------------------------------------


async def test_spec_get_message_by_name(settings: Settings) -> None:
    async with facade_of(settings, "MessagingByName") as http:
        response = await http.get("/v1/messages/123456")
        assert response.json() == {"name": "messages/123456"}


async def test_spec_query_parameters(settings: Settings) -> None:
    async with facade_of(settings, "Messaging") as http:
        response = await http.get("/v1/messages/123456?revision=2&sub.subfield=foo")
        assert response.status_code == 200
        assert response.json() == {
            "message_id": "123456",
            "revision": "2",
            "sub": {"subfield": "foo"},
            "user_id": "",
        }


async def test_spec_additional_bindings(settings: Settings) -> None:
    async with facade_of(settings, "Messaging") as http:
        first = (await http.get("/v1/messages/123456")).json()
        assert (first["message_id"], first["user_id"]) == ("123456", "")
        second = (await http.get("/v1/users/me/messages/123456")).json()
        assert (second["message_id"], second["user_id"]) == ("123456", "me")


async def test_spec_update_with_a_field_body(settings: Settings) -> None:
    async with facade_of(settings, "Messaging") as http:
        response = await http.patch("/v1/messages/123456", json={"text": "Hi!"})
        assert response.json() == {"message_id": "123456", "message": {"text": "Hi!"}}


async def test_spec_update_with_the_whole_body(settings: Settings) -> None:
    async with facade_of(settings, "MessagingWholeBody") as http:
        response = await http.patch("/v1/messages/123456", json={"text": "Hi!"})
        assert response.json() == {"message_id": "123456", "text": "Hi!"}


# --- update masks (AIP-134) ------------------------------------------------------------------------------


async def test_a_patch_without_an_update_mask_gets_the_fields_its_body_sets(settings: Settings) -> None:
    async with facade_of(settings, "MaskedUpdates") as http:
        body = {"displayName": "Lamp", "nested": {"inner": {"c": "x"}, "b": 2}, "tags": ["a"], "payload": {}}
        patched = await http.patch("/v1/masked/7", json=body)
        assert patched.status_code == 200, patched.text
        # The path's item.id is not the client's to update: it only says which item.
        assert patched.json()["update_mask"] == "displayName,nested.inner.c,nested.b,tags,payload"
        assert patched.json()["item"]["id"] == "7"
        nothing = await http.patch("/v1/masked/7", json={})
        assert nothing.json()["update_mask"] == ""  # set, and empty: nothing to update
        replaced = await http.put("/v1/masked/7", json=body)
        assert "update_mask" not in replaced.json()  # a PUT replaces: no mask


async def test_an_update_mask_from_the_query_wins_in_either_name_form(settings: Settings) -> None:
    async with facade_of(settings, "MaskedUpdates") as http:
        patched = await http.patch(
            "/v1/masked/7", params={"update_mask": "display_name,nested.inner.c"}, json={"name": "x"}
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["update_mask"] == "displayName,nested.inner.c"
        camel = await http.patch("/v1/masked/7", params={"updateMask": "displayName"}, json={})
        assert camel.json()["update_mask"] == "displayName"
