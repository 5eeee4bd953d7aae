"""The console's dashboard, operator, reports, auditor and agent pages as the view tests walk
them: the rows that give every page real content, the pages themselves, and the layout checks
a phone needs (nothing wider than the screen, no chart cut off).

    furnished = await furnish(console)
    for view in VIEWS:
        await view.show(page, furnished)
        assert await layout_problems(page) == []
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast
from urllib.parse import quote

from playwright.async_api import Page, Response, expect

from sigillo.gateway.inbound import Arrival, Inbound
from sigillo.store.models import JobState, StaffRole
from tests.portal.harness import PortalClient
from tests.staff import seed_pages as seed
from tests.staff.harness import ConsoleHarness, Member

__all__ = ["VIEWS", "Furnished", "View", "furnish", "layout_problems", "sign_in"]

RECIPIENT = "pat@patients.example"
#: Long enough to wrap on a phone: addresses and reasons are what overflows tables first.
LONG_RECIPIENT = "maria.rossi-bianchi@ospedale-san-raffaele-milano.example"


@dataclass(frozen=True)
class Furnished:
    """What the pages show: one member with every role the pages need, and the rows to open."""

    member: Member
    waiting_job: int
    """Queued, with a long recipient: the page offers hold and bounce."""
    held_job: int
    """Held through the console itself (so the audit log has the operator's entry)."""
    finished_job: int
    """Handed to the portal after a failed attempt with the longest reason of the set."""
    conversation_id: int
    """A portal conversation with the organisation's message and the recipient's reply."""
    report_id: int
    """A phishing report carrying a forwarded imitation with long headers and links."""


async def furnish(console: ConsoleHarness) -> Furnished:
    """Jobs in every state the pages tell apart, a conversation with a reply, and audit entries
    written by the portal and the console as they write them."""
    now = datetime.now(UTC)
    msg = await seed.message(console.store, console.keyring, now)
    plan: seed.Plan = [
        (JobState.DELIVERED, True, None, 4),
        (JobState.DELIVERED, False, None, 2),
        (JobState.PORTAL, None, seed.NO_STARTTLS, 2),
        (JobState.PORTAL, None, seed.HANDSHAKE, 1),
        (JobState.PORTAL, None, seed.POLICY, 1),
        (JobState.BOUNCED, None, "550 5.1.1 no such user", 1),
    ]
    await seed.copies(console.store, msg, plan, now)
    finished = await seed.copy(
        console.store,
        msg,
        "r0@b.example",
        state=JobState.PORTAL,
        at=now,
        reason=seed.BAD_CERT,
        outcome="portal",
    )
    waiting = await seed.copy(console.store, msg, LONG_RECIPIENT, state=JobState.QUEUED, at=now)
    to_hold = await seed.copy(
        console.store, msg, "w@waiting.example", state=JobState.QUEUED, at=now
    )
    conversation = await seed.conversation(console.store, console.keyring, RECIPIENT)
    await _reply(console, conversation)
    report = await _report(console, now)

    member = await console.member(
        "ann@org.example", StaffRole.AGENT, StaffRole.OPERATOR, StaffRole.AUDITOR
    )
    staff = await console.signed_in(member)
    held = await staff.post(f"/staff/jobs/{to_hold}/hold", reason="patient on holiday")
    assert held.status_code == 303, held.text[:500]
    searched = await staff.get(f"/staff/conversations?address={quote(RECIPIENT)}")
    assert searched.status_code == 200, searched.text[:500]
    return Furnished(member, waiting, to_hold, finished, conversation.conversation_id, report)


#: A forwarded imitation: long unbroken header values and links are what overflow first.
REPORTED = (
    f"From: Banca Org Example <sicurezza@org-example-verifica-account.example>\r\n"
    f"To: {LONG_RECIPIENT}\r\nSubject: Conferma subito il tuo account\r\n"
    "Message-ID: <" + "a1b2c3d4" * 12 + "@org-example-verifica-account.example>\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    "Gentile cliente, inserisci la tua password qui: "
    "http://198.51.100.7/" + "login-verifica-" * 8 + "\r\n"
).encode()


async def _report(console: ConsoleHarness, now: datetime) -> int:
    """A report as the listener stores one: forwarded as an attachment, checked."""
    wrapped = (
        b"From: pat@patients.example\r\nTo: phish-report@org.example\r\nSubject: Fwd\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nIs this you?\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\n\r\n" + REPORTED + b"\r\n--b--\r\n"
    )
    inbound = Inbound(console.settings, console.store, console.keyring)
    arrival = Arrival(wrapped, wrapped, "pat@patients.example", "192.0.2.7", now)
    return await console.store.write(await inbound.report(arrival))


async def _reply(console: ConsoleHarness, conversation: seed.Seeded) -> None:
    """The recipient registers through the notification link and answers in the portal."""
    portal = PortalClient(console.url, "127.0.0.1")
    try:
        registered = await portal.register(conversation.token)
        assert registered.status_code == 303, registered.text[:500]
        path = f"/conversations/{conversation.conversation_id}"
        replied = await portal.submit(path, f"{path}/reply", body="Can I call you tomorrow?")
        assert replied.status_code == 303, replied.text[:500]
    finally:
        await portal.close()


async def sign_in(page: Page, console: ConsoleHarness, member: Member, lang: str) -> None:
    """Sign in through the form (by field ids: the labels are translated), then choose the
    language with the header's switch, as a member of staff does."""
    await console.forget_last_code(member)
    await page.goto("/staff/login")
    await page.locator("#email").fill(member.email)
    await page.locator("#password").fill(member.password)
    await page.locator("#code").fill(member.code())
    await page.locator("form[action='/staff/login'] button[type=submit]").click()
    await expect(page.locator("form[action='/staff/logout']")).to_be_visible()
    await page.locator(f"form[action='/staff/lang'] button[value={lang}]").click()
    await expect(page.locator("html")).to_have_attribute("lang", lang)


@dataclass(frozen=True)
class View:
    id: str
    show: Callable[[Page, Furnished], Awaitable[None]]
    """Brings the page up and waits until its content is there; fails on an error status."""


def _get(path: Callable[[Furnished], str]) -> Callable[[Page, Furnished], Awaitable[None]]:
    async def show(page: Page, furnished: Furnished) -> None:
        _ok(await page.goto(path(furnished)), page)

    return show


def _ok(response: Response | None, page: Page) -> None:
    assert response is not None and response.status == 200, (page.url, response)


async def _dashboard(page: Page, _: Furnished) -> None:
    _ok(await page.goto("/staff/dashboard"), page)
    await expect(page.locator("svg[role=img]")).to_have_count(4)
    # The tables behind the charts too: axe skips what is hidden, and they must fit as well.
    summaries = page.locator("details > summary")
    for i in range(await summaries.count()):
        await summaries.nth(i).click()
    await expect(page.locator("details table").first).to_be_visible()


async def _content(page: Page, furnished: Furnished) -> None:
    _ok(await page.goto(f"/staff/conversations/{furnished.conversation_id}"), page)
    await page.locator("#reason").fill("The patient asked about the results")
    await page.locator("#case_ref").fill("CASE-77")
    await page.locator("form[action$='/open'] button[type=submit]").click()
    await expect(page.locator("#opened-banner")).to_contain_text("CASE-77")
    await expect(page.locator("article").first).to_contain_text(seed.SECRET_BODY)


async def _report_opened(page: Page, furnished: Furnished) -> None:
    _ok(await page.goto(f"/staff/reports/{furnished.report_id}"), page)
    await page.locator("#reason").fill("A patient asked whether this is ours")
    await page.locator("#case_ref").fill("SEC-12")
    await page.locator("form[action$='/open'] button[type=submit]").click()
    await expect(page.locator("#opened-banner")).to_contain_text("SEC-12")
    await expect(page.locator("#mail-h")).to_be_visible()


VIEWS = (
    View("dashboard", _dashboard),
    View("queue", _get(lambda _: "/staff/queue")),
    View("job-waiting", _get(lambda f: f"/staff/jobs/{f.waiting_job}")),
    View("job-held", _get(lambda f: f"/staff/jobs/{f.held_job}")),
    View("job-finished", _get(lambda f: f"/staff/jobs/{f.finished_job}")),
    View("domains", _get(lambda _: "/staff/domains")),
    View("audit", _get(lambda _: "/staff/audit")),
    View("audit-chain", _get(lambda _: "/staff/audit/chain")),
    View("audit-export", _get(lambda _: "/staff/audit/export")),
    View("search", _get(lambda _: f"/staff/conversations?address={quote(RECIPIENT)}")),
    View("conversation", _get(lambda f: f"/staff/conversations/{f.conversation_id}")),
    View("content", _content),
    View("reports", _get(lambda _: "/staff/reports")),
    View("report", _get(lambda f: f"/staff/reports/{f.report_id}")),
    View("report-opened", _report_opened),
)

# What sticks out to the right of the screen: the page's scroll width, and each element that
# reaches past the window or whose content spills out of it, without a scrolling box around
# it (the innermost such elements only, to name the culprit rather than its ancestors).
# Charts are checked apart: an SVG clips what it draws, so a label that does not fit is cut
# off, not overflowing.
_LAYOUT = """() => {
    const width = window.innerWidth;
    const name = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
        + (el.classList.length ? "." + [...el.classList].join(".") : "");
    const scrolls = (el) => {
        for (let p = el.parentElement; p; p = p.parentElement) {
            const x = getComputedStyle(p).overflowX;
            if (x === "auto" || x === "scroll" || x === "hidden") return true;
        }
        return false;
    };
    const wide = [...document.body.querySelectorAll("*")].filter((el) => {
        const box = el.getBoundingClientRect();
        const spills = el.scrollWidth > el.clientWidth + 1  // an unbreakable word, say
            && getComputedStyle(el).overflowX === "visible";
        return box.width > 0 && (box.right > width + 1 || spills) && !scrolls(el);
    });
    const innermost = wide.filter((el) => !wide.some((o) => o !== el && el.contains(o)));
    const cut = [];
    for (const svg of document.querySelectorAll("svg[role=img]")) {
        const frame = svg.getBoundingClientRect();
        if (frame.right > width + 1) cut.push(name(svg) + " wider than the screen");
        for (const t of svg.querySelectorAll("text")) {
            const box = t.getBoundingClientRect();
            if (box.width > 0 && (box.left < frame.left - 1 || box.right > frame.right + 1)) {
                cut.push(`${name(svg)} label cut off: ${t.textContent}`);
            }
        }
    }
    return {
        scrollWidth: document.documentElement.scrollWidth,
        innerWidth: width,
        wide: innermost.map((el) => `${name(el)} (${el.getBoundingClientRect().right}px)`),
        cut,
    };
}"""


async def layout_problems(page: Page) -> list[str]:
    """Horizontal scrolling of the page (with what causes it) and chart labels cut off."""
    found = cast(dict[str, object], await page.evaluate(_LAYOUT))
    problems: list[str] = []
    scroll_width, inner_width = cast(int, found["scrollWidth"]), cast(int, found["innerWidth"])
    if scroll_width > inner_width:
        wide = ", ".join(cast(list[str], found["wide"])) or "no single element"
        problems.append(f"scrolls sideways: {scroll_width}px in {inner_width}px ({wide})")
    problems.extend(cast(list[str], found["cut"]))
    return problems
