"""What a browser test needs besides its fixtures (tests/browser/conftest.py): a page that may
reach only loopback, axe-core's verdict on a page, and screenshots for the docs.

Chromium is Debian's (`make test` installs it), driven by Playwright's async API on the run's
event loop, where the servers under test run too."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.async_api import Browser, Page, Route

ROOT = Path(__file__).resolve().parent.parent.parent
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "docs" / "console"
# `make screenshots` sets it: only then do the tests write docs/console/*.png.
TAKING_SCREENSHOTS = os.environ.get("INVMESH_SCREENSHOTS") == "1"
# The machine's network is closed: without the background-networking switches Chromium keeps
# trying Google's hosts. As root it runs only without its sandbox. Playwright adds a fresh
# --user-data-dir of its own at each launch.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Pages look the same on every machine and in every screenshot.
VIEWPORT = {"width": 1280, "height": 800}
FAILING_IMPACTS = ("serious", "critical")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def chromium_executable() -> str | None:
    """Debian's Chromium, or the browser INVMESH_CHROMIUM names; None if there is none."""
    return os.environ.get("INVMESH_CHROMIUM") or shutil.which("chromium")


@asynccontextmanager
async def opened_page(browser: Browser, base_url: str | None = None) -> AsyncIterator[Page]:
    """A page in a context of its own (no cookies or storage left by another test), with
    relative URLs resolved against `base_url`. A request beyond loopback is refused, as the
    real network would be, and fails the test when the page closes; so does a JavaScript
    error nothing caught."""
    context = await browser.new_context(
        base_url=base_url,
        viewport={"width": VIEWPORT["width"], "height": VIEWPORT["height"]},
        device_scale_factor=1,
        locale="en-GB",
        timezone_id="UTC",
        color_scheme="light",
        reduced_motion="reduce",
    )
    context.set_default_timeout(10_000)
    beyond_loopback: list[str] = []

    async def refuse(route: Route) -> None:
        beyond_loopback.append(route.request.url)
        await route.abort("blockedbyclient")

    await context.route(lambda url: urlsplit(url).hostname not in LOOPBACK, refuse)
    page = await context.new_page()
    uncaught: list[str] = []
    page.on("pageerror", lambda error: uncaught.append(f"{error.name}: {error.message}"))
    try:
        yield page
    finally:
        await context.close()
    assert not beyond_loopback, f"the page asked for addresses beyond loopback: {beyond_loopback}"
    assert not uncaught, f"the page threw errors nothing caught: {uncaught}"


async def assert_accessible(page: Page) -> None:
    """Runs axe-core on the page as it is now; fails on any serious or critical violation,
    listing each with the elements at fault. Lesser ones (a page without landmarks, say) pass."""
    # Evaluated through the DevTools protocol, so a page whose CSP forbids scripts still gets it.
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.evaluate(AXE.read_text(encoding="utf-8"))
    results: dict[str, Any] = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    failing = [v for v in results["violations"] if v["impact"] in FAILING_IMPACTS]
    assert not failing, f"axe-core finds on {page.url}:\n" + "\n".join(map(_describe, failing))


def _describe(violation: dict[str, Any], elements_shown: int = 3) -> str:
    nodes = violation["nodes"]
    lines = [f"- {violation['id']} ({violation['impact']}): {violation['help']} <{violation['helpUrl']}>"]
    for node in nodes[:elements_shown]:
        lines.append(f"    at {json.dumps(node['target'])}: {node['html']}")
        lines.extend(f"      {line}" for line in node["failureSummary"].splitlines())
    if len(nodes) > elements_shown:
        lines.append(f"    and {len(nodes) - elements_shown} more elements")
    return "\n".join(lines)


async def screenshot(page: Page, screen: str) -> None:
    """The whole page as docs/console/<screen>.png, with INVMESH_SCREENSHOTS=1 (`make
    screenshots`) only: other runs leave the committed pictures as they are."""
    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", screen):
        raise ValueError(f"screen names are lower-case words joined by hyphens: {screen!r}")
    if TAKING_SCREENSHOTS:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(
            path=SCREENSHOTS / f"{screen}.png", full_page=True, animations="disabled", caret="hide"
        )
