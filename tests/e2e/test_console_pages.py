"""The console's pages in headless Chromium: an agent opens a conversation for a stated
purpose, an operator holds and releases a job, and the dashboard draws its SVG charts. Every
page is checked with axe (WCAG 2.1 AA) and under the console's CSP, which must never have to
block anything."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, expect

from sigillo.gateway import queue
from sigillo.store.models import JobState, StaffRole
from tests.peers.browser import axe_violations, chromium, new_page, screenshot
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
    plan = [
        (JobState.DELIVERED, True, None, 6),
        (JobState.DELIVERED, False, None, 2),
        (JobState.PORTAL, None, seed.NO_STARTTLS, 3),
        (JobState.PORTAL, None, seed.BAD_CERT, 2),
        (JobState.PORTAL, None, seed.POLICY, 1),
        (JobState.BOUNCED, None, "550 no such user", 1),
    ]
    n = 0
    for state, verified, reason, count in plan:
        for _ in range(count):
            n += 1
            await seed.copy(
                console.store,
                msg,
                f"r{n}@d{n % 4}.example",
                state=state,
                at=now,
                reason=reason,
                verified=verified,
                tls_version="TLSv1.3" if state is JobState.DELIVERED else None,
                outcome="tls" if state is JobState.DELIVERED else state.value,
            )
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
