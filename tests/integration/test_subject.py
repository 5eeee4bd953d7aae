"""Data subject rights: the export holds everything about the address, the erasure leaves
nothing but pseudonymous records and the chain of audit entries still verifies."""

from __future__ import annotations

import json
import stat
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from sigillo import subject
from sigillo.gateway import queue
from sigillo.store.audit import GENESIS, Entry
from sigillo.store.models import (
    Account,
    AuditEvent,
    Conversation,
    Job,
    LoginThrottle,
    Message,
    PortalSession,
)
from tests.portal.harness import PortalHarness, portal_settings, running_portal, staff_message

ANNA = "anna@example.net"
JOANNA = "joanna@example.net"
"""Contains Anna's address as a substring: must not end up in her export."""


@pytest.fixture
async def portal(tmp_path: Path, store_url: str) -> AsyncIterator[PortalHarness]:
    async with running_portal(portal_settings(tmp_path, store_url)) as harness:
        yield harness


async def _verify_chain(portal: PortalHarness) -> int:
    async with portal.store.session() as session:
        events = (await session.execute(select(AuditEvent).order_by(AuditEvent.seq))).scalars()
        prev = GENESIS
        n = 0
        for n, event in enumerate(events, start=1):
            assert event.seq == n and event.prev_hash == prev
            prev = Entry.of(event).hash(prev)
            assert event.hash == prev, event.seq
    return n


async def _anna(portal: PortalHarness) -> tuple[list[bytes], str]:
    """Two conversations for Anna (one with her reply), one for Joanna."""
    first = staff_message(
        ANNA, text="Your biopsy results", attachments=(("r.pdf", "application/pdf", b"%PDF"),)
    )
    second = staff_message(ANNA, subject="Appointment", text="Monday 9:00")
    a = await portal.seed(ANNA, first)
    await portal.seed(ANNA, second)
    await portal.seed(JOANNA, staff_message(JOANNA, text="Joanna's own"))
    client = portal.client()
    await client.register(a.token)
    await client.submit(
        f"/conversations/{a.conversation_id}",
        f"/conversations/{a.conversation_id}/reply",
        body="Thank you, see you Monday",
    )
    [reply] = await portal.wait_for_mail(queue.JobKind.RELAY, "doctor@org.example", 1)
    await portal.client().login(ANNA, "wrong password")  # a failure, audited, throttled
    return [first, second, reply], a.token


async def test_export_holds_everything_about_the_address(
    portal: PortalHarness, tmp_path: Path
) -> None:
    originals, _ = await _anna(portal)
    out = tmp_path / "anna.zip"
    summary = await subject.export(
        portal.store,
        portal.keyring,
        "Anna@Example.net",
        out,
        actor="cli:test",
        now=datetime.now(UTC),
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert (summary.account, summary.conversations, summary.messages) == (True, 2, 3)
    with zipfile.ZipFile(out) as archive:
        document = json.loads(archive.read("subject.json"))
        emls = {n: archive.read(n) for n in archive.namelist() if n.endswith(".eml")}
    assert sorted(emls.values()) == sorted(originals)
    assert document["account"] and "password_hash" not in document["account"]
    assert "$argon2" not in json.dumps(document)
    assert [len(c["messages"]) for c in document["conversations"]] == [2, 1]
    assert {c["messages"][0]["direction"] for c in document["conversations"]} == {"out"}
    assert {d["recipient"] for d in document["deliveries"]} == {ANNA}
    actions = {e["action"] for e in document["audit"]}
    assert {"portal.register", "portal.reply", "portal.view", "portal.login_failed"} <= actions
    assert all(JOANNA not in json.dumps(e) for e in document["audit"])
    assert b"Joanna's own" not in b"".join(emls.values())
    [logged] = await portal.audit("subject.exported")
    assert logged.actor == "cli:test" and ANNA not in json.dumps(logged.details)
    with pytest.raises(FileExistsError):
        await subject.export(
            portal.store, portal.keyring, ANNA, out, actor="cli:test", now=datetime.now(UTC)
        )

    empty = tmp_path / "nobody.zip"
    nothing = await subject.export(
        portal.store,
        portal.keyring,
        "nobody@example.org",
        empty,
        actor="cli:test",
        now=datetime.now(UTC),
    )
    assert nothing.empty
    with zipfile.ZipFile(empty) as archive:
        assert json.loads(archive.read("subject.json"))["conversations"] == []


async def test_erase_leaves_nothing_but_the_record_of_it(
    portal: PortalHarness, tmp_path: Path
) -> None:
    _, token = await _anna(portal)
    before = await _verify_chain(portal)
    summary = await subject.erase(portal.store, ANNA, actor="cli:test", now=datetime.now(UTC))
    assert summary.account and summary.conversations == 2 and summary.messages >= 2
    async with portal.store.session() as session:
        assert (
            await session.execute(select(Account).where(Account.address == ANNA))
        ).first() is None
        assert (
            await session.execute(select(func.count()).select_from(PortalSession))
        ).scalar() == 0
        left = (await session.execute(select(Conversation.recipient))).scalars().all()
        assert ANNA not in left and JOANNA in left
        recipients = (await session.execute(select(Job.recipient))).scalars().all()
        assert ANNA not in [r.lower() for r in recipients]
        keys = (await session.execute(select(LoginThrottle.key))).scalars().all()
        assert all(ANNA not in k for k in keys)
        senders = (await session.execute(select(Message.mail_from))).scalars().all()
        contents = [
            queue.open_content(portal.keyring, m)
            for m in (await session.execute(select(Message))).scalars()
        ]
    # Her reply's copy to the doctor is the organisation's mail, still queued for the relay.
    assert all(b"biopsy" not in c and b"Monday 9:00" not in c for c in contents)
    assert senders.count(ANNA) <= 1
    [erased] = await portal.audit("subject.erased")
    assert ANNA not in json.dumps(erased.details) and erased.actor != ANNA
    assert erased.details and erased.details["address_sha256"] == subject.address_hash(ANNA)
    assert await _verify_chain(portal) > before  # the old entries kept, the chain intact
    # The link now leads nowhere, a second erasure finds nothing, an export only the record.
    assert (await portal.client().get(f"/c/{token}")).status_code == 404
    again = await subject.erase(portal.store, ANNA, actor="cli:test", now=datetime.now(UTC))
    assert again.nothing
    assert len(await portal.audit("subject.erased")) == 1
    out = tmp_path / "after.zip"
    after = await subject.export(
        portal.store, portal.keyring, ANNA, out, actor="cli:test", now=datetime.now(UTC)
    )
    assert after.empty
    with zipfile.ZipFile(out) as archive:
        document = json.loads(archive.read("subject.json"))
    assert "subject.erased" in {e["action"] for e in document["audit"]}
