"""Every documented route, end to end over HTTP through the facade to the real services."""

from __future__ import annotations

import re
import uuid

import httpx

from tests.conftest import SmtpServer
from tests.facade.conftest import Web


async def test_a_new_user_from_registration_to_a_deleted_product(web: Web, smtp: SmtpServer) -> None:
    """`web.staff` is the mesh's admin: it promotes the newcomer and deletes the product."""
    http = web.http
    registered = await http.post(
        "/users/register",
        json={"email": "newcomer@example.com", "password": "a long password", "name": "New"},
    )
    assert registered.status_code == 202, registered.text
    user = registered.json()
    assert user["email"] == "newcomer@example.com" and user["email_verified"] is False
    assert user["name"] == "New"

    # A second mail on request replaces the first; its link, followed as it is, verifies the address.
    resent = await http.post("/users/verify", json={"email": "newcomer@example.com"})
    assert resent.status_code == 200, resent.text
    (_, mail) = await smtp.inbox.mail_to("newcomer@example.com", count=2)
    body = mail.get_body(("plain",))
    assert body is not None
    link = re.search(r"https?://\S+", body.get_content())
    assert link is not None
    verified = await http.get(link.group(0))
    assert verified.status_code == 200, verified.text

    login = await http.post(
        "/users/login", json={"email": "newcomer@example.com", "password": "a long password"}
    )
    assert login.status_code == 200, login.text
    tokens = login.json()
    assert tokens["token_type"].lower() == "bearer" and tokens["expires_in"] > 0
    me = {"authorization": f"Bearer {tokens['access_token']}"}
    profile = await http.get("/users/me", headers=me)
    assert profile.json()["email_verified"] is True
    keys = await http.get("/.well-known/jwks.json")
    assert keys.status_code == 200 and keys.json()["keys"][0]["kty"] == "EC"

    # A new account reads but cannot write, until an admin makes it staff; the refreshed
    # token carries the role.
    lamp = {"sku": "LAMP-1", "name": "Desk lamp", "description": "LED", "price": "24.90", "currency": "EUR"}
    refused = await http.post("/products", headers=me, json=lamp)
    assert refused.status_code == 403 and _reason(refused) == "ROLE_REQUIRED"
    assert profile.json()["roles"] == ["viewer"]
    promoted = await http.post(
        "/users:setRole", headers=web.staff, json={"email": "newcomer@example.com", "role": "staff"}
    )
    assert promoted.status_code == 200 and promoted.json()["roles"] == ["staff"], promoted.text
    refreshed = await http.post("/users/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200 and refreshed.json()["access_token"]
    me = {"authorization": f"Bearer {refreshed.json()['access_token']}"}

    created = await http.post("/products", headers=me, json=lamp)
    assert created.status_code == 201, created.text
    product = created.json()
    assert created.headers["location"] == f"/products/{product['id']}"
    assert product["stock"] == 0 and product["price"] == "24.90"

    stock_in = await http.post(
        "/inventory",
        headers=me,
        json={"product_id": product["id"], "type": "IN", "quantity": 10, "request_id": str(uuid.uuid4())},
    )
    assert stock_in.status_code == 201, stock_in.text
    assert stock_in.json()["item"]["quantity"] == 10
    assert stock_in.json()["movement"]["type"] == "IN"
    stock_out = await http.post(
        "/inventory", headers=me, json={"productId": product["id"], "type": "OUT", "quantity": 3}
    )
    assert stock_out.json()["item"]["quantity"] == 7
    too_many = await http.post(
        "/inventory", headers=me, json={"product_id": product["id"], "type": "OUT", "quantity": 8}
    )
    assert too_many.status_code == 400
    assert _reason(too_many) == "INSUFFICIENT_STOCK"

    counted = await http.put(f"/inventory/{product['id']}", headers=me, json={"quantity": 4})
    assert counted.status_code == 200, counted.text
    assert counted.json()["item"]["quantity"] == 4
    item = await http.get(f"/inventory/{product['id']}", headers=me)
    assert item.json() == {**item.json(), "product_id": product["id"], "quantity": 4}
    movements = await http.get(f"/inventory/{product['id']}/movements", headers=me)
    assert [m["type"] for m in movements.json()["movements"]] == ["ADJUSTMENT", "OUT", "IN"]
    stocked = await http.get("/inventory", headers=me)
    assert product["id"] in {i["product_id"] for i in stocked.json()["items"]}

    renamed = await http.put(
        f"/products/{product['id']}",
        headers=me,
        json={"sku": "LAMP-1", "name": "Desk lamp, brass", "price": "29.00", "currency": "EUR"},
    )
    assert renamed.status_code == 200, renamed.text
    assert (await http.get(f"/products/{product['id']}", headers=me)).json()["name"] == "Desk lamp, brass"

    for n in range(4):
        extra = {"sku": f"EXTRA-{n}", "name": f"Extra {n}", "price": "1.00"}
        assert (await http.post("/products", headers=me, json=extra)).status_code == 201
    listed, token = [], ""
    while True:
        page = await http.get("/products", headers=me, params={"page_size": 2, "page_token": token})
        assert page.status_code == 200, page.text
        assert len(page.json()["products"]) <= 2
        listed += [p["id"] for p in page.json()["products"]]
        token = page.json()["next_page_token"]
        if not token:
            break
    assert len(listed) == len(set(listed)) == 5 and product["id"] in listed
    searched = await http.get("/products", headers=me, params={"q": "brass"})
    assert [p["id"] for p in searched.json()["products"]] == [product["id"]]

    not_admin = await http.delete(f"/products/{product['id']}", headers=me)
    assert not_admin.status_code == 403 and _reason(not_admin) == "ROLE_REQUIRED"
    deleted = await http.delete(f"/products/{product['id']}", headers=web.staff)  # an admin
    assert deleted.status_code == 204 and deleted.content == b""
    gone = await http.get(f"/products/{product['id']}", headers=me)
    assert gone.status_code == 404 and _reason(gone) == "PRODUCT_NOT_FOUND"
    inventory_gone = await http.get(f"/inventory/{product['id']}", headers=me)
    assert inventory_gone.status_code == 404


async def test_errors_share_one_shape_and_status_table(web: Web) -> None:
    anonymous = await web.http.get("/products")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer ")
    assert set(anonymous.json()) == {"code", "message", "details"} and anonymous.json()["code"] == 16

    unverified = await web.http.post(
        "/products", headers=web.visitor, json={"sku": "X", "name": "X", "price": "1.00"}
    )
    assert unverified.status_code == 403 and _reason(unverified) == "EMAIL_NOT_VERIFIED"

    bad_price = await web.http.post(
        "/products", headers=web.staff, json={"sku": "X", "name": "X", "price": "-1"}
    )
    assert bad_price.status_code == 400
    violations = [d for d in bad_price.json()["details"] if d["@type"].endswith("BadRequest")]
    assert violations and violations[0]["field_violations"][0]["field"]

    await web.http.post("/products", headers=web.staff, json={"sku": "DUP", "name": "A", "price": "1"})
    duplicate = await web.http.post(
        "/products", headers=web.staff, json={"sku": "DUP", "name": "B", "price": "1"}
    )
    assert duplicate.status_code == 409

    missing = await web.http.get(f"/products/{uuid.uuid4()}", headers=web.staff)
    assert missing.status_code == 404 and missing.json()["code"] == 5


async def test_request_ids_pass_through_to_the_services_and_back(web: Web) -> None:
    mine = await web.http.get("/products", headers={**web.staff, "x-request-id": "trace-42"})
    assert mine.headers["x-request-id"] == "trace-42"
    made = await web.http.get("/products", headers=web.staff)
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    hostile = await web.http.get("/products", headers={**web.staff, "x-request-id": "a b\tc" * 50})
    assert hostile.headers["x-request-id"] != "a b\tc" * 50


async def test_a_deadline_too_short_for_the_call_is_a_504(web: Web) -> None:
    rushed = await web.http.get("/products", headers={**web.staff, "grpc-timeout": "1u"})
    assert rushed.status_code == 504
    assert rushed.json()["code"] == 4 and "in time" in rushed.json()["message"]
    malformed = await web.http.get("/products", headers={**web.staff, "grpc-timeout": "soon"})
    assert malformed.status_code == 400


async def test_cors_is_off_unless_origins_are_configured(web: Web) -> None:
    preflight = {"origin": "https://shop.example", "access-control-request-method": "POST"}
    refused = await web.http.options("/products", headers=preflight)
    assert "access-control-allow-origin" not in refused.headers

    from facade.app import create_app
    from tests.facade.conftest import serving

    settings = web.mesh.settings.model_copy(update={"facade_cors_origins": ["https://shop.example"]})
    async with serving(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as http:
        allowed = await http.options("/products", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
        simple = await http.get("/products", headers={**web.staff, "origin": "https://shop.example"})
        assert simple.headers["access-control-allow-origin"] == "https://shop.example"
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()


def _reason(response: httpx.Response) -> str | None:
    infos = [d for d in response.json()["details"] if d["@type"].endswith("ErrorInfo")]
    return infos[0]["reason"] if infos else None


async def test_a_trailing_slash_is_another_route(web: Web) -> None:
    for path in ("/openapi.json/", "/healthz/", "/products/"):
        answer = await web.http.get(path, headers=web.staff)
        assert answer.status_code == 404, path
        assert answer.json()["code"] == 5
