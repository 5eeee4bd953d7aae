"""Where a portal-routed copy lands: the recipient's conversation, and a notification job.

A copy joins the conversation that already holds a message it replies to (References /
In-Reply-To) for the same recipient address; otherwise it starts a new one.
"""

from __future__ import annotations

import re
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32

from sqlalchemy import select
from sqlalchemy.orm import Session

from sigillo.config import DeliverySettings
from sigillo.gateway.queue import message_id_hash, new_job
from sigillo.store.models import (
    Conversation,
    ConversationMessage,
    JobKind,
    Message,
)

_MSGID = re.compile(r"<[^<>\s]+>")


def referenced_hashes(content: bytes) -> list[str]:
    headers = BytesHeaderParser(policy=compat32).parsebytes(content)
    ids: list[str] = []
    for name in ("In-Reply-To", "References"):
        for value in headers.get_all(name) or []:
            ids.extend(_MSGID.findall(str(value)))
    hashes = (message_id_hash(i) for i in ids)
    return [h for h in hashes if h]


def find_conversation(session: Session, recipient: str, content: bytes) -> Conversation | None:
    hashes = referenced_hashes(content)
    if not hashes:
        return None
    row = session.execute(
        select(Conversation)
        .join(ConversationMessage, ConversationMessage.conversation_id == Conversation.id)
        .join(Message, Message.id == ConversationMessage.message_id)
        .where(Conversation.recipient == recipient, Message.message_id_hash.in_(hashes))
        .order_by(Conversation.last_message_at.desc())
        .limit(1)
    )
    return row.scalars().first()


def hand_off(
    session: Session,
    settings: DeliverySettings,
    message_id: str,
    recipient: str,
    domain: str,
    content: bytes,
    now: datetime,
) -> Conversation:
    """Put the copy in the recipient's conversation and queue a notification (same transaction
    as the delivery job's result, so a crash leaves either both or neither)."""
    address = recipient.lower()
    conversation = find_conversation(session, address, content)
    if conversation is None:
        conversation = Conversation(recipient=address, created_at=now, last_message_at=now)
        session.add(conversation)
        session.flush()
    conversation.last_message_at = now
    session.add(
        ConversationMessage(
            conversation_id=conversation.id, message_id=message_id, direction="out", added_at=now
        )
    )
    session.add(
        new_job(JobKind.NOTIFY, recipient, domain, now, settings, conversation_id=conversation.id)
    )
    return conversation
