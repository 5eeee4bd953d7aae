"""Mail the portal sends to its users about their account: a reset link, "your password was
changed". Stored encrypted and queued like any other message; the worker sends it with
opportunistic TLS, as it carries no message content."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

from sqlalchemy.orm import Session

from sigillo.config import Settings
from sigillo.gateway import queue
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import JobKind


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

    def compose(self, recipient: str, subject: str, body: str, now: datetime) -> bytes:
        msg = EmailMessage(policy=SMTP)
        msg["From"] = self.settings.notify.from_
        msg["To"] = recipient
        msg["Date"] = format_datetime(now)
        msg["Message-ID"] = make_msgid(domain=self.settings.smtp.hostname)
        msg["Auto-Submitted"] = "auto-generated"
        msg["Subject"] = subject
        msg.set_content(body)
        return msg.as_bytes()

    async def send(self, recipient: str, subject: str, body: str, now: datetime) -> None:
        message = queue.new_message(
            self.keyring,
            mail_from=self.settings.notify.from_,
            content=self.compose(recipient, subject, body, now),
            client_address="portal",
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
