"""A conversation's life after delivery: withdrawal by the sender, a changed expiry, and the
destruction of content (crypto-shredding) when it expires, is withdrawn or is erased.

Shredding a message first overwrites its wrapped data key and ciphertext in place, then deletes
the row, with SQLite's ``secure_delete`` on so that freed space is zeroed rather than left
readable; ``checkpoint`` then moves the clean pages into the database file and empties the WAL,
where the old page images would otherwise linger. Delivery records (jobs, attempts) and the
conversation's envelope row stay: they are bookkeeping, not content.

One message can be a copy for several recipients, so a message row is destroyed only when
nothing else still needs it: no other conversation that is not yet shredded, and no job
that has not reached a final state (a queued delivery, a DSN still to be built from it).
The functions taking a ``Session`` run inside ``store.write`` and audit in that transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy import and_, delete, exists, func, or_, select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from sigillo.config import Settings
from sigillo.gateway.inbound import ANSWER_INTERVAL
from sigillo.policies import DomainPolicies
from sigillo.portal import sessions, throttle
from sigillo.store import audit
from sigillo.store.db import Store, is_sqlite
from sigillo.store.models import (
    FINAL_STATES,
    AutoAnswer,
    Conversation,
    ConversationMessage,
    Job,
    JobKind,
    JobState,
    LoginThrottle,
    Message,
    PasswordReset,
    PhishingReport,
    PortalSession,
)

RETENTION_ACTOR = "system:retention"
"""The actor of what the retention job does on its own."""
MAX_REASON = 500
"""Characters of a stated reason kept in the audit log."""


class LifecycleError(ValueError):
    """A lifecycle action that does not apply: unknown, already withdrawn, no reason..."""


@dataclass(frozen=True)
class Shredded:
    """What destroying one conversation's content did."""

    conversation_id: int
    messages: int
    """Message rows destroyed (data key, ciphertext and row)."""
    kept: int
    """Messages unlinked from this conversation but kept for another copy still in use; the
    retention job destroys them once nothing needs them."""
    notifications_cancelled: int


def secure_delete(session: Session) -> None:
    """Zero the space that deleted rows free (SQLite; PostgreSQL has no equivalent, see
    ``checkpoint``). Set on the connection before the first delete of the transaction."""
    if session.connection().dialect.name == "sqlite":
        session.execute(text("PRAGMA secure_delete=ON"))


def still_needed(
    session: Session, message_ids: Collection[str], *, besides: int | None = None
) -> set[str]:
    """Which of ``message_ids`` another unshredded conversation (not ``besides``) or an
    unfinished job still needs."""
    if not message_ids:
        return set()
    ids = list(message_ids)
    linked = select(ConversationMessage.message_id).join(
        Conversation, Conversation.id == ConversationMessage.conversation_id
    )
    linked = linked.where(
        ConversationMessage.message_id.in_(ids), Conversation.shredded_at.is_(None)
    )
    if besides is not None:
        linked = linked.where(Conversation.id != besides)
    pending = select(Job.message_id).where(
        Job.message_id.in_(ids), Job.state.not_in(list(FINAL_STATES))
    )
    needed = set(session.execute(linked).scalars()) | set(session.execute(pending).scalars())
    return {m for m in needed if m is not None}


def destroy_messages(session: Session, message_ids: Collection[str]) -> int:
    """Crypto-shred ``message_ids``: overwrite key and ciphertext, unlink, delete. The caller
    has checked that nothing needs them (``still_needed``)."""
    if not message_ids:
        return 0
    ids = sorted(message_ids)
    secure_delete(session)
    options = {"synchronize_session": False}
    # Overwritten first, so the data key is gone from the row's page even where the delete
    # below only marks the cell free.
    session.execute(
        update(Message)
        .where(Message.id.in_(ids))
        .values(wrapped_key=b"", content=b"")
        .execution_options(**options)
    )
    session.execute(
        update(Job)
        .where(Job.message_id.in_(ids))
        .values(message_id=None)
        .execution_options(**options)
    )
    session.execute(
        delete(ConversationMessage)
        .where(ConversationMessage.message_id.in_(ids))
        .execution_options(**options)
    )
    result = session.execute(
        delete(Message).where(Message.id.in_(ids)).execution_options(**options)
    )
    return _count(result)


def cancel_notifications(session: Session, conversation_id: int, at: datetime, why: str) -> int:
    """Queued notifications of a conversation that has nothing left to read."""
    result = session.execute(
        update(Job)
        .where(
            Job.conversation_id == conversation_id,
            Job.kind == JobKind.NOTIFY,
            Job.state.in_([JobState.QUEUED, JobState.HELD]),
        )
        .values(
            state=JobState.FAILED,
            finished_at=at,
            reason=why,
            lease_owner=None,
            lease_until=None,
        )
        .execution_options(synchronize_session=False)
    )
    return _count(result)


def shred_conversation(
    session: Session,
    conversation_id: int,
    *,
    at: datetime,
    cause: str,
    actor: str = RETENTION_ACTOR,
    client: str | None = None,
) -> Shredded:
    """Destroy the conversation's content and mark it shredded; audited as
    ``conversation.shredded`` with ``cause`` (``expired``, ``withdrawn``, ``erased``).
    Idempotent: a shredded conversation with nothing left linked is left alone."""
    conversation = session.get(Conversation, conversation_id, with_for_update=True)
    if conversation is None:
        raise LifecycleError(f"no conversation {conversation_id}")
    linked = set(
        session.execute(
            select(ConversationMessage.message_id).where(
                ConversationMessage.conversation_id == conversation_id
            )
        ).scalars()
    )
    first_time = conversation.shredded_at is None
    if not first_time and not linked:
        return Shredded(conversation_id, 0, 0, 0)
    if first_time:
        conversation.shredded_at = at
    kept = still_needed(session, linked, besides=conversation_id)
    secure_delete(session)
    session.execute(
        delete(ConversationMessage)
        .where(ConversationMessage.conversation_id == conversation_id)
        .execution_options(synchronize_session=False)
    )
    destroyed = destroy_messages(session, linked - kept)
    cancelled = cancel_notifications(session, conversation_id, at, f"conversation {cause}")
    audit.record(
        session,
        "conversation.shredded",
        actor=actor,
        at=at,
        client=client,
        conversation_id=conversation_id,
        details={
            "cause": cause,
            "messages": destroyed,
            "kept_for_other_copies": len(kept),
            "notifications_cancelled": cancelled,
        },
    )
    return Shredded(conversation_id, destroyed, len(kept), cancelled)


def _reason(reason: str) -> str:
    reason = " ".join(reason.split())
    if not reason:
        raise LifecycleError("a reason is required")
    if len(reason) > MAX_REASON:
        raise LifecycleError(f"the reason is longer than {MAX_REASON} characters")
    return reason


def withdraw(
    session: Session,
    conversation_id: int,
    *,
    actor: str,
    reason: str,
    at: datetime,
    client: str | None = None,
) -> Shredded:
    """The sender recalls the conversation: the recipient sees that it was withdrawn and
    none of its content, which is destroyed now. Audited as ``conversation.withdrawn`` with
    the stated reason (and ``conversation.shredded``)."""
    stated = _reason(reason)
    conversation = session.get(Conversation, conversation_id, with_for_update=True)
    if conversation is None:
        raise LifecycleError(f"no conversation {conversation_id}")
    if conversation.withdrawn_at is not None:
        raise LifecycleError(f"conversation {conversation_id} is already withdrawn")
    already_shredded = conversation.shredded_at is not None
    conversation.withdrawn_at, conversation.withdrawn_by = at, actor
    audit.record(
        session,
        "conversation.withdrawn",
        actor=actor,
        at=at,
        client=client,
        conversation_id=conversation_id,
        details={"reason": stated, "already_shredded": already_shredded},
    )
    return shred_conversation(
        session, conversation_id, at=at, cause="withdrawn", actor=actor, client=client
    )


def set_expiry(
    session: Session,
    conversation_id: int,
    *,
    expires_at: datetime | None,
    actor: str,
    at: datetime,
    client: str | None = None,
    reason: str,
) -> datetime | None:
    """Set (or, with None, clear back to the domain's retention) the date a conversation
    expires; returns the previous date. Audited as ``conversation.expiry_changed``."""
    stated = _reason(reason)
    if expires_at is not None and expires_at.tzinfo is None:
        raise LifecycleError("the expiry date needs a time zone")
    conversation = session.get(Conversation, conversation_id, with_for_update=True)
    if conversation is None:
        raise LifecycleError(f"no conversation {conversation_id}")
    if conversation.withdrawn_at is not None or conversation.shredded_at is not None:
        raise LifecycleError(f"conversation {conversation_id} has no content left to keep")
    before = conversation.expires_at
    conversation.expires_at = expires_at
    audit.record(
        session,
        "conversation.expiry_changed",
        actor=actor,
        at=at,
        client=client,
        conversation_id=conversation_id,
        details={
            "before": before.isoformat() if before else None,
            "after": expires_at.isoformat() if expires_at else None,
            "reason": stated,
        },
    )
    return before


# -- retention ---------------------------------------------------------------------------

BATCH = 200
"""Conversations or messages per transaction: the job never holds the write lock for long."""


@dataclass(frozen=True)
class RetentionReport:
    conversations: int
    """Conversations shredded because they expired (or leftovers of earlier shredding)."""
    conversation_messages: int
    """Message rows destroyed with those conversations."""
    delivered_messages: int
    """Messages delivered over TLS (or bounced) destroyed after ``[retention]
    delivered_content``."""
    notifications_cancelled: int
    expired_resets: int
    expired_sessions: int
    stale_throttles: int
    wal_truncated: bool | None
    """SQLite: the WAL was checkpointed and emptied (False: readers kept it busy, the next
    run tries again). None: nothing to do or not SQLite."""
    complete: bool = True
    """False when the run was stopped (``serve`` shutting down) before the end."""
    phishing_reports: int = 0
    """Phishing reports deleted, with the mail they carried, after ``[phishing]
    report_retention``."""
    auto_answers: int = 0
    """Automatic-answer rate-limit rows older than a day (they no longer limit anything)."""

    def counts(self) -> dict[str, object]:
        return {
            "conversations": self.conversations,
            "conversation_messages": self.conversation_messages,
            "delivered_messages": self.delivered_messages,
            "phishing_reports": self.phishing_reports,
            "auto_answers": self.auto_answers,
            "notifications_cancelled": self.notifications_cancelled,
            "expired_resets": self.expired_resets,
            "expired_sessions": self.expired_sessions,
            "stale_throttles": self.stale_throttles,
        }


async def run_retention(
    store: Store,
    settings: Settings,
    now: datetime | None = None,
    *,
    batch: int = BATCH,
    stop: asyncio.Event | None = None,
) -> RetentionReport:
    """Destroy what has been kept long enough: expired portal conversations (the date staff
    set, else the domain's console retention, else ``[portal] message_ttl_days`` after the
    last message), content that left over TLS ``[retention] delivered_content`` ago, phishing
    reports older than ``[phishing] report_retention`` with their mail, and expired sign-in
    and automatic-answer leftovers. Bounded transactions, safe to interrupt and to run twice;
    one ``retention.run`` audit entry with the counts. With ``stop`` set it finishes the
    batch in hand and reports what it did (``complete`` False)."""
    now = now or datetime.now(UTC)
    policies = await DomainPolicies.load(store)
    ttl = settings.portal.message_ttl_days
    conversations = messages = cancelled = 0
    async for ids in _expired_conversations(store, policies, ttl, now, batch):
        if stop is not None and stop.is_set():
            break
        shredded = await store.write(
            partial(_shred_expired, ids=ids, policies=policies, ttl=ttl, now=now)
        )
        conversations += len(shredded)
        messages += sum(r.messages for r in shredded)
        cancelled += sum(r.notifications_cancelled for r in shredded)
    cutoff = now - settings.retention.delivered_content
    delivered = 0
    async for mids in _delivered_messages(store, cutoff, batch):
        if stop is not None and stop.is_set():
            break
        delivered += await store.write(partial(_destroy_delivered, ids=mids, cutoff=cutoff))
    reported_before = now - settings.phishing.report_retention
    reports = 0
    while stop is None or not stop.is_set():
        done = await store.write(partial(_delete_reports, before=reported_before, size=batch))
        reports += done
        if done < batch:
            break
    resets, sessions_, throttles = await store.write(partial(_expire_sign_ins, now=now))
    answers = await store.write(partial(_expire_auto_answers, now=now))
    truncated = await checkpoint(store) if conversations or delivered or reports else None
    report = RetentionReport(
        conversations=conversations,
        conversation_messages=messages,
        delivered_messages=delivered,
        notifications_cancelled=cancelled,
        expired_resets=resets,
        expired_sessions=sessions_,
        stale_throttles=throttles,
        wal_truncated=truncated,
        complete=stop is None or not stop.is_set(),
        phishing_reports=reports,
        auto_answers=answers,
    )
    await audit.log(
        store,
        "retention.run",
        actor=RETENTION_ACTOR,
        at=now,
        details={**report.counts(), "wal_truncated": truncated, "complete": report.complete},
    )
    return report


async def checkpoint(store: Store) -> bool | None:
    """Copy the WAL into the database file and truncate it, so page images holding destroyed
    data keys are gone from both files. Waits (busy timeout) for readers; False when they
    still held it. PostgreSQL: None, dead rows go with (auto)vacuum, and the wrapped keys in
    them become useless once ``sigillo keys rotate`` retires their key-encryption key."""
    if not is_sqlite(store.engine):
        return None
    async with store.engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        row = (await auto.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")).one()
    return bool(row[0] == 0)


def _expired(conversation: Conversation, policies: DomainPolicies, ttl: int, now: datetime) -> bool:
    return policies.expires_at(conversation, ttl) <= now


async def _expired_conversations(
    store: Store, policies: DomainPolicies, ttl: int, now: datetime, size: int
) -> AsyncIterator[list[int]]:
    """Pages of ids of conversations to shred: expired ones, and shredded ones that still
    have messages linked (kept for another copy then, or linked by a delivery that raced
    the shredding)."""
    shortest = min([ttl, *(r.retention_days for r in policies.rules.values() if r.retention_days)])
    leftover = and_(
        Conversation.shredded_at.is_not(None),
        exists().where(ConversationMessage.conversation_id == Conversation.id),
    )
    maybe_expired = and_(
        Conversation.shredded_at.is_(None),
        or_(
            Conversation.expires_at <= now,
            and_(
                Conversation.expires_at.is_(None),
                Conversation.last_message_at <= now - timedelta(days=shortest),
            ),
        ),
    )
    last = 0
    while True:
        async with store.session() as session:
            rows = await session.execute(
                select(Conversation)
                .where(Conversation.id > last, or_(maybe_expired, leftover))
                .order_by(Conversation.id)
                .limit(size)
            )
            page = list(rows.scalars())
        if not page:
            return
        last = page[-1].id
        ids = [c.id for c in page if c.shredded_at is not None or _expired(c, policies, ttl, now)]
        if ids:
            yield ids


def _shred_expired(
    session: Session, ids: list[int], policies: DomainPolicies, ttl: int, now: datetime
) -> list[Shredded]:
    done = []
    for conversation_id in ids:
        conversation = session.get(Conversation, conversation_id, with_for_update=True)
        # Checked again under the lock: a message may have arrived since the page was read.
        if conversation is None or (
            conversation.shredded_at is None and not _expired(conversation, policies, ttl, now)
        ):
            continue
        newly = conversation.shredded_at is None
        result = shred_conversation(session, conversation_id, at=now, cause="expired")
        if newly or result.messages:
            done.append(result)
    return done


def _delivered_where(cutoff: datetime) -> list[ColumnElement[bool]]:
    """Messages no unshredded conversation holds, no unfinished job needs and no phishing
    report carries (its own retention decides), whose last job finished before ``cutoff``
    (a message without jobs: received before it)."""
    in_conversation = exists().where(
        ConversationMessage.message_id == Message.id,
        Conversation.id == ConversationMessage.conversation_id,
        Conversation.shredded_at.is_(None),
    )
    unfinished = exists().where(Job.message_id == Message.id, Job.state.not_in(list(FINAL_STATES)))
    last_finished = (
        select(func.max(Job.finished_at)).where(Job.message_id == Message.id).scalar_subquery()
    )
    reported = exists().where(PhishingReport.message_id == Message.id)
    return [
        ~in_conversation,
        ~unfinished,
        ~reported,
        func.coalesce(last_finished, Message.received_at) <= cutoff,
    ]


async def _delivered_messages(
    store: Store, cutoff: datetime, size: int
) -> AsyncIterator[list[str]]:
    last = ""
    while True:
        async with store.session() as session:
            rows = await session.execute(
                select(Message.id)
                .where(Message.id > last, *_delivered_where(cutoff))
                .order_by(Message.id)
                .limit(size)
            )
            ids = list(rows.scalars())
        if not ids:
            return
        last = ids[-1]
        yield ids


def _destroy_delivered(session: Session, ids: list[str], cutoff: datetime) -> int:
    # The conditions again, in this transaction: a retry may have queued a job meanwhile.
    due = session.execute(select(Message.id).where(Message.id.in_(ids), *_delivered_where(cutoff)))
    return destroy_messages(session, list(due.scalars()))


def _delete_reports(session: Session, before: datetime, size: int) -> int:
    """Up to ``size`` reports received before ``before``, deleted with their sealed mail;
    how many. The report row goes first: it holds the only reference to that mail."""
    rows = session.execute(
        select(PhishingReport.id, PhishingReport.message_id)
        .where(PhishingReport.received_at <= before)
        .order_by(PhishingReport.id)
        .limit(size)
        .with_for_update()
    ).all()
    if not rows:
        return 0
    secure_delete(session)
    session.execute(
        delete(PhishingReport)
        .where(PhishingReport.id.in_([r.id for r in rows]))
        .execution_options(synchronize_session=False)
    )
    mail = {r.message_id for r in rows if r.message_id is not None}
    destroy_messages(session, mail - still_needed(session, mail))
    return len(rows)


def _expire_auto_answers(session: Session, now: datetime) -> int:
    """Rate-limit rows that no longer limit anything: each holds a keyed hash of a sender."""
    result = session.execute(
        delete(AutoAnswer)
        .where(AutoAnswer.answered_at <= now - ANSWER_INTERVAL)
        .execution_options(synchronize_session=False)
    )
    return _count(result)


def _expire_sign_ins(session: Session, now: datetime) -> tuple[int, int, int]:
    """Reset links past their validity, sessions past their timeouts, failure counts past
    every window: rows that no longer do anything but hold an address's traces."""
    options = {"synchronize_session": False}
    resets = session.execute(
        delete(PasswordReset)
        .where(or_(PasswordReset.expires_at <= now, PasswordReset.used.is_(True)))
        .execution_options(**options)
    )
    portal_sessions = session.execute(
        delete(PortalSession)
        .where(
            or_(
                PortalSession.last_seen_at <= now - sessions.IDLE_TIMEOUT,
                PortalSession.created_at <= now - sessions.ABSOLUTE_TIMEOUT,
            )
        )
        .execution_options(**options)
    )
    window = max(throttle.PER_ADDRESS.window, throttle.PER_CLIENT.window)
    throttles = session.execute(
        delete(LoginThrottle)
        .where(
            LoginThrottle.last_failure_at <= now - window,
            or_(LoginThrottle.locked_until.is_(None), LoginThrottle.locked_until <= now),
        )
        .execution_options(**options)
    )
    return _count(resets), _count(portal_sessions), _count(throttles)


def _count(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
