"""The audit log: one row per access to personal data or change to an account.

Entries are written in the same transaction as the action they record, so an action that
happened is never missing from the log and a logged action always happened. Entries carry
identifiers only: never message content, never passwords or tokens.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.orm import Session

from sigillo.store.db import Store
from sigillo.store.models import AuditEvent


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
    # A plain INSERT: every page view writes one, and nothing reads it back, so it needs no
    # unit-of-work bookkeeping.
    session.execute(
        insert(AuditEvent).values(
            at=at,
            actor=actor or "-",
            action=action,
            client_address=client,
            conversation_id=conversation_id,
            message_id=message_id,
            details=details,
        )
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
