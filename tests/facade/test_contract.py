"""One REST contract, everywhere: what the services refuse names every bad field and states its
limits, movement types read the same in the schema, the JSON and the errors, PATCH changes only
what it is sent, and a deleted product's ledger stays readable for audit."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import user_token
from tests.facade.conftest import Web


def reason(response: httpx.Response) -> str | None:
    infos = [d for d in response.json()["details"] if d["@type"].endswith("ErrorInfo")]
    return infos[0]["reason"] if infos else None


def violated_fields(response: httpx.Response) -> list[str]:
    """The fields of the BadRequest detail, in order."""
    (bad_request,) = [d for d in response.json()["details"] if d["@type"].endswith("BadRequest")]
    # The one list in the detail: its key's spelling is the facade's to choose.
    (violations,) = [value for value in bad_request.values() if isinstance(value, list)]
    return [violation["field"] for violation in violations]


async def create_product(web: Web, **fields: Any) -> dict[str, Any]:
    body = {"sku": "LAMP-1", "name": "Desk lamp", "price": "24.90"} | fields
    created = await web.http.post("/products", headers=web.staff, json=body)
    assert created.status_code == 201, created.text
    return dict(created.json())


async def test_a_product_with_several_bad_fields_is_refused_naming_them_all(web: Web) -> None:
    refused = await web.http.post(
        "/products", headers=web.staff, json={"sku": "", "name": "", "price": "abc"}
    )
    assert refused.status_code == 400, refused.text
    assert violated_fields(refused) == ["sku", "name", "price"]
    assert reason(refused) == "INVALID_FIELDS"
    message = refused.json()["message"]
    assert "sku is required, 1 to 64 characters" in message
    assert "name is required, 1 to 200 characters" in message
    assert "price must be a non-negative decimal string" in message
    listed = await web.http.get("/products", headers=web.staff)
    assert listed.json()["products"] == []


async def test_a_movement_with_several_bad_fields_names_them_all_and_the_limits(web: Web) -> None:
    product = await create_product(web)
    refused = await web.http.post(
        "/inventory",
        headers=web.staff,
        json={"product_id": product["id"], "type": "OUT", "quantity": 0, "request_id": "has spaces"},
    )
    assert refused.status_code == 400, refused.text
    assert violated_fields(refused) == ["quantity", "request_id"]
    assert "quantity must be 1 to 2147483647" in refused.json()["message"]


async def test_movement_types_read_the_same_in_the_schema_the_json_and_the_errors(web: Web) -> None:
    product = await create_product(web)
    document = (await web.http.get("/openapi.json")).json()
    body = document["paths"]["/inventory"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = document["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]] if "$ref" in body else body
    assert schema["properties"]["type"]["enum"] == ["IN", "OUT"]
    moved = await web.http.post(
        "/inventory", headers=web.staff, json={"product_id": product["id"], "type": "IN", "quantity": 3}
    )
    assert moved.status_code == 201, moved.text
    assert moved.json()["movement"]["type"] == "IN"
    # A count is a PUT; the movement it records reads ADJUSTMENT, a type a POST does not take.
    counted = await web.http.put(f"/inventory/{product['id']}", headers=web.staff, json={"quantity": 1})
    assert counted.json()["movement"]["type"] == "ADJUSTMENT"
    for refused_type in ("ADJUSTMENT", "in", "MOVEMENT_TYPE_UNSPECIFIED"):
        refused = await web.http.post(
            "/inventory",
            headers=web.staff,
            json={"product_id": product["id"], "type": refused_type, "quantity": 1},
        )
        assert refused.status_code == 400, refused_type
        assert refused.json()["message"] == "'type' must be one of IN, OUT"
    # The zero value and a number are proto3 JSON too: the service says the same.
    for unnamed in ("DIRECTION_UNSPECIFIED", 3):
        refused = await web.http.post(
            "/inventory",
            headers=web.staff,
            json={"product_id": product["id"], "type": unnamed, "quantity": 1},
        )
        assert refused.status_code == 400, unnamed
        assert refused.json()["message"].startswith("type must be IN or OUT")
        assert reason(refused) == "INVALID_MOVEMENT_TYPE"


async def test_patch_updates_only_the_fields_sent_and_put_replaces(web: Web) -> None:
    product = await create_product(web, description="LED", currency="EUR")
    url = f"/products/{product['id']}"
    patched = await web.http.patch(url, headers=web.staff, json={"price": "19.90"})
    assert patched.status_code == 200, patched.text
    assert {k: patched.json()[k] for k in ("price", "name", "description", "currency")} == {
        "price": "19.90",
        "name": "Desk lamp",
        "description": "LED",
        "currency": "EUR",
    }
    # A product read back, output-only fields and all, can be sent as it is.
    read_back = patched.json() | {"name": "Floor lamp"}
    again = await web.http.patch(url, headers=web.staff, json=read_back)
    assert again.status_code == 200, again.text
    assert again.json()["name"] == "Floor lamp" and again.json()["created_at"] == product["created_at"]
    # The update_mask query parameter says which of the body's fields count.
    masked = await web.http.patch(
        url, headers=web.staff, params={"update_mask": "description"}, json={"description": "", "name": "x"}
    )
    assert (masked.json()["description"], masked.json()["name"]) == ("", "Floor lamp")
    unknown = await web.http.patch(url, headers=web.staff, params={"update_mask": "colour"}, json={})
    assert unknown.status_code == 400 and "'colour'" in unknown.json()["message"]
    assert violated_fields(unknown) == ["update_mask"] and reason(unknown) == "INVALID_UPDATE_MASK"
    invalid = await web.http.patch(url, headers=web.staff, json={"name": "", "price": "-1"})
    assert invalid.status_code == 400 and violated_fields(invalid) == ["name", "price"]
    # PUT replaces every editable field: those left out are emptied, or refused if required.
    replaced = await web.http.put(
        url, headers=web.staff, json={"sku": "LAMP-1", "name": "Lamp", "price": "5"}
    )
    assert replaced.status_code == 200, replaced.text
    assert (replaced.json()["description"], replaced.json()["currency"]) == ("", "USD")
    refused = await web.http.put(url, headers=web.staff, json={"price": "7"})
    assert refused.status_code == 400 and violated_fields(refused) == ["sku", "name"]


async def test_a_deleted_products_ledger_is_kept_for_staff_and_gone_for_viewers(web: Web) -> None:
    product = await create_product(web)
    movements = f"/inventory/{product['id']}/movements"
    moved = await web.http.post(
        "/inventory", headers=web.staff, json={"product_id": product["id"], "type": "IN", "quantity": 4}
    )
    assert moved.status_code == 201, moved.text
    viewer_token = await user_token(
        web.mesh.auth, "viewer@example.com", None, web.mesh.settings, role="viewer"
    )
    viewer = {"authorization": f"Bearer {viewer_token}"}
    live = await web.http.get(movements, headers=viewer)
    assert live.status_code == 200 and live.json()["retired"] is False

    deleted = await web.http.delete(f"/products/{product['id']}", headers=web.staff)
    assert deleted.status_code == 204, deleted.text
    kept = await web.http.get(movements, headers=web.staff)
    assert kept.status_code == 200, kept.text
    assert kept.json()["retired"] is True
    assert [m["quantity"] for m in kept.json()["movements"]] == [4]
    gone = await web.http.get(movements, headers=viewer)
    assert gone.status_code == 404 and reason(gone) == "PRODUCT_NOT_FOUND"
    item = await web.http.get(f"/inventory/{product['id']}", headers=web.staff)
    assert item.status_code == 404  # the item itself has left every read
