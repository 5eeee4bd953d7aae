"""Security operations' review of phishing reports: the list and a report's page show the
check's result only; the reporter and the mail need a stated purpose, in the POST's answer,
audited; marking reviewed is a POST, audited, once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from sigillo.gateway.inbound import Arrival, Inbound
from sigillo.store.models import PhishingReport, StaffRole
from tests.staff.harness import ConsoleHarness, StaffClient

REASON = "Customer asked whether this mail is ours"
CASE = "SEC-2026.114"
REPORTER = "carla.reporter@patients.example"
MARKER = "Wombat-Lantern 8812"
SUSPECT = (
    "From: Org Example <security@0rg-example.com>\r\nTo: carla@patients.example\r\n"
    f"Subject: Urgent {MARKER}\r\nMessage-ID: <s@0rg-example.com>\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    f"{MARKER}: confirm your password at http://198.51.100.7/login today.\r\n"
).encode()
HOSTILE = (
    b"From: x@evil.example\r\nTo: carla@patients.example\r\nSubject: <script>s()</script>\r\n"
    b"Content-Type: text/html\r\n\r\n<p>Hi<script>alert(1)</script>"
    b'<img src="https://tracker.example/p.gif"><a href="https://evil.example/">here</a></p>\r\n'
)


async def report(
    console: ConsoleHarness, content: bytes = SUSPECT, reporter: str = REPORTER
) -> int:
    """A report as the listener stores one."""
    inbound = Inbound(console.settings, console.store, console.keyring)
    stamped = b"Received: from mx.patients.example\r\n" + content
    arrival = Arrival(content, stamped, reporter, "192.0.2.7", datetime.now(UTC))
    work = await inbound.report(arrival)
    return await console.store.write(work)


async def member(console: ConsoleHarness, role: StaffRole, email: str) -> StaffClient:
    return await console.signed_in(await console.member(email, role))


async def test_the_list_shows_results_only_newest_first(console: ConsoleHarness) -> None:
    first = await report(console)
    second = await report(console, HOSTILE, "dan@patients.example")
    for role, email in ((StaffRole.OPERATOR, "op@org.example"), (StaffRole.ADMIN, "ad@org.ex")):
        client = await member(console, role, email)
        page = await client.get("/staff/reports")
        assert page.status_code == 200
        text = page.text
        assert text.index(f"/staff/reports/{second}") < text.index(f"/staff/reports/{first}")
        assert "phishing" in text and "(high)" in text
        for secret in (REPORTER, "dan@patients.example", MARKER, "0rg-example", "script"):
            assert secret not in text, secret
    assert await console.audit("staff.report_opened") == []


async def test_the_list_is_paged(console: ConsoleHarness) -> None:
    now = datetime.now(UTC)

    def many(session: Session) -> None:
        for i in range(53):
            session.add(
                PhishingReport(
                    received_at=now - timedelta(minutes=i),
                    reporter="x@patients.example",
                    message_id=None,
                    verdict="suspicious",
                    findings=[],
                )
            )

    await console.store.write(many)
    client = await member(console, StaffRole.OPERATOR, "op@org.example")
    page = await client.get("/staff/reports")
    assert page.text.count('<th scope="row"><a href="/staff/reports/') == 50
    assert "/staff/reports?before=" in page.text and "53 reports" in page.text
    older = page.text.split('href="/staff/reports?before=')[1].split('"')[0]
    rest = await client.get(f"/staff/reports?before={older}")
    assert rest.text.count('<th scope="row"><a href="/staff/reports/') == 3
    assert 'rel="next"' not in rest.text and "Newest reports" in rest.text


async def test_a_report_page_shows_no_mail_and_no_reporter(console: ConsoleHarness) -> None:
    rid = await report(console)
    client = await member(console, StaffRole.OPERATOR, "op@org.example")
    page = await client.get(f"/staff/reports/{rid}")
    assert page.status_code == 200 and 'name="reason"' in page.text
    assert REPORTER not in page.text and MARKER not in page.text
    assert (await client.get("/staff/reports/999999")).status_code == 404
    assert (await client.get("/staff/reports/99999999999")).status_code == 404


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"reason": "short", "case_ref": CASE},
        {"reason": REASON},
        {"reason": REASON, "case_ref": "no spaces allowed"},
    ],
)
async def test_no_purpose_no_report(console: ConsoleHarness, fields: dict[str, str]) -> None:
    rid = await report(console)
    client = await member(console, StaffRole.OPERATOR, "op@org.example")
    page = await client.post(f"/staff/reports/{rid}/open", **fields)
    assert page.status_code == 400
    assert REPORTER not in page.text and MARKER not in page.text
    assert await console.audit("staff.report_opened") == []


async def test_opening_with_a_purpose_shows_the_report_and_records_it(
    console: ConsoleHarness,
) -> None:
    rid = await report(console)
    client = await member(console, StaffRole.OPERATOR, "op@org.example")
    page = await client.post(f"/staff/reports/{rid}/open", reason=REASON, case_ref=CASE)
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    text = page.text
    assert REPORTER in text and MARKER in text  # the reporter, the mail's text and subject
    assert "Message-ID: &lt;s@0rg-example.com&gt;" in text  # headers, as text
    assert "198.51.100.7" in text  # the evidence of a finding
    assert f"for: {REASON} (case {CASE})" in text
    [entry] = await console.audit("staff.report_opened")
    async with console.store.session() as session:
        stored = (await session.execute(select(PhishingReport))).scalar_one()
    assert entry.actor == "op@org.example" and entry.message_id == stored.message_id
    assert entry.details == {"report": rid, "reason": REASON, "case_ref": CASE}
    # No GET shows it again.
    again = await client.get(f"/staff/reports/{rid}")
    assert REPORTER not in again.text and MARKER not in again.text
    assert (await client.get(f"/staff/reports/{rid}/open")).status_code in (404, 405)


async def test_the_reported_mail_is_rendered_as_text(console: ConsoleHarness) -> None:
    rid = await report(console, HOSTILE)
    client = await member(console, StaffRole.ADMIN, "ad@org.example")
    page = await client.post(f"/staff/reports/{rid}/open", reason=REASON, case_ref=CASE)
    assert page.status_code == 200
    assert "<script" not in page.text and "tracker.example" not in page.text
    assert 'href="https://evil.example/' not in page.text  # the link is text, not a link
    assert "&lt;script&gt;s()&lt;/script&gt;" in page.text  # the subject, escaped
    assert "&lt;a href=" in page.text  # the HTML part's source, escaped


async def test_a_forwarded_original_is_what_is_shown(console: ConsoleHarness) -> None:
    wrapped = (
        b"From: carla@patients.example\r\nTo: phish-report@org.example\r\nSubject: Fwd\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nPlease look at this one\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\n\r\n" + SUSPECT + b"\r\n--b--\r\n"
    )
    rid = await report(console, wrapped)
    client = await member(console, StaffRole.OPERATOR, "op@org.example")
    page = await client.post(f"/staff/reports/{rid}/open", reason=REASON, case_ref=CASE)
    assert "attached to the report" in page.text and MARKER in page.text
    assert "Please look at this one" not in page.text


async def test_mark_reviewed_once_and_audited(console: ConsoleHarness) -> None:
    rid = await report(console)
    client = await member(console, StaffRole.OPERATOR, "op@org.example")
    done = await client.post(f"/staff/reports/{rid}/review")
    assert done.status_code == 303 and done.headers["location"].endswith("?done=reviewed")
    page = await client.get(f"/staff/reports/{rid}?done=reviewed")
    assert "by op@org.example on" in page.text and "Mark reviewed" not in page.text
    listed = await client.get("/staff/reports")
    assert ">yes<" in listed.text
    [entry] = await console.audit("staff.report_reviewed")
    assert entry.actor == "op@org.example" and entry.details == {"report": rid}
    again = await client.post(f"/staff/reports/{rid}/review")
    assert again.status_code == 409 and "already marked reviewed" in again.text
    assert len(await console.audit("staff.report_reviewed")) == 1
    # Without the form token the POST is refused and nothing changes.
    other = await report(console)
    raw = await client.http.post(f"/staff/reports/{other}/review", data={})
    assert raw.status_code == 403
    assert len(await console.audit("staff.report_reviewed")) == 1


async def test_both_languages_render(console: ConsoleHarness) -> None:
    rid = await report(console)
    client = await member(console, StaffRole.OPERATOR, "op@org.example")
    await client.post("/staff/lang", lang="it", back="/staff/reports")
    listed = await client.get("/staff/reports")
    assert 'lang="it"' in listed.text and "Segnalazioni di phishing" in listed.text
    opened = await client.post(f"/staff/reports/{rid}/open", reason=REASON, case_ref=CASE)
    assert "Segnalata da" in opened.text and "Rilievi" in opened.text
    await client.post("/staff/lang", lang="en", back="/staff/reports")
    assert "Phishing reports" in (await client.get("/staff/reports")).text


async def test_other_roles_see_no_reports(console: ConsoleHarness) -> None:
    rid = await report(console)
    for role in (StaffRole.AGENT, StaffRole.AUDITOR):
        client = await member(console, role, f"{role.value}@org.example")
        assert (await client.get("/staff/reports")).status_code == 403
        page = await client.post(f"/staff/reports/{rid}/open", reason=REASON, case_ref=CASE)
        assert page.status_code == 403 and REPORTER not in page.text
    assert await console.audit("staff.report_opened") == []
