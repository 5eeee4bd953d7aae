"""Headless Chromium for the portal's end-to-end tests, driven by Playwright.

Playwright never downloads a browser here: it drives Debian's ``chromium`` package (installed by
scripts/test.sh). Plain functions, no pytest: the test modules build their fixtures on them.

    async with chromium() as browser:
        context, page = await new_page(browser, viewport=PHONE, locale="de-DE")
        try:
            await page.goto(url)
            assert await axe_violations(page) == []
        finally:
            await context.close()
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import cast

from playwright.async_api import Browser, BrowserContext, Page, ViewportSize, async_playwright

__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "DESKTOP",
    "PHONE",
    "WCAG_AA",
    "axe_violations",
    "chromium",
    "new_page",
    "screenshot",
]

CHROMIUM = "/usr/bin/chromium"
#: We run as root (no sandbox) without a GPU, on a network that reaches nothing but the test
#: servers: without the background-networking flags Chromium keeps trying Google's services.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1280, "height": 900}

#: axe-core rule tags: WCAG 2.0 and 2.1, levels A and AA.
WCAG_AA = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa")

# Runs axe and keeps what a failing assertion needs to show. Each node's ``target`` is a list of
# selectors, one per frame or shadow root on the way to the element.
_RUN_AXE = """async (tags) => {
    const results = await axe.run(document, {
        runOnly: {type: "tag", values: tags},
        resultTypes: ["violations"],
    });
    return results.violations.map((v) => ({
        id: v.id,
        impact: v.impact,
        help: v.help,
        targets: v.nodes.map((n) => n.target.flat(Infinity).join(" >>> ")),
    }));
}"""


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Start Playwright and a headless Chromium from `CHROMIUM`; stop both on exit."""
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(
            f"{CHROMIUM} is missing: install Debian's chromium package (scripts/test.sh does)"
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=list(CHROMIUM_ARGS), headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


async def new_page(
    browser: Browser,
    *,
    viewport: ViewportSize = DESKTOP,
    locale: str = "en-US",
    base_url: str | None = None,
) -> tuple[BrowserContext, Page]:
    """A page in a fresh context (its own cookie jar); the caller closes the context.

    `locale` sets Accept-Language and ``navigator.language``. The pages' CSP stays in force.
    """
    context = await browser.new_context(
        viewport=viewport,
        locale=locale,
        base_url=base_url,
        bypass_csp=False,
        accept_downloads=True,
    )
    try:
        page = await context.new_page()
    except BaseException:
        await context.close()
        raise
    return context, page


def _axe_source() -> str:
    package = resources.files("axe_playwright_python")
    return package.joinpath("axe.min.js").read_text(encoding="utf-8")


async def axe_violations(
    page: Page, *, rules: tuple[str, ...] = WCAG_AA
) -> list[dict[str, object]]:
    """Run axe-core on the current page; its violations of the rules tagged `rules`.

    Each violation is ``{"id", "impact", "help", "targets"}`` (`targets`: one CSS selector per
    offending element). axe is evaluated through the DevTools protocol rather than added as a
    <script> element, which the pages' CSP would block; it is loaded again after navigation.
    """
    if not await page.evaluate("typeof axe === 'object'"):
        await page.evaluate(_axe_source())
    violations = await page.evaluate(_RUN_AXE, list(rules))
    return cast(list[dict[str, object]], violations)


async def screenshot(page: Page, path: Path) -> None:
    """Write a full-page PNG of `page` to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=path, full_page=True, type="png")
