"""The recipient's whole journey in headless Chromium, against the real listener, worker,
portal, Postfix and dnsmasq.

plain.test's MX offers no STARTTLS, so staff mail to it lands in the portal and only the
notifications (and the "send me a copy" mail) reach Postfix. Every page is checked with axe
(WCAG 2.1 AA) and under the portal's own CSP, which must never have to block anything.

Chromium is launched per test (about half a second): the gateway lives in each test's own
event loop, and a module-wide browser would need a module-wide loop.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, expect

from tests.integration.gateway import Gateway, received, running_gateway
from tests.peers.browser import axe_violations, chromium, new_page
from tests.peers.dnsmasq import DnsmasqPeer
from tests.peers.fixtures import MxPeers
from tests.peers.postfix import ReceivedMail
from tests.portal.harness import (
    GOOD_PASSWORD,
    PortalHarness,
    portal_settings,
    running_portal,
    staff_message,
)

STAFF = "doctor@org.example"
NOTIFICATION_SUBJECT = "You have a secure message"
_LINK = re.compile(r"https?://\S+/c/[A-Za-z0-9_-]+")
_PARSER = BytesParser(_class=EmailMessage, policy=default_policy)

# A small but well-formed PDF; the high bytes in its binary marker comment must come back
# unchanged from the download.
PDF = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
    b"1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\n"
    b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"
)


class Console:
    """Every console message of a page, so a CSP violation anywhere in a flow is seen."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.messages: list[str] = []
        page.on("console", self._add)

    def _add(self, message: ConsoleMessage) -> None:
        self.messages.append(f"{self.page.url}: {message.type}: {message.text}")

    def csp_violations(self) -> list[str]:
        return [m for m in self.messages if "Content Security Policy" in m]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


@pytest.fixture
async def portal(tmp_path: Path) -> AsyncIterator[PortalHarness]:
    """The portal alone (SQLite), for pages that need no mail to flow."""
    settings = portal_settings(tmp_path, f"sqlite:///{tmp_path}/portal.db")
    async with running_portal(settings) as harness:
        yield harness


def parse(raw: bytes) -> EmailMessage:
    return _PARSER.parsebytes(raw)


def body_text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert isinstance(part, EmailMessage), message
    content = part.get_content()
    assert isinstance(content, str)
    return content


def attachments(message: EmailMessage) -> dict[str, bytes]:
    found = {}
    for part in message.iter_attachments():
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        found[part.get_filename() or ""] = data
    return found


async def notification_links(mx: MxPeers, recipient: str, count: int) -> list[str]:
    """The portal links of the first ``count`` notifications to ``recipient`` (Maildir order
    is not arrival order: callers tell them apart by value)."""

    def is_notification(mail: ReceivedMail) -> bool:
        return mail.recipient == recipient and mail.message["Subject"] == NOTIFICATION_SUBJECT

    mails = await received(mx, count, is_notification)
    links = []
    for mail in mails:
        found = set(_LINK.findall(body_text(mail.message)))
        assert len(found) == 1, found  # the English and Italian text share one link
        links.append(found.pop())
    return links


async def relayed(
    gateway: Gateway, match: Callable[[EmailMessage], bool], timeout: float = 30
) -> tuple[list[str], EmailMessage]:
    """Wait for mail sigillo hands to the organisation's relay; (envelope rcpts, message)."""
    deadline = time.monotonic() + timeout
    while True:
        for _, rcpts, raw in list(gateway.relay.received):
            message = parse(raw)
            if match(message):
                return rcpts, message
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing relayed matched; got {len(gateway.relay.received)}")
        await asyncio.sleep(0.05)


async def assert_accessible(page: Page) -> None:
    violations = await axe_violations(page)
    assert violations == [], f"{page.url}: {violations}"


@pytest.mark.peers
async def test_notification_to_reply_to_answer(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer, browser: Browser
) -> None:
    marker = secrets.token_hex(5)
    recipient = f"someone-{marker}@plain.test"
    staff_text = f"Dear patient, your blood test results are attached. Ref {marker}."
    reply_text = f"Thank you. Do I need to repeat the fasting test? Ref {marker}."
    answer_text = f"No need: the values are fine. See you in June. Ref {marker}."
    note = b"Taking 5 mg of ramipril daily.\n"
    original = staff_message(
        recipient,
        subject="Your blood test results",
        text=staff_text,
        attachments=(("results.pdf", "application/pdf", PDF),),
        sender=STAFF,
    )
    original_id = parse(original)["Message-ID"]

    async with running_gateway(tmp_path, mx_peers, dns_peer, portal=True) as gateway:
        await gateway.send(STAFF, [recipient], original)
        [first_link] = await notification_links(mx_peers, recipient, 1)
        assert first_link.startswith(f"{gateway.portal_url}/c/")

        context, page = await new_page(browser, base_url=gateway.portal_url)
        console = Console(page)
        try:
            # First visit: the link asks for a password and shows no content yet.
            await page.goto(first_link)
            await expect(page.get_by_role("heading", level=1)).to_have_text("Create your password")
            await expect(page.get_by_text(staff_text)).to_have_count(0)
            await assert_accessible(page)
            await page.get_by_label("New password", exact=True).fill(GOOD_PASSWORD)
            await page.get_by_label("Repeat the new password", exact=True).fill(GOOD_PASSWORD)
            await page.get_by_role("button", name="Create password and open the message").click()

            await expect(page).to_have_url(re.compile(r"/conversations/\d+$"))
            conversation_url = page.url
            await expect(page.get_by_text(staff_text)).to_be_visible()
            await assert_accessible(page)

            async with page.expect_download() as download_info:
                await page.get_by_role("link", name="results.pdf").click()
            download = await download_info.value
            assert download.suggested_filename == "results.pdf"
            saved = await download.path()
            assert Path(saved).read_bytes() == PDF

            # Reply with a file, asking for a copy.
            await page.get_by_label("Your message", exact=True).fill(reply_text)
            files: Any = {"name": "medication.txt", "mimeType": "text/plain", "buffer": note}
            await page.get_by_label("Attachments (optional)", exact=True).set_input_files(files)
            await page.get_by_label("Send me a copy of my reply by email").check()
            await page.get_by_role("button", name="Send reply").click()
            await expect(page.get_by_role("status")).to_contain_text("A copy is on its way")
            await assert_accessible(page)

            rcpts, reply = await relayed(
                gateway, lambda m: parseaddr(str(m["From"]))[1] == recipient
            )
            assert rcpts == [STAFF]
            assert parseaddr(str(reply["To"]))[1] == STAFF
            assert str(reply["In-Reply-To"]) == original_id
            assert reply_text in body_text(reply)
            assert attachments(reply) == {"medication.txt": note}
            reply_id = str(reply["Message-ID"])

            [copy] = await received(
                mx_peers,
                1,
                lambda m: (
                    m.recipient == recipient
                    and str(m.message["Subject"]).startswith("Copy of your reply")
                ),
            )
            copy_text = body_text(copy.message)
            assert "This is the copy you asked for" in copy_text
            assert reply_text in copy_text
            assert attachments(copy.message) == {"medication.txt": note}

            # Staff answer by email, threaded on the reply: a second notification.
            answer = staff_message(
                recipient,
                subject="Re: Your blood test results",
                text=answer_text,
                sender=STAFF,
                in_reply_to=reply_id,
            )
            await gateway.send(STAFF, [recipient], answer)
            links = await notification_links(mx_peers, recipient, 2)
            [second_link] = [link for link in links if link != first_link]

            await page.goto(second_link)
            await expect(page).to_have_url(conversation_url)
            messages = page.get_by_role("article")
            await expect(messages).to_have_count(3)
            await expect(messages.nth(0)).to_contain_text(staff_text)
            await expect(messages.nth(1)).to_contain_text(reply_text)
            await expect(messages.nth(1).get_by_role("heading", level=2)).to_have_text("Your reply")
            await expect(messages.nth(1)).to_contain_text("medication.txt")
            await expect(messages.nth(2)).to_contain_text(answer_text)
            await assert_accessible(page)

            # Signed out, the conversation asks for the password again.
            await page.get_by_role("button", name="Sign out").click()
            await expect(page).to_have_url(re.compile(r"/login\b"))
            await page.goto(conversation_url)
            await expect(page).to_have_url(re.compile(r"/login\?next=/conversations/\d+"))
            await expect(page.get_by_text(answer_text)).to_have_count(0)
            await assert_accessible(page)
            await page.get_by_label("Email address").fill(recipient)
            await page.get_by_label("Password", exact=True).fill(GOOD_PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page).to_have_url(conversation_url)
            await expect(page.get_by_role("article")).to_have_count(3)
            await expect(page.get_by_text(answer_text)).to_be_visible()
        finally:
            await context.close()
    assert console.csp_violations() == []


_FOCUSED = """() => {
    const el = document.activeElement;
    const style = getComputedStyle(el);
    const box = el.getBoundingClientRect();
    return {
        tag: el.tagName.toLowerCase(),
        id: el.id,
        text: el.textContent.trim(),
        focusVisible: el.matches(":focus-visible"),
        outlineStyle: style.outlineStyle,
        outlineWidth: style.outlineWidth,
        onScreen: box.width > 0 && box.height > 0 && box.left >= 0 && box.top >= 0
            && box.right <= innerWidth,
    };
}"""


async def focused(page: Page) -> dict[str, Any]:
    found: dict[str, Any] = await page.evaluate(_FOCUSED)
    return found


def stop_name(stop: dict[str, Any]) -> str:
    return str(stop["id"] or f"{stop['tag']}:{stop['text']}")


async def test_login_page_by_keyboard(browser: Browser, portal: PortalHarness) -> None:
    context, page = await new_page(browser, base_url=portal.url)
    console = Console(page)
    try:
        await page.goto("/login")
        await page.keyboard.press("Tab")
        skip = await focused(page)
        assert (skip["tag"], skip["text"]) == ("a", "Skip to content")
        assert skip["onScreen"], "the skip link must show when it has focus"

        stops = [skip]
        while stops[-1]["text"] != "Sign in" and len(stops) < 15:
            await page.keyboard.press("Tab")
            stops.append(await focused(page))
        names = [stop_name(s) for s in stops]
        assert names[-3:] == ["email", "password", "button:Sign in"], names
        for stop in stops:
            assert stop["focusVisible"], stop
            assert stop["outlineStyle"] != "none" and stop["outlineWidth"] != "0px", stop

        # The skip link leads past the header, straight to the form.
        await page.goto("/login")
        await page.keyboard.press("Tab")
        await page.keyboard.press("Enter")
        await page.keyboard.press("Tab")
        assert stop_name(await focused(page)) == "email"
    finally:
        await context.close()
    assert console.csp_violations() == []


async def test_italian_and_language_switch(browser: Browser, portal: PortalHarness) -> None:
    context, page = await new_page(browser, locale="it-IT", base_url=portal.url)
    console = Console(page)
    sign_in = page.get_by_role("button", name="Accedi", exact=True)
    try:
        await page.goto("/login")
        await expect(page.locator("html")).to_have_attribute("lang", "it")
        await expect(sign_in).to_be_visible()
        await expect(page.get_by_role("link", name="Vai al contenuto")).to_have_count(1)
        await assert_accessible(page)

        await page.get_by_role("button", name="English").click()
        await expect(page.locator("html")).to_have_attribute("lang", "en")
        await expect(page.get_by_role("button", name="Sign in", exact=True)).to_be_visible()
        await expect(page.get_by_role("button", name="English")).to_have_attribute(
            "aria-current", "true"
        )
        # The choice outlasts the page, whatever the browser's own language.
        await page.goto("/forgot")
        await expect(page.get_by_role("heading", level=1)).to_have_text("Reset your password")

        await page.goto("/login")
        await page.get_by_role("button", name="Italiano").click()
        await expect(page.locator("html")).to_have_attribute("lang", "it")
        await expect(sign_in).to_be_visible()
    finally:
        await context.close()
    assert console.csp_violations() == []


@pytest.mark.parametrize("where", ["register", "reset"])
async def test_language_switch_stays_on_a_link_page(
    browser: Browser, portal: PortalHarness, where: str
) -> None:
    """Pages reached from an emailed link cannot be found again without the email."""
    recipient = f"someone-{secrets.token_hex(5)}@plain.test"
    seeded = await portal.seed(recipient)
    path, heading = f"/c/{seeded.token}", "Crea la tua password"
    if where == "reset":
        await portal.client().register(seeded.token)
        issued = await portal.portal.accounts.request_reset(
            recipient, "127.0.0.1", datetime.now(UTC)
        )
        assert issued is not None
        path, heading = f"/reset/{issued[1]}", "Scegli una nuova password"
    context, page = await new_page(browser, base_url=portal.url)
    try:
        await page.goto(path)
        await page.get_by_role("button", name="Italiano").click()
        await expect(page.locator("html")).to_have_attribute("lang", "it")
        # The switch returns to the same page: a first-time visitor has no password yet, and
        # a reset link's page could not be found again without the email.
        # (The language has changed, so the page is loaded: no need to wait.)
        assert page.url == f"{portal.url}{path}"
        assert await page.get_by_role("heading", level=1).inner_text() == heading
    finally:
        await context.close()


async def test_console_shows_csp_violations(browser: Browser, portal: PortalHarness) -> None:
    """The CSP assertions above can fail: a blocked load is reported on the console."""
    context, page = await new_page(browser, base_url=portal.url)
    console = Console(page)
    try:
        await page.goto("/login")
        await page.evaluate(
            """() => {
                const img = document.createElement("img");
                img.src = "http://127.0.0.1:9/blocked.png";
                document.body.append(img);
            }"""
        )
        for _ in range(100):
            if console.csp_violations():
                break
            await asyncio.sleep(0.05)
        assert console.csp_violations(), console.messages
    finally:
        await context.close()
