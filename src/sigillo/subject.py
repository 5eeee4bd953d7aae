"""Data subject rights (GDPR Art. 15, 17): everything held about one address, exported or erased.

Export gathers the address's conversations (every message as it was sent or written, the
address's own replies too), copies addressed to it that still hold content, its portal account,
its delivery records and the audit entries about it, into one zip written 0600 and atomically.

Erasure destroys all of that content (crypto-shredding, see ``sigillo.lifecycle``), deletes the
account with its sessions, reset links and sign-in failure counts, cancels mail still queued
for the address, and replaces the address in the delivery records and conversation envelopes
that stay by a pseudonym. Audit entries already written are kept as they are: they hold
identifiers, never content, the hash chain must stay verifiable, and they are the record of
who accessed the data, kept under Art. 17(3)(b) (a legal obligation to account for access to
health, insurance and banking data) and 17(3)(e) (legal claims). The erasure itself is
recorded as ``subject.erased`` with the SHA-256 of the address, never the address.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import String, cast, delete, func, or_, select, update
from sqlalchemy.orm import Session

from sigillo import lifecycle
from sigillo.gateway.records import attempt_record
from sigillo.portal import throttle
from sigillo.store import audit
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import (
    FINAL_STATES,
    Account,
    Attempt,
    AuditEvent,
    Conversation,
    ConversationMessage,
    Job,
    JobState,
    LoginThrottle,
    Message,
    PasswordReset,
    PortalSession,
    PortalToken,
)

ERASED_REASON = "cancelled: the recipient's data was erased on request"


def normalise(address: str) -> str:
    """The address as the store keeps it (lower-cased); ValueError if it is not one."""
    value = address.strip().lower()
    local, at, domain = value.rpartition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in value):
        raise ValueError(f"not an email address: {address!r}")
    if len(value) > 320:
        raise ValueError("an email address has at most 320 characters")
    return value


def address_hash(address: str) -> str:
    """SHA-256 of the lower-cased address: how the erasure record names it."""
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


def pseudonym(address: str) -> str:
    """What replaces an erased address in the records that stay."""
    return f"erased:{address_hash(address)}"


def _mentions(address: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w.+-]){re.escape(address)}(?![\w.-])", re.IGNORECASE)


def _strings(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# -- export ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportSummary:
    account: bool
    conversations: int
    messages: int
    """Messages written to the zip as .eml files."""
    deliveries: int
    """Delivery records (jobs) for the address."""
    audit_entries: int

    @property
    def empty(self) -> bool:
        return not (self.account or self.conversations or self.messages or self.deliveries)


@dataclass
class _Gathered:
    document: dict[str, Any]
    files: list[tuple[str, bytes]]
    summary: ExportSummary


async def _audit_about(
    store: Store, address: str, conversations: list[int], messages: list[str]
) -> list[dict[str, Any]]:
    """Audit entries by the address, about its conversations or messages, or naming it (or
    its hash, as the erasure record does) in their details."""
    details = func.lower(cast(AuditEvent.details, String))
    escaped = json.dumps(address)[1:-1]  # as the JSON column stores a non-ASCII address
    digest = address_hash(address)
    conditions = [
        func.lower(AuditEvent.actor) == address,
        details.contains(address, autoescape=True),
        details.contains(escaped.lower(), autoescape=True),
        details.contains(digest, autoescape=True),
    ]
    if conversations:
        conditions.append(AuditEvent.conversation_id.in_(conversations))
    if messages:
        conditions.append(AuditEvent.message_id.in_(messages))
    pattern = _mentions(address)
    entries = []
    async with store.session() as session:
        rows = await session.execute(
            select(AuditEvent).where(or_(*conditions)).order_by(AuditEvent.seq)
        )
        for event in rows.scalars():
            named = any(pattern.search(s) or digest in s for s in _strings(event.details))
            if not (
                event.actor.lower() == address
                or named
                or event.conversation_id in conversations
                or event.message_id in messages
            ):
                continue  # a longer address that merely contains this one
            entries.append(
                {
                    "seq": event.seq,
                    "at": event.at.isoformat(),
                    "actor": event.actor,
                    "action": event.action,
                    "client": event.client_address,
                    "conversation": event.conversation_id,
                    "message": event.message_id,
                    "details": event.details,
                    "prev_hash": event.prev_hash,
                    "hash": event.hash,
                }
            )
    return entries


async def _gather(store: Store, keyring: Keyring, address: str, now: datetime) -> _Gathered:
    files: list[tuple[str, bytes]] = []
    async with store.session() as session:
        account = (
            (await session.execute(select(Account).where(Account.address == address)))
            .scalars()
            .first()
        )
        conversations = list(
            (
                await session.execute(
                    select(Conversation)
                    .where(Conversation.recipient == address)
                    .order_by(Conversation.id)
                )
            )
            .scalars()
            .all()
        )
        ids = [c.id for c in conversations]
        links = (
            list(
                (
                    await session.execute(
                        select(ConversationMessage, Message)
                        .join(Message, Message.id == ConversationMessage.message_id)
                        .where(ConversationMessage.conversation_id.in_(ids))
                        .order_by(ConversationMessage.id)
                    )
                ).all()
            )
            if ids
            else []
        )
        jobs = list(
            (
                await session.execute(
                    select(Job).where(func.lower(Job.recipient) == address).order_by(Job.id)
                )
            )
            .scalars()
            .all()
        )
        job_ids = [j.id for j in jobs]
        attempts: dict[int, list[Attempt]] = {i: [] for i in job_ids}
        if job_ids:
            for a in (
                await session.execute(
                    select(Attempt).where(Attempt.job_id.in_(job_ids)).order_by(Attempt.id)
                )
            ).scalars():
                attempts[a.job_id].append(a)
        linked_ids = {m.id for _, m in links}
        loose_ids = sorted({j.message_id for j in jobs if j.message_id} - linked_ids)
        loose = (
            list(
                (
                    await session.execute(
                        select(Message).where(Message.id.in_(loose_ids)).order_by(Message.id)
                    )
                )
                .scalars()
                .all()
            )
            if loose_ids
            else []
        )

    by_conversation: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for n, (link, message) in enumerate(links, start=1):
        name = f"conversations/{link.conversation_id}/{n:04d}-{link.direction}-{message.id}.eml"
        files.append(
            (name, keyring.open(message.id, message.kek_id, message.wrapped_key, message.content))
        )
        by_conversation[link.conversation_id].append(
            {
                "message": message.id,
                "direction": link.direction,
                "added_at": link.added_at.isoformat(),
                "received_at": message.received_at.isoformat(),
                "from": message.mail_from,
                "size": message.size,
                "file": name,
            }
        )
    loose_files = []
    for message in loose:
        name = f"messages/{message.id}.eml"
        files.append(
            (name, keyring.open(message.id, message.kek_id, message.wrapped_key, message.content))
        )
        loose_files.append({"message": message.id, "from": message.mail_from, "file": name})

    message_ids = sorted(linked_ids | {m.id for m in loose})
    entries = await _audit_about(store, address, ids, message_ids)
    document = {
        "address": address,
        "exported_at": now.isoformat(),
        "account": {
            "created_at": account.created_at.isoformat(),
            "password_changed_at": account.password_changed_at.isoformat(),
            # Whether one exists, never the phrase: whoever runs the export (staff) must not
            # learn what tells this person's genuine mail from an imitation.
            "security_phrase_set": account.security_phrase is not None,
        }
        if account
        else None,
        "conversations": [
            {
                "id": c.id,
                "created_at": c.created_at.isoformat(),
                "last_message_at": c.last_message_at.isoformat(),
                "expires_at": _iso(c.expires_at),
                "withdrawn_at": _iso(c.withdrawn_at),
                "shredded_at": _iso(c.shredded_at),
                "messages": by_conversation[c.id],
            }
            for c in conversations
        ],
        "other_messages": loose_files,
        "deliveries": [
            {
                "job": j.id,
                "kind": j.kind.value,
                "state": j.state.value,
                "recipient": j.recipient,
                "message": j.message_id,
                "conversation": j.conversation_id,
                "created_at": j.created_at.isoformat(),
                "finished_at": _iso(j.finished_at),
                "reason": j.reason,
                "attempts": [attempt_record(a) for a in attempts[j.id]],
            }
            for j in jobs
        ],
        "audit": entries,
    }
    summary = ExportSummary(
        account=account is not None,
        conversations=len(conversations),
        messages=len(files),
        deliveries=len(jobs),
        audit_entries=len(entries),
    )
    return _Gathered(document, files, summary)


def _write_zip(path: Path, document: Mapping[str, Any], files: list[tuple[str, bytes]]) -> None:
    """``path`` appears complete or not at all, readable by its owner only, and never over
    an existing file (the final link fails instead)."""
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw:
            with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.writestr("subject.json", json.dumps(document, indent=2, ensure_ascii=False))
                for name, data in files:
                    archive.writestr(name, data)
            raw.flush()
            os.fsync(raw.fileno())
        os.link(partial, path)
    finally:
        partial.unlink(missing_ok=True)


async def export(
    store: Store,
    keyring: Keyring,
    address: str,
    output: Path,
    *,
    actor: str,
    now: datetime,
) -> ExportSummary:
    """Write everything about ``address`` to ``output`` (a new file) and audit it as
    ``subject.exported``. An address nothing is known about still gets a valid, empty
    export: the answer to an access request is then "nothing held", which is an answer."""
    address = normalise(address)
    gathered = await _gather(store, keyring, address, now)
    await asyncio.to_thread(_write_zip, output, gathered.document, gathered.files)
    try:
        await audit.log(
            store,
            "subject.exported",
            actor=actor,
            at=now,
            details={"address_sha256": address_hash(address), **asdict(gathered.summary)},
        )
    except BaseException:
        await asyncio.to_thread(output.unlink, missing_ok=True)  # none unless logged
        raise
    return gathered.summary


# -- erasure -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ErasureSummary:
    account: bool
    conversations: int
    messages: int
    """Message rows destroyed (conversations and copies addressed to the address)."""
    jobs_cancelled: int
    deliveries_pseudonymised: int
    sessions: int
    resets: int
    throttles: int

    @property
    def nothing(self) -> bool:
        return not any(asdict(self).values())


def _scrub(value: object, pattern: re.Pattern[str], replacement: str) -> Any:
    if isinstance(value, str):
        return pattern.sub(replacement, value)
    if isinstance(value, dict):
        return {k: _scrub(v, pattern, replacement) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, pattern, replacement) for v in value]
    return value


def erase_in(session: Session, address: str, *, actor: str, at: datetime) -> ErasureSummary:
    """The erasure, in the caller's transaction: all of it happens or none."""
    address = normalise(address)
    alias = pseudonym(address)
    pattern = _mentions(address)
    lifecycle.secure_delete(session)
    conversation_ids = list(
        session.execute(select(Conversation.id).where(Conversation.recipient == address)).scalars()
    )
    destroyed = 0
    for conversation_id in conversation_ids:
        shredded = lifecycle.shred_conversation(
            session, conversation_id, at=at, cause="erased", actor=actor
        )
        destroyed += shredded.messages

    jobs = list(
        session.execute(
            select(Job).where(func.lower(Job.recipient) == address).with_for_update()
        ).scalars()
    )
    cancelled = 0
    for job in jobs:
        if job.state not in FINAL_STATES:
            job.state, job.finished_at, job.reason = JobState.FAILED, at, ERASED_REASON
            job.lease_owner = job.lease_until = None
            cancelled += 1
        job.recipient = alias
        if job.reason:
            job.reason = pattern.sub(alias, job.reason)
    job_ids = [j.id for j in jobs]
    if job_ids:
        for attempt in session.execute(
            select(Attempt).where(Attempt.job_id.in_(job_ids))
        ).scalars():
            attempt.reason = _scrub(attempt.reason, pattern, alias)
            attempt.smtp_reply = _scrub(attempt.smtp_reply, pattern, alias)
            attempt.details = _scrub(attempt.details, pattern, alias)
    session.flush()  # the cancelled jobs no longer need their messages
    copies = {j.message_id for j in jobs if j.message_id}
    destroyed += lifecycle.destroy_messages(
        session, copies - lifecycle.still_needed(session, copies)
    )

    options = {"synchronize_session": False}
    if conversation_ids:
        session.execute(
            delete(PortalToken)
            .where(PortalToken.conversation_id.in_(conversation_ids))
            .execution_options(**options)
        )
        session.execute(
            update(Conversation)
            .where(Conversation.id.in_(conversation_ids))
            .values(recipient=alias)
            .execution_options(**options)
        )
    account = session.execute(
        select(Account).where(Account.address == address).with_for_update()
    ).scalar_one_or_none()
    sessions = resets = 0
    if account is not None:
        sessions = _rows(
            session.execute(
                delete(PortalSession)
                .where(PortalSession.account_id == account.id)
                .execution_options(**options)
            )
        )
        resets = _rows(
            session.execute(
                delete(PasswordReset)
                .where(PasswordReset.account_id == account.id)
                .execution_options(**options)
            )
        )
        session.execute(
            delete(Account).where(Account.id == account.id).execution_options(**options)
        )
    throttles = _rows(
        session.execute(
            delete(LoginThrottle)
            .where(LoginThrottle.key == throttle.PER_ADDRESS.prefix + address)
            .execution_options(**options)
        )
    )
    summary = ErasureSummary(
        account=account is not None,
        conversations=len(conversation_ids),
        messages=destroyed,
        jobs_cancelled=cancelled,
        deliveries_pseudonymised=len(jobs),
        sessions=sessions,
        resets=resets,
        throttles=throttles,
    )
    if not summary.nothing:
        audit.record(
            session,
            "subject.erased",
            actor=actor,
            at=at,
            details={"address_sha256": address_hash(address), **asdict(summary)},
        )
    return summary


def _rows(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


async def erase(store: Store, address: str, *, actor: str, now: datetime) -> ErasureSummary:
    """Erase ``address`` (one transaction), then move the freed pages out of the WAL."""
    address = normalise(address)
    summary = await store.write(lambda session: erase_in(session, address, actor=actor, at=now))
    if summary.conversations or summary.messages:
        await lifecycle.checkpoint(store)
    return summary
