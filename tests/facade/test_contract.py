"""One REST contract, everywhere: what the services refuse names every bad field and states its
limits, movement types read the same in the schema, the JSON and the errors, PATCH changes only
what it is sent, and a deleted product's ledger stays readable for audit."""

from __future__ import annotations

from typing import Any

import httpx

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
