"""The console in a real browser, in front of the real mesh: a staff member's journey from
signing in to reserving stock, driven as a person drives it (controls found by their visible
label or role, so an unlabelled one fails), with the keyboard alone, as a viewer, with a forged
form, and with the product page following the change feed. axe-core checks every screen, and
`make screenshots` takes the pictures of docs/console.md here."""

from __future__ import annotations

import re

from playwright.async_api import Locator, Page, expect

from invmesh.inventory.v1 import inventory_service_pb2 as inventory_pb
from tests.browser.harness import assert_accessible, screenshot
from tests.facade.conftest import Web
from tests.facade.test_console import ADMIN, PASSWORD, STAFF, VIEWER, new_product, register_viewer, stock

WHEN = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
ANY = re.compile(".*")


async def sign_in(page: Page, email: str = ADMIN) -> None:
    await page.goto("/console/sign-in")
    await page.get_by_label("Email", exact=True).fill(email)
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/console/products$"))


async def receive(web: Web, product_id: str, quantity: int) -> None:
    """An entry recorded over gRPC, not through the page."""
    await web.mesh.inventory.RecordMovement(
        inventory_pb.RecordMovementRequest(
            product_id=product_id, type=inventory_pb.RecordMovementRequest.IN, quantity=quantity
        ),
        metadata=web.mesh.as_user(),
    )


def form(page: Page, name: str) -> Locator:
    """A form named by its heading."""
    return page.get_by_role("form", name=name, exact=True)


def body_rows(page: Page, caption: str | re.Pattern[str]) -> Locator:
    return page.get_by_role("table", name=caption).locator("tbody tr")


async def expect_stock(page: Page, *levels: list[str]) -> None:
    """The stock table's rows: location, on hand, reserved, available (reorder point and
    state are not compared)."""
    rows = body_rows(page, "Stock per location")
    await expect(rows).to_have_count(len(levels))
    for row, level in zip(await rows.all(), levels, strict=True):
        await expect(row.locator("td")).to_have_text([*level, ANY, ANY])


def ledger(page: Page) -> Locator:
    return body_rows(page, re.compile(r"^Movements, newest first"))


async def expect_newest_movement(page: Page, kind: str, change: str, balance: str, reason: str = "") -> None:
    await expect(ledger(page).first.locator("td")).to_have_text(
        [WHEN, kind, "DEFAULT", change, balance, reason, ADMIN]
    )


async def chart_table(page: Page) -> Locator:
    """The rows of the chart's data table, unfolded as a person would."""
    await page.get_by_text("The chart as a table").click()
    return body_rows(page, "Balance after each movement listed, newest first")


def chart_series(page: Page) -> Locator:
    """The series the chart's legend names."""
    return page.locator("#balance-chart .u-legend .u-label")


async def chart_picture(page: Page) -> str:
    """The balance chart as uPlot drew it, as a data URL; fails unless it drew something."""
    canvas = page.locator("#balance-chart canvas")
    await expect(canvas).to_have_count(1)
    painted = await canvas.evaluate(
        """canvas => {
            const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0;
            for (let alpha = 3; alpha < pixels.length; alpha += 4) painted += pixels[alpha] > 0;
            return painted;
        }"""
    )
    assert painted > 0, "the chart's canvas is blank"
    picture: str = await canvas.evaluate("canvas => canvas.toDataURL()")
    return picture


async def record(page: Page, kind: str, quantity: int, reason: str) -> None:
    movement = form(page, "Record an entry or exit")
    await movement.get_by_label(kind).check()
    await movement.get_by_label("Quantity").fill(str(quantity))
    await movement.get_by_label("Reason").fill(reason)
    await movement.get_by_role("button", name="Record the movement").click()
    await expect(page.get_by_role("status")).to_have_text("Movement recorded.")


async def tab_to(page: Page, target: Locator, most: int = 40) -> None:
    """Presses Tab until `target` has the focus: it is reachable from the keyboard, in order."""
    for _ in range(most):
        await page.keyboard.press("Tab")
        if await target.evaluate("element => element === document.activeElement"):
            # The focus shows: the console's ring, not the browser's default alone.
            assert await target.evaluate("element => getComputedStyle(element).outlineStyle") == "solid"
            return
    raise AssertionError(f"{most} presses of Tab never reached {target}")


async def test_a_staff_member_signs_in_and_creates_a_product(page: Page, web: Web) -> None:
    await page.goto("/console/")
    await expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    await assert_accessible(page)
    await screenshot(page, "sign-in")

    await page.get_by_label("Email", exact=True).fill(ADMIN)
    await page.get_by_label("Password", exact=True).fill("not the password")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("email or password")
    await expect(page.get_by_label("Email", exact=True)).to_have_value(ADMIN)
    await assert_accessible(page)
    await screenshot(page, "sign-in-refused")

    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Products")
    await expect(body_rows(page, re.compile("^All products"))).to_have_text(["No product found."])

    new = form(page, "New product")
    await expect(new).to_be_hidden()  # folded until asked for
    await page.get_by_text("New product", exact=True).click()
    await new.get_by_label("Name").fill("Oak crate")
    await new.get_by_label("SKU").fill(" ")  # passes `required`: the service refuses it
    await new.get_by_label("Price").fill("4.205")
    await new.get_by_role("button", name="Create the product").click()
    await expect(page.get_by_role("alert")).to_be_visible()
    sku, price = new.get_by_label("SKU"), new.get_by_label("Price")
    for refused in (sku, price):
        await expect(refused).to_have_attribute("aria-invalid", "true")
    await expect(price).to_have_accessible_description(re.compile(r"^Such as 12\.50 Error: .+"))
    await expect(new.get_by_label("Name")).to_have_value("Oak crate")
    await expect(new.get_by_label("Name")).not_to_have_attribute("aria-invalid", "true")
    await assert_accessible(page)
    await screenshot(page, "new-product-refused")

    await sku.fill("OAK-1")
    await price.fill("4.20")
    await new.get_by_label("Description").fill("Oak, 40 by 30 by 25 cm")
    await new.get_by_role("button", name="Create the product").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Oak crate")
    await expect(page.get_by_role("status")).to_have_text("Product created.")
    await expect(page.get_by_role("main")).to_contain_text("Oak, 40 by 30 by 25 cm")
    await expect(ledger(page)).to_have_text(["No movement."])

    await page.get_by_role("link", name="Products", exact=True).click()
    await expect(body_rows(page, re.compile("^All products")).locator("td")).to_have_text(
        ["Oak crate", "OAK-1", "0", "0", "Out of stock"]
    )
    await assert_accessible(page)
    await screenshot(page, "products")


async def test_entries_exits_and_a_count_update_the_stock_the_ledger_and_the_chart(
    page: Page, web: Web
) -> None:
    product_id = await new_product(web)
    await sign_in(page)
    await page.get_by_role("link", name="Console widget").click()
    await expect(page.locator("#balance-chart canvas")).to_have_count(0)  # nothing to draw yet

    await record(page, "Entry (stock received)", 10, "delivery")
    await expect_stock(page, ["DEFAULT", "10", "0", "10"])
    await expect_newest_movement(page, "Entry", "+10", "10", "delivery")
    await expect((await chart_table(page)).first.locator("td")).to_have_text([WHEN, "10", "10"])
    first_picture = await chart_picture(page)

    await record(page, "Exit (stock issued)", 3, "sale")
    await expect_stock(page, ["DEFAULT", "7", "0", "7"])
    await expect_newest_movement(page, "Exit", "\u22123", "7", "sale")
    await expect(ledger(page)).to_have_count(2)
    await expect(await chart_table(page)).to_have_count(2)
    assert await chart_picture(page) != first_picture
    await expect(chart_series(page)).to_have_text(["Time", "DEFAULT"])  # the total would be the same line

    count = form(page, "Set the stock (a count)")
    await count.get_by_label("Counted stock").fill("12")
    await count.get_by_label("Reason").fill("stocktake")
    await count.get_by_role("button", name="Show the change").click()
    confirm = form(page, "Confirm the count")
    await expect(page.locator("#count-confirm")).to_contain_text("DEFAULT: 7 → 12 (+5)")
    confirm_button = confirm.get_by_role("button", name="Confirm: set the stock to 12")
    await expect(confirm_button).to_be_focused()  # the step waits there, wherever it is on the page
    await expect_stock(page, ["DEFAULT", "7", "0", "7"])  # nothing is set before the confirm
    assert (await stock(web, product_id)).quantity == 7
    await assert_accessible(page)
    await screenshot(page, "set-stock-confirm")

    await confirm_button.click()
    await expect(page.get_by_role("status")).to_have_text("Stock set.")
    await expect_stock(page, ["DEFAULT", "12", "0", "12"])
    await expect_newest_movement(page, "Set", "+5", "12", "stocktake")
    assert (await stock(web, product_id)).quantity == 12

    # The filters, in place: the service lists what they keep, or says why it will not. The
    # page that answered the count must have loaded, htmx listening, before one is changed.
    await page.wait_for_load_state("load")
    await page.get_by_label("Type").select_option(label="Exit")
    await expect(ledger(page).locator("td:nth-child(2)")).to_have_text(["Exit"])
    await expect(await chart_table(page)).to_have_count(1)  # the chart is of the movements listed
    await page.get_by_label("From (date)").fill("2999-01-03")
    await page.get_by_label("To (date)").fill("2999-01-01")
    await expect(page.locator("#ledger-results").get_by_role("alert")).to_have_text(
        "end_time must not be before start_time"
    )
    await expect(ledger(page)).to_have_text(["No movement matches the filter."])


async def test_a_transfer_to_a_new_location_a_reservation_and_the_low_stock_list(
    page: Page, web: Web
) -> None:
    product_id = await new_product(web)
    await receive(web, product_id, 10)
    await sign_in(page)

    await page.get_by_role("link", name="Administration").click()
    location = form(page, "New location")
    await location.get_by_label("Code").fill("SHOP-1")
    await location.get_by_label("Name").fill("Shop")
    await location.get_by_role("button", name="Create location").click()
    await expect(page.get_by_role("status")).to_have_text("Location created.")
    await expect(body_rows(page, "Every location, by code").locator("td:first-child")).to_have_text(
        ["DEFAULT", "SHOP-1"]
    )
    await assert_accessible(page)

    await page.goto(f"/console/products/{product_id}")
    transfer = form(page, "Transfer between locations")
    await expect(transfer.get_by_label("From")).to_have_value(re.compile(".+"))
    await transfer.get_by_label("To").select_option(label="SHOP-1 · Shop")
    await transfer.get_by_label("Quantity").fill("4")
    await transfer.get_by_role("button", name="Transfer").click()
    await expect(page.get_by_role("status")).to_have_text("Transfer recorded.")
    await expect_stock(page, ["DEFAULT", "6", "0", "6"], ["SHOP-1", "4", "0", "4"])
    await expect(ledger(page).locator("td:nth-child(2)")).to_have_text(
        ["Entry (transfer)", "Exit (transfer)", "Entry"]
    )

    reserve = form(page, "Reserve")
    await reserve.get_by_label("Location").select_option(label="SHOP-1 · Shop")
    await reserve.get_by_label("Quantity").fill("3")
    await reserve.get_by_label("Reference (cart, order)").fill("order 77")
    await reserve.get_by_role("button", name="Reserve").click()
    await expect(page.get_by_role("status")).to_have_text("Reservation created.")
    await expect_stock(page, ["DEFAULT", "6", "0", "6"], ["SHOP-1", "4", "3", "1"])
    await expect(body_rows(page, "The product's newest reservations").locator("td")).to_have_text(
        [
            WHEN,
            "SHOP-1",
            "3",
            "Active",
            WHEN,
            "order 77",
            "Confirm the reservation of 3 Release the reservation of 3",
        ]
    )

    await expect(chart_series(page)).to_have_text(["Time", "DEFAULT", "SHOP-1", "All locations"])

    reorder = form(page, "Reorder point")
    await reorder.get_by_label("Low at or below").fill("6")
    await reorder.get_by_role("button", name="Save the reorder point").click()
    await expect(page.get_by_role("status")).to_have_text("Reorder point saved.")
    await assert_accessible(page)
    await screenshot(page, "product")

    await page.get_by_role("link", name="Low stock").click()
    await expect(body_rows(page, re.compile("^Low stock by location")).locator("td")).to_have_text(
        ["Console widget", "CON-1", "DEFAULT", "6", "6", "6"]
    )
    await assert_accessible(page)
    await screenshot(page, "low-stock")

    await page.get_by_role("link", name="Console widget").click()
    await page.get_by_role("link", name="Delete the product").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Delete Console widget?")
    await assert_accessible(page)
    await screenshot(page, "delete-product")
    await page.get_by_role("button", name="Delete the product").click()
    await expect(page.get_by_role("status")).to_have_text("Product deleted.")
    await expect(body_rows(page, re.compile("^All products"))).to_have_text(["No product found."])


async def test_signing_in_creating_a_product_and_recording_an_entry_take_the_keyboard_alone(
    page: Page, web: Web
) -> None:
    await page.goto("/console/sign-in")
    await tab_to(page, page.get_by_label("Email", exact=True))
    await page.keyboard.type(ADMIN)
    await page.keyboard.press("Tab")
    await page.keyboard.type(PASSWORD)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Products")

    await tab_to(page, page.get_by_text("New product", exact=True))
    await page.keyboard.press("Enter")  # opens the form
    await tab_to(page, page.get_by_label("Name", exact=True))
    for text in ("Pallet", "PAL-1", "12.00"):  # name, SKU, price: in the order they show
        await page.keyboard.type(text)
        await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Pallet")

    movement = form(page, "Record an entry or exit")
    await tab_to(page, movement.get_by_label("Entry (stock received)"))
    await page.keyboard.press("ArrowDown")  # the group's other choice: an exit, then back
    await expect(movement.get_by_label("Exit (stock issued)")).to_be_checked()
    await page.keyboard.press("ArrowUp")
    await expect(movement.get_by_label("Entry (stock received)")).to_be_checked()
    await page.keyboard.press("Tab")
    await page.keyboard.type("5")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("status")).to_have_text("Movement recorded.")
    await expect_stock(page, ["DEFAULT", "5", "0", "5"])


async def test_an_admin_sets_a_role_from_the_users_table_and_searches_it(page: Page, web: Web) -> None:
    await register_viewer(web)
    await sign_in(page)
    await page.get_by_role("link", name="Administration").click()
    users = body_rows(page, re.compile("^Every user, by email"))
    await expect(users.locator("th")).to_have_text([ADMIN, VIEWER, STAFF])
    await expect(users.nth(1).locator("td")).to_have_text(["", "viewer", "No", WHEN, ANY])

    await page.get_by_label(f"Role of {VIEWER}").select_option("staff")
    await page.get_by_role("button", name=f"Set role of {VIEWER}").click()
    await expect(page.get_by_role("status")).to_have_text("Role saved.")
    await expect(users.nth(1).locator("td").nth(1)).to_have_text("staff")
    await expect(page.get_by_label(f"Role of {VIEWER}")).to_have_value("staff")
    await assert_accessible(page)
    await screenshot(page, "admin")

    await page.get_by_label(f"Role of {ADMIN}").select_option("viewer")
    await page.get_by_role("button", name=f"Set role of {ADMIN}").click()
    await expect(page.get_by_role("alert")).to_contain_text("cannot take its own admin role")
    await expect(page.get_by_label(f"Role of {ADMIN}")).to_have_attribute("aria-invalid", "true")
    await assert_accessible(page)

    await page.get_by_role("link", name="Administration").click()
    # Loaded, not only parsed: htmx (a deferred script) listens to the search box from
    # DOMContentLoaded on, and a value typed before that would search nothing.
    await page.wait_for_url(re.compile(r"/console/admin$"), wait_until="load")
    await page.get_by_label("Search by email").fill("VIS")  # searched as it is typed
    await expect(body_rows(page, re.compile("^Users whose email contains")).locator("th")).to_have_text(
        [STAFF]
    )
    await expect(page).to_have_url(re.compile(r"/console/admin\?q=VIS$"))


async def test_a_viewer_sees_no_write_action(page: Page, web: Web) -> None:
    product_id = await new_product(web)
    await receive(web, product_id, 8)
    await register_viewer(web)
    await sign_in(page, VIEWER)
    await expect(page.get_by_text("New product")).to_have_count(0)
    await expect(page.get_by_role("button")).to_have_text(["Sign out", "Search"])

    await page.get_by_role("link", name="Console widget").click()
    await expect_stock(page, ["DEFAULT", "8", "0", "8"])
    await expect(page.get_by_role("heading", name="Change the stock")).to_have_count(0)
    await expect(page.get_by_role("button")).to_have_text(["Sign out", "Filter"])
    await expect(page.get_by_text("Edit the product")).to_have_count(0)
    await expect(page.get_by_role("link", name="Delete the product")).to_have_count(0)
    await assert_accessible(page)
    await screenshot(page, "product-viewer")

    await page.get_by_role("link", name="Administration").click()
    await expect(page.get_by_role("main")).to_contain_text("Only admins manage roles.")
    await expect(page.get_by_role("table", name=re.compile("user"))).to_have_count(0)
    await expect(page.get_by_role("button")).to_have_text(["Sign out"])


async def test_a_form_without_its_csrf_token_is_refused(page: Page, web: Web) -> None:
    product_id = await new_product(web)
    path = f"/console/products/{product_id}"
    await sign_in(page)
    await page.goto(path)
    movement = form(page, "Record an entry or exit")
    await movement.locator('input[name="csrf_token"]').evaluate("input => input.remove()")
    await movement.get_by_label("Quantity").fill("5")
    async with page.expect_response(f"**{path}/movements") as posted:
        await movement.get_by_role("button", name="Record the movement").click()
    assert (await posted.value).status == 403
    await expect(page.get_by_role("heading", level=1)).to_have_text("Not allowed")
    await expect(page.get_by_role("alert")).to_have_text(
        "This form has expired or did not come from this console. Reload the page and try again."
    )
    await assert_accessible(page)
    await screenshot(page, "csrf-refused")

    # The browser's cookies alone, as another site's form would send them (were they sent).
    sent = await page.request.post(f"{path}/movements", form={"type": "IN", "quantity": "5"})
    assert sent.status == 403 and "CSRF_TOKEN_INVALID" in await sent.text()
    assert (await stock(web, product_id)).quantity == 0


async def test_the_product_page_shows_a_movement_made_elsewhere_without_a_reload(
    page: Page, web: Web
) -> None:
    product_id = await new_product(web)
    await receive(web, product_id, 10)
    await sign_in(page)
    # The feed answers once it follows the ledger, from the page's cursor: a movement after that
    # reaches the page.
    async with page.expect_response(re.compile(rf"/console/products/{product_id}/feed\?after=\d+$")):
        await page.goto(f"/console/products/{product_id}")
    await expect(ledger(page)).to_have_count(1)
    await page.evaluate("window.sameDocument = true")

    recorded = await web.http.post(
        "/inventory",
        json={"productId": product_id, "type": "OUT", "quantity": 4, "reason": "till 2"},
        headers=web.staff,
    )
    assert recorded.status_code == 201, recorded.text

    await expect(page.get_by_role("status")).to_have_text("New movement: \u22124, balance 6.")
    await expect_stock(page, ["DEFAULT", "6", "0", "6"])
    await expect(ledger(page)).to_have_count(2)
    await expect_newest_movement(page, "Exit", "\u22124", "6", "till 2")
    assert await page.evaluate("window.sameDocument === true"), "the page reloaded"
    await chart_picture(page)  # drawn again with the new data
