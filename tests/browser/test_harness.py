"""The harness fails a page that it should: axe-core's serious findings, a request beyond
loopback, an uncaught JavaScript error."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser

from tests.browser.harness import assert_accessible, opened_page

INACCESSIBLE = '<img src="data:,"><button></button>'  # no lang, no alt text, a button with no name
PLAIN = '<!DOCTYPE html><html lang="en"><title>Plain</title><h1>Plain</h1><p>Text outside any landmark.'


async def test_serious_and_critical_violations_fail_with_the_elements_at_fault(chromium: Browser) -> None:
    async with opened_page(chromium) as page:
        await page.set_content(INACCESSIBLE)
        with pytest.raises(AssertionError) as failure:
            await assert_accessible(page)
    report = str(failure.value)
    assert "- image-alt (critical)" in report and 'at ["img"]: <img src="data:,">' in report
    assert "- button-name (critical)" in report and "- html-has-lang (serious)" in report


async def test_moderate_violations_pass(chromium: Browser) -> None:
    async with opened_page(chromium) as page:
        await page.set_content(PLAIN)
        await assert_accessible(page)
        impacts = await page.evaluate("axe.run().then(result => result.violations.map(v => v.impact))")
    assert impacts and set(impacts) <= {"moderate", "minor"}  # findings, none serious


async def test_a_request_beyond_loopback_fails_the_test(chromium: Browser) -> None:
    with pytest.raises(AssertionError, match=r"beyond loopback: \['http://192.0.2.1/pixel.png'\]"):
        async with opened_page(chromium) as page:
            await page.set_content('<img src="http://192.0.2.1/pixel.png" alt="">')


async def test_an_uncaught_error_fails_the_test(chromium: Browser) -> None:
    with pytest.raises(AssertionError, match="errors nothing caught: \\['Error: boom'\\]"):
        async with opened_page(chromium) as page:
            await page.set_content("<script>throw new Error('boom')</script>")
