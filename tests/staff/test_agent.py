"""The agent's pages: content only for a stated purpose, in the POST's answer, audited and
named on the page; downloads tied to an opening; withdraw and expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sigillo.store.models import Conversation, StaffRole
from tests.portal.harness import PortalClient
from tests.staff import seed_pages as seed
from tests.staff.harness import ConsoleHarness, StaffClient

REASON = "Patient called about the lab results"
CASE = "CASE-2025.031_a"


async def _agent(console: ConsoleHarness, email: str = "ann@org.example") -> StaffClient:
    member = await console.member(email, StaffRole.AGENT)
    return await console.signed_in(member)


async def test_search_lists_metadata_only_and_is_audited(console: ConsoleHarness) -> None:
    s = await seed.conversation(console.store, console.keyring)
    await seed.conversation(console.store, console.keyring, "other@patients.example")
    agent = await _agent(console)
    page = await agent.get("/staff/conversations", params={"address": " Pat@Patients.example "})
    assert page.status_code == 200
    assert f"/staff/conversations/{s.conversation_id}" in page.text
    assert "other@patients.example" not in page.text
    assert seed.SECRET_SUBJECT not in page.text and seed.SECRET_BODY not in page.text
    [entry] = await console.audit("staff.search")
    assert entry.actor == "ann@org.example"
    assert entry.details == {"address": "pat@patients.example", "results": 1}
    bad = await agent.get("/staff/conversations", params={"address": "nobody"})
    assert bad.status_code == 400 and len(await console.audit("staff.search")) == 1


async def test_metadata_page_shows_no_content(console: ConsoleHarness) -> None:
    s = await seed.conversation(console.store, console.keyring)
    agent = await _agent(console)
    page = await agent.get(f"/staff/conversations/{s.conversation_id}")
    assert page.status_code == 200
    assert "pat@patients.example" in page.text and 'name="reason"' in page.text
    assert seed.SECRET_SUBJECT not in page.text and seed.SECRET_BODY not in page.text
    assert await console.audit("staff.content_opened") == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "State the reason"),
        ({"reason": "too short", "case_ref": CASE}, "State the reason"),
        ({"reason": "x" * 501, "case_ref": CASE}, "State the reason"),
        ({"reason": "          ", "case_ref": CASE}, "State the reason"),
        ({"reason": REASON}, "case reference"),
        ({"reason": REASON, "case_ref": "has space"}, "case reference"),
        ({"reason": REASON, "case_ref": "a/b"}, "case reference"),
        ({"reason": REASON, "case_ref": "x" * 65}, "case reference"),
    ],
)
async def test_no_purpose_no_content(
    console: ConsoleHarness, fields: dict[str, str], message: str
) -> None:
    s = await seed.conversation(console.store, console.keyring)
    agent = await _agent(console)
    page = await agent.post(f"/staff/conversations/{s.conversation_id}/open", **fields)
    assert page.status_code == 400
    assert message in page.text
    assert seed.SECRET_BODY not in page.text and seed.SECRET_SUBJECT not in page.text
    assert await console.audit("staff.content_opened") == []


async def test_opening_with_a_purpose_shows_content_once_and_records_it(
    console: ConsoleHarness,
) -> None:
    s = await seed.conversation(console.store, console.keyring)
    agent = await _agent(console)
    page = await agent.post(
        f"/staff/conversations/{s.conversation_id}/open", reason=REASON, case_ref=CASE
    )
    assert page.status_code == 200
    assert seed.SECRET_BODY in page.text and seed.SECRET_SUBJECT in page.text
    assert page.headers["cache-control"] == "no-store"
    banner = "Opened by ann@org.example at "
    assert banner in page.text and f"for: {REASON} (case {CASE})" in page.text
    [entry] = await console.audit("staff.content_opened")
    assert entry.actor == "ann@org.example"
    assert entry.conversation_id == s.conversation_id
    assert entry.details == {"reason": REASON, "case_ref": CASE, "messages": 1}
    # No GET shows content: not the metadata page, not a reload of the address.
    again = await agent.get(f"/staff/conversations/{s.conversation_id}")
    assert seed.SECRET_BODY not in again.text
    assert REASON in again.text  # the earlier opening is listed
    get_open = await agent.get(f"/staff/conversations/{s.conversation_id}/open")
    assert get_open.status_code in (404, 405) and seed.SECRET_BODY not in get_open.text


async def test_each_opening_needs_its_own_purpose_and_lists_the_earlier_ones(
    console: ConsoleHarness,
) -> None:
    s = await seed.conversation(console.store, console.keyring)
    first = await _agent(console)
    await first.post(f"/staff/conversations/{s.conversation_id}/open", reason=REASON, case_ref=CASE)
    second = await _agent(console, "bob@org.example")
    page = await second.post(
        f"/staff/conversations/{s.conversation_id}/open",
        reason="Complaint review for the ombudsman",
        case_ref="OMB-7",
    )
    assert "Opened by bob@org.example" in page.text
    assert "ann@org.example" in page.text and REASON in page.text  # the earlier opening
    assert len(await console.audit("staff.content_opened")) == 2


async def test_content_is_rendered_safely(console: ConsoleHarness) -> None:
    hostile = (
        b"From: x@org.example\r\nTo: pat@patients.example\r\nSubject: <script>s</script>\r\n"
        b"Content-Type: text/html\r\n\r\n<p>Hi<script>alert(1)</script>"
        b'<img src="https://tracker.example/p.gif"></p>\r\n'
    )
    s = await seed.conversation(console.store, console.keyring, content=hostile)
    agent = await _agent(console)
    page = await agent.post(
        f"/staff/conversations/{s.conversation_id}/open", reason=REASON, case_ref=CASE
    )
    assert "<script>" not in page.text and "tracker.example" not in page.text
    assert "&lt;script&gt;s&lt;/script&gt;" in page.text


ATTACHED = (
    b"From: doc@org.example\r\nTo: pat@patients.example\r\nSubject: scan\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
    b'--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="x.pdf"\r\n'
    b"\r\n%PDF-secret-scan\r\n--b--\r\n"
)


async def test_download_needs_a_recent_opening_with_the_same_purpose(
    console: ConsoleHarness,
) -> None:
    s = await seed.conversation(console.store, console.keyring, content=ATTACHED)
    agent = await _agent(console)
    page = await agent.post(
        f"/staff/conversations/{s.conversation_id}/open", reason=REASON, case_ref=CASE
    )
    [opened] = await console.audit("staff.content_opened")
    assert f'name="opening" value="{opened.seq}"' in page.text
    url = f"/staff/conversations/{s.conversation_id}/messages/{s.message_id}/attachments/0"
    ok = await agent.post(url, opening=str(opened.seq), reason=REASON, case_ref=CASE)
    assert ok.status_code == 200 and ok.content.startswith(b"%PDF-secret-scan")
    assert ok.headers["content-type"] == "application/octet-stream"
    assert "attachment" in ok.headers["content-disposition"]
    [download] = await console.audit("staff.download")
    assert download.details == {
        "opening": opened.seq,
        "reason": REASON,
        "case_ref": CASE,
        "attachment": 0,
        "size": len(b"%PDF-secret-scan"),
    }
    # Another purpose, another member's opening, no opening: refused, nothing recorded.
    other = await agent.post(url, opening=str(opened.seq), reason=REASON + "!", case_ref=CASE)
    assert other.status_code == 403 and b"secret-scan" not in other.content
    stranger = await _agent(console, "eve@org.example")
    stolen = await stranger.post(url, opening=str(opened.seq), reason=REASON, case_ref=CASE)
    assert stolen.status_code == 403
    missing = await agent.post(url, reason=REASON, case_ref=CASE)
    assert missing.status_code == 400
    assert len(await console.audit("staff.download")) == 1


async def test_download_grant_expires(console: ConsoleHarness) -> None:
    s = await seed.conversation(console.store, console.keyring, content=ATTACHED)
    agent = await _agent(console)
    await agent.post(f"/staff/conversations/{s.conversation_id}/open", reason=REASON, case_ref=CASE)
    [opened] = await console.audit("staff.content_opened")
    # An opening recorded 16 minutes ago (appended the way every entry is, never edited).
    old = datetime.now(UTC) - timedelta(minutes=16)
    await seed.audit_entry(
        console.store,
        "staff.content_opened",
        actor="ann@org.example",
        at=old,
        conversation_id=s.conversation_id,
        details={"reason": REASON, "case_ref": CASE, "messages": 1},
    )
    stale = (await console.audit("staff.content_opened"))[-1]
    url = f"/staff/conversations/{s.conversation_id}/messages/{s.message_id}/attachments/0"
    refused = await agent.post(url, opening=str(stale.seq), reason=REASON, case_ref=CASE)
    assert refused.status_code == 403 and b"secret-scan" not in refused.content
    fresh = await agent.post(url, opening=str(opened.seq), reason=REASON, case_ref=CASE)
    assert fresh.status_code == 200


async def test_withdraw_shows_withdrawn_to_the_recipient(console: ConsoleHarness) -> None:
    s = await seed.conversation(console.store, console.keyring)
    recipient = PortalClient(console.url, "127.0.0.1")
    try:
        registered = await recipient.register(s.token)
        assert registered.status_code in (200, 303)
        before = await recipient.get(f"/conversations/{s.conversation_id}")
        assert seed.SECRET_BODY in before.text
        agent = await _agent(console)
        empty = await agent.post(f"/staff/conversations/{s.conversation_id}/withdraw")
        assert empty.status_code == 400 and await console.audit("conversation.withdrawn") == []
        done = await agent.post(
            f"/staff/conversations/{s.conversation_id}/withdraw", reason="sent to the wrong person"
        )
        assert done.status_code == 303
        [entry] = await console.audit("conversation.withdrawn")
        assert entry.actor == "ann@org.example"
        assert entry.details and entry.details["reason"] == "sent to the wrong person"
        after = await recipient.get(f"/conversations/{s.conversation_id}")
        assert "withdrawn by the sender" in after.text
        assert seed.SECRET_BODY not in after.text
        # Nothing left to open.
        page = await agent.post(
            f"/staff/conversations/{s.conversation_id}/open", reason=REASON, case_ref=CASE
        )
        assert page.status_code == 409 and seed.SECRET_BODY not in page.text
        assert await console.audit("staff.content_opened") == []
    finally:
        await recipient.close()


async def test_expiry_change_is_checked_and_audited(console: ConsoleHarness) -> None:
    s = await seed.conversation(console.store, console.keyring)
    agent = await _agent(console)
    url = f"/staff/conversations/{s.conversation_id}/expiry"
    today = datetime.now(UTC).date()  # the harness's portal time zone is UTC
    for day, why in [
        (today.isoformat(), "in the future"),
        ((today - timedelta(days=3)).isoformat(), "in the future"),
        ((today + timedelta(days=3651)).isoformat(), "at most 3650 days"),
        ("31/12/2030", "YYYY-MM-DD"),
    ]:
        page = await agent.post(url, keep_until=day, reason="legal hold")
        assert page.status_code == 400 and why in page.text, day
    no_reason = await agent.post(url, keep_until=(today + timedelta(days=10)).isoformat())
    assert no_reason.status_code == 400
    assert await console.audit("conversation.expiry_changed") == []
    target = today + timedelta(days=400)
    done = await agent.post(url, keep_until=target.isoformat(), reason="legal hold")
    assert done.status_code == 303
    [entry] = await console.audit("conversation.expiry_changed")
    assert entry.actor == "ann@org.example" and entry.details
    assert entry.details["reason"] == "legal hold"
    async with console.store.session() as session:
        row = await session.get(Conversation, s.conversation_id)
    assert row is not None and row.expires_at == datetime.combine(
        target + timedelta(days=1), datetime.min.time(), UTC
    )
    page = await agent.get(f"/staff/conversations/{s.conversation_id}")
    assert f'value="{target.isoformat()}"' in page.text


async def test_roles_other_than_agent_cannot_open(console: ConsoleHarness) -> None:
    s = await seed.conversation(console.store, console.keyring)
    for role in (StaffRole.ADMIN, StaffRole.OPERATOR, StaffRole.AUDITOR):
        member = await console.member(f"{role.value}@org.example", role)
        client = await console.signed_in(member)
        page = await client.post(
            f"/staff/conversations/{s.conversation_id}/open", reason=REASON, case_ref=CASE
        )
        assert page.status_code == 403 and seed.SECRET_BODY not in page.text
    assert await console.audit("staff.content_opened") == []
