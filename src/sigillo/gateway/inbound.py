"""Mail addressed to sigillo itself, which the listener takes instead of relaying.

- ``[phishing] report_address``: suspect mail forwarded by staff or recipients. It is checked
  (the forwarded original when the report carries one as a message/rfc822 attachment, else
  the report itself) and kept for the console's report review: sealed as a ``messages`` row
  that no job delivers, with a ``phishing_reports`` row holding the verdict and finding codes.
- ``[notify] from``: replies sent by mistake to a notification. The sender gets one fixed,
  content-free answer pointing to the portal (RFC 3834 rules, at most one a day each); the
  mail itself is never kept, logged or looked at beyond its header block.

Both are final destinations: nothing addressed to them is ever relayed. The listener joins
the works built here to the transaction that queues the rest of the message, so its 250
still means that everything is committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Literal

import structlog
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from sigillo.config import Settings
from sigillo.gateway import queue
from sigillo.gateway.addresses import AddressError, split_mailbox
from sigillo.phishing import Checker, CheckPolicy, Finding, Report
from sigillo.portal.accounts import phrase_of
from sigillo.portal.mailview import message_ids, open_attachment, parse_message
from sigillo.portal.outbox import AUTO_ANSWER, Outbox
from sigillo.store import audit
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import Account, AutoAnswer, JobKind, PhishingReport

log = structlog.get_logger("sigillo.inbound")

OwnKind = Literal["report", "notify"]

REPORT_RECEIVED = "phishing.report_received"
"""The audit action of a report's arrival (no content: the verdict and the codes' count)."""
ANSWER_INTERVAL = timedelta(days=1)
"""At most one automatic answer per sender in this interval (RFC 3834 section 2)."""
ANSWER_KEY_PURPOSE = "auto-answer"
"""Key derivation purpose of the keyed hash that identifies a sender in ``auto_answers``."""


ANSWER_SUBJECT = "Questo indirizzo non riceve posta / This address receives no mail"
# Fixed text: nothing of the mail it answers (it travels by ordinary email), one link.
ANSWER_BODY = """\
This address receives no mail, and your message has not been kept.
To answer a secure message, open the portal at the address below, sign in and reply there.
We never ask for passwords, codes or card numbers by email.

Questo indirizzo non riceve posta e il tuo messaggio non è stato conservato.
Per rispondere a un messaggio sicuro, apri il portale all'indirizzo qui sotto, accedi e
rispondi da lì.
Non chiediamo mai password, codici o numeri di carta per email.

{base_url}
"""

# RFC 3834 section 2 and RFC 5230 section 4.5: mailboxes that answer for software, lists
# and bounces. Compared with the local part lower-cased.
_ROBOT_LOCAL_PARTS = frozenset(
    {
        "mailer-daemon",
        "postmaster",
        "listserv",
        "majordomo",
        "noreply",
        "no-reply",
        "donotreply",
        "do-not-reply",
        "bounce",
        "bounces",
    }
)
_ROBOT_AFFIXES = (("owner-", ""), ("", "-request"), ("", "-owner"), ("", "-bounces"))
# RFC 2369 and RFC 2919: any of them marks list traffic.
_LIST_HEADERS = (
    "list-id",
    "list-unsubscribe",
    "list-subscribe",
    "list-post",
    "list-help",
    "list-owner",
    "list-archive",
)
_BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})
_MAX_HEADER_BLOCK = 256 * 1024
"""Only this much of a mail to the notification address is read for the answering rules."""


class OwnAddresses:
    """sigillo's own addresses, compared case-insensitively."""

    def __init__(self, settings: Settings) -> None:
        self.report = settings.phishing.report_address.strip().lower()
        self.notify = settings.notify.from_.strip().lower()

    def kind(self, address: str) -> OwnKind | None:
        # The report address wins if both are configured the same: a report is never
        # answered and thrown away.
        wanted = address.strip().lower()
        if wanted == self.report:
            return "report"
        if wanted == self.notify:
            return "notify"
        return None

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and self.kind(address) is not None


@dataclass(frozen=True)
class Arrival:
    """One mail the listener accepted for an own address."""

    content: bytes
    """As received from the client."""
    stamped: bytes
    """With the listener's Received header on top: what a report keeps."""
    mail_from: str
    """The envelope sender; "" for the null reverse-path."""
    client: str
    now: datetime


@dataclass(frozen=True)
class Answered:
    """What the answering work decided, for the log once it is committed."""

    sent: bool
    reason: str


# -- reports ---------------------------------------------------------------------------------


def forwarded_original(raw: bytes) -> bytes | None:
    """The first message/rfc822 (or message/global) attachment of a report: the usual
    "forward as attachment". None when the report carries none. Never raises."""
    view = parse_message(raw)
    for info in view.attachments:
        if info.content_type in ("message/rfc822", "message/global"):
            try:
                _, data = open_attachment(raw, info.index)
            except LookupError:
                return None
            return data or None
    return None


def finding_codes(report: Report) -> list[dict[str, str]]:
    """The report's findings as the console lists them: code and severity, each pair once."""
    seen: dict[tuple[str, str], None] = {}
    for finding in report.findings:
        seen.setdefault((finding.code, finding.severity), None)
    return [{"code": code, "severity": severity} for code, severity in seen]


class ReportChecker:
    """Checks what a report carries: the forwarded original when there is one, else the
    report itself. CPU-bound: call it in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def check(self, raw: bytes) -> tuple[Report, bytes]:
        """The verdict and the mail it is about. A checker that cannot be built or that
        fails gives ``errored``, never a clean verdict."""
        reported = forwarded_original(raw)
        mail = reported if reported is not None else raw
        try:
            # Built per check: sigillo's own DKIM key may be created after the listener starts.
            checker = Checker(CheckPolicy.from_settings(self.settings))
            return checker.check(mail), mail
        except Exception as exc:  # the checker promises not to raise; a report is kept anyway
            log.error("report_check_failed", error=type(exc).__name__)
            return Report("errored", (Finding("check-error", "the check could not run"),)), mail


class Inbound:
    """Builds the store work for mail addressed to an own address."""

    def __init__(self, settings: Settings, store: Store, keyring: Keyring) -> None:
        self.settings = settings
        self.keyring = keyring
        self.own = OwnAddresses(settings)
        self.outbox = Outbox(settings, store, keyring)
        self.checker = ReportChecker(settings)

    async def report(self, arrival: Arrival) -> Callable[[Session], int]:
        """Check the report (in a thread) and return the work that stores it; the work
        returns the report's id."""
        result, _ = await asyncio.to_thread(self.checker.check, arrival.content)
        message = queue.new_message(
            self.keyring,
            mail_from=arrival.mail_from,
            content=arrival.stamped,
            client_address=arrival.client,
            now=arrival.now,
        )
        # Not part of any thread of conversation: nothing should find it by Message-ID.
        message.message_id_hash = None
        row = PhishingReport(
            received_at=arrival.now,
            reporter=arrival.mail_from,
            message_id=message.id,
            verdict=result.verdict,
            findings=finding_codes(result),
        )

        def store(session: Session) -> int:
            session.add(message)
            session.flush()  # the report's foreign key needs the message row first
            session.add(row)
            session.flush()
            audit.record(
                session,
                REPORT_RECEIVED,
                actor=arrival.mail_from or "-",
                at=arrival.now,
                client=arrival.client,
                message_id=message.id,
                details={
                    "report": row.id,
                    "verdict": result.verdict,
                    "findings": len(row.findings),
                },
            )
            return row.id

        return store

    # -- automatic answers -----------------------------------------------------------------

    def answer(self, arrival: Arrival) -> Callable[[Session], Answered]:
        """The work that answers a mail sent to the notification address, or records why
        not. The mail is read only for its header block and kept nowhere."""
        if not self.settings.notify.auto_answer:
            return _decided(Answered(False, "automatic answers are off"))
        refusal = answer_refusal(arrival.content, arrival.mail_from, self.own)
        if refusal is not None:
            return _decided(Answered(False, refusal))
        sender = arrival.mail_from
        replied = original_message_id(arrival.content)
        key = self.sender_hash(sender)

        def store(session: Session) -> Answered:
            if not claim_answer_slot(session, key, arrival.now):
                return Answered(False, "this sender was answered less than a day ago")
            # The answer goes to the envelope sender only, so showing that address's phrase
            # tells nobody else anything; leaving it out would contradict every notification,
            # which says mail of ours without the phrase is not ours.
            account = session.execute(
                select(Account).where(Account.address == sender.lower())
            ).scalar_one_or_none()
            phrase = None if account is None else phrase_of(self.keyring, account)
            text = ANSWER_BODY.format(base_url=self.settings.portal.base_url)
            content = self.outbox.compose(
                sender,
                ANSWER_SUBJECT,
                text,
                arrival.now,
                phrase,
                answering=True,
                in_reply_to=replied,
            )
            message = queue.new_message(
                self.keyring,
                mail_from=self.settings.notify.from_,
                content=content,
                client_address=AUTO_ANSWER,
                now=arrival.now,
            )
            session.add(message)
            session.flush()
            session.add(
                queue.new_job(
                    JobKind.MAIL,
                    sender,
                    split_mailbox(sender)[1],
                    arrival.now,
                    self.settings.delivery,
                    message_id=message.id,
                )
            )
            return Answered(True, "answered")

        return store

    def sender_hash(self, address: str) -> str:
        secret = self.keyring.derive_all(ANSWER_KEY_PURPOSE)[0]
        return hmac.new(secret, address.lower().encode(), hashlib.sha256).hexdigest()


def _decided(answered: Answered) -> Callable[[Session], Answered]:
    return lambda _session: answered


def _headers(content: bytes) -> Message | None:
    end = content.find(b"\r\n\r\n")
    block = content[: end + 2] if end >= 0 else content
    if len(block) > _MAX_HEADER_BLOCK:
        return None
    try:
        return BytesHeaderParser(policy=compat32).parsebytes(block)
    except Exception:
        return None


def original_message_id(content: bytes) -> str | None:
    """The mail's Message-ID if it is exactly one well-formed ``<id>``; else None."""
    headers = _headers(content)
    values = headers.get_all("Message-ID", []) if headers is not None else []
    if len(values) != 1:
        return None
    value = str(values[0]).strip()
    found = message_ids(value)
    return found[0] if found == [value] else None


def robot_sender(local_part: str) -> bool:
    local = local_part.strip('"').lower()
    if local in _ROBOT_LOCAL_PARTS:
        return True
    return any(
        local.startswith(prefix) and local.endswith(suffix) and local != prefix + suffix
        for prefix, suffix in _ROBOT_AFFIXES
    )


def answer_refusal(content: bytes, mail_from: str, own: OwnAddresses) -> str | None:
    """Why RFC 3834 forbids answering this mail, or None when an answer may go."""
    if not mail_from or mail_from == "<>":
        return "null sender"
    try:
        local, _domain = split_mailbox(mail_from)
    except AddressError:
        return "sender address not usable"
    if mail_from in own:
        return "sent from one of sigillo's own addresses"
    if robot_sender(local):
        return "sender is a mail system or list address"
    headers = _headers(content)
    if headers is None:
        return "header block not readable"
    for value in headers.get_all("Auto-Submitted", []):
        if str(value).split(";", 1)[0].strip().lower() != "no":
            return "automatically submitted"
    for value in headers.get_all("Precedence", []):
        if str(value).strip().lower() in _BULK_PRECEDENCE:
            return "bulk or list precedence"
    present = {name.lower() for name in headers}
    if present.intersection(_LIST_HEADERS):
        return "mailing list traffic"
    return None


def claim_answer_slot(session: Session, key: str, now: datetime) -> bool:
    """Record that ``key``'s sender is answered now, unless it was less than a day ago.

    One statement (insert, or update only when the last answer is old enough), so two
    mails from one sender committed at the same moment answer once.
    """
    stale = AutoAnswer.answered_at <= now - ANSWER_INTERVAL
    values = {"sender_hash": key, "answered_at": now}
    if session.get_bind().dialect.name == "postgresql":
        pg = pg_insert(AutoAnswer).values(values)
        statement = pg.on_conflict_do_update(
            index_elements=[AutoAnswer.sender_hash], set_={"answered_at": now}, where=stale
        ).returning(AutoAnswer.sender_hash)
    else:
        lite = sqlite_insert(AutoAnswer).values(values)
        statement = lite.on_conflict_do_update(
            index_elements=[AutoAnswer.sender_hash], set_={"answered_at": now}, where=stale
        ).returning(AutoAnswer.sender_hash)
    return session.execute(statement).first() is not None
