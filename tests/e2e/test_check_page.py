"""The page "Is this email really from us?" in headless Chromium: a .eml file uploaded and a
source pasted, in English and Italian, on a phone and a desktop. Every state of the page is
checked with axe (WCAG 2.1 A/AA), under the portal's own CSP (which must block nothing), and
for sideways scrolling."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, ViewportSize, expect

from tests.e2e.console_views import layout_problems
from tests.e2e.test_portal_flow import Console, assert_accessible
from tests.integration.test_check_cli import imitation, org_mail
from tests.peers.browser import DESKTOP, PHONE, chromium, new_page
from tests.portal.harness import PortalHarness, running_portal
from tests.portal.test_check_page import check_settings

TEXT = {
    "en": {
        "title": "Is this email really from us?",
        "genuine": "This email really comes from us",
        "phishing": "This email is not from us: it is an imitation",
        "howto": "How do I get an email's source?",
        "switch": "English",
    },
    "it": {
        "title": "Questa email viene davvero da noi?",
        "genuine": "Questa email viene davvero da noi",
        "phishing": "Questa email non viene da noi: è un'imitazione",
        "howto": "Come ottengo il sorgente di un'email?",
        "switch": "Italiano",
    },
}
# Longer than a phone is wide, with no hyphen or space to break at: the evidence must wrap.
LONG_REPLY_TO = "assistenzaclientiverificaaccountsicurezzaimmediata@serviziesterniverifica.example"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


@pytest.fixture
async def portal(tmp_path: Path) -> AsyncIterator[PortalHarness]:
    settings = check_settings(tmp_path, f"sqlite:///{tmp_path}/portal.db")
    async with running_portal(settings) as harness:
        yield harness


async def assert_fits(page: Page) -> None:
    problems = await layout_problems(page)
    assert problems == [], f"{page.url}: {problems}"


async def submit(page: Page) -> None:
    async with page.expect_navigation():
        await page.locator("form[action='/check'] button[type=submit]").click()


@pytest.mark.parametrize("lang", ["en", "it"])
@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
async def test_upload_and_paste(
    browser: Browser, portal: PortalHarness, tmp_path: Path, lang: str, viewport: ViewportSize
) -> None:
    text = TEXT[lang]
    locale = "it-IT" if lang == "it" else "en-GB"
    context, page = await new_page(browser, viewport=viewport, locale=locale, base_url=portal.url)
    console = Console(page)
    try:
        # Reached from the sign-in page, with no account.
        await page.goto("/login")
        await page.locator("main a[href='/check']").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text(text["title"])
        await page.get_by_text(text["howto"]).click()  # the help, opened for axe to see
        await assert_accessible(page)
        await assert_fits(page)

        # An imitation, uploaded as a file.
        fake = imitation(to="anna@example.net").replace(
            b"\nSubject:", f"\nReply-To: {LONG_REPLY_TO}\r\nSubject:".encode(), 1
        )
        files: Any = {"name": "message.eml", "mimeType": "message/rfc822", "buffer": fake}
        await page.locator("#eml").set_input_files(files)
        await page.locator("#recipient").fill("anna@example.net")
        await submit(page)
        verdict = page.get_by_role("heading", level=2).first
        await expect(verdict).to_have_text(text["phishing"])
        await expect(page.locator(".evidence").first).to_be_visible()
        await expect(page.get_by_text(LONG_REPLY_TO, exact=False)).to_have_count(1)
        await assert_accessible(page)
        await assert_fits(page)

        # The organisation's own mail, pasted.
        source = org_mail(tmp_path / "dkim.key", to="anna@example.net").decode()
        await page.locator("#source").fill(source)
        await submit(page)
        await expect(page.get_by_role("heading", level=2).first).to_have_text(text["genuine"])
        await assert_accessible(page)
        await assert_fits(page)

        # The language switch returns to the page, in the other language.
        other = "en" if lang == "it" else "it"
        await page.get_by_role("button", name=TEXT[other]["switch"]).click()
        await expect(page.locator("html")).to_have_attribute("lang", other)
        await expect(page.get_by_role("heading", level=1)).to_have_text(TEXT[other]["title"])
    finally:
        await context.close()
    assert console.csp_violations() == []


async def test_a_form_error_is_announced_and_tied_to_the_fields(
    browser: Browser, portal: PortalHarness
) -> None:
    context, page = await new_page(browser, viewport=PHONE, base_url=portal.url)
    console = Console(page)
    try:
        await page.goto("/check")
        await submit(page)
        await expect(page.get_by_role("alert")).to_contain_text(
            "Paste the email's source or choose its .eml file."
        )
        described = await page.locator("#source").get_attribute("aria-describedby")
        assert described == "form-errors"
        await assert_accessible(page)
        await assert_fits(page)
    finally:
        await context.close()
    assert console.csp_violations() == []
