"""Issue 19's report over REST: after `POST /inventory` on a new product, the next
`GET /products/{id}` said "stock": 0, and each later read lagged a movement behind. Now each
read right after a movement shows it, as `GET /inventory/{id}` does."""

from __future__ import annotations

from tests.facade.conftest import Web


async def test_the_next_product_read_after_each_movement_shows_it(web: Web) -> None:
    created = await web.http.post(
        "/products", json={"sku": "RYW-1", "name": "Lamp", "price": "1.00"}, headers=web.staff
    )
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    for n in range(1, 6):
        moved = await web.http.post(
            "/inventory", json={"product_id": pid, "type": "IN", "quantity": 1}, headers=web.staff
        )
        assert moved.status_code == 201, moved.text
        product = await web.http.get(f"/products/{pid}", headers=web.staff)
        assert product.json()["stock"] == n, (n, product.text)
        item = await web.http.get(f"/inventory/{pid}", headers=web.staff)
        assert item.json()["quantity"] == n, (n, item.text)
