"""Reorder points and low stock over REST: PUT /inventory/{product_id} sets a reorder point with
a count or alone, GET /inventory/{product_id} flags each low location and the item, and
GET /inventory?low_stock=true pages through the low items."""

from __future__ import annotations

import pytest

from inventory.models import DEFAULT_LOCATION_ID
from tests.conftest import SmtpServer, user_token
from tests.facade.conftest import Web
from tests.facade.test_stock_locations import product_with_stock, reason, violated


async def test_a_reorder_point_is_set_alone_then_with_a_count_then_cleared(web: Web) -> None:
    http, staff = web.http, web.staff
    pid = await product_with_stock(web, "REST-RP-1", 8)

    alone = await http.put(f"/inventory/{pid}", headers=staff, json={"reorder_point": 10})
    assert alone.status_code == 200, alone.text
    assert set(alone.json()) == {"item"}  # no movement: nothing moved
    (level,) = alone.json()["item"]["locations"]
    assert (level["on_hand"], level["reorder_point"], level["low_stock"]) == (8, 10, True)
    assert alone.json()["item"]["low_stock"] is True
    movements = (await http.get(f"/inventory/{pid}/movements", headers=staff)).json()["movements"]
    assert [m["type"] for m in movements] == ["IN"]

    both = await http.put(f"/inventory/{pid}", headers=staff, json={"quantity": 12, "reorder_point": 12})
    assert both.status_code == 200, both.text
    assert (both.json()["movement"]["type"], both.json()["movement"]["quantity"]) == ("ADJUSTMENT", 4)
    got = (await http.get(f"/inventory/{pid}", headers=staff)).json()
    assert got["low_stock"] is True
    assert [(lv["location_id"], lv["reorder_point"], lv["low_stock"]) for lv in got["locations"]] == [
        (DEFAULT_LOCATION_ID, 12, True)
    ]

    cleared = await http.put(f"/inventory/{pid}", headers=staff, json={"quantity": None, "reorder_point": 0})
    assert cleared.status_code == 200, cleared.text
    (level,) = cleared.json()["item"]["locations"]
    assert (level["on_hand"], level["reorder_point"], level["low_stock"]) == (12, 0, False)
    assert cleared.json()["item"]["low_stock"] is False


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"quantity", "reorder_point"}),
        ({"reason": "count"}, {"quantity", "reorder_point"}),
        ({"reorder_point": -1}, {"reorder_point"}),
        ({"quantity": -1, "reorder_point": -1}, {"quantity", "reorder_point"}),
    ],
)
async def test_a_put_without_a_quantity_or_reorder_point_or_out_of_range_is_a_400_naming_them(
    web: Web, body: dict[str, object], fields: set[str]
) -> None:
    pid = await product_with_stock(web, "REST-RP-2", 1)
    refused = await web.http.put(f"/inventory/{pid}", headers=web.staff, json=body)
    assert refused.status_code == 400, refused.text
    assert violated(refused) == fields


async def test_a_reorder_point_above_the_limit_is_a_400(web: Web) -> None:
    pid = await product_with_stock(web, "REST-RP-3", 1)
    refused = await web.http.put(f"/inventory/{pid}", headers=web.staff, json={"reorder_point": 2**31})
    assert refused.status_code == 400, refused.text
    assert "reorder_point" in refused.text


async def test_a_viewer_cannot_set_a_reorder_point(web: Web, smtp: SmtpServer) -> None:
    pid = await product_with_stock(web, "REST-RP-4", 1)
    token = await user_token(web.mesh.auth, "viewer@example.com", smtp.inbox, web.mesh.settings, "viewer")
    viewer = {"authorization": f"Bearer {token}"}
    denied = await web.http.put(f"/inventory/{pid}", headers=viewer, json={"reorder_point": 3})
    assert (denied.status_code, reason(denied)) == (403, "ROLE_REQUIRED")
    assert (await web.http.get(f"/inventory/{pid}", headers=viewer)).json()["locations"][0][
        "reorder_point"
    ] == 0


async def test_the_low_stock_listing_with_and_without_a_location(web: Web) -> None:
    http, staff = web.http, web.staff
    site = (await http.post("/locations", headers=staff, json={"code": "LOW-1", "name": "Low"})).json()["id"]
    low = sorted([await product_with_stock(web, f"REST-LOW-{n}", 2) for n in range(3)])
    for pid in low:
        await http.put(f"/inventory/{pid}", headers=staff, json={"reorder_point": 2})
    await product_with_stock(web, "REST-FINE", 2)
    there = await product_with_stock(web, "REST-THERE", 5)
    moved = await http.post(
        "/inventory/transfers",
        headers=staff,
        json={
            "product_id": there,
            "from_location_id": DEFAULT_LOCATION_ID,
            "to_location_id": site,
            "quantity": 1,
        },
    )
    assert moved.status_code == 201, moved.text
    put = await http.put(f"/inventory/{there}", headers=staff, json={"location_id": site, "reorder_point": 1})
    assert put.status_code == 200, put.text

    seen, token = [], ""
    while True:
        page = await http.get(
            "/inventory", headers=staff, params={"low_stock": "true", "page_size": 2, "page_token": token}
        )
        assert page.status_code == 200, page.text
        seen += [i["product_id"] for i in page.json()["items"]]
        if not (token := page.json()["next_page_token"]):
            break
    assert seen == sorted([*low, there])

    at_site = await http.get("/inventory", headers=staff, params={"low_stock": "true", "location_id": site})
    assert [(i["product_id"], i["low_stock"], len(i["locations"])) for i in at_site.json()["items"]] == [
        (there, True, 1)
    ]
    first = await http.get("/inventory", headers=staff, params={"low_stock": "true", "page_size": 1})
    stale = await http.get(
        "/inventory", headers=staff, params={"page_token": first.json()["next_page_token"]}
    )
    assert (stale.status_code, reason(stale)) == (400, "INVALID_PAGE_TOKEN")
