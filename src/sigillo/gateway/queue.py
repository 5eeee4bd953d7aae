"""The durable queue: accepting messages, claiming jobs under a lease, recording results.

Every state change is atomic (several may share one group commit, see ``Store.write``). A job
is owned by a worker only while its lease runs; a worker that dies leaves the lease to expire
and another worker (or the restarted one) claims the job again. A job whose claims keep
ending without a result is set aside (HELD).
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32

from sqlalchemy import and_, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from sigillo.config import DeliverySettings
from sigillo.store import audit
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import FINAL_STATES, Attempt, Job, JobKind, JobState, Message


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_message_id() -> str:
    return secrets.token_hex(16)


def message_id_hash(value: str) -> str | None:
    """Normalised Message-ID (``<left@right>``) hashed, for threading without clear headers."""
    value = value.strip()
    if not value:
        return None
    if not value.startswith("<"):
        value = f"<{value}>"
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


def header_message_id(content: bytes) -> str | None:
    headers = BytesHeaderParser(policy=compat32).parsebytes(content)
    value = headers.get("Message-ID")
    return message_id_hash(str(value)) if value else None


@dataclass(frozen=True)
class Recipient:
    address: str
    domain: str


async def enqueue(
    store: Store,
    keyring: Keyring,
    settings: DeliverySettings,
    *,
    mail_from: str,
    recipients: Sequence[Recipient],
    content: bytes,
    client_address: str,
    msg_id: str | None = None,
    now: datetime | None = None,
    requiretls: bool = False,
) -> str:
    """Store the encrypted message and one DELIVER job per recipient in one transaction.

    Returns only after the commit, so the caller may answer 250.
    """
    now = now or utcnow()
    message = new_message(
        keyring,
        mail_from=mail_from,
        content=content,
        client_address=client_address,
        now=now,
        msg_id=msg_id,
        requiretls=requiretls,
    )
    msg_id = message.id

    def store_message(session: Session) -> None:
        session.add(message)
        session.add_all(
            new_job(JobKind.DELIVER, r.address, r.domain, now, settings, message_id=msg_id)
            for r in recipients
        )

    await store.write(store_message)
    return msg_id


def new_message(
    keyring: Keyring,
    *,
    mail_from: str,
    content: bytes,
    client_address: str,
    now: datetime,
    msg_id: str | None = None,
    requiretls: bool = False,
) -> Message:
    """A message row with its content sealed, ready to add to a transaction.

    ``requiretls``: it arrived with ``MAIL FROM:<...> REQUIRETLS`` (RFC 8689).
    """
    msg_id = msg_id or new_message_id()
    sealed = keyring.seal(msg_id, content)
    return Message(
        id=msg_id,
        received_at=now,
        mail_from=mail_from,
        client_address=client_address,
        size=len(content),
        kek_id=sealed.kek_id,
        wrapped_key=sealed.wrapped_key,
        content=sealed.content,
        message_id_hash=header_message_id(content),
        requiretls=requiretls,
    )


def new_job(
    kind: JobKind,
    recipient: str,
    domain: str,
    now: datetime,
    settings: DeliverySettings,
    **links: int | str | None,
) -> Job:
    return Job(
        kind=kind,
        state=JobState.QUEUED,
        recipient=recipient,
        domain=domain,
        created_at=now,
        expires_at=now + settings.queue_lifetime,
        next_attempt_at=now,
        attempts=0,
        crashes=0,
        **links,
    )


@dataclass
class Claim:
    """Jobs one worker owns until ``lease_until``: one DELIVER group (same message and
    recipient domain, so they share a connection and transaction), or a single other job."""

    token: str
    kind: JobKind
    jobs: list[Job]
    lease_until: datetime
    held: list[Job] = field(default_factory=list)
    message: Message | None = None
    """The (still encrypted) message a DELIVER group carries, read in the claim's transaction."""


def _due(now: datetime) -> list[ColumnElement[bool]]:
    return [
        Job.state == JobState.QUEUED,
        Job.next_attempt_at <= now,
        or_(Job.lease_until.is_(None), Job.lease_until < now),
    ]


_SENDS_CONTENT = frozenset({JobKind.DELIVER, JobKind.RELAY, JobKind.MAIL})
"""Kinds whose claim carries the stored message they send."""


async def claim(
    store: Store, settings: DeliverySettings, worker: str, limit: int, now: datetime | None = None
) -> list[Claim]:
    """Lease up to ``limit`` groups of due jobs to ``worker``.

    Heads, then the rest of their (message, domain) groups, are leased by ``UPDATE ...
    RETURNING`` over ``FOR UPDATE SKIP LOCKED`` sub-selects: atomic on SQLite, and workers on
    one PostgreSQL store pass each other without waiting.
    """
    now = now or utcnow()
    token = f"{worker}/{secrets.token_hex(6)}"
    until = now + settings.lease
    lease = {"lease_owner": token, "lease_until": until, "crashes": Job.crashes + 1}

    def lease_due(session: Session) -> list[Claim]:
        heads = (
            select(Job.id)
            .where(*_due(now))
            .order_by(Job.next_attempt_at, Job.message_id, Job.domain)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        # RETURNING the rows themselves: no second look-up by lease token.
        leased = update(Job).values(**lease).returning(Job)
        options = {"synchronize_session": False, "populate_existing": True}
        rows = list(
            (
                session.execute(
                    leased.where(Job.id.in_(heads.scalar_subquery())), execution_options=options
                )
            )
            .scalars()
            .all()
        )
        groups = {(j.message_id, j.domain) for j in rows if j.kind is JobKind.DELIVER}
        if groups:
            siblings = (
                select(Job.id)
                .where(
                    *_due(now),
                    Job.kind == JobKind.DELIVER,
                    tuple_(Job.message_id, Job.domain).in_(sorted(groups)),
                )
                .with_for_update(skip_locked=True)
            )
            more = session.execute(
                leased.where(Job.id.in_(siblings.scalar_subquery())), execution_options=options
            )
            rows.extend(more.scalars().all())
        rows.sort(key=lambda job: job.id)
        held = [job for job in rows if job.crashes > settings.max_crashes]
        for job in held:
            job.state = JobState.HELD
            job.lease_owner = None
            job.lease_until = None
            job.reason = (
                f"set aside after {job.crashes - 1} claims ended without a result "
                "(a worker crashed while handling it); release it after investigating"
            )
        claims: dict[tuple[object, ...], Claim] = {}
        for job in rows:
            if job.state is JobState.HELD:
                continue
            key = (
                (job.kind, job.message_id, job.domain)
                if job.kind is JobKind.DELIVER
                else (job.kind, job.id)
            )
            claims.setdefault(key, Claim(token, job.kind, [], until)).jobs.append(job)
        result = list(claims.values())
        wanted = {c.jobs[0].message_id for c in result if c.kind in _SENDS_CONTENT}
        if wanted:
            messages = session.execute(select(Message).where(Message.id.in_(wanted)))
            by_id = {m.id: m for m in messages.scalars()}
            for c in result:
                if c.kind in _SENDS_CONTENT:
                    c.message = by_id.get(c.jobs[0].message_id or "")
        if held:
            result.append(Claim(token, JobKind.DELIVER, [], until, held=held))
        return result

    return await store.write(lease_due)


def backoff(settings: DeliverySettings, attempts: int) -> timedelta:
    """``retry_initial x retry_factor^(n-1)``, capped at ``retry_max``."""
    seconds = settings.retry_initial.total_seconds() * settings.retry_factor ** max(attempts - 1, 0)
    return min(timedelta(seconds=seconds), settings.retry_max)


async def load_message(session: AsyncSession, message_id: str) -> Message:
    message = await session.get(Message, message_id)
    if message is None:
        raise LookupError(f"message {message_id} not found")
    return message


def open_content(keyring: Keyring, message: Message) -> bytes:
    return keyring.open(message.id, message.kek_id, message.wrapped_key, message.content)


def owned(session: Session, claim: Claim) -> list[Job]:
    """The claim's jobs, re-read in this session, that the claim still owns."""
    ids = [job.id for job in claim.jobs]
    rows = session.execute(select(Job).where(and_(Job.id.in_(ids), Job.lease_owner == claim.token)))
    return list(rows.scalars().all())


def mark_delivered(session: Session, claim: Claim, now: datetime, reason: str) -> list[int]:
    """Mark the claim's jobs delivered; returns the ids it still owned (and so updated)."""
    result = session.execute(
        update(Job)
        .where(Job.id.in_([job.id for job in claim.jobs]), Job.lease_owner == claim.token)
        .values(
            state=JobState.DELIVERED,
            finished_at=now,
            reason=reason,
            lease_owner=None,
            lease_until=None,
            crashes=0,
            attempts=Job.attempts + 1,
        )
        .returning(Job.id),
        execution_options={"synchronize_session": False},
    )
    return list(result.scalars().all())


def finish(
    session: Session,
    job: Job,
    state: JobState,
    now: datetime,
    reason: str | None,
    attempt: Attempt | None,
) -> None:
    job.state = state
    job.finished_at = now if state is not JobState.QUEUED else None
    job.reason = reason
    job.lease_owner = None
    job.lease_until = None
    job.crashes = 0
    job.attempts += 1
    if attempt is not None:
        attempt.job_id = job.id
        session.add(attempt)


def defer(
    session: Session,
    job: Job,
    settings: DeliverySettings,
    now: datetime,
    reason: str,
    attempt: Attempt,
) -> bool:
    """Schedule the next try; False when the queue lifetime is over (the caller bounces)."""
    finish(session, job, JobState.QUEUED, now, reason, attempt)
    if now >= job.expires_at:
        return False
    job.next_attempt_at = min(now + backoff(settings, job.attempts), job.expires_at)
    return True


# -- operator actions ------------------------------------------------------------------------
#
# An operator may hold a waiting job, release (retry) a held or waiting one, or bounce a
# recipient's copy. Each is one conditional UPDATE and its audit entry in one transaction, so
# two operators, or an operator and a worker, can never both win. A job under a live lease is
# refused: its worker is talking to the recipient's MX right now and will record the result
# under its lease token; changing the row beneath it would let that result land on a job the
# operator believes stopped (or bounce a copy that was in fact delivered). The operator waits
# for the attempt to end (at most the lease, ``[delivery] lease``) and tries again. None of
# these reads or touches the message content.

REASON_LIMIT = 500
"""Characters of the operator's reason kept (in the audit entry and the job's reason)."""


class QueueActionRefused(ValueError):
    """The job cannot take this action now; the message says why in one line."""


class QueueAction(enum.StrEnum):
    HOLD = "hold"
    RELEASE = "release"
    BOUNCE = "bounce"


_AUDIT_ACTIONS = {
    QueueAction.HOLD: "queue.held",
    QueueAction.RELEASE: "queue.released",
    QueueAction.BOUNCE: "queue.bounced",
}
_FROM_STATES = {
    QueueAction.HOLD: (JobState.QUEUED,),
    QueueAction.RELEASE: (JobState.QUEUED, JobState.HELD),
    QueueAction.BOUNCE: (JobState.QUEUED, JobState.HELD),
}


@dataclass(frozen=True)
class ActionResult:
    job_id: int
    action: QueueAction
    before: JobState
    after: JobState
    dsn_job_id: int | None = None
    """The DSN queued to the sender by a bounce (None when the sender is empty: a bounce
    of a bounce)."""


def dsn_job(job: Job, mail_from: str, now: datetime, settings: DeliverySettings) -> Job | None:
    """The DSN job reporting a bounced copy to its sender; the worker builds and sends the
    report from the bounced job's reason and last attempt. None for an empty sender: a
    bounce is never bounced (RFC 5321 4.5.5)."""
    if not mail_from:
        return None
    return new_job(
        JobKind.DSN,
        mail_from,
        mail_from.rpartition("@")[2].lower(),
        now,
        settings,
        message_id=job.message_id,
        parent_id=job.id,
    )


def _clean_reason(reason: str) -> str:
    cleaned = " ".join(reason.split())
    if not cleaned:
        raise QueueActionRefused("a reason is required")
    if len(cleaned) > REASON_LIMIT:
        raise QueueActionRefused(f"the reason is longer than {REASON_LIMIT} characters")
    return cleaned


def _refusal(job: Job | None, job_id: int, action: QueueAction, now: datetime) -> str:
    if job is None:
        return f"job {job_id} does not exist"
    if job.lease_until is not None and job.lease_until > now:
        return (
            f"job {job_id} is being attempted by a worker right now; try again after "
            f"{job.lease_until.isoformat(timespec='seconds')}"
        )
    if action is QueueAction.BOUNCE and job.kind is not JobKind.DELIVER:
        return f"job {job_id} is a {job.kind.value} job; only a recipient's copy can be bounced"
    if job.state in FINAL_STATES:
        return f"job {job_id} is already {job.state.value}; there is nothing to change"
    if action is QueueAction.HOLD and job.state is JobState.HELD:
        return f"job {job_id} is already held"
    return f"job {job_id} is {job.state.value} and cannot be changed this way"


def _apply(
    session: Session,
    job_id: int,
    action: QueueAction,
    *,
    actor: str,
    reason: str,
    now: datetime,
    client: str | None,
    settings: DeliverySettings,
) -> ActionResult:
    current = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    if (
        current is None
        or current.state not in _FROM_STATES[action]
        or (current.lease_until is not None and current.lease_until > now)
        or (action is QueueAction.BOUNCE and current.kind is not JobKind.DELIVER)
    ):
        raise QueueActionRefused(_refusal(current, job_id, action, now))
    before = current.state
    after = {
        QueueAction.HOLD: JobState.HELD,
        QueueAction.RELEASE: JobState.QUEUED,
        QueueAction.BOUNCE: JobState.BOUNCED,
    }[action]
    values: dict[str, object] = {"state": after, "lease_owner": None, "lease_until": None}
    if action is QueueAction.HOLD:
        values["reason"] = f"held by {actor}: {reason}"
    elif action is QueueAction.RELEASE:
        values |= {"next_attempt_at": now, "crashes": 0, "reason": f"released by {actor}: {reason}"}
    else:
        values |= {"finished_at": now, "reason": f"bounced by {actor}: {reason}", "crashes": 0}
    # The lease and state are checked again in the UPDATE itself: on a backend without row
    # locks, a claim that slipped in after the read above makes it match nothing.
    changed = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.state == before,
            or_(Job.lease_until.is_(None), Job.lease_until <= now),
        )
        .values(**values)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if changed is None:
        raise QueueActionRefused(f"job {job_id} changed while this was decided; reload and retry")
    dsn_id = None
    if action is QueueAction.BOUNCE:
        message = session.get(Message, current.message_id) if current.message_id else None
        dsn = dsn_job(current, message.mail_from if message else "", now, settings)
        if dsn is not None:
            session.add(dsn)
            session.flush()
            dsn_id = dsn.id
    details: dict[str, object] = {
        "job": job_id,
        "kind": current.kind.value,
        "from": before.value,
        "reason": reason,
    }
    if dsn_id is not None:
        details["dsn_job"] = dsn_id
    audit.record(
        session,
        _AUDIT_ACTIONS[action],
        actor=actor,
        at=now,
        client=client,
        message_id=current.message_id,
        details=details,
    )
    return ActionResult(job_id, action, before, after, dsn_id)


async def operate(
    store: Store,
    settings: DeliverySettings,
    job_id: int,
    action: QueueAction,
    *,
    actor: str,
    reason: str,
    client: str | None = None,
    now: datetime | None = None,
) -> ActionResult:
    """Hold, release or bounce ``job_id`` as ``actor``; raises QueueActionRefused (a one-line
    reason) for a job that does not exist, is leased, or is in a state the action does not
    apply to. Release puts the job back in line at once with its crash count cleared; a job
    past its queue lifetime then gets one more attempt, and bounces if that one fails."""
    cleaned = _clean_reason(reason)
    at = now or utcnow()
    return await store.write(
        lambda session: _apply(
            session,
            job_id,
            action,
            actor=actor,
            reason=cleaned,
            now=at,
            client=client,
            settings=settings,
        )
    )
