"""Browser tests: one headless Chromium per process (per xdist worker), and for each test a
fresh page in front of `web`, the facade serving the mesh on a real port. Helpers are in
tests/browser/harness.py. Tests that use the browser are marked `browser` here."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.browser.harness import CHROMIUM_ARGS, TAKING_SCREENSHOTS, chromium_executable, opened_page
from tests.facade.conftest import Web
from tests.facade.conftest import web as web  # the facade in front of the mesh, for the pages


# Before `-m browser` / `-m "not browser"` picks the tests.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "chromium" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless. Without it the browser tests skip, but under CI or `make
    screenshots` they fail: a browser test that never ran must not pass for one that did."""
    executable = chromium_executable()
    if executable is None:
        reason = "no Chromium on PATH nor in INVMESH_CHROMIUM: `make test`, run as root, installs Debian's"
        if os.environ.get("CI") == "true" or TAKING_SCREENSHOTS:
            pytest.fail(f"{reason} (CI=true or INVMESH_SCREENSHOTS=1: browser tests may not skip)")
        pytest.skip(reason)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def page(chromium: Browser, web: Web) -> AsyncIterator[Page]:
    """A fresh page whose relative URLs go to `web`'s facade: `await page.goto("/docs")`."""
    async with opened_page(chromium, str(web.http.base_url)) as page:
        yield page
