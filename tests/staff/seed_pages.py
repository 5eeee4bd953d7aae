"""Rows for the console page tests: delivered, portal and bounced copies with their attempts,
written straight into the store (no network), and portal activity in the audit log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from sigillo.config import DeliverySettings
from sigillo.gateway import queue
from sigillo.notify import new_token
from sigillo.portal.handoff import hand_off
from sigillo.store import audit
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import Attempt, Job, JobKind, JobState, PortalToken

DELIVERY = DeliverySettings()
SECRET_SUBJECT = "Zebra-Quokka diagnosis 7731"
SECRET_BODY = "Marmalade-Pangolin result 4412: positive"
CONTENT = (
    f"From: Dr Rossi <doc@org.example>\r\nTo: pat@patients.example\r\n"
    f"Subject: {SECRET_SUBJECT}\r\nMessage-ID: <seed@org.example>\r\n"
    f"Content-Type: text/plain; charset=utf-8\r\n\r\n{SECRET_BODY}\r\n"
).encode()

NO_STARTTLS = (
    "TLS policy not met: mx.a.example[192.0.2.1]: no STARTTLS: the server does not offer STARTTLS"
)
BAD_CERT = (
    "TLS policy not met: mx.b.example[192.0.2.2]: certificate: self-signed certificate; "
    "mx2.b.example[192.0.2.3]: no STARTTLS: the server does not offer STARTTLS"
)
HANDSHAKE = "TLS policy not met: mx.c.example[192.0.2.4]: handshake failed: wrong version number"
POLICY = "domain policy is portal (config)"


async def message(store: Store, keyring: Keyring, now: datetime, content: bytes = CONTENT) -> str:
    stored = queue.new_message(
        keyring,
        mail_from="doc@org.example",
        content=content,
        client_address="127.0.0.1",
        now=now,
    )
    await store.write(lambda session: session.add(stored))
    return stored.id


async def copy(
    store: Store,
    message_id: str,
    recipient: str,
    *,
    state: JobState,
    at: datetime,
    reason: str | None = None,
    verified: bool | None = None,
    tls_version: str | None = None,
    outcome: str | None = None,
) -> int:
    """A DELIVER job that reached ``state`` at ``at`` (or is still waiting), and its attempt."""
    domain = recipient.rpartition("@")[2]

    def write(session: Session) -> int:
        job = queue.new_job(
            JobKind.DELIVER,
            recipient,
            domain,
            at - timedelta(minutes=1),
            DELIVERY,
            message_id=message_id,
        )
        job.state = state
        job.reason = reason
        if state in (JobState.DELIVERED, JobState.PORTAL, JobState.BOUNCED):
            job.finished_at = at
            job.attempts = 1
        session.add(job)
        session.flush()
        if outcome is not None:
            session.add(
                Attempt(
                    job_id=job.id,
                    at=at,
                    outcome=outcome,
                    reason=reason,
                    mx_host=f"mx.{domain}",
                    mx_ip="192.0.2.10",
                    tls_version=tls_version,
                    tls_cipher="TLS_AES_256_GCM_SHA384" if tls_version else None,
                    cert_verified=verified,
                    verification="system"
                    if verified
                    else ("none (encrypt)" if tls_version else None),
                    smtp_code=250 if outcome == "tls" else None,
                )
            )
        return job.id

    return await store.write(write)


Plan = list[tuple[JobState, bool | None, str | None, int]]
"""(final state, certificate verified, reason, how many copies)."""


async def copies(store: Store, message_id: str, plan: Plan, at: datetime) -> None:
    """Copies of one message as the plan lists them, to recipients spread over four domains."""
    n = 0
    for state, verified, reason, count in plan:
        for _ in range(count):
            n += 1
            await copy(
                store,
                message_id,
                f"r{n}@d{n % 4}.example",
                state=state,
                at=at,
                reason=reason,
                verified=verified,
                tls_version="TLSv1.3" if state is JobState.DELIVERED else None,
                outcome="tls" if state is JobState.DELIVERED else state.value,
            )


async def activity(
    store: Store, action: str, at: datetime, actor: str = "pat@patients.example"
) -> None:
    await audit.log(store, action, actor=actor, at=at, client="127.0.0.1")


@dataclass(frozen=True)
class Seeded:
    conversation_id: int
    message_id: str
    job_id: int
    token: str
    """The notification link's token (``/c/<token>``) for the recipient to register with."""


async def conversation(
    store: Store,
    keyring: Keyring,
    recipient: str = "pat@patients.example",
    content: bytes = CONTENT,
    *,
    now: datetime | None = None,
) -> Seeded:
    """A copy handed to the portal as the worker does it (conversation, notification job,
    the copy's job in state portal), and a notification link to it."""
    at = now or datetime.now(UTC)
    stored = queue.new_message(
        keyring, mail_from="doc@org.example", content=content, client_address="127.0.0.1", now=at
    )
    token, digest = new_token()
    domain = recipient.rpartition("@")[2]

    def write(session: Session) -> tuple[int, int]:
        session.add(stored)
        session.flush()
        job = queue.new_job(JobKind.DELIVER, recipient, domain, at, DELIVERY, message_id=stored.id)
        job.state, job.finished_at, job.reason = JobState.PORTAL, at, NO_STARTTLS
        session.add(job)
        found = hand_off(session, DELIVERY, stored.id, recipient, domain, content, at)
        session.flush()
        session.add(
            PortalToken(
                token_hash=digest, conversation_id=found.id, recipient=recipient, created_at=at
            )
        )
        return found.id, job.id

    conversation_id, job_id = await store.write(write)
    return Seeded(conversation_id, stored.id, job_id, token)


async def job(store: Store, job_id: int) -> Job:
    async with store.session() as session:
        found = await session.get(Job, job_id)
    assert found is not None
    return found


async def audit_entry(
    store: Store,
    action: str,
    *,
    actor: str,
    at: datetime,
    conversation_id: int | None = None,
    details: dict[str, object] | None = None,
) -> None:
    await audit.log(
        store, action, actor=actor, at=at, conversation_id=conversation_id, details=details
    )
