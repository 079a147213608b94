"""GET /users through the facade: AuthService.ListUsers, admins only."""

from __future__ import annotations

from tests.facade.conftest import Web
from tests.test_users import EVERYONE, NEWCOMERS


async def test_get_users_over_rest(web: Web) -> None:
    for email in NEWCOMERS:
        registered = await web.http.post(
            "/users/register", json={"email": email, "password": "mesh-password"}
        )
        assert registered.status_code == 202, registered.text
    first = await web.http.get("/users", params={"page_size": 4, "q": "EXAMPLE"}, headers=web.staff)
    assert first.status_code == 200, first.text
    page = first.json()
    assert [user["email"] for user in page["users"]] == EVERYONE[0:4]
    assert set(page["users"][0]) == {"id", "email", "name", "email_verified", "roles", "created_at"}
    rest = await web.http.get(
        "/users", params={"q": "EXAMPLE", "page_token": page["next_page_token"]}, headers=web.staff
    )
    assert [user["email"] for user in rest.json()["users"]] == EVERYONE[4:6]
    assert rest.json().get("next_page_token", "") == ""

    denied = await web.http.get("/users", headers=web.visitor)
    assert denied.status_code == 403 and "ROLE_REQUIRED" in denied.text, denied.text
    negative = await web.http.get("/users", params={"page_size": -1}, headers=web.staff)
    assert negative.status_code == 400, negative.text
    too_long = await web.http.get("/users", params={"q": "a" * 321}, headers=web.staff)
    assert too_long.status_code == 400, too_long.text
