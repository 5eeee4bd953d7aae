"""Retention: expired conversations and delivered content are crypto-shredded, nothing else,
and the destroyed keys and ciphertext are gone from the SQLite file and its WAL."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from sigillo import lifecycle
from sigillo.gateway import queue
from sigillo.gateway.inbound import Arrival, Inbound
from sigillo.policies import set_policy
from sigillo.store.models import (
    AuditEvent,
    AutoAnswer,
    Conversation,
    ConversationMessage,
    Job,
    JobKind,
    JobState,
    Message,
    PhishingReport,
)
from tests.portal.harness import PortalHarness, portal_settings, running_portal, staff_message


@pytest.fixture
async def portal(tmp_path: Path, store_url: str) -> AsyncIterator[PortalHarness]:
    async with running_portal(portal_settings(tmp_path, store_url)) as harness:
        yield harness


async def _conversation(portal: PortalHarness, conversation_id: int) -> Conversation:
    async with portal.store.session() as session:
        found = await session.get(Conversation, conversation_id)
    assert found is not None
    return found


async def _message(portal: PortalHarness, message_id: str) -> Message | None:
    async with portal.store.session() as session:
        return await session.get(Message, message_id)


async def _readable(portal: PortalHarness, message_id: str, marker: str) -> bool:
    message = await _message(portal, message_id)
    return message is not None and marker.encode() in queue.open_content(portal.keyring, message)


async def _set(portal: PortalHarness, conversation_id: int, **values: Any) -> None:
    def write(session: Any) -> None:
        conversation = session.get(Conversation, conversation_id)
        for key, value in values.items():
            setattr(conversation, key, value)

    await portal.store.write(write)


async def test_retention_shreds_exactly_the_expired_conversations(portal: PortalHarness) -> None:
    now = datetime.now(UTC)
    seeded = {}
    for name in ("old", "fresh", "staff_past", "staff_future", "short_domain", "long_domain"):
        domain = {"short_domain": "short.example", "long_domain": "long.example"}.get(
            name, "example.net"
        )
        rcpt = f"{name.replace('_', '')}@{domain}"
        seeded[name] = await portal.seed(rcpt, staff_message(rcpt, text=f"marker-{name}"))
    await portal.age(seeded["old"].conversation_id, 91)  # default ttl 90 days
    await portal.age(seeded["staff_future"].conversation_id, 200)
    await _set(portal, seeded["staff_future"].conversation_id, expires_at=now + timedelta(days=3))
    await _set(portal, seeded["staff_past"].conversation_id, expires_at=now - timedelta(minutes=1))
    await portal.age(seeded["short_domain"].conversation_id, 3)
    await portal.age(seeded["long_domain"].conversation_id, 120)

    def policies(session: Any) -> None:
        set_policy(session, "short.example", tls=None, retention_days=2, actor="t", at=now)
        set_policy(session, "long.example", tls=None, retention_days=365, actor="t", at=now)

    await portal.store.write(policies)

    report = await lifecycle.run_retention(portal.store, portal.settings, now)
    shredded = {"old", "staff_past", "short_domain"}
    assert report.conversations == 3 and report.conversation_messages == 3
    for name, seed in seeded.items():
        conversation = await _conversation(portal, seed.conversation_id)
        if name in shredded:
            assert conversation.shredded_at is not None, name
            assert await _message(portal, seed.message_id) is None, name
        else:
            assert conversation.shredded_at is None, name
            assert await _readable(portal, seed.message_id, f"marker-{name}"), name
    entries = await portal.audit("conversation.shredded")
    assert {e.conversation_id for e in entries} == {seeded[n].conversation_id for n in shredded}
    assert all(e.details and e.details["cause"] == "expired" for e in entries)
    [run] = await portal.audit("retention.run")
    assert run.details and run.details["conversations"] == 3
    # The notification jobs of the shredded conversations have nothing to point at any more.
    notify = [j for j in await portal.jobs(JobKind.NOTIFY) if j.state is JobState.FAILED]
    assert {j.conversation_id for j in notify} == {seeded[n].conversation_id for n in shredded}

    again = await lifecycle.run_retention(portal.store, portal.settings, now)
    assert (again.conversations, again.conversation_messages, again.delivered_messages) == (0, 0, 0)
    assert len(await portal.audit("conversation.shredded")) == 3
    assert len(await portal.audit("retention.run")) == 2


async def test_a_copy_shared_with_a_live_conversation_survives(portal: PortalHarness) -> None:
    first = await portal.seed("anna@example.net", staff_message("anna@example.net"))

    def link_twice(session: Any) -> int:
        other = Conversation(
            recipient="bruno@example.net",
            created_at=datetime.now(UTC),
            last_message_at=datetime.now(UTC),
        )
        session.add(other)
        session.flush()
        session.add(
            ConversationMessage(
                conversation_id=other.id,
                message_id=first.message_id,
                direction="out",
                added_at=datetime.now(UTC),
            )
        )
        return int(other.id)

    other_id = await portal.store.write(link_twice)
    await portal.age(first.conversation_id, 100)
    report = await lifecycle.run_retention(portal.store, portal.settings)
    assert report.conversations == 1 and report.conversation_messages == 0
    assert await _readable(portal, first.message_id, "Dear patient")
    # Once the other conversation goes too, the message goes with it.
    await portal.age(other_id, 100)
    report = await lifecycle.run_retention(portal.store, portal.settings)
    assert report.conversations == 1 and report.conversation_messages == 1
    assert await _message(portal, first.message_id) is None


async def _delivered(
    portal: PortalHarness, finished_days_ago: float, state: JobState, dsn: JobState | None = None
) -> str:
    now = datetime.now(UTC)
    message = queue.new_message(
        portal.keyring,
        mail_from="doctor@org.example",
        content=b"Subject: x\r\n\r\ndelivered content\r\n",
        client_address="127.0.0.1",
        now=now - timedelta(days=10),
    )
    message_id = message.id
    delivery = portal.settings.delivery

    def write(session: Any) -> None:
        session.add(message)
        session.flush()
        job = queue.new_job(
            JobKind.DELIVER, "x@tls.example", "tls.example", now, delivery, message_id=message_id
        )
        job.state, job.finished_at = state, now - timedelta(days=finished_days_ago)
        session.add(job)
        session.flush()
        if dsn is not None:
            report = queue.new_job(
                JobKind.DSN,
                "doctor@org.example",
                "org.example",
                now,
                delivery,
                message_id=message_id,
                parent_id=job.id,
            )
            report.state = dsn
            report.finished_at = None if dsn is JobState.QUEUED else job.finished_at
            session.add(report)

    await portal.store.write(write)
    return message_id


async def test_delivered_content_is_destroyed_after_its_retention(portal: PortalHarness) -> None:
    old = await _delivered(portal, 8, JobState.DELIVERED)
    recent = await _delivered(portal, 1, JobState.DELIVERED)
    bounced_dsn_pending = await _delivered(portal, 8, JobState.BOUNCED, dsn=JobState.QUEUED)
    bounced_dsn_sent = await _delivered(portal, 8, JobState.BOUNCED, dsn=JobState.DELIVERED)
    in_portal = await portal.seed("carla@example.net")
    report = await lifecycle.run_retention(portal.store, portal.settings)  # 7 days by default
    assert report.delivered_messages == 2
    assert await _message(portal, old) is None
    assert await _message(portal, bounced_dsn_sent) is None
    assert await _readable(portal, recent, "delivered content")
    assert await _readable(portal, bounced_dsn_pending, "delivered content")  # the DSN needs it
    assert await _readable(portal, in_portal.message_id, "Dear patient")
    # The delivery records stay, without a message to point at.
    async with portal.store.session() as session:
        jobs = (
            await session.execute(
                select(Job).where(Job.message_id.is_(None), Job.kind != JobKind.NOTIFY)
            )
        ).scalars()
        assert {j.kind for j in jobs} == {JobKind.DELIVER, JobKind.DSN}
    again = await lifecycle.run_retention(portal.store, portal.settings)
    assert again.delivered_messages == 0


async def test_expired_sign_in_leftovers_are_removed(portal: PortalHarness) -> None:
    seeded = await portal.seed("dora@example.net")
    client = portal.client()
    await client.register(seeded.token)
    later = datetime.now(UTC) + timedelta(days=2)
    report = await lifecycle.run_retention(portal.store, portal.settings, later)
    assert report.expired_sessions == 1
    assert (await client.get(f"/conversations/{seeded.conversation_id}")).status_code != 200


# -- the database file ---------------------------------------------------------------------


def _chunks(data: bytes, size: int = 24) -> list[bytes]:
    """Distinctive slices of ``data``: any of them left in a file means a remnant."""
    return [data[i : i + size] for i in range(0, len(data) - size + 1, size)]


def _remnants(path: Path, secrets_: list[bytes]) -> list[str]:
    found = []
    for name in (path, path.with_name(path.name + "-wal")):
        if not name.exists():
            continue
        raw = name.read_bytes()
        found += [f"{name.name}:{s[:8].hex()}" for s in secrets_ if s in raw]
    return found


async def test_crypto_shredded_content_is_gone_from_the_sqlite_files(tmp_path: Path) -> None:
    path = tmp_path / "sigillo.db"
    settings = portal_settings(tmp_path, f"sqlite:///{path}")
    async with running_portal(settings) as portal:
        # Some SQLite builds zero freed space by default (Debian's does); this one must not
        # get it for free, or the test would prove nothing about sigillo.
        await portal.store.write(lambda s: s.execute(text("PRAGMA secure_delete=OFF")))
        body = "Diagnosis: " + secrets.token_hex(4000)
        rcpt = "elena@example.net"
        seeded = await portal.seed(rcpt, staff_message(rcpt, text=body))
        keep = await portal.seed("fabio@example.net")
        message = await _message(portal, seeded.message_id)
        assert message is not None
        sealed = _chunks(message.wrapped_key) + _chunks(message.content[:4096])
        # Everything reached the database file before the shredding, as on a running system.
        await lifecycle.checkpoint(portal.store)
        assert _remnants(path, sealed), "the test's premise: the sealed bytes are in the file"

        def withdraw(session: Any) -> lifecycle.Shredded:
            return lifecycle.withdraw(
                session,
                seeded.conversation_id,
                actor="agent@org.example",
                reason="sent to the wrong patient",
                at=datetime.now(UTC),
            )

        result = await portal.store.write(withdraw)
        assert result.messages == 1
        assert await lifecycle.checkpoint(portal.store)
        assert _remnants(path, sealed) == []
        assert body.encode() not in path.read_bytes()
        assert await _readable(portal, keep.message_id, "Dear patient")

        # The same through the retention job.
        rcpt = "gino@example.net"
        other = await portal.seed(rcpt, staff_message(rcpt, text=body))
        message = await _message(portal, other.message_id)
        assert message is not None
        sealed = _chunks(message.wrapped_key) + _chunks(message.content[:4096])
        await lifecycle.checkpoint(portal.store)
        await portal.store.write(lambda s: s.execute(text("PRAGMA secure_delete=OFF")))
        await portal.age(other.conversation_id, 100)
        report = await lifecycle.run_retention(portal.store, portal.settings)
        assert report.conversations == 1 and report.wal_truncated is True
        assert _remnants(path, sealed) == []
    async with running_portal(settings) as portal:
        async with portal.store.session() as session:
            left = (await session.execute(select(AuditEvent.action))).scalars().all()
        assert "conversation.withdrawn" in left


# -- phishing reports and automatic answers ------------------------------------------------------


async def _report(portal: PortalHarness, days_ago: float, marker: str) -> tuple[int, str]:
    """A phishing report as the listener stores one, received ``days_ago``."""
    content = f"From: x@evil.example\r\nSubject: {marker}\r\n\r\n{marker}\r\n".encode()
    at = datetime.now(UTC) - timedelta(days=days_ago)
    inbound = Inbound(portal.settings, portal.store, portal.keyring)
    work = await inbound.report(Arrival(content, content, "anna@x.example", "192.0.2.1", at))
    report_id = await portal.store.write(work)
    async with portal.store.session() as session:
        found = await session.get(PhishingReport, report_id)
    assert found is not None and found.message_id is not None
    return report_id, found.message_id


async def test_reports_are_kept_for_their_retention_then_deleted_with_their_mail(
    portal: PortalHarness,
) -> None:
    # Past [retention] delivered_content (7 days) but within report_retention (30 days):
    # the mail of a report is no delivered message and must survive.
    kept_id, kept_mail = await _report(portal, 10, "marker-kept")
    old_id, old_mail = await _report(portal, 31, "marker-old")
    report = await lifecycle.run_retention(portal.store, portal.settings)
    assert report.phishing_reports == 1 and report.delivered_messages == 0
    assert await _readable(portal, kept_mail, "marker-kept")
    assert await _message(portal, old_mail) is None
    async with portal.store.session() as session:
        assert await session.get(PhishingReport, kept_id) is not None
        assert await session.get(PhishingReport, old_id) is None
    [run] = await portal.audit("retention.run")
    assert run.details and run.details["phishing_reports"] == 1
    again = await lifecycle.run_retention(portal.store, portal.settings)
    assert again.phishing_reports == 0 and await _readable(portal, kept_mail, "marker-kept")


async def test_report_retention_follows_the_setting(tmp_path: Path, store_url: str) -> None:
    settings = portal_settings(tmp_path, store_url)
    settings.phishing.report_retention = timedelta(days=5)
    async with running_portal(settings) as portal:
        _, young = await _report(portal, 4, "marker-young")
        _, old = await _report(portal, 6, "marker-six")
        report = await lifecycle.run_retention(portal.store, portal.settings, batch=1)
        assert report.phishing_reports == 1
        assert await _readable(portal, young, "marker-young")
        assert await _message(portal, old) is None


async def test_automatic_answer_rows_live_one_day(portal: PortalHarness) -> None:
    now = datetime.now(UTC)

    def rows(session: Any) -> None:
        session.add(AutoAnswer(sender_hash="a" * 64, answered_at=now - timedelta(hours=25)))
        session.add(AutoAnswer(sender_hash="b" * 64, answered_at=now - timedelta(hours=23)))

    await portal.store.write(rows)
    report = await lifecycle.run_retention(portal.store, portal.settings, now)
    assert report.auto_answers == 1
    async with portal.store.session() as session:
        left = (await session.execute(select(AutoAnswer.sender_hash))).scalars().all()
    assert left == ["b" * 64]
