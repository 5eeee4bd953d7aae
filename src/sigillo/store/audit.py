"""The audit log: one row per access to personal data or change to an account or policy.

Entries are written in the same transaction as the action they record, so an action that
happened is never missing from the log and a logged action always happened. Entries carry
identifiers only: never message content, never passwords or tokens.

The log is a hash chain. Each entry's ``hash`` is SHA-256 over the previous entry's hash and
this entry's canonical JSON, so changing, removing or reordering any entry breaks every link
after it; ``audit_head`` holds the last link, so a removed tail shows too. Appending takes the
head row's lock first, which makes the entries of every process one chain. Anyone able to
rewrite the whole table could recompute the chain, which is why ``sigillo audit verify``
prints the head hash: recorded elsewhere (a ticket, the SIEM), it pins everything before it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from sigillo.store.db import Store
from sigillo.store.models import AuditEvent, AuditHead

GENESIS = "0" * 64
"""The ``prev_hash`` of the first entry."""



def canonical(
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    client: str | None,
    conversation_id: int | None,
    message_id: str | None,
    details: Mapping[str, object] | None,
) -> bytes:
    """The bytes an entry's hash covers: every column but the row id, in a fixed form."""
    return json.dumps(
        {
            "seq": seq,
            "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
            "actor": actor,
            "action": action,
            "client": client,
            "conversation": conversation_id,
            "message": message_id,
            "details": details,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()


def entry_hash(
    prev_hash: str,
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    client: str | None,
    conversation_id: int | None,
    message_id: str | None,
    details: Mapping[str, object] | None,
) -> str:
    body = canonical(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        client=client,
        conversation_id=conversation_id,
        message_id=message_id,
        details=details,
    )
    return hashlib.sha256(prev_hash.encode() + b"\n" + body).hexdigest()


def record(
    session: Session,
    action: str,
    *,
    actor: str,
    at: datetime,
    client: str | None = None,
    conversation_id: int | None = None,
    message_id: str | None = None,
    details: dict[str, object] | None = None,
) -> None:
    # The UPDATE comes first: it takes the head's row lock (PostgreSQL) or the write lock
    # (SQLite) before anything is read, so concurrent writers queue instead of forking the
    # chain or deadlocking on a lock upgrade.
    seq, prev = session.execute(
        update(AuditHead)
        .where(AuditHead.id == 1)
        .values(seq=AuditHead.seq + 1)
        .returning(AuditHead.seq, AuditHead.hash)
        .execution_options(synchronize_session=False)
    ).one()
    actor = actor or "-"
    digest = entry_hash(
        prev,
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        client=client,
        conversation_id=conversation_id,
        message_id=message_id,
        details=details,
    )
    session.execute(
        insert(AuditEvent).values(
            seq=seq,
            prev_hash=prev,
            hash=digest,
            at=at,
            actor=actor,
            action=action,
            client_address=client,
            conversation_id=conversation_id,
            message_id=message_id,
            details=details,
        )
    )
    session.execute(
        update(AuditHead)
        .where(AuditHead.id == 1)
        .values(hash=digest)
        .execution_options(synchronize_session=False)
    )


async def log(
    store: Store,
    action: str,
    *,
    actor: str,
    at: datetime,
    client: str | None = None,
    conversation_id: int | None = None,
    message_id: str | None = None,
    details: dict[str, object] | None = None,
) -> None:
    """An entry in a transaction of its own, for an access that changes nothing else."""
    await store.write(
        lambda session: record(
            session,
            action,
            actor=actor,
            at=at,
            client=client,
            conversation_id=conversation_id,
            message_id=message_id,
            details=details,
        )
    )
