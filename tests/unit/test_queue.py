"""The queue's contract, run over SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from sigillo.config import DeliverySettings
from sigillo.gateway import queue
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import Job, JobKind, JobState, Message

SETTINGS = DeliverySettings(lease=timedelta(minutes=5), max_crashes=2)
CONTENT = b"Subject: lab results\r\nMessage-ID: <m1@org.example>\r\n\r\nHbA1c 6.1%\r\n"


async def _enqueue(store: Store, keyring: Keyring, *rcpts: str) -> str:
    recipients = [queue.Recipient(r, r.rpartition("@")[2]) for r in rcpts]
    return await queue.enqueue(
        store,
        keyring,
        SETTINGS,
        mail_from="doc@org.example",
        recipients=recipients,
        content=CONTENT,
        client_address="127.0.0.1",
    )


async def test_enqueue_stores_encrypted_content_and_one_job_per_recipient(
    store: Store, keyring: Keyring
) -> None:
    msg_id = await _enqueue(store, keyring, "a@x.example", "b@x.example", "c@y.example")
    async with store.session() as session:
        message = await session.get(Message, msg_id)
        jobs = (await session.execute(select(Job).order_by(Job.id))).scalars().all()
    assert message is not None
    assert b"HbA1c" not in message.content and b"lab results" not in message.content
    assert queue.open_content(keyring, message) == CONTENT
    assert message.message_id_hash == queue.message_id_hash("<m1@org.example>")
    assert [(j.recipient, j.kind, j.state) for j in jobs] == [
        ("a@x.example", JobKind.DELIVER, JobState.QUEUED),
        ("b@x.example", JobKind.DELIVER, JobState.QUEUED),
        ("c@y.example", JobKind.DELIVER, JobState.QUEUED),
    ]
    assert jobs[0].expires_at - jobs[0].created_at == SETTINGS.queue_lifetime


async def test_claim_groups_by_domain_and_leases(store: Store, keyring: Keyring) -> None:
    await _enqueue(store, keyring, "a@x.example", "b@x.example", "c@y.example")
    claims = await queue.claim(store, SETTINGS, "w1", limit=10)
    groups = sorted(sorted(j.recipient for j in c.jobs) for c in claims)
    assert groups == [["a@x.example", "b@x.example"], ["c@y.example"]]
    # Leased jobs are invisible to every other claimer until the lease runs out.
    assert await queue.claim(store, SETTINGS, "w2", limit=10) == []
    later = queue.utcnow() + SETTINGS.lease + timedelta(seconds=1)
    again = await queue.claim(store, SETTINGS, "w2", limit=10, now=later)
    assert sum(len(c.jobs) for c in again) == 3


async def test_a_small_limit_still_takes_the_whole_group(store: Store, keyring: Keyring) -> None:
    await _enqueue(store, keyring, *(f"r{i}@x.example" for i in range(30)))
    claims = await queue.claim(store, SETTINGS, "w1", limit=1)
    assert len(claims) == 1 and len(claims[0].jobs) == 30


async def test_repeatedly_crashing_job_is_set_aside(store: Store, keyring: Keyring) -> None:
    await _enqueue(store, keyring, "a@x.example")
    now = queue.utcnow()
    for _ in range(SETTINGS.max_crashes):
        claims = await queue.claim(store, SETTINGS, "w", limit=5, now=now)
        assert claims and claims[0].jobs  # claimed; the worker "dies" without a result
        now += SETTINGS.lease + timedelta(seconds=1)
    claims = await queue.claim(store, SETTINGS, "w", limit=5, now=now)
    assert [j.state for c in claims for j in c.held] == [JobState.HELD]
    async with store.session() as session:
        job = (await session.execute(select(Job))).scalars().one()
    assert job.state is JobState.HELD and "crashed" in (job.reason or "")


async def test_result_clears_crash_count_and_defers_with_backoff(
    store: Store, keyring: Keyring
) -> None:
    await _enqueue(store, keyring, "a@x.example")
    [claim] = await queue.claim(store, SETTINGS, "w", limit=5)
    from sigillo.store.models import Attempt

    now = queue.utcnow()

    def record(session: Session) -> bool:
        [job] = queue.owned(session, claim)
        return queue.defer(
            session, job, SETTINGS, now, "451 try later", Attempt(at=now, outcome="deferred")
        )

    assert await store.write(record)
    async with store.session() as session:
        job = (await session.execute(select(Job))).scalars().one()
    assert job.crashes == 0 and job.attempts == 1 and job.lease_owner is None
    assert job.next_attempt_at - now == SETTINGS.retry_initial


def test_backoff_grows_and_is_capped() -> None:
    steps = [queue.backoff(SETTINGS, n) for n in (1, 2, 3, 50)]
    assert steps[0] == timedelta(minutes=15)
    assert steps[1] == timedelta(minutes=15 * 1.25)
    assert steps[2] > steps[1]
    assert steps[3] == SETTINGS.retry_max
