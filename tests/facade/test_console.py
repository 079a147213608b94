"""The console (/console/), served by the facade in front of the real mesh, driven as a browser
without JavaScript drives it: plain form posts, cookies kept by the client."""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookies import SimpleCookie

import httpx
import pytest

from facade.console import product
from facade.console.session import ACCESS_COOKIE, REFRESH_COOKIE, SESSION_COOKIE
from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from invmesh.inventory.v1 import inventory_service_pb2 as inventory_pb
from invmesh.products.v1 import products_service_pb2 as products_pb
from tests.conftest import SmtpServer, link_token
from tests.facade.conftest import Web

PASSWORD = "mesh-password"
ADMIN = "staff@example.com"  # the mesh's verified user, an admin: every write is theirs
STAFF = "visitor@example.com"  # the mesh's other user: staff, below admin
VIEWER = "viewer@example.com"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@asynccontextmanager
async def browser(web: Web) -> AsyncIterator[httpx.AsyncClient]:
    """A client of its own, holding the console's cookies, as a browser tab does."""
    async with httpx.AsyncClient(base_url=str(web.http.base_url), timeout=10) as client:
        yield client


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found is not None, page.text
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    page = await client.get("/console/sign-in")
    assert page.status_code == 200, page.text
    return await client.post(
        "/console/sign-in", data={"csrf_token": csrf_of(page), "email": email, "password": password}
    )


@asynccontextmanager
async def signed_in(web: Web, email: str = ADMIN) -> AsyncIterator[httpx.AsyncClient]:
    async with browser(web) as client:
        answer = await sign_in(client, email)
        assert answer.status_code == 303, answer.text
        yield client


async def register_viewer(web: Web) -> None:
    registered = await web.http.post("/users/register", json={"email": VIEWER, "password": PASSWORD})
    assert registered.status_code == 202, registered.text


async def new_product(web: Web, sku: str = "CON-1", name: str = "Console widget") -> str:
    created = await web.mesh.products.CreateProduct(
        products_pb.CreateProductRequest(product=products_pb.Product(sku=sku, name=name, price="2.50")),
        metadata=web.mesh.as_user(),
    )
    return created.product.id


async def stock(web: Web, product_id: str) -> inventory_pb.InventoryItem:
    got = await web.mesh.inventory.GetInventoryItem(
        inventory_pb.GetInventoryItemRequest(product_id=product_id), metadata=web.mesh.as_user()
    )
    return got.item


async def post_form(
    client: httpx.AsyncClient, page_path: str, action: str, fields: dict[str, str]
) -> httpx.Response:
    """Posts the form of the page at `page_path` whose action is `action`, as a browser would:
    its hidden fields (the CSRF token, a request id) and selected options, and `fields`."""
    page = await client.get(page_path)
    assert page.status_code == 200, page.text
    form = re.search(
        rf'<form method="post" action="{re.escape(action)}"[^>]*>(.*?)</form>', page.text, re.DOTALL
    )
    assert form is not None, (action, page.text)
    data = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form.group(1)))
    for name, options in re.findall(
        r'<select id="[^"]+" name="([^"]+)"[^>]*>(.*?)</select>', form.group(1), re.DOTALL
    ):
        selected = re.search(r'<option value="([^"]*)" selected>', options)
        if selected is not None:
            data[name] = selected.group(1)
    return await client.post(action, data={**data, **fields})


async def forge(
    client: httpx.AsyncClient, page_path: str, action: str, fields: dict[str, str]
) -> httpx.Response:
    """Posts `fields` to `action` with the CSRF token of the page at `page_path`, though the
    page has no such form (a viewer's)."""
    page = await client.get(page_path)
    return await client.post(action, data={"csrf_token": csrf_of(page), **fields})


def set_cookies(response: httpx.Response) -> dict[str, SimpleCookie]:
    """Each cookie the response sets, parsed, by name."""
    parsed = {}
    for header in response.headers.get_list("set-cookie"):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        for name in cookie:
            parsed[name] = cookie
    return parsed


async def test_signing_in_sets_http_only_same_site_strict_cookies_under_console(web: Web) -> None:
    async with browser(web) as client:
        page = await client.get("/console/sign-in")
        before = client.cookies.get(SESSION_COOKIE)
        assert before is not None  # the CSRF token of the sign-in form is tied to it
        answer = await client.post(
            "/console/sign-in", data={"csrf_token": csrf_of(page), "email": ADMIN, "password": PASSWORD}
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/console/products"
        cookies = set_cookies(answer)
        assert set(cookies) == {ACCESS_COOKIE, REFRESH_COOKIE, SESSION_COOKIE}
        for name, cookie in cookies.items():
            morsel = cookie[name]
            assert morsel["httponly"] is True and morsel["samesite"].lower() == "strict", morsel
            assert morsel["path"] == "/console" and not morsel["secure"]  # plain HTTP here
        assert client.cookies.get(SESSION_COOKIE, path="/console") != before  # a new id at sign-in
        products = await client.get("/console/products")
        assert products.status_code == 200 and ADMIN in products.text


async def test_a_wrong_password_is_the_api_s_refusal_on_the_form(web: Web) -> None:
    async with browser(web) as client:
        answer = await sign_in(client, ADMIN, "not the password")
        assert answer.status_code == 401
        assert 'role="alert"' in answer.text and "email or password" in answer.text.lower()
        assert f'value="{ADMIN}"' in answer.text  # the email stays typed
        assert client.cookies.get(ACCESS_COOKIE) is None


async def test_pages_render_for_staff_and_viewer_and_the_viewer_s_have_no_write_forms(web: Web) -> None:
    product_id = await new_product(web)
    await register_viewer(web)
    pages = ["/console/products", f"/console/products/{product_id}", "/console/low-stock", "/console/admin"]
    async with signed_in(web) as admin, signed_in(web, VIEWER) as viewer:
        for path in pages:
            as_admin, as_viewer = await admin.get(path), await viewer.get(path)
            assert as_admin.status_code == as_viewer.status_code == 200, (path, as_admin.text, as_viewer.text)
            # Every form a viewer gets is a GET (search, filters) or signing out.
            posts = re.findall(r'<form method="post" action="([^"]+)"', as_viewer.text)
            assert posts == ["/console/sign-out"], (path, posts)
            for page in (as_admin, as_viewer):
                assert page.headers["content-security-policy"].startswith(
                    "default-src 'none'; script-src 'self';"
                )
                assert page.headers["cache-control"] == "no-store"
                assert not re.search(r"<script(?![^>]*\b(src|type=\"application/json\")=?)[^>]*>", page.text)
        product_page = await admin.get(f"/console/products/{product_id}")
        for action in ("movements", "stock/preview", "reorder-point", "reservations"):
            assert f'action="/console/products/{product_id}/{action}"' in product_page.text
        admin_page = await admin.get("/console/admin")
        assert 'action="/console/admin/roles"' in admin_page.text
        assert 'action="/console/admin/locations"' in admin_page.text
        viewer_admin_page = await viewer.get("/console/admin")
        assert (
            listed_emails(viewer_admin_page) == [] and "Only admins manage roles." in viewer_admin_page.text
        )


async def test_a_viewer_s_forged_post_is_refused_by_the_service(web: Web) -> None:
    product_id = await new_product(web)
    await register_viewer(web)
    async with signed_in(web, VIEWER) as viewer:
        path = f"/console/products/{product_id}"
        forged = await forge(viewer, path, f"{path}/movements", {"type": "IN", "quantity": "5"})
        assert forged.status_code == 403, forged.text
        assert 'role="alert"' in forged.text and "staff" in forged.text  # PERMISSION_DENIED's message
        role = await forge(
            viewer, "/console/admin", "/console/admin/roles", {"email": VIEWER, "role": "admin"}
        )
        assert role.status_code == 403, role.text
    assert (await stock(web, product_id)).quantity == 0


def listed_emails(page: httpx.Response) -> list[str]:
    """The emails of the admin page's users table, in order."""
    return re.findall(r'<th scope="row">([^<]+)</th>', page.text)


def role_form_of(page: httpx.Response, email: str) -> str:
    """The row of `email` in the admin page's users table: its role form and what follows it."""
    row = re.search(rf'<tr>\s*<th scope="row">{re.escape(email)}</th>(.*?)</tr>', page.text, re.DOTALL)
    assert row is not None, (email, page.text)
    return row.group(1)


async def set_role_in_row(client: httpx.AsyncClient, page_path: str, email: str, role: str) -> httpx.Response:
    """Sends the role form of `email`'s row on the admin page at `page_path`, with `role` chosen."""
    page = await client.get(page_path)
    hidden = dict(
        re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', role_form_of(page, email))
    )
    return await client.post("/console/admin/roles", data={**hidden, "role": role})


async def test_an_admin_lists_and_searches_the_users_and_sets_a_role_from_a_row(web: Web) -> None:
    await register_viewer(web)
    async with signed_in(web) as admin:
        page = await admin.get("/console/admin")
        assert listed_emails(page) == [ADMIN, VIEWER, STAFF]
        assert re.search(r"<td></td>\s*<td>viewer</td>\s*<td>No</td>", role_form_of(page, VIEWER))
        assert re.search(r"<td>admin</td>\s*<td>Yes</td>", role_form_of(page, ADMIN))
        assert listed_emails(await admin.get("/console/admin", params={"q": "VIEW"})) == [VIEWER]

        # The row's form sets the role, and the page comes back on the same search.
        saved = await set_role_in_row(admin, "/console/admin?q=view", VIEWER, "staff")
        assert saved.status_code == 303 and saved.headers["location"] == "/console/admin?done=role&q=view"
        after = await admin.get(saved.headers["location"])
        assert "Role saved." in after.text and listed_emails(after) == [VIEWER]
        assert '<option value="staff" selected>' in role_form_of(after, VIEWER)

        # A refusal shows beside the row's select, the choice kept.
        refused = await set_role_in_row(admin, "/console/admin", ADMIN, "viewer")
        assert refused.status_code == 400, refused.text
        row = role_form_of(refused, ADMIN)
        assert 'aria-invalid="true"' in row and "cannot take its own admin role" in row
        assert '<option value="viewer" selected>' in row

        # A page token from the API works on the page, which links back to the first.
        first = await web.mesh.auth.ListUsers(
            auth_pb.ListUsersRequest(page_size=1), metadata=web.mesh.as_user()
        )
        later = await admin.get("/console/admin", params={"page_token": first.next_page_token})
        assert listed_emails(later) == [VIEWER, STAFF] and ">First page</a>" in later.text


@pytest.mark.parametrize("token", [None, "", "forged-token"])
async def test_a_form_without_the_session_s_csrf_token_is_refused(web: Web, token: str | None) -> None:
    product_id = await new_product(web)
    async with signed_in(web) as admin:
        fields = {"type": "IN", "quantity": "5"}
        if token is not None:
            fields["csrf_token"] = token
        refused = await admin.post(f"/console/products/{product_id}/movements", data=fields)
        assert refused.status_code == 403, refused.text
        assert "CSRF_TOKEN_INVALID" in refused.text
        # The token of another session is refused too.
        async with signed_in(web) as other:
            page = await other.get(f"/console/products/{product_id}")
            fields["csrf_token"] = csrf_of(page)
        refused = await admin.post(f"/console/products/{product_id}/movements", data=fields)
        assert refused.status_code == 403, refused.text
    assert (await stock(web, product_id)).quantity == 0


async def test_entries_and_exits_recorded_by_form_change_the_stock_and_fill_the_ledger(web: Web) -> None:
    product_id = await new_product(web)
    path = f"/console/products/{product_id}"
    async with signed_in(web) as admin:
        entry = await post_form(
            admin, path, f"{path}/movements", {"type": "IN", "quantity": "10", "reason": "delivery"}
        )
        assert entry.status_code == 303 and entry.headers["location"] == f"{path}?done=movement", entry.text
        assert (await stock(web, product_id)).quantity == 10
        exit_ = await post_form(
            admin, path, f"{path}/movements", {"type": "OUT", "quantity": "3", "reason": "sale"}
        )
        assert exit_.status_code == 303, exit_.text
        assert (await stock(web, product_id)).quantity == 7
        page = await admin.get(exit_.headers["location"])
        assert "Movement recorded." in page.text
        ledger = page.text.split('id="ledger-results"')[1]
        # Newest first: the exit, then the entry, each with its balance after and its author.
        rows = re.findall(r"<tr>\s*<td>[^<]+</td>\s*<td>(Entry|Exit)[^<]*</td>.*?</tr>", ledger, re.DOTALL)
        assert rows == ["Exit", "Entry"], ledger
        assert "\u22123" in ledger and "+10" in ledger and f">{ADMIN}<" in ledger
        filtered = await admin.get(path, params={"type": "IN"})
        rows = re.findall(r"<td>(Entry|Exit)", filtered.text.split('id="ledger-results"')[1])
        assert rows == ["Entry"]


def ledger_rows(page: httpx.Response) -> list[str]:
    """The ledger's rows as type and change, such as "Entry +10", newest first."""
    ledger = page.text.split('id="ledger-results"')[1].split("</table>")[0]
    return [
        f"{kind} {change}"
        for kind, change in re.findall(
            r"<tr>\s*<td>[^<]+</td>\s*<td>(\w+)[^<]*</td>\s*<td>[^<]*</td>\s*<td[^>]*>([^<]+)</td>", ledger
        )
    ]


def older_link(page: httpx.Response) -> str | None:
    found = re.search(r'<a href="([^"]+)">Older movements</a>', page.text)
    return html.unescape(found.group(1)) if found else None


async def test_the_ledger_is_filtered_by_the_service_and_pages_to_older_movements(
    web: Web, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rows a page here: the entry, older than a page of exits, is still found by its type
    and by paging, and a day's filter is the service's, whole days in UTC."""
    monkeypatch.setattr(product, "LEDGER_ROWS", 2)
    product_id = await new_product(web)
    path = f"/console/products/{product_id}"
    moves = [(inventory_pb.RecordMovementRequest.IN, 10)] + [
        (inventory_pb.RecordMovementRequest.OUT, n) for n in (1, 2, 3)
    ]
    for kind, quantity in moves:
        recorded = await web.mesh.inventory.RecordMovement(
            inventory_pb.RecordMovementRequest(product_id=product_id, type=kind, quantity=quantity),
            metadata=web.mesh.as_user(),
        )
    day = recorded.movement.created_at.ToDatetime(dt.UTC).date()
    async with signed_in(web) as admin:
        newest = await admin.get(path)
        assert ledger_rows(newest) == ["Exit \u22123", "Exit \u22122"]
        assert f">{ADMIN}<" in newest.text  # by whom: the author's email
        link = older_link(newest)
        assert link is not None
        older = await admin.get(link)
        assert ledger_rows(older) == ["Exit \u22121", "Entry +10"]
        assert older_link(older) is None and ">Newest movements</a>" in older.text

        entries = await admin.get(path, params={"type": "IN"})
        assert ledger_rows(entries) == ["Entry +10"] and older_link(entries) is None

        that_day = {"since": day.isoformat(), "until": day.isoformat(), "type": "OUT"}
        dated = await admin.get(path, params=that_day)
        assert ledger_rows(dated) == ["Exit \u22123", "Exit \u22122"]
        link = older_link(dated)
        assert link is not None and "since=" in link and "until=" in link and "type=OUT" in link
        assert ledger_rows(await admin.get(link)) == ["Exit \u22121"]
        next_day = (day + dt.timedelta(days=1)).isoformat()
        later = await admin.get(path, params={"since": next_day})
        assert ledger_rows(later) == [] and "No movement matches the filter." in later.text
        assert (
            ledger_rows(await admin.get(path, params={"until": (day - dt.timedelta(days=1)).isoformat()}))
            == []
        )

        # From the day after next to the day before: [day + 2, day + 1), which ends before it starts.
        after_next = (day + dt.timedelta(days=2)).isoformat()
        backwards = await admin.get(path, params={"since": after_next, "until": day.isoformat()})
        assert backwards.status_code == 400, backwards.text
        results = backwards.text.split('id="ledger-results"')[1]
        assert '<p role="alert" class="error-summary">end_time must not be before start_time</p>' in results
        assert "<h1>Console widget</h1>" in backwards.text  # the rest of the page as ever


async def test_a_count_shows_the_change_before_it_is_confirmed(web: Web) -> None:
    product_id = await new_product(web)
    path = f"/console/products/{product_id}"
    async with signed_in(web) as admin:
        await post_form(admin, path, f"{path}/movements", {"type": "IN", "quantity": "7"})
        preview = await post_form(admin, path, f"{path}/stock/preview", {"quantity": "12", "reason": "count"})
        assert preview.status_code == 200, preview.text
        assert "7 → 12 (+5)" in preview.text
        assert (await stock(web, product_id)).quantity == 7  # nothing changed yet
        confirm = re.search(
            r'<form method="post" action="([^"]+/stock)"[^>]*>(.*?)</form>', preview.text, re.DOTALL
        )
        assert confirm is not None
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm.group(2)))
        assert fields["quantity"] == "12"
        confirmed = await admin.post(confirm.group(1), data=fields)
        assert confirmed.status_code == 303, confirmed.text
        assert (await stock(web, product_id)).quantity == 12
        again = await admin.post(confirm.group(1), data=fields)  # sent twice: its request id records once
        assert again.status_code == 303
        lower = await post_form(admin, path, f"{path}/stock/preview", {"quantity": "4"})
        assert "12 → 4 (\u22128)" in lower.text


async def test_a_transfer_and_a_reservation_by_form_move_the_stock(web: Web) -> None:
    product_id = await new_product(web)
    path = f"/console/products/{product_id}"
    async with signed_in(web) as admin:
        made = await post_form(
            admin, "/console/admin", "/console/admin/locations", {"code": "SHOP-1", "name": "Shop"}
        )
        assert made.status_code == 303, made.text
        await post_form(admin, path, f"{path}/movements", {"type": "IN", "quantity": "10"})
        item = await stock(web, product_id)
        (default,) = item.locations
        page = await admin.get(path)
        shop = re.search(r'<option value="([^"]+)"[^>]*>SHOP-1 ', page.text)
        assert shop is not None
        moved = await post_form(
            admin,
            path,
            f"{path}/transfers",
            {"from_location_id": default.location_id, "to_location_id": shop.group(1), "quantity": "4"},
        )
        assert moved.status_code == 303, moved.text
        levels = {level.location_id: level.on_hand for level in (await stock(web, product_id)).locations}
        assert levels == {default.location_id: 6, shop.group(1): 4}

        held = await post_form(
            admin,
            path,
            f"{path}/reservations",
            {"location_id": shop.group(1), "quantity": "3", "ttl_seconds": "600"},
        )
        assert held.status_code == 303, held.text
        item = await stock(web, product_id)
        assert (item.quantity, item.reserved, item.available) == (10, 3, 7)
        page = await admin.get(path)
        confirm = re.search(r'action="([^"]+/reservations/[^"]+/confirm)"', page.text)
        assert confirm is not None
        confirmed = await admin.post(confirm.group(1), data={"csrf_token": csrf_of(page)})
        assert confirmed.status_code == 303, confirmed.text
        item = await stock(web, product_id)
        assert (item.quantity, item.reserved, item.available) == (7, 0, 7)


async def test_refusals_are_shown_beside_the_fields_they_concern(web: Web) -> None:
    product_id = await new_product(web)
    path = f"/console/products/{product_id}"
    async with signed_in(web) as admin:
        zero = await post_form(admin, path, f"{path}/movements", {"type": "IN", "quantity": "0"})
        assert zero.status_code == 400, zero.text
        error = re.search(r'<p class="field-error" id="movement-quantity-error">([^<]+)</p>', zero.text)
        assert error is not None and "quantity" in error.group(1)
        assert 'aria-describedby="movement-quantity-error"' in zero.text and 'value="0"' in zero.text
        words = await post_form(admin, path, f"{path}/movements", {"type": "IN", "quantity": "lots"})
        assert words.status_code == 400
        assert 'id="movement-quantity-error">must be a whole number<' in words.text
        too_many = await post_form(admin, path, f"{path}/movements", {"type": "OUT", "quantity": "1"})
        assert too_many.status_code == 400 and 'role="alert"' in too_many.text  # INSUFFICIENT_STOCK
        bad = await post_form(
            admin, "/console/admin", "/console/admin/locations", {"code": "no spaces", "name": ""}
        )
        assert bad.status_code == 400, bad.text
        assert 'id="location-code-error"' in bad.text and 'id="location-name-error"' in bad.text
        sku = await post_form(admin, path, path, {"sku": "", "name": "Console widget", "price": "-1"})
        assert sku.status_code == 400
        assert 'id="product-sku-error"' in sku.text and 'id="product-price-error"' in sku.text
    assert (await stock(web, product_id)).quantity == 0


async def test_a_product_created_by_form_opens_its_page_and_a_refusal_stays_on_the_form(web: Web) -> None:
    async with signed_in(web) as admin:
        refused = await post_form(
            admin, "/console/products", "/console/products", {"sku": " ", "name": "Crate", "price": "-1"}
        )
        assert refused.status_code == 400, refused.text
        assert 'id="new-product-sku-error"' in refused.text and 'id="new-product-price-error"' in refused.text
        assert 'id="new-product-name-error"' not in refused.text and 'value="Crate"' in refused.text
        assert '<details class="new-product" open>' in refused.text  # the form stays open, as typed
        fields = {"sku": "CRATE-1", "name": "Crate", "price": "4.20", "description": "Pine, 40 cm"}
        created = await post_form(admin, "/console/products", "/console/products", fields)
        assert created.status_code == 303, created.text
        location = created.headers["location"]
        assert re.fullmatch(r"/console/products/[^/?]+\?done=created", location), location
        page = await admin.get(location)
        assert "Product created." in page.text and "<h1>Crate</h1>" in page.text
        assert "Pine, 40 cm" in page.text
        taken = await post_form(admin, "/console/products", "/console/products", fields)
        assert taken.status_code == 409 and 'role="alert"' in taken.text, taken.text
    listed = await web.mesh.products.ListProducts(
        products_pb.ListProductsRequest(), metadata=web.mesh.as_user()
    )
    assert [(p.sku, p.price, p.currency) for p in listed.products] == [("CRATE-1", "4.20", "USD")]


async def test_the_product_forms_follow_the_roles_the_contract_declares(web: Web) -> None:
    product_id = await new_product(web)
    path = f"/console/products/{product_id}"
    async with signed_in(web) as admin, signed_in(web, STAFF) as staff:
        for client, deletes in ((admin, True), (staff, False)):
            products = await client.get("/console/products")
            assert 'action="/console/products"' in products.text  # CreateProduct: staff
            page = await client.get(path)
            assert (f'href="{path}/delete"' in page.text) is deletes  # DeleteProduct: admin
        forged = await forge(staff, path, f"{path}/delete", {})
        assert forged.status_code == 403 and "ROLE_REQUIRED" in forged.text, forged.text
    await register_viewer(web)
    async with signed_in(web, VIEWER) as viewer:
        forged = await forge(
            viewer, "/console/products", "/console/products", {"sku": "V-1", "name": "V", "price": "1"}
        )
        assert forged.status_code == 403, forged.text
        assert 'role="alert"' in forged.text and "needs the staff role" in forged.text
    assert (await stock(web, product_id)).quantity == 0  # still there: a deleted product's item is not


async def test_a_product_is_deleted_after_its_confirm_page(web: Web) -> None:
    product_id = await new_product(web)
    path = f"/console/products/{product_id}"
    async with signed_in(web) as admin:
        confirm = await admin.get(f"{path}/delete")
        assert confirm.status_code == 200 and "<h1>Delete Console widget?</h1>" in confirm.text
        assert (await admin.get(path)).status_code == 200  # asking deleted nothing
        deleted = await post_form(admin, f"{path}/delete", f"{path}/delete", {})
        assert deleted.status_code == 303 and deleted.headers["location"] == "/console/products?done=deleted"
        products = await admin.get(deleted.headers["location"])
        assert "Product deleted." in products.text and "Console widget" not in products.text
        gone = await admin.get(path)
        assert gone.status_code == 404 and "PRODUCT_NOT_FOUND" in gone.text


async def test_signing_out_clears_the_cookies_and_revokes_the_sign_in(web: Web) -> None:
    async with signed_in(web) as admin:
        page = await admin.get("/console/products")
        refresh = admin.cookies.get(REFRESH_COOKIE) or ""
        out = await admin.post("/console/sign-out", data={"csrf_token": csrf_of(page)})
        assert out.status_code == 303 and out.headers["location"] == "/console/sign-in"
        cleared = set_cookies(out)
        for name in (ACCESS_COOKIE, REFRESH_COOKIE):
            assert cleared[name][name]["max-age"] == "0" and cleared[name][name].value == ""
        assert admin.cookies.get(ACCESS_COOKIE) is None and admin.cookies.get(REFRESH_COOKIE) is None
        after = await admin.get("/console/products")
        assert after.status_code == 303 and after.headers["location"] == "/console/sign-in"
    # A copy of the refresh cookie taken before signing out is worth nothing at auth.
    refused = await web.http.post("/users/refresh", json={"refresh_token": refresh})
    assert refused.status_code == 401 and refused.json()["details"][0]["reason"] == "INVALID_REFRESH_TOKEN"


async def test_an_expired_access_cookie_is_replaced_with_the_refresh_token(web: Web) -> None:
    async with signed_in(web) as admin:
        refresh = admin.cookies.get(REFRESH_COOKIE)
        admin.cookies.delete(ACCESS_COOKIE)  # as the browser drops it at its Max-Age
        # Two pages at once: they share one refresh (a refresh token is spent by its first use).
        first, second = await asyncio.gather(admin.get("/console/products"), admin.get("/console/low-stock"))
        assert first.status_code == second.status_code == 200, (first.text, second.text)
        assert set(set_cookies(first)) == {ACCESS_COOKIE, REFRESH_COOKIE}
        assert admin.cookies.get(REFRESH_COOKIE) != refresh
    # The spent refresh token in another session: auth refuses it, the page asks to sign in.
    async with browser(web) as thief:
        await thief.get("/console/sign-in")
        thief.cookies.set(REFRESH_COOKIE, refresh or "", path="/console")
        spent = await thief.get("/console/products")
        assert spent.status_code == 303 and spent.headers["location"] == "/console/sign-in"
        assert set_cookies(spent)[REFRESH_COOKIE][REFRESH_COOKIE]["max-age"] == "0"


async def test_the_product_page_s_feed_relays_movements_made_elsewhere(web: Web) -> None:
    product_id = await new_product(web)
    async with signed_in(web) as admin:
        async with admin.stream("GET", f"/console/products/{product_id}/feed") as feed:
            assert feed.status_code == 200
            assert feed.headers["content-type"] == "text/event-stream"
            lines = feed.aiter_lines()
            await web.mesh.inventory.RecordMovement(
                inventory_pb.RecordMovementRequest(
                    product_id=product_id, type=inventory_pb.RecordMovementRequest.IN, quantity=4
                ),
                metadata=web.mesh.as_user(),
            )
            async with asyncio.timeout(10):
                async for line in lines:
                    if line == "event: movement":
                        break
                data = await anext(lines)
            assert data.startswith("data: ") and '"balance_after":4' in data.replace(" ", ""), data
    async with browser(web) as stranger:
        refused = await stranger.get(f"/console/products/{product_id}/feed")
        assert refused.status_code == 303


async def test_the_product_page_s_feed_starts_right_after_what_the_page_shows(web: Web) -> None:
    """A movement committed between the page's rendering and the start of its feed comes
    through the feed: the page names its ledger's cursor."""
    product_id = await new_product(web)
    async with signed_in(web) as admin:
        page = await admin.get(f"/console/products/{product_id}")
        found = re.search(r'<div id="live" data-feed="([^"]+)">', page.text)
        assert found is not None and "?after=" in found.group(1), page.text
        await web.mesh.inventory.RecordMovement(
            inventory_pb.RecordMovementRequest(
                product_id=product_id, type=inventory_pb.RecordMovementRequest.IN, quantity=3
            ),
            metadata=web.mesh.as_user(),
        )
        async with admin.stream("GET", html.unescape(found.group(1))) as feed:
            assert feed.status_code == 200
            lines = feed.aiter_lines()
            async with asyncio.timeout(10):
                async for line in lines:
                    if line == "event: movement":
                        break
                data = await anext(lines)
            assert '"balance_after":3' in data.replace(" ", ""), data


async def test_unknown_pages_and_products_are_the_api_s_404(web: Web) -> None:
    async with signed_in(web) as admin:
        unknown = await admin.get("/console/products/no-such-product")
        assert unknown.status_code == 404 and 'role="alert"' in unknown.text, unknown.text
        assert "PRODUCT_NOT_FOUND" in unknown.text
        home = await admin.get("/console", follow_redirects=True)
        assert home.status_code == 200 and str(home.url).endswith("/console/products")


async def test_the_assets_are_served_from_the_console_itself(web: Web) -> None:
    for asset, kind in (
        ("htmx.min.js", "javascript"),
        ("uPlot.iife.min.js", "javascript"),
        ("uPlot.min.css", "css"),
        ("console.js", "javascript"),
    ):
        served = await web.http.get(f"/console/static/{asset}")
        assert served.status_code == 200 and kind in served.headers["content-type"], asset
    page = await web.http.get("/console/sign-in")
    for src in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert src.startswith("/console/") or src.startswith("#"), src


async def test_the_verification_link_leads_to_the_console_s_sign_in(web: Web, smtp: SmtpServer) -> None:
    await register_viewer(web)
    (mail,) = await smtp.inbox.mail_to(VIEWER)
    token = link_token(mail, web.mesh.settings.public_url)
    page = await web.http.get("/users/verify", params={"token": token}, headers={"accept": "text/html"})
    assert page.status_code == 200 and '<a href="/console/sign-in">' in page.text
    async with browser(web) as client:
        assert (await client.get("/console/sign-in")).status_code == 200
        assert (await sign_in(client, VIEWER)).status_code == 303
