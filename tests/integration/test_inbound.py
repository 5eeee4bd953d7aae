"""Mail addressed to sigillo itself: phishing reports are checked and kept, replies to the
notification address get one content-free answer (RFC 3834) and are never kept.

The answer travels through the real worker to the real Postfix peer; the answering rules and
the report's check run over SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import smtplib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from sigillo.config import Settings
from sigillo.gateway.inbound import ANSWER_SUBJECT, forwarded_original
from sigillo.gateway.listener import start_listener
from sigillo.store import migrate
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import AuditEvent, AutoAnswer, Job, JobKind, Message, PhishingReport
from tests.integration.gateway import received, running_gateway
from tests.peers.dnsmasq import DnsmasqPeer
from tests.peers.fixtures import MxPeers

NOTIFY = "secure@org.example"
REPORT = "phish-report@org.example"
BASE_URL = "https://portal.org.example"


def reply(marker: str, *, extra: str = "", message_id: str | None = None) -> bytes:
    """A recipient's reply to a notification, with ``marker`` in every part of it."""
    mid = message_id if message_id is not None else f"<{secrets.token_hex(6)}@x.example>"
    return (
        f"From: Anna Verdi <anna@x.example>\r\nTo: {NOTIFY}\r\n"
        f"Subject: Re: You have a secure message {marker}\r\nMessage-ID: {mid}\r\n{extra}"
        f"\r\nThanks. {marker} My date of birth is 1970-01-01, code {marker}.\r\n"
    ).encode()


def smtp_send(port: int, mail_from: str, rcpts: list[str], data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mx.x.example")
        code, text = client.mail(mail_from)
        for rcpt in rcpts:
            if code == 250:
                code, text = client.rcpt(rcpt)
        if code != 250:
            return code, text
        return client.data(data)


async def _rows(store: Store, model: type[Any]) -> list[Any]:
    async with store.session() as session:
        return list((await session.execute(select(model))).scalars().all())


def _opened(keyring: Keyring, message: Message) -> bytes:
    return keyring.open(message.id, message.kek_id, message.wrapped_key, message.content)


# -- the answer, end to end ---------------------------------------------------------------------


@pytest.mark.peers
async def test_reply_is_answered_through_the_worker_and_never_kept(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer
) -> None:
    marker = f"Lynx-Teapot-{secrets.token_hex(4)}"
    sender = f"r{secrets.token_hex(5)}@tls.test"
    original_id = f"<{secrets.token_hex(8)}@tls.test>"
    overrides: dict[str, dict[str, Any]] = {"portal": {"base_url": BASE_URL}}
    async with running_gateway(tmp_path, mx_peers, dns_peer, overrides) as gateway:
        code, _ = await asyncio.to_thread(
            smtp_send, gateway.port, sender, [NOTIFY], reply(marker, message_id=original_id)
        )
        assert code == 250
        [got] = await received(mx_peers, 1, lambda m: m.recipient == sender)
        [job] = await _rows(gateway.store, Job)
        assert (job.kind, job.recipient) == (JobKind.MAIL, sender)
        messages = await _rows(gateway.store, Message)
        audit = await _rows(gateway.store, AuditEvent)
        opened = [_opened(gateway.keyring, m) for m in messages]
    answer = got.message
    assert answer["From"] == NOTIFY and answer["To"] == sender
    assert answer["Subject"] == ANSWER_SUBJECT
    assert answer["Auto-Submitted"] == "auto-replied"
    assert answer["In-Reply-To"] == original_id and answer["References"] == original_id
    body = answer.get_content()
    assert body.count("http") == 1 and BASE_URL in body  # exactly one link: the portal
    assert "passwords" in body and "password" in body and "portale" in body
    # Nothing of the original travels back or stays: not the answer, not a row, not a file.
    assert marker.encode() not in got.raw
    assert all(marker.encode() not in content for content in opened)
    assert all(marker not in repr(event.details) for event in audit)
    files = b"".join(f.read_bytes() for f in tmp_path.glob("sigillo.db*"))
    assert sender.encode() in files  # the scan works: the answer's job names its recipient
    for needle in (marker, "1970-01-01"):
        assert needle.encode() not in files and needle.encode("utf-16-le") not in files


# -- answering rules, over both backends ---------------------------------------------------------


class Listener:
    def __init__(self, store: Store, keyring: Keyring, port: int) -> None:
        self.store = store
        self.keyring = keyring
        self.port = port

    async def send(self, mail_from: str, rcpts: list[str], data: bytes) -> int:
        code, _ = await asyncio.to_thread(smtp_send, self.port, mail_from, rcpts, data)
        return code

    async def answers(self) -> list[EmailMessage]:
        async with self.store.session() as session:
            rows = await session.execute(
                select(Message).join(Job, Job.message_id == Message.id).order_by(Job.id)
            )
            found = []
            for message in rows.scalars():
                parsed = message_from_bytes(_opened(self.keyring, message), policy=default)
                assert isinstance(parsed, EmailMessage)
                found.append(parsed)
            return found


def listener_settings(tmp_path: Path, store_url: str, **sections: dict[str, Any]) -> Settings:
    base: dict[str, dict[str, Any]] = {
        "smtp": {"listen": "127.0.0.1:0"},
        "portal": {"base_url": BASE_URL},
        "storage": {"database_url": store_url, "key_file": str(tmp_path / "sigillo.keys")},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return Settings.model_validate(base)


@contextlib.asynccontextmanager
async def listening(settings: Settings) -> AsyncIterator[Listener]:
    store = Store(settings.storage.database_url)
    await migrate.upgrade(store)
    keyring = Keyring.load_or_create(settings.storage.key_file)
    server = await start_listener(settings, store, keyring)
    try:
        yield Listener(store, keyring, server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()
        await store.close()


@pytest.fixture
async def listener(tmp_path: Path, store_url: str) -> AsyncIterator[Listener]:
    async with listening(listener_settings(tmp_path, store_url)) as found:
        yield found


NOT_ANSWERED = [
    ("", "", "null sender"),
    ("MAILER-DAEMON@x.example", "", "bounce"),
    ("postmaster@x.example", "", "postmaster"),
    ("owner-patients@x.example", "", "list owner"),
    ("patients-request@x.example", "", "list request"),
    ("noreply@x.example", "", "no-reply"),
    (NOTIFY, "", "own notification address"),
    ("Phish-Report@ORG.example", "", "own report address"),
    ("anna@x.example", "Auto-Submitted: auto-replied\r\n", "auto reply"),
    ("anna@x.example", "Auto-Submitted: auto-generated\r\n", "auto generated"),
    ("anna@x.example", "Auto-Submitted: auto-notified; owner-email=x@y.example\r\n", "notified"),
    ("anna@x.example", "Precedence: bulk\r\n", "bulk"),
    ("anna@x.example", "Precedence: LIST\r\n", "list precedence"),
    ("anna@x.example", "Precedence: junk\r\n", "junk"),
    ("anna@x.example", "List-Id: Patients <patients.x.example>\r\n", "list id"),
    ("anna@x.example", "List-Unsubscribe: <mailto:u@x.example>\r\n", "list unsubscribe"),
]


async def test_rfc3834_mail_is_accepted_and_never_answered(listener: Listener) -> None:
    for sender, extra, why in NOT_ANSWERED:
        code = await listener.send(sender, [NOTIFY], reply("Otter", extra=extra))
        assert code == 250, why
        assert await _rows(listener.store, Job) == [], why
        assert await _rows(listener.store, Message) == [], why
    assert await _rows(listener.store, AutoAnswer) == []
    # The same mail with "Auto-Submitted: no" is a person writing: answered.
    code = await listener.send(
        "anna@x.example", [NOTIFY], reply("Otter", extra="Auto-Submitted: no\r\n")
    )
    assert code == 250 and len(await listener.answers()) == 1


@pytest.mark.parametrize(
    "message_id", ["", "<a b@x.example>", "<one@x.example> <two@x.example>", "no-brackets@x"]
)
async def test_a_malformed_message_id_is_not_echoed(listener: Listener, message_id: str) -> None:
    assert (
        await listener.send("anna@x.example", [NOTIFY], reply("Otter", message_id=message_id))
        == 250
    )
    [answer] = await listener.answers()
    assert answer["In-Reply-To"] is None and answer["References"] is None
    assert answer["Auto-Submitted"] == "auto-replied"


async def test_one_answer_per_sender_per_day(listener: Listener) -> None:
    for _ in range(3):
        assert await listener.send("anna@x.example", [NOTIFY], reply("Otter")) == 250
    assert len(await listener.answers()) == 1
    # A day later the sender may be answered again.
    yesterday = datetime.now(UTC) - timedelta(days=1, minutes=1)
    await listener.store.write(
        lambda session: session.execute(update(AutoAnswer).values(answered_at=yesterday))
    )
    assert await listener.send("Anna@x.example", [NOTIFY], reply("Otter")) == 250
    assert len(await listener.answers()) == 2


async def test_simultaneous_replies_from_one_sender_answer_once(listener: Listener) -> None:
    sends = [listener.send("anna@x.example", [NOTIFY], reply("Otter")) for _ in range(6)]
    assert await asyncio.gather(*sends) == [250] * 6
    assert len(await listener.answers()) == 1
    assert len(await _rows(listener.store, AutoAnswer)) == 1


# -- phishing reports --------------------------------------------------------------------------

PHISH = (
    "From: Org Example Security <security@0rg-example.com>\r\nTo: anna@x.example\r\n"
    "Subject: Your account will be closed\r\nMessage-ID: <p1@0rg-example.com>\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    "Dear customer, confirm your password and your card number within 24 hours at\r\n"
    "http://198.51.100.7/org-example/login\r\n"
)


def forwarded(original: str) -> bytes:
    """A report as mail programs "forward as attachment": a harmless note, the original
    attached whole."""
    return (
        "From: Anna Verdi <anna@x.example>\r\nTo: phish-report@org.example\r\n"
        "Subject: Fwd: is this you?\r\nMessage-ID: <fwd1@x.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="==b=="\r\n\r\n'
        "--==b==\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nIs this really from you?\r\n"
        "--==b==\r\nContent-Type: message/rfc822\r\n"
        'Content-Disposition: attachment; filename="suspect.eml"\r\n\r\n'
        f"{original}\r\n--==b==--\r\n"
    ).encode()


def test_the_forwarded_original_is_found() -> None:
    found = forwarded_original(forwarded(PHISH))
    assert found is not None and b"security@0rg-example.com" in found
    assert b"Is this really from you?" not in found
    assert forwarded_original(PHISH.encode()) is None
    assert forwarded_original(b"\xff\xfe garbage \r\n\r\n--") is None


async def test_reports_are_checked_on_the_forwarded_original(listener: Listener) -> None:
    assert await listener.send("anna@x.example", [REPORT], forwarded(PHISH)) == 250
    assert await listener.send("anna@x.example", [REPORT], PHISH.encode()) == 250
    note = forwarded(PHISH).replace(b"message/rfc822", b"text/plain")  # not an attachment
    assert await listener.send("bob@x.example", [REPORT], note) == 250
    reports = sorted(await _rows(listener.store, PhishingReport), key=lambda r: r.id)
    verdicts = [r.verdict for r in reports]
    # The attached imitation is phishing whatever the note around it says; checked as a
    # whole, the note with the text pasted in is not verifiably the organisation's.
    assert verdicts[0] == verdicts[1] == "phishing"
    assert verdicts[2] in ("suspicious", "phishing")
    assert all(r.findings and r.message_id for r in reports)
    assert {r.reporter for r in reports} == {"anna@x.example", "bob@x.example"}
    assert await _rows(listener.store, Job) == []  # never relayed, never answered
    events = [e for e in await _rows(listener.store, AuditEvent) if e.action.startswith("phish")]
    assert [e.details["report"] for e in events if e.details] == [r.id for r in reports]
