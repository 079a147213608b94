"""Locations, transfers and reservations over REST (issue 16): a reservation's life as
docs/api.md shows it in curl, and the new routes' strict input: unknown fields named, bad and
unknown ids 400 or 404, never a 5xx."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest

from inventory.models import DEFAULT_LOCATION_ID
from tests.facade.conftest import Web


def reason(response: httpx.Response) -> str:
    return str(response.json()["details"][0]["reason"])


def violated(response: httpx.Response) -> set[str]:
    return {v["field"] for d in response.json()["details"] for v in d.get("field_violations", [])}


async def product_with_stock(web: Web, sku: str, quantity: int) -> str:
    created = await web.http.post(
        "/products", headers=web.staff, json={"sku": sku, "name": sku, "price": "5"}
    )
    assert created.status_code == 201, created.text
    pid = str(created.json()["id"])
    moved = await web.http.post(
        "/inventory", headers=web.staff, json={"product_id": pid, "type": "IN", "quantity": quantity}
    )
    assert moved.status_code == 201, moved.text
    return pid


async def test_a_reservations_life_in_rest(web: Web) -> None:
    http, staff = web.http, web.staff
    pid = await product_with_stock(web, "LIFE-1", 10)
    site = await http.post("/locations", headers=staff, json={"code": "WH-1", "name": "North warehouse"})
    assert site.status_code == 201, site.text
    assert site.headers["location"] == f"/locations/{site.json()['id']}"
    wh1 = site.json()["id"]

    moved = await http.post(
        "/inventory/transfers",
        headers=staff,
        json={
            "product_id": pid,
            "from_location_id": DEFAULT_LOCATION_ID,
            "to_location_id": wh1,
            "quantity": 4,
            "request_id": "tr-1",
        },
    )
    assert moved.status_code == 201, moved.text
    assert moved.json()["outgoing"]["transfer_id"] == moved.json()["incoming"]["transfer_id"]

    held = await http.post(
        "/reservations",
        headers=staff,
        json={"product_id": pid, "location_id": wh1, "quantity": 3, "reference": "cart-7"},
    )
    assert held.status_code == 201, held.text
    reservation = held.json()
    assert held.headers["location"] == f"/reservations/{reservation['id']}"
    assert (reservation["state"], reservation["quantity"], reservation["location_id"]) == ("ACTIVE", 3, wh1)

    stock = (await http.get(f"/inventory/{pid}", headers=staff)).json()
    assert (stock["quantity"], stock["reserved"], stock["available"]) == (10, 3, 7)
    assert {lv["location_id"]: lv["available"] for lv in stock["locations"]} == {
        DEFAULT_LOCATION_ID: 6,
        wh1: 1,
    }
    there = (await http.get(f"/inventory?location_id={wh1}", headers=staff)).json()["items"]
    assert [(i["product_id"], len(i["locations"])) for i in there] == [(pid, 1)]

    too_many = await http.post(
        "/reservations", headers=staff, json={"product_id": pid, "location_id": wh1, "quantity": 2}
    )
    assert (too_many.status_code, reason(too_many)) == (400, "INSUFFICIENT_STOCK")

    confirmed = await http.post(f"/reservations/{reservation['id']}:confirm", headers=staff, json={})
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["reservation"]["state"] == "CONFIRMED"
    assert confirmed.json()["movement"]["reservation_id"] == reservation["id"]
    got = await http.get(f"/reservations/{reservation['id']}", headers=staff)
    assert got.json()["state"] == "CONFIRMED"

    other = (await http.post("/reservations", headers=staff, json={"product_id": pid, "quantity": 1})).json()
    released = await http.post(f"/reservations/{other['id']}:release", headers=staff)
    assert (released.status_code, released.json()["state"]) == (200, "RELEASED")
    late = await http.post(f"/reservations/{other['id']}:confirm", headers=staff, json={})
    assert (late.status_code, reason(late)) == (400, "RESERVATION_RELEASED")

    listed = await http.get(f"/reservations?product_id={pid}&state=RELEASED", headers=staff)
    assert [r["id"] for r in listed.json()["reservations"]] == [other["id"]]
    full = await http.delete(f"/locations/{wh1}", headers=staff)
    assert (full.status_code, reason(full)) == (400, "LOCATION_NOT_EMPTY")
    renamed = await http.patch(f"/locations/{wh1}", headers=staff, json={"name": "North"})
    assert (renamed.status_code, renamed.json()["code"], renamed.json()["name"]) == (200, "WH-1", "North")
    locations = await http.get("/locations", headers=staff)
    assert [loc["code"] for loc in locations.json()["locations"]] == ["DEFAULT", "WH-1"]

    viewer = await http.post("/reservations", headers=web.visitor, json={"product_id": pid, "quantity": 1})
    assert viewer.status_code == 403


async def test_the_ledger_takes_its_filters_from_the_query(web: Web) -> None:
    http, staff = web.http, web.staff
    pid = await product_with_stock(web, "LEDGER-1", 10)
    sold = await http.post(
        "/inventory", headers=staff, json={"product_id": pid, "type": "OUT", "quantity": 2}
    )
    assert sold.status_code == 201, sold.text
    exit_ = sold.json()["movement"]
    assert exit_["actor_email"] == "staff@example.com"
    path = f"/inventory/{pid}/movements"
    since = quote(exit_["created_at"])
    for query in ("type=OUT", f"startTime={since}", f"start_time={since}&location_id={DEFAULT_LOCATION_ID}"):
        listed = await http.get(f"{path}?{query}", headers=staff)
        assert listed.status_code == 200, listed.text
        assert [m["id"] for m in listed.json()["movements"]] == [exit_["id"]], query
    assert (await http.get(f"{path}?endTime={since}", headers=staff)).json()["movements"][0]["type"] == "IN"
    backwards = await http.get(f"{path}?startTime={since}&endTime=2000-01-01T00:00:00Z", headers=staff)
    assert (backwards.status_code, violated(backwards)) == (400, {"end_time"})
    garbled = await http.get(f"{path}?startTime=yesterday", headers=staff)
    assert (garbled.status_code, violated(garbled)) == (400, {"start_time"})
    nowhere = await http.get(f"{path}?location_id=no-such-location", headers=staff)
    assert (nowhere.status_code, reason(nowhere)) == (404, "LOCATION_NOT_FOUND")


ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/locations", {"code": "U-1", "name": "U"}),
    ("PATCH", "/locations/{location}", {"name": "U"}),
    ("POST", "/inventory/transfers", {"product_id": "{product}", "quantity": 1}),
    ("POST", "/reservations", {"product_id": "{product}", "quantity": 1}),
    ("POST", "/reservations/{reservation}:confirm", {}),
    ("POST", "/reservations/{reservation}:release", {}),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_an_unknown_field_on_a_new_route_is_refused_naming_it(
    web: Web, method: str, path: str, body: dict[str, Any] | None
) -> None:
    filled = {"{location}": DEFAULT_LOCATION_ID, "{product}": "p-1", "{reservation}": "r-1"}
    for placeholder, value in filled.items():
        path = path.replace(placeholder, value)
    sent = {k: filled.get(v, v) if isinstance(v, str) else v for k, v in (body or {}).items()}
    refused = await web.http.request(method, path, headers=web.staff, json={**sent, "warehouse": "x"})
    assert refused.status_code == 400, refused.text
    assert reason(refused) == "UNKNOWN_FIELD" and "warehouse" in refused.json()["message"]


@pytest.mark.parametrize(
    "path", ["/locations?nope=1", "/reservations?nope=1", "/inventory?location=1", "/reservations/r-1?nope=1"]
)
async def test_an_unknown_query_parameter_on_a_new_route_is_refused_naming_it(web: Web, path: str) -> None:
    refused = await web.http.get(path, headers=web.staff)
    assert (refused.status_code, reason(refused)) == (400, "UNKNOWN_FIELD"), refused.text


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/locations/no-such-location", 404),
        ("PATCH", "/locations/no-such-location", 404),
        ("DELETE", "/locations/no-such-location", 404),
        ("GET", "/locations/%E2%82%AC%20x", 404),
        ("GET", "/reservations/no-such", 404),
        ("POST", "/reservations/no-such:confirm", 404),
        ("POST", "/reservations/no-such:release", 404),
        ("GET", "/reservations/%00", 400),
        ("GET", "/reservations?state=SOLD", 400),
        ("GET", "/reservations?page_size=-1", 400),
        ("GET", "/locations?page_token=garbage", 400),
        ("GET", "/inventory?location_id=no-such-location", 404),
    ],
)
async def test_bad_and_unknown_ids_on_the_new_routes_are_400_or_404(
    web: Web, method: str, path: str, status: int
) -> None:
    body = {"name": "N"} if method == "PATCH" else ({} if method == "POST" else None)
    answered = await web.http.request(method, path, headers=web.staff, json=body)
    assert answered.status_code == status, answered.text


async def test_bad_bodies_on_the_new_routes_name_every_bad_field(web: Web) -> None:
    http, staff = web.http, web.staff
    location = await http.post("/locations", headers=staff, json={"code": "has space", "name": ""})
    assert (location.status_code, violated(location)) == (400, {"code", "name"})
    transfer = await http.post(
        "/inventory/transfers", headers=staff, json={"product_id": "p", "quantity": 0, "reason": "x" * 501}
    )
    assert transfer.status_code == 400
    assert violated(transfer) == {"from_location_id", "to_location_id", "quantity", "reason"}
    reservation = await http.post(
        "/reservations", headers=staff, json={"product_id": "p", "quantity": 1, "ttl_seconds": 604801}
    )
    assert (reservation.status_code, violated(reservation)) == (400, {"ttl_seconds"})
