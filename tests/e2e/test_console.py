"""The staff console in headless Chromium: an administrator opens the enrolment link, reads
the key off the page, sets up the second factor and a password, signs in, adds a colleague,
sets a domain policy, switches to Italian and signs out; on a phone and on a desktop.

Every page is checked with axe (WCAG 2.1 A/AA) and under the console's CSP, which must never
have to block anything (the console has no script and no inline style).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyotp
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, ViewportSize, expect

from sigillo.policies import DomainPolicies
from sigillo.store.models import StaffRole
from tests.peers.browser import DESKTOP, PHONE, axe_violations, chromium, new_page
from tests.staff.harness import GOOD_PASSWORD, ConsoleHarness, running_console, staff_settings


class Messages:
    """Every console message of a page, so a CSP violation anywhere in the flow is seen."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.seen: list[str] = []
        page.on("console", self._add)

    def _add(self, message: ConsoleMessage) -> None:
        self.seen.append(f"{self.page.url}: {message.type}: {message.text}")

    def csp_violations(self) -> list[str]:
        return [m for m in self.seen if "Content Security Policy" in m]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[ConsoleHarness]:
    settings = staff_settings(tmp_path, f"sqlite:///{tmp_path}/console.db")
    async with running_console(settings) as harness:
        yield harness


async def accessible(page: Page) -> None:
    violations = await axe_violations(page)
    assert violations == [], f"{page.url}: {violations}"


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
async def test_enrol_sign_in_administer_sign_out(
    console: ConsoleHarness, browser: Browser, viewport: ViewportSize
) -> None:
    ada = await console.member("ada@org.example", StaffRole.ADMIN, enrolled=False)
    context, page = await new_page(browser, viewport=viewport, base_url=console.url)
    messages = Messages(page)
    try:
        # The enrolment link: the key as a QR code and as text.
        await page.goto(f"/staff/enrol/{ada.enrolment_token}")
        await expect(page.get_by_role("heading", level=1)).to_have_text("Set up your staff account")
        await expect(
            page.get_by_role("img", name=re.compile("QR code for an authenticator app"))
        ).to_be_visible()
        await accessible(page)
        secret = (await page.locator("#totp-secret").inner_text()).replace(" ", "")
        assert secret == ada.secret
        await page.get_by_label("New password", exact=True).fill(GOOD_PASSWORD)
        await page.get_by_label("Repeat the new password", exact=True).fill(GOOD_PASSWORD)
        await page.get_by_label("Code from your authenticator app").fill(pyotp.TOTP(secret).now())
        await page.get_by_role("button", name="Finish and sign in").click()

        # Signed in: the landing page is the first the roles open.
        await expect(page.get_by_text("Signed in as ada@org.example")).to_be_visible()
        await accessible(page)

        # Add a colleague; the link is shown once.
        await page.get_by_role("link", name="Staff accounts").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Staff accounts")
        await accessible(page)
        await page.get_by_label("Email address").fill("olga@org.example")
        await page.get_by_label("operator").check()
        await page.get_by_label("auditor").check()
        await page.get_by_role("button", name="Add and show the enrolment link").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text(
            "Enrolment link for olga@org.example"
        )
        link = await page.locator("#enrolment-link").inner_text()
        assert re.fullmatch(r"http://127\.0\.0\.1:8080/staff/enrol/[A-Za-z0-9_-]{43}", link)
        await accessible(page)

        # Set a domain policy.
        await page.get_by_role("link", name="Domain policies").click()
        await accessible(page)
        await page.get_by_label("Domain", exact=True).fill("clinic.example")
        await page.get_by_label("TLS level").select_option("encrypt")
        await page.get_by_label("Retention in days").fill("30")
        await page.get_by_role("button", name="Save policy").click()
        await expect(page.get_by_role("status")).to_have_text("The policy was saved.")
        await expect(page.get_by_role("cell", name="clinic.example")).to_be_visible()
        await accessible(page)
        rule = (await DomainPolicies.load(console.store)).rules["clinic.example"]
        assert (rule.tls, rule.retention_days) == ("encrypt", 30)

        # In Italian.
        await page.get_by_role("button", name="Italiano").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Regole per dominio")
        await accessible(page)
        await page.get_by_role("button", name="English").click()

        # Sign out, and back in with password and a new code.
        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_role("status")).to_have_text("You have signed out.")
        await accessible(page)
        await page.get_by_label("Email address").fill(ada.email)
        await page.get_by_label("Password", exact=True).fill(GOOD_PASSWORD)
        # The code of the next step (accepted for clock drift): the enrolment spent this one.
        next_code = pyotp.TOTP(secret).at(datetime.now(UTC) + timedelta(seconds=30))
        await page.get_by_label("Code from your authenticator app").fill(next_code)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_text("Signed in as ada@org.example")).to_be_visible()

        # A page the roles do not open: the 403 page, not a redirect.
        olga = await console.member("oscar@org.example", StaffRole.AGENT)
        await page.get_by_role("button", name="Sign out").click()
        await page.get_by_label("Email address").fill(olga.email)
        await page.get_by_label("Password", exact=True).fill(GOOD_PASSWORD)
        await page.get_by_label("Code from your authenticator app").fill(olga.code())
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_text("Signed in as oscar@org.example")).to_be_visible()
        response = await page.goto("/staff/admin/staff")
        assert response is not None and response.status == 403
        await expect(page.get_by_role("heading", level=1)).to_have_text("Not allowed")
        await accessible(page)
    finally:
        await context.close()
    assert messages.csp_violations() == []
    actions = [e.action for e in await console.audit()]
    for action in ("staff.enrolled", "staff.added", "policy.changed", "staff.logout"):
        assert action in actions
