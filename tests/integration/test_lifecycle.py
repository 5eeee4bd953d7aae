"""A conversation withdrawn by the sender: the recipient sees that, in their language, and
nothing of its content by any path (page, attachment, reply, notification link)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest

from sigillo import lifecycle
from sigillo.portal.handoff import hand_off
from sigillo.store.models import Conversation, JobKind
from tests.portal.harness import PortalHarness, portal_settings, running_portal, staff_message

ANNA = "anna@example.net"
BOB = "bob@example.net"
SECRET = "Stage II carcinoma"


@pytest.fixture
async def portal(tmp_path: Path, store_url: str) -> AsyncIterator[PortalHarness]:
    async with running_portal(portal_settings(tmp_path, store_url)) as harness:
        yield harness


async def _withdraw(portal: PortalHarness, conversation_id: int) -> lifecycle.Shredded:
    def write(session: Any) -> lifecycle.Shredded:
        return lifecycle.withdraw(
            session,
            conversation_id,
            actor="rossi@org.example",
            reason="sent to the wrong patient",
            at=datetime.now(UTC),
            client="10.0.0.7",
        )

    return await portal.store.write(write)


async def test_withdrawn_conversation_shows_why_and_nothing_else(portal: PortalHarness) -> None:
    content = staff_message(ANNA, text=SECRET, attachments=(("r.pdf", "application/pdf", b"%PDF"),))
    seeded = await portal.seed(ANNA, content)
    client = portal.client()
    await client.register(seeded.token)
    path = f"/conversations/{seeded.conversation_id}"
    attachment = f"{path}/messages/{seeded.message_id}/attachments/0"
    assert SECRET in (await client.get(path)).text
    assert (await client.get(attachment)).status_code == 200
    form = await client.get(path)
    csrf = client.csrf()

    result = await _withdraw(portal, seeded.conversation_id)
    assert result.messages == 1

    page = await client.get(path)
    assert page.status_code == 404
    assert "This conversation was withdrawn by the sender" in page.text
    assert "rossi@org.example" in page.text and SECRET not in page.text
    italian = await client.get(path, headers={"Accept-Language": "it"})
    assert "Questa conversazione è stata ritirata dal mittente" in italian.text
    assert (await client.get(attachment)).status_code == 404
    assert form.status_code == 200
    reply = await client.http.post(f"{path}/reply", data={"csrf_token": csrf, "body": "hello?"})
    assert reply.status_code == 404
    assert not await portal.jobs(JobKind.RELAY)
    link = await portal.client().get(f"/c/{seeded.token}")
    assert "This conversation was withdrawn by the sender" in link.text
    assert SECRET not in link.text

    [entry] = await portal.audit("conversation.withdrawn")
    assert entry.actor == "rossi@org.example" and entry.client_address == "10.0.0.7"
    assert entry.details and entry.details["reason"] == "sent to the wrong patient"
    [shred] = await portal.audit("conversation.shredded")
    assert shred.details and shred.details["cause"] == "withdrawn"
    with pytest.raises(lifecycle.LifecycleError):
        await _withdraw(portal, seeded.conversation_id)


async def test_withdrawal_needs_a_reason(portal: PortalHarness) -> None:
    seeded = await portal.seed(ANNA)

    def write(session: Any) -> None:
        lifecycle.withdraw(
            session, seeded.conversation_id, actor="x", reason="  ", at=datetime.now(UTC)
        )

    with pytest.raises(lifecycle.LifecycleError):
        await portal.store.write(write)
    assert not await portal.audit("conversation.withdrawn")


async def test_staff_expiry_date_closes_and_reopens(portal: PortalHarness) -> None:
    seeded = await portal.seed(ANNA, staff_message(ANNA, text=SECRET))
    client = portal.client()
    await client.register(seeded.token)
    path = f"/conversations/{seeded.conversation_id}"

    async def expire(when: datetime | None) -> None:
        def write(session: Any) -> None:
            lifecycle.set_expiry(
                session,
                seeded.conversation_id,
                expires_at=when,
                actor="rossi@org.example",
                at=datetime.now(UTC),
                reason="case closed",
            )

        await portal.store.write(write)

    await expire(datetime.now(UTC) - timedelta(minutes=1))
    page = await client.get(path)
    assert "This conversation has expired" in page.text and SECRET not in page.text
    await expire(None)
    assert SECRET in (await client.get(path)).text
    entries = await portal.audit("conversation.expiry_changed")
    assert [e.details and e.details["after"] is None for e in entries] == [False, True]

    async def conversation() -> Conversation:
        async with portal.store.session() as session:
            found = await session.get(Conversation, seeded.conversation_id)
        assert found is not None
        return found

    assert (await conversation()).expires_at is None


async def test_worker_follows_the_console_tls_policies(portal: PortalHarness) -> None:
    from sigillo.gateway.tlspolicy import Level
    from sigillo.gateway.worker import Worker
    from sigillo.policies import set_policy

    worker = Worker(portal.settings, portal.store, portal.keyring)
    try:
        await worker.refresh_policies()
        assert worker.deliverer.policy("legacy.example").source == "default"
        await portal.store.write(
            lambda s: set_policy(
                s,
                "legacy.example",
                tls="portal",
                retention_days=None,
                actor="a",
                at=datetime.now(UTC),
            )
        )
        await worker.refresh_policies()
        assert worker.deliverer.policy("legacy.example").level is Level.PORTAL
    finally:
        await worker.deliverer.close()


async def test_a_later_answer_never_reopens_a_withdrawn_conversation(
    portal: PortalHarness,
) -> None:
    first = staff_message(ANNA, text=SECRET)
    seeded = await portal.seed(ANNA, first)
    settings = portal.settings.delivery

    # The same message also went to a colleague's conversation, so withdrawing Anna's keeps
    # its row: the thread could still be found through it.
    def share(session: Any) -> None:
        hand_off(session, settings, seeded.message_id, BOB, "example.net", first, datetime.now(UTC))

    await portal.store.write(share)
    assert (await _withdraw(portal, seeded.conversation_id)).kept == 1

    parent = message_from_bytes(first)["Message-ID"]
    answer = await portal.seed(ANNA, staff_message(ANNA, in_reply_to=parent))
    assert answer.conversation_id != seeded.conversation_id
