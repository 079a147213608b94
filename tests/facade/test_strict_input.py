"""Input the facade could read more than one way is refused, naming what is wrong."""

from __future__ import annotations

import pytest

from tests.facade.conftest import Web


async def test_a_key_given_twice_in_a_body_is_refused_naming_it(web: Web) -> None:
    created = await web.http.post(
        "/products", headers=web.staff, json={"sku": "DUP-1", "name": "Twice", "price": "5"}
    )
    assert created.status_code == 201, created.text
    product = created.json()["id"]
    body = f'{{"productId": "{product}", "type": "IN", "quantity": 1, "quantity": 7}}'
    refused = await web.http.post("/inventory", headers=web.staff, content=body)
    assert refused.status_code == 400, refused.text
    error = refused.json()
    assert "'quantity'" in error["message"] and "more than once" in error["message"]
    assert error["details"][0]["reason"] == "DUPLICATE_KEY", error
    assert error["details"][1]["field_violations"][0]["field"] == "quantity"
    stock = await web.http.get(f"/inventory/{product}", headers=web.staff)
    assert stock.status_code == 200 and int(stock.json().get("quantity", 0)) == 0, stock.text


@pytest.mark.parametrize(
    "body",
    [
        '{"sku": "a", "name": "b", "price": "1", "sku": "a"}',  # even with the same value
        '{"sku": "a", "name": "b", "price": "1", "metadata": {"k": 1, "k": 2}}',  # nested
    ],
)
async def test_duplicate_keys_anywhere_in_the_body_are_refused(web: Web, body: str) -> None:
    refused = await web.http.post("/products", headers=web.staff, content=body)
    assert refused.status_code == 400, refused.text
    error = refused.json()
    assert "more than once" in error["message"]
    assert error["details"][0]["reason"] == "DUPLICATE_KEY", error


async def test_distinct_keys_in_sibling_objects_are_fine(web: Web) -> None:
    created = await web.http.post(
        "/products", headers=web.staff, content='{"sku": "DUP-2", "name": "Once", "price": "5"}'
    )
    assert created.status_code == 201, created.text


@pytest.mark.parametrize("email", ["", " ", "not an address", "a@", "@example.com"])
async def test_resending_verification_to_an_empty_or_malformed_email_is_a_400(web: Web, email: str) -> None:
    refused = await web.http.post("/users/verify", json={"email": email})
    assert refused.status_code == 400, refused.text
    error = refused.json()
    assert error["message"].startswith("email "), error
    assert any(v["field"] == "email" for d in error["details"] for v in d.get("field_violations", [])), error


async def test_resending_verification_answers_alike_for_known_and_unknown_addresses(web: Web) -> None:
    known = await web.http.post("/users/verify", json={"email": "staff@example.com"})
    unknown = await web.http.post("/users/verify", json={"email": "nobody-here@example.com"})
    assert (known.status_code, known.content) == (unknown.status_code, unknown.content) == (200, b"{}")


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_an_update_without_a_body_is_refused_rather_than_changing_nothing(
    web: Web, method: str
) -> None:
    """`product` is REQUIRED: no body at all is a 400, even beside an empty update_mask."""
    created = await web.http.post(
        "/products", headers=web.staff, json={"sku": f"NOBODY-{method}", "name": "Kept", "price": "5"}
    )
    assert created.status_code == 201, created.text
    refused = await web.http.request(
        method, f"/products/{created.json()['id']}?update_mask=", headers=web.staff
    )
    assert refused.status_code == 400, refused.text
    error = refused.json()
    assert error["details"][0]["reason"] == "INVALID_BODY", error
    assert "`product` is required" in error["message"], error
