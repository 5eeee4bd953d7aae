"""Mail the portal sends to its users about their account: a reset link, "your password was
changed". Stored encrypted and queued like any other message; the worker signs it (DKIM) and
sends it with opportunistic TLS, as it carries no message content. Like a notification, it
opens with the account's security phrase, if one was chosen."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from sqlalchemy import select
from sqlalchemy.orm import Session

from sigillo.config import Settings
from sigillo.gateway import queue
from sigillo.notify import SEVEN_BIT, phrase_lines
from sigillo.portal.accounts import phrase_of
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import Account, JobKind

ACCOUNT_MAIL = "portal"
AUTO_ANSWER = "auto-answer"
TLS_REPORT = "tls-report"
"""``messages.client_address`` of mail sigillo writes itself (no SMTP client sent it): the
worker DKIM-signs queued mail from these sources only."""
OWN_WORDS = frozenset({ACCOUNT_MAIL, AUTO_ANSWER, TLS_REPORT})


class Outbox:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        keyring: Keyring,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.on_queued = on_queued

    def compose(
        self,
        recipient: str,
        subject: str,
        body: str,
        now: datetime,
        phrase: str | None = None,
        *,
        answering: bool = False,
        in_reply_to: str | None = None,
    ) -> bytes:
        """Account mail, or with ``answering`` an automatic reply (to ``in_reply_to``, the
        Message-ID answered, when it is known)."""
        msg = EmailMessage(policy=SEVEN_BIT)
        msg["From"] = self.settings.notify.from_
        msg["To"] = recipient
        msg["Date"] = format_datetime(now)
        msg["Message-ID"] = make_msgid(domain=self.settings.smtp.hostname)
        msg["Auto-Submitted"] = "auto-replied" if answering else "auto-generated"
        if in_reply_to:
            msg["In-Reply-To"] = in_reply_to
            msg["References"] = in_reply_to
        msg["Subject"] = subject
        msg.set_content(phrase_lines(phrase) + body if phrase else body)
        return msg.as_bytes()

    async def send(self, recipient: str, subject: str, body: str, now: datetime) -> None:
        async with self.store.session() as session:
            row = await session.execute(select(Account).where(Account.address == recipient))
            account = row.scalars().first()
        phrase = None if account is None else phrase_of(self.keyring, account)
        message = queue.new_message(
            self.keyring,
            mail_from=self.settings.notify.from_,
            content=self.compose(recipient, subject, body, now, phrase),
            client_address=ACCOUNT_MAIL,
            now=now,
        )
        message_id = message.id
        delivery = self.settings.delivery

        def write(session: Session) -> None:
            session.add(message)
            session.add(
                queue.new_job(
                    JobKind.MAIL,
                    recipient,
                    recipient.rpartition("@")[2],
                    now,
                    delivery,
                    message_id=message_id,
                )
            )

        await self.store.write(write)
        self.queued()

    def queued(self) -> None:
        if self.on_queued is not None:
            self.on_queued()
