"""The console's pages in headless Chromium: an agent opens a conversation for a stated
purpose, an operator holds and releases a job, and the dashboard draws its SVG charts. Every
page is checked with axe (WCAG 2.1 AA) and under the console's CSP, which must never have to
block anything.

Then every page of the dashboard, operator, auditor and agent areas, with real content, on a
phone and a desktop, in English and Italian: axe, the CSP, and no sideways scrolling. One
browser and one running console serve all of those (module scope); each viewport and language
gets one signed-in browser context, and each page a fresh tab in it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, ViewportSize, expect

from sigillo.gateway import queue
from sigillo.store.models import JobState, StaffRole
from tests.e2e.console_views import VIEWS, Furnished, View, furnish, layout_problems
from tests.e2e.console_views import sign_in as sign_in_with_language
from tests.peers.browser import DESKTOP, PHONE, axe_violations, chromium, new_page, screenshot
from tests.staff import seed_pages as seed
from tests.staff.harness import ConsoleHarness, Member, running_console, staff_settings


class Watch:
    """Every console message of a page, so a CSP violation anywhere in a flow is seen."""

    def __init__(self, page: Page) -> None:
        self.messages: list[str] = []
        page.on("console", self._add)

    def _add(self, message: ConsoleMessage) -> None:
        self.messages.append(f"{message.type}: {message.text}")

    def csp(self) -> list[str]:
        return [m for m in self.messages if "Content Security Policy" in m]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[ConsoleHarness]:
    async with running_console(
        staff_settings(tmp_path, f"sqlite:///{tmp_path}/sigillo.db")
    ) as harness:
        yield harness


async def sign_in(page: Page, console: ConsoleHarness, member: Member) -> None:
    await console.forget_last_code(member)
    await page.goto("/staff/login")
    await page.get_by_label("Email address").fill(member.email)
    await page.get_by_label("Password").fill(member.password)
    await page.locator("input[name=code]").fill(member.code())
    await page.locator("form[action='/staff/login'] button[type=submit]").click()
    await expect(page.locator("h1")).not_to_have_text("Sign in")


async def check(page: Page, watch: Watch) -> None:
    assert await axe_violations(page) == [], page.url
    assert watch.csp() == [], watch.csp()


async def test_agent_opens_with_a_purpose(
    browser: Browser, console: ConsoleHarness, tmp_path: Path
) -> None:
    s = await seed.conversation(console.store, console.keyring)
    ann = await console.member("ann@org.example", StaffRole.AGENT)
    context, page = await new_page(browser, base_url=console.url)
    watch = Watch(page)
    try:
        await sign_in(page, console, ann)
        await page.goto("/staff/conversations")
        await check(page, watch)
        await page.get_by_label("Recipient's email address (exact)").fill("pat@patients.example")
        await page.get_by_role("button", name="Search").click()
        # Checked only once the conversation's page has loaded, not during the navigation.
        async with page.expect_navigation():
            await page.get_by_role("link", name=f"Conversation {s.conversation_id}").click()
        await check(page, watch)
        assert seed.SECRET_BODY not in await page.content()
        await page.get_by_label("Reason", exact=True).fill("Patient asked about the results")
        await page.get_by_label("Case reference").fill("CASE-77")
        await page.get_by_role("button", name="Open content").click()
        banner = page.locator("#opened-banner")
        await expect(banner).to_contain_text("Opened by ann@org.example")
        await expect(banner).to_contain_text("for: Patient asked about the results (case CASE-77)")
        await expect(page.locator("article")).to_contain_text(seed.SECRET_BODY)
        await check(page, watch)
        await screenshot(page, tmp_path / "console-agent-content.png")
        [entry] = await console.audit("staff.content_opened")
        assert entry.details and entry.details["case_ref"] == "CASE-77"
    finally:
        await context.close()


async def test_operator_holds_and_releases(
    browser: Browser, console: ConsoleHarness, tmp_path: Path
) -> None:
    msg = await seed.message(console.store, console.keyring, queue.utcnow())
    job_id = await seed.copy(
        console.store, msg, "w@waiting.example", state=JobState.QUEUED, at=queue.utcnow()
    )
    olga = await console.member("olga@org.example", StaffRole.OPERATOR)
    context, page = await new_page(browser, base_url=console.url)
    watch = Watch(page)
    try:
        await sign_in(page, console, olga)
        await page.goto("/staff/queue")
        await check(page, watch)
        async with page.expect_navigation():
            await page.get_by_role("link", name=str(job_id), exact=True).click()
        await check(page, watch)
        await page.get_by_label("Reason (recorded in the audit log)").fill("patient on holiday")
        await page.get_by_role("button", name="Hold").click()
        await expect(page.get_by_role("status")).to_contain_text("The job is held.")
        assert (await seed.job(console.store, job_id)).state is JobState.HELD
        await check(page, watch)
        await page.get_by_label("Reason (recorded in the audit log)").fill("back from holiday")
        await page.get_by_role("button", name="Retry now").click()
        await expect(page.get_by_role("status")).to_contain_text("queued for an attempt now")
        assert (await seed.job(console.store, job_id)).state is JobState.QUEUED
        await screenshot(page, tmp_path / "console-operator-job.png")
        assert [e.action for e in await console.audit() if e.action.startswith("queue.")] == [
            "queue.held",
            "queue.released",
        ]
    finally:
        await context.close()


async def test_dashboard_draws_its_charts(
    browser: Browser, console: ConsoleHarness, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    msg = await seed.message(console.store, console.keyring, now)
    plan: seed.Plan = [
        (JobState.DELIVERED, True, None, 6),
        (JobState.DELIVERED, False, None, 2),
        (JobState.PORTAL, None, seed.NO_STARTTLS, 3),
        (JobState.PORTAL, None, seed.BAD_CERT, 2),
        (JobState.PORTAL, None, seed.POLICY, 1),
        (JobState.BOUNCED, None, "550 no such user", 1),
    ]
    await seed.copies(console.store, msg, plan, now)
    await seed.activity(console.store, "portal.register", now)
    await seed.activity(console.store, "portal.reply", now)
    member = await console.member("aud@org.example", StaffRole.AUDITOR)
    context, page = await new_page(browser, base_url=console.url)
    watch = Watch(page)
    try:
        await sign_in(page, console, member)
        await page.goto("/staff/dashboard")
        charts = page.locator("svg[role=img]")
        await expect(charts).to_have_count(4)
        for i in range(4):
            box = await charts.nth(i).bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 60
        await expect(page.locator("svg rect[data-value]").first).to_be_visible()
        await check(page, watch)
        await page.locator("summary").first.click()
        await expect(page.locator("details table").first).to_be_visible()
        await screenshot(page, tmp_path / "console-dashboard.png")
    finally:
        await context.close()


# -- every page, phone and desktop, English and Italian ----------------------------------------

VIEWPORTS: dict[str, ViewportSize] = {"phone": PHONE, "desktop": DESKTOP}
LANGUAGES = ("en", "it")


class Furnishings:
    """The module's running console with its rows, one signed-in browser context per viewport
    and language (made on first use), and where the phone screenshots go."""

    def __init__(
        self, browser: Browser, console: ConsoleHarness, furnished: Furnished, shots: Path
    ) -> None:
        self.browser = browser
        self.console = console
        self.furnished = furnished
        self.shots = shots
        self.contexts: dict[tuple[str, str], BrowserContext] = {}

    async def context(self, viewport: str, lang: str) -> BrowserContext:
        key = (viewport, lang)
        if key not in self.contexts:
            context, page = await new_page(
                self.browser, viewport=VIEWPORTS[viewport], base_url=self.console.url
            )
            self.contexts[key] = context
            await sign_in_with_language(page, self.console, self.furnished.member, lang)
            await page.close()
        return self.contexts[key]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def furnishings(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Furnishings]:
    tmp = tmp_path_factory.mktemp("console-views")
    async with (
        chromium() as browser,
        running_console(staff_settings(tmp, f"sqlite:///{tmp}/sigillo.db")) as console,
    ):
        shared = Furnishings(browser, console, await furnish(console), tmp / "phone")
        try:
            yield shared
        finally:
            for context in shared.contexts.values():
                await context.close()


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("viewport", VIEWPORTS)
@pytest.mark.parametrize("view", VIEWS, ids=[v.id for v in VIEWS])
async def test_page_reads_well(
    furnishings: Furnishings, view: View, viewport: str, lang: str
) -> None:
    context = await furnishings.context(viewport, lang)
    page = await context.new_page()
    watch = Watch(page)
    try:
        await view.show(page, furnishings.furnished)
        await expect(page.locator("html")).to_have_attribute("lang", lang)
        problems = [f"axe: {v}" for v in await axe_violations(page)]
        problems += await layout_problems(page)
        problems += watch.csp()
        if viewport == "phone":
            await screenshot(page, furnishings.shots / f"{view.id}-{lang}.png")
    finally:
        await page.close()
    assert problems == [], f"{view.id} ({viewport}, {lang})"
