"""Operator actions on the queue (hold, release, bounce), over both backends, and the
operator's pages."""

from __future__ import annotations

import asyncio
import email
import html
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP
from sqlalchemy import select
from sqlalchemy.orm import Session

from sigillo.config import Settings
from sigillo.gateway import queue
from sigillo.gateway.queue import QueueAction, QueueActionRefused
from sigillo.gateway.worker import Worker
from sigillo.store import migrate
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import AuditEvent, Job, JobKind, JobState, StaffRole
from tests.integration.gateway import RelayRecorder
from tests.staff import seed_pages as seed
from tests.staff.harness import ConsoleHarness, StaffClient

SETTINGS = seed.DELIVERY
OPERATOR = "ops@org.example"
AUDITED = {
    QueueAction.HOLD: "queue.held",
    QueueAction.RELEASE: "queue.released",
    QueueAction.BOUNCE: "queue.bounced",
}


@pytest.fixture
async def queue_store(store_url: str) -> AsyncIterator[Store]:
    s = Store(store_url)
    await migrate.upgrade(s)
    yield s
    await s.close()


@pytest.fixture
def queue_keyring(tmp_path: Path) -> Keyring:
    return Keyring.load_or_create(tmp_path / "keys" / "sigillo.keys")


async def _waiting(store: Store, keyring: Keyring, rcpt: str = "pat@patients.example") -> int:
    msg = await seed.message(store, keyring, queue.utcnow())
    return await seed.copy(store, msg, rcpt, state=JobState.QUEUED, at=queue.utcnow())


async def _audit(store: Store, action: str) -> list[AuditEvent]:
    async with store.session() as session:
        rows = await session.execute(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
        )
        return list(rows.scalars())


async def _act(
    store: Store, job_id: int, action: QueueAction, reason: str = "ticket 42"
) -> queue.ActionResult:
    return await queue.operate(
        store, SETTINGS, job_id, action, actor=OPERATOR, reason=reason, client="10.0.0.5"
    )


async def test_hold_then_release(queue_store: Store, queue_keyring: Keyring) -> None:
    job_id = await _waiting(queue_store, queue_keyring)
    held = await _act(queue_store, job_id, QueueAction.HOLD, "recipient asked us to wait")
    assert (held.before, held.after) == (JobState.QUEUED, JobState.HELD)
    job = await seed.job(queue_store, job_id)
    assert job.state is JobState.HELD
    assert job.reason == f"held by {OPERATOR}: recipient asked us to wait"
    # A held job is never claimed.
    assert await queue.claim(queue_store, SETTINGS, "w", limit=5) == []
    [entry] = await _audit(queue_store, "queue.held")
    assert entry.actor == OPERATOR and entry.client_address == "10.0.0.5"
    assert entry.details == {
        "job": job_id,
        "kind": "deliver",
        "from": "queued",
        "reason": "recipient asked us to wait",
    }

    released = await _act(queue_store, job_id, QueueAction.RELEASE)
    assert (released.before, released.after) == (JobState.HELD, JobState.QUEUED)
    [entry] = await _audit(queue_store, "queue.released")
    assert entry.details and entry.details["from"] == "held"
    claims = await queue.claim(queue_store, SETTINGS, "w", limit=5)
    assert [j.id for c in claims for j in c.jobs] == [job_id]


async def test_retry_puts_a_waiting_job_first_and_clears_crashes(
    queue_store: Store, queue_keyring: Keyring
) -> None:
    job_id = await _waiting(queue_store, queue_keyring)
    later = queue.utcnow() + timedelta(hours=3)

    def postpone(session: Session) -> None:
        job = session.get(Job, job_id)
        assert job is not None
        job.next_attempt_at, job.crashes = later, 2

    await queue_store.write(postpone)
    assert await queue.claim(queue_store, SETTINGS, "w", limit=5) == []
    await _act(queue_store, job_id, QueueAction.RELEASE)
    job = await seed.job(queue_store, job_id)
    assert job.crashes == 0 and job.next_attempt_at <= queue.utcnow()
    assert await queue.claim(queue_store, SETTINGS, "w", limit=5)


async def test_bounce_queues_a_dsn_to_the_sender(
    queue_store: Store, queue_keyring: Keyring
) -> None:
    job_id = await _waiting(queue_store, queue_keyring)
    result = await _act(queue_store, job_id, QueueAction.BOUNCE, "address no longer valid")
    assert (result.before, result.after) == (JobState.QUEUED, JobState.BOUNCED)
    job = await seed.job(queue_store, job_id)
    assert job.state is JobState.BOUNCED and job.finished_at is not None
    assert job.reason == f"bounced by {OPERATOR}: address no longer valid"
    async with queue_store.session() as session:
        dsn = await session.get(Job, result.dsn_job_id)
    assert dsn is not None
    assert (dsn.kind, dsn.state, dsn.recipient, dsn.parent_id) == (
        JobKind.DSN,
        JobState.QUEUED,
        "doc@org.example",
        job_id,
    )
    [entry] = await _audit(queue_store, "queue.bounced")
    assert entry.details and entry.details["dsn_job"] == dsn.id
    assert entry.message_id == job.message_id


async def test_a_held_copy_can_be_bounced(queue_store: Store, queue_keyring: Keyring) -> None:
    job_id = await _waiting(queue_store, queue_keyring)
    await _act(queue_store, job_id, QueueAction.HOLD)
    result = await _act(queue_store, job_id, QueueAction.BOUNCE)
    assert result.before is JobState.HELD and result.dsn_job_id is not None


@pytest.mark.parametrize(
    ("setup", "action", "message"),
    [
        ([QueueAction.HOLD], QueueAction.HOLD, "is already held"),
        ([QueueAction.BOUNCE], QueueAction.HOLD, "is already bounced"),
        ([QueueAction.BOUNCE], QueueAction.RELEASE, "is already bounced"),
        ([QueueAction.BOUNCE], QueueAction.BOUNCE, "is already bounced"),
    ],
)
async def test_illegal_transitions_are_refused(
    queue_store: Store,
    queue_keyring: Keyring,
    setup: list[QueueAction],
    action: QueueAction,
    message: str,
) -> None:
    job_id = await _waiting(queue_store, queue_keyring)
    for step in setup:
        await _act(queue_store, job_id, step)
    name = AUDITED[action]
    before = len(await _audit(queue_store, name))
    with pytest.raises(QueueActionRefused, match=message):
        await _act(queue_store, job_id, action)
    assert (
        len(await _audit(queue_store, name)) == before
    )  # nothing recorded for an action that did not happen


async def test_final_and_missing_jobs_are_refused(
    queue_store: Store, queue_keyring: Keyring
) -> None:
    msg = await seed.message(queue_store, queue_keyring, queue.utcnow())
    done = await seed.copy(
        queue_store, msg, "a@b.example", state=JobState.DELIVERED, at=queue.utcnow()
    )
    with pytest.raises(QueueActionRefused, match="already delivered"):
        await _act(queue_store, done, QueueAction.RELEASE)
    with pytest.raises(QueueActionRefused, match="does not exist"):
        await _act(queue_store, 999_999, QueueAction.HOLD)
    with pytest.raises(QueueActionRefused, match="a reason is required"):
        await _act(queue_store, done, QueueAction.HOLD, "   ")


async def test_only_a_copy_can_be_bounced(queue_store: Store, queue_keyring: Keyring) -> None:
    now = queue.utcnow()

    def notify(session: Session) -> int:
        job = queue.new_job(JobKind.NOTIFY, "a@b.example", "b.example", now, SETTINGS)
        session.add(job)
        session.flush()
        return job.id

    job_id = await queue_store.write(notify)
    with pytest.raises(QueueActionRefused, match="only a recipient's copy can be bounced"):
        await _act(queue_store, job_id, QueueAction.BOUNCE)
    await _act(queue_store, job_id, QueueAction.HOLD)  # holding a notification is fine


@pytest.mark.parametrize("action", list(QueueAction))
async def test_a_leased_job_is_not_changed_under_its_worker(
    queue_store: Store, queue_keyring: Keyring, action: QueueAction
) -> None:
    job_id = await _waiting(queue_store, queue_keyring)
    [claim] = await queue.claim(queue_store, SETTINGS, "w", limit=5)
    with pytest.raises(QueueActionRefused, match="being attempted by a worker"):
        await _act(queue_store, job_id, action)
    job = await seed.job(queue_store, job_id)
    assert job.state is JobState.QUEUED and job.lease_owner == claim.token
    # Once the lease has lapsed (the worker died), the operator may act.
    lapsed = queue.utcnow() + SETTINGS.lease + timedelta(seconds=1)
    await queue.operate(
        queue_store, SETTINGS, job_id, action, actor=OPERATOR, reason="after crash", now=lapsed
    )

    # ... and the late worker's result no longer lands on the job.
    def late(session: Session) -> list[int]:
        return queue.mark_delivered(session, claim, lapsed, "late")

    assert await queue_store.write(late) == []


async def test_bounce_dsn_is_sent_by_the_worker(tmp_path: Path) -> None:
    """The DSN of an operator's bounce goes out exactly like the worker's own bounces: built by
    the worker from the bounced job, through the relay, with the operator's reason."""
    relay = RelayRecorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(relay), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = Settings.model_validate(
        {
            "smtp": {"hostname": "gw.org.example"},
            "relay": {"host": f"127.0.0.1:{port}"},
            "delivery": {"poll_interval": "100ms"},
            "storage": {
                "database_url": f"sqlite:///{tmp_path}/sigillo.db",
                "key_file": str(tmp_path / "sigillo.keys"),
            },
        }
    )
    store = Store(settings.storage.database_url)
    await migrate.upgrade(store)
    keyring = Keyring.load_or_create(settings.storage.key_file)
    worker = Worker(settings, store, keyring)
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    try:
        job_id = await _waiting(store, keyring)
        await _act(store, job_id, QueueAction.HOLD)
        result = await _act(store, job_id, QueueAction.BOUNCE, "patient moved abroad")
        task = asyncio.create_task(worker.run(stop))
        for _ in range(200):
            if relay.received:
                break
            await asyncio.sleep(0.05)
        [(mail_from, rcpts, raw)] = relay.received
        assert mail_from in ("", "<>") and rcpts == ["doc@org.example"]
        report = email.message_from_bytes(raw)
        assert report.get_content_type() == "multipart/report"
        text = raw.decode("utf-8", "replace")
        assert "pat@patients.example" in text
        assert f"bounced by {OPERATOR}: patient moved abroad" in text
        assert "Action: failed" in text
        assert seed.SECRET_BODY not in text  # headers only, never the body
        # The relay has the report before the worker commits the job's result.
        for _ in range(200):
            async with store.session() as session:
                dsn = await session.get(Job, result.dsn_job_id)
            if dsn is not None and dsn.state is not JobState.QUEUED:
                break
            await asyncio.sleep(0.05)
        assert dsn is not None and dsn.state is JobState.DELIVERED
    finally:
        stop.set()
        if task is not None:
            await task
        else:
            await worker.deliverer.close()
        server.close()
        await server.wait_closed()
        await store.close()


# -- the pages -------------------------------------------------------------------------------


async def test_hold_retry_bounce_through_the_pages(console: ConsoleHarness) -> None:
    job_id = await _waiting(console.store, console.keyring)
    member = await console.member("olga@org.example", StaffRole.OPERATOR)
    olga = await console.signed_in(member)
    queue_page = await olga.get("/staff/queue")
    assert f'href="/staff/jobs/{job_id}"' in queue_page.text
    record = await olga.get(f"/staff/jobs/{job_id}")
    assert f'formaction="/staff/jobs/{job_id}/hold"' in record.text

    no_reason = await olga.post(f"/staff/jobs/{job_id}/hold")
    assert no_reason.status_code == 409 and "Give a reason" in no_reason.text
    assert await console.audit("queue.held") == []

    held = await olga.post(f"/staff/jobs/{job_id}/hold", reason="waiting for the patient")
    assert held.status_code == 303 and held.headers["location"].endswith("?done=hold")
    assert (await seed.job(console.store, job_id)).state is JobState.HELD
    again = await olga.post(f"/staff/jobs/{job_id}/hold", reason="twice")
    assert again.status_code == 409 and "already held" in again.text

    retried = await olga.post(f"/staff/jobs/{job_id}/retry", reason="patient answered")
    assert retried.status_code == 303
    assert (await seed.job(console.store, job_id)).state is JobState.QUEUED

    bounced = await olga.post(f"/staff/jobs/{job_id}/bounce", reason="address invalid")
    assert bounced.status_code == 303
    assert (await seed.job(console.store, job_id)).state is JobState.BOUNCED
    [entry] = await console.audit("queue.bounced")
    assert entry.actor == "olga@org.example" and entry.details
    assert entry.details["reason"] == "address invalid"
    page = await olga.get(f"/staff/jobs/{job_id}")
    assert f"/staff/jobs/{entry.details['dsn_job']}" in page.text  # the DSN, as a related job
    unknown = await olga.post("/staff/jobs/999999/hold", reason="x")
    assert unknown.status_code == 404
    wrong = await olga.post(f"/staff/jobs/{job_id}/delete", reason="x")
    assert wrong.status_code == 404


async def test_a_leased_job_shows_no_buttons_and_refuses(console: ConsoleHarness) -> None:
    job_id = await _waiting(console.store, console.keyring)
    await queue.claim(console.store, console.settings.delivery, "w", limit=5)
    olga = await console.signed_in(await console.member("olga@org.example", StaffRole.OPERATOR))
    page = await olga.get(f"/staff/jobs/{job_id}")
    assert "formaction=" not in page.text and "being attempted" in page.text
    refused = await olga.post(f"/staff/jobs/{job_id}/bounce", reason="now")
    assert refused.status_code == 409 and "being attempted by a worker" in refused.text
    assert await console.audit("queue.bounced") == []


async def test_delivery_record_shows_tls_details(console: ConsoleHarness) -> None:
    msg = await seed.message(console.store, console.keyring, queue.utcnow())
    job_id = await seed.copy(
        console.store,
        msg,
        "v@verified.example",
        state=JobState.DELIVERED,
        at=queue.utcnow(),
        reason="delivered over TLSv1.3 (verified)",
        verified=True,
        tls_version="TLSv1.3",
        outcome="tls",
    )
    olga = await console.signed_in(await console.member("olga@org.example", StaffRole.OPERATOR))
    page = await olga.get(f"/staff/jobs/{job_id}")
    for shown in ("TLSv1.3", "TLS_AES_256_GCM_SHA384", "mx.verified.example", "system"):
        assert shown in page.text
    domains = await olga.get("/staff/domains")
    assert "verified.example" in domains.text and "TLSv1.3" in domains.text


_LINK = re.compile(r'href="(/staff/[^"#]*)"')


async def _crawl(client: StaffClient, start: list[str], limit: int = 60) -> dict[str, str]:
    """Every console page reachable by GET links from ``start`` (sign-out is a POST)."""
    seen: dict[str, str] = {}
    todo = list(start)
    while todo and len(seen) < limit:
        path = html.unescape(todo.pop(0))
        if path in seen or path.startswith("/staff/static/"):
            continue
        response = await client.get(path, follow_redirects=True)
        seen[path] = response.text
        todo.extend(p for p in _LINK.findall(response.text) if html.unescape(p) not in seen)
    return seen


async def test_no_content_or_subject_on_any_page_but_the_agents_opening(
    console: ConsoleHarness,
) -> None:
    s = await seed.conversation(console.store, console.keyring)
    waiting = await _waiting(console.store, console.keyring, "w@waiting.example")
    agent = await console.signed_in(await console.member("ann@org.example", StaffRole.AGENT))
    opened = await agent.post(
        f"/staff/conversations/{s.conversation_id}/open",
        reason="Patient called about results",
        case_ref="C-1",
    )
    assert seed.SECRET_BODY in opened.text  # the seeded content is really there to leak
    olga = await console.signed_in(await console.member("olga@org.example", StaffRole.OPERATOR))
    await olga.post(f"/staff/jobs/{waiting}/hold", reason="checking")
    starts = {
        StaffRole.OPERATOR: ["/staff/", f"/staff/jobs/{s.job_id}", f"/staff/jobs/{waiting}"],
        StaffRole.AUDITOR: ["/staff/", "/staff/audit/export?since=2000-01-01"],
        StaffRole.ADMIN: ["/staff/"],
    }
    for role, start in starts.items():
        member = await console.member(f"{role.value}-scan@org.example", role)
        client = await console.signed_in(member)
        pages = await _crawl(client, start)
        assert len(pages) >= 3, (role, list(pages))
        for path, text in pages.items():
            for secret in (seed.SECRET_SUBJECT, seed.SECRET_BODY, "Zebra", "Marmalade"):
                assert secret not in text, (role, path)
