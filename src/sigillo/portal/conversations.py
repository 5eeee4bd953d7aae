"""What a signed-in recipient may read and write: their own conversations, nothing else.

Every read goes through ``owned``, which answers only for a conversation whose recipient is
the signed-in address; the pages answer 404 for everything else, so another person's ids and
guessed ids look exactly like ids that do not exist.

A conversation closes when it expires (the date staff set, else its domain's retention from the
console, else ``[portal] message_ttl_days`` after its last message), when the sender withdraws
it, or once its content has been destroyed; a closed conversation shows no content and takes no
reply.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from sigillo.config import Settings
from sigillo.gateway import queue
from sigillo.notify import token_hash
from sigillo.policies import DomainPolicies
from sigillo.portal.compose import Upload, build_copy, build_reply
from sigillo.portal.mailview import AttachmentInfo, MessageView, open_attachment, parse_message
from sigillo.store import audit
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import (
    Conversation,
    ConversationMessage,
    DomainPolicy,
    JobKind,
    Message,
    PortalToken,
)


@dataclass(frozen=True)
class Linked:
    """A message of a conversation as stored (still sealed), and which way it went."""

    id: str
    direction: str
    mail_from: str
    kek_id: str
    wrapped_key: bytes
    content: bytes

    def open(self, keyring: Keyring) -> bytes:
        return keyring.open(self.id, self.kek_id, self.wrapped_key, self.content)


POLICY_REFRESH = 30.0
"""Seconds a snapshot of the console's domain policies serves before it is read again."""


class Closed(Exception):
    """The conversation was withdrawn or its content destroyed meanwhile: nothing is stored."""


async def _owned(session: AsyncSession, conversation_id: int, address: str) -> Conversation | None:
    row = await session.execute(
        select(Conversation).where(
            Conversation.id == conversation_id, Conversation.recipient == address
        )
    )
    return row.scalars().first()


async def _linked(session: AsyncSession, conversation_id: int) -> list[Linked]:
    # Plain rows, not ORM objects: this runs for every page view (about 1 ms less on SQLite).
    rows = await session.execute(
        select(
            Message.id,
            ConversationMessage.direction,
            Message.mail_from,
            Message.kek_id,
            Message.wrapped_key,
            Message.content,
        )
        .join(Message, Message.id == ConversationMessage.message_id)
        .where(ConversationMessage.conversation_id == conversation_id)
        .order_by(ConversationMessage.id)
    )
    return [Linked(*row) for row in rows]


@dataclass(frozen=True)
class Entry:
    message_id: str
    direction: str
    """``out``: from the organisation; ``in``: written by the recipient in the portal."""
    view: MessageView


@dataclass(frozen=True)
class Thread:
    conversation_id: int
    recipient: str
    expires_at: datetime
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class Link:
    """Where a notification link leads."""

    conversation_id: int
    recipient: str


@dataclass(frozen=True)
class Contact:
    """Why a conversation shows no content, and whom its recipient should ask about it."""

    reason: Literal["expired", "withdrawn"]
    address: str
    """Empty when nobody can be named: the page then says "the person who wrote to you"."""


@dataclass(frozen=True)
class ReplyDraft:
    body: str
    attachments: tuple[Upload, ...]
    send_copy: bool
    copy_note: str
    """The explanation that opens the copy, in the author's language."""


class Conversations:
    def __init__(self, settings: Settings, store: Store, keyring: Keyring) -> None:
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.policies = DomainPolicies({})
        self._policies_read = -POLICY_REFRESH

    async def _refresh_policies(self, session: AsyncSession) -> None:
        # Through the connection the page already holds; the table has a row per domain
        # staff configured, and a snapshot serves every page for POLICY_REFRESH seconds.
        if time.monotonic() - self._policies_read < POLICY_REFRESH:
            return
        rows = (await session.execute(select(DomainPolicy))).scalars().all()
        self.policies = DomainPolicies({row.domain: row for row in rows})
        self._policies_read = time.monotonic()

    def expires_at(self, conversation: Conversation) -> datetime:
        """When the conversation closed or will close (sync: the policy snapshot is read
        when the conversation is looked up)."""
        if conversation.withdrawn_at is not None:
            return conversation.withdrawn_at
        due = self.policies.expires_at(conversation, self.settings.portal.message_ttl_days)
        if conversation.shredded_at is not None:
            return min(due, conversation.shredded_at)
        return due

    def expired(self, conversation: Conversation, now: datetime) -> bool:
        """Closed: nothing of it is shown or accepted any more."""
        return (
            conversation.withdrawn_at is not None
            or conversation.shredded_at is not None
            or now >= self.expires_at(conversation)
        )

    async def link(self, token: str) -> Link | None:
        async with self.store.session() as session:
            row = await session.execute(
                select(PortalToken.conversation_id, PortalToken.recipient).where(
                    PortalToken.token_hash == token_hash(token)
                )
            )
            found = row.first()
        return Link(found[0], found[1].lower()) if found else None

    async def owned(self, conversation_id: int, address: str) -> Conversation | None:
        async with self.store.session() as session:
            await self._refresh_policies(session)
            return await _owned(session, conversation_id, address)

    async def owned_with_messages(
        self, conversation_id: int, address: str
    ) -> tuple[Conversation, list[Linked]] | None:
        """``owned`` and its messages through one connection (the page view's hot path)."""
        async with self.store.session() as session:
            await self._refresh_policies(session)
            conversation = await _owned(session, conversation_id, address)
            if conversation is None:
                return None
            if self.expired(conversation, datetime.now(UTC)):
                return conversation, []  # closed: its content is not even read
            return conversation, await _linked(session, conversation_id)

    async def _messages(self, conversation_id: int) -> list[Linked]:
        async with self.store.session() as session:
            return await _linked(session, conversation_id)

    async def thread(
        self, conversation: Conversation, messages: list[Linked] | None = None
    ) -> Thread:
        if messages is None:
            messages = await self._messages(conversation.id)
        entries = tuple(
            Entry(m.id, m.direction, parse_message(m.open(self.keyring))) for m in messages
        )
        return Thread(
            conversation.id, conversation.recipient, self.expires_at(conversation), entries
        )

    async def contact(self, conversation: Conversation) -> Contact:
        """Why a closed conversation shows nothing, and whom its recipient should contact:
        ``[portal] contact``, else for a withdrawn one the staff member who withdrew it, else
        the sender of its last message while its envelope is still kept."""
        reason: Literal["expired", "withdrawn"] = (
            "withdrawn" if conversation.withdrawn_at is not None else "expired"
        )
        address = self.settings.portal.contact
        if not address and conversation.withdrawn_by:
            address = _address(conversation.withdrawn_by)
        if not address:
            address = await self._last_sender(conversation)
        return Contact(reason, address)

    async def _last_sender(self, conversation: Conversation) -> str:
        outgoing = [m for m in await self._messages(conversation.id) if m.direction == "out"]
        return outgoing[-1].mail_from.lower() if outgoing else ""

    async def attachment(
        self, conversation: Conversation, message_id: str, index: int
    ) -> tuple[AttachmentInfo, bytes] | None:
        for message in await self._messages(conversation.id):
            if message.id == message_id:
                try:
                    return open_attachment(message.open(self.keyring), index)
                except LookupError:
                    return None
        return None

    def staff_address(self, thread: Thread) -> str | None:
        """Where a reply goes: the sender of the organisation's latest message, preferring its
        Reply-To, as long as that is at one of the organisation's own domains."""
        for entry in reversed(thread.entries):
            if entry.direction != "out":
                continue
            for candidate in (entry.view.reply_to, entry.view.from_address):
                if candidate and self._internal(candidate):
                    return candidate.lower()
        return None

    def _internal(self, address: str) -> bool:
        domains = self.settings.relay.internal_domains
        domain = address.rpartition("@")[2].lower()
        return not domains or any(domain == d or domain.endswith("." + d) for d in domains)

    async def reply(
        self,
        conversation: Conversation,
        thread: Thread,
        draft: ReplyDraft,
        client: str,
        now: datetime,
    ) -> str | None:
        """Store the reply in the conversation and queue it for the relay (and the copy, if
        asked for). Returns the reply's message id, or None when there is nobody to reply to."""
        staff = self.staff_address(thread)
        if staff is None:
            # The envelope sender came from the organisation's own network.
            sender = await self._last_sender(conversation)
            staff = sender if sender and self._internal(sender) else None
        if not staff:
            return None
        last = next((e for e in reversed(thread.entries) if e.direction == "out"), None)
        author = conversation.recipient
        hostname = self.settings.smtp.hostname
        reply = build_reply(
            author=author,
            to=staff,
            subject=last.view.subject if last else "",
            in_reply_to=last.view.message_id if last else None,
            references=last.view.references if last else (),
            body=draft.body,
            attachments=draft.attachments,
            hostname=hostname,
            now=now,
        )
        reply_bytes = reply.as_bytes()
        stored = queue.new_message(
            self.keyring, mail_from=author, content=reply_bytes, client_address=client, now=now
        )
        copy = None
        if draft.send_copy:
            copy_bytes = build_copy(
                reply,
                sender=self.settings.notify.from_,
                recipient=author,
                note=draft.copy_note,
                hostname=hostname,
                now=now,
            ).as_bytes()
            copy = queue.new_message(
                self.keyring,
                mail_from=self.settings.notify.from_,
                content=copy_bytes,
                client_address=client,
                now=now,
            )
        conversation_id, reply_id = conversation.id, stored.id
        copy_id = copy.id if copy else None
        delivery = self.settings.delivery

        def write(session: Session) -> None:
            # Under the row lock: a withdrawal or shredding that won the race keeps the
            # reply out, rather than linking content to a conversation that has none.
            current = session.get(Conversation, conversation_id, with_for_update=True)
            if current is None or current.withdrawn_at or current.shredded_at:
                raise Closed(conversation_id)
            session.add(stored)
            if copy is not None:
                session.add(copy)
            session.flush()  # the rows below refer to these messages
            session.add(
                ConversationMessage(
                    conversation_id=conversation_id,
                    message_id=reply_id,
                    direction="in",
                    added_at=now,
                )
            )
            current.last_message_at = now
            session.add(
                queue.new_job(
                    JobKind.RELAY,
                    staff,
                    staff.rpartition("@")[2],
                    now,
                    delivery,
                    message_id=reply_id,
                    conversation_id=conversation_id,
                )
            )
            if copy is not None:
                session.add(
                    queue.new_job(
                        JobKind.MAIL,
                        author,
                        author.rpartition("@")[2],
                        now,
                        delivery,
                        message_id=copy_id,
                    )
                )
            audit.record(
                session,
                "portal.reply",
                actor=author,
                at=now,
                client=client,
                conversation_id=conversation_id,
                message_id=reply_id,
                details={
                    "attachments": len(draft.attachments),
                    "size": len(reply_bytes),
                    "copy": copy is not None,
                },
            )

        await self.store.write(write)
        return reply_id


def _address(actor: str) -> str:
    """The mail address in an audit actor (``alice@org.example``, ``staff:alice@...``), or
    empty when it names none."""
    _, address = parseaddr(actor.rpartition(":")[2] if ":" in actor else actor)
    return address.lower() if "@" in address else ""
