"""Portal notifications: the only mail sigillo sends with merely opportunistic TLS.

``Notification`` is built from a recipient address, a link and (only if configured) the
subject; it has no field that could hold a body or an attachment, and this module's sender
accepts nothing else. Message content never takes this path.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

import structlog

from sigillo.config import Settings
from sigillo.gateway.mx import MXResolver
from sigillo.gateway.smtpclient import (
    Reply,
    Session,
    SessionError,
    TLSFailure,
    opportunistic_context,
)

log = structlog.get_logger("sigillo.notify")

SEVEN_BIT = SMTP.clone(cte_type="7bit")
"""For mail sigillo signs: text goes quoted-printable, CR LF line ends. A relay that converts
8-bit text for a server without 8BITMIME would break the DKIM signature (RFC 6376 5.3)."""

TOKEN_BYTES = 32
"""256-bit link tokens; only their SHA-256 is stored."""


def new_token() -> tuple[str, str]:
    """(token for the link, hash to store)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def phrase_lines(phrase: str) -> str:
    """The recipient's security phrase, in both languages, to open a mail of ours: first,
    where a mail client's preview shows it."""
    phrase = " ".join(phrase.split())
    return (
        f"Your security phrase: \u00ab{phrase}\u00bb\n"
        f"La tua frase di sicurezza: \u00ab{phrase}\u00bb\n\n"
    )


@dataclass(frozen=True)
class Notification:
    recipient: str
    link: str
    subject: str | None = None
    """The original subject, only when ``notify.include_subject`` is on."""
    phrase: str | None = None
    """The recipient's own security phrase (checked when chosen: short, printable, no link),
    so that an imitation without it stands out."""

    def render(self, sender: str, hostname: str, now: datetime) -> bytes:
        msg = EmailMessage(policy=SEVEN_BIT)
        msg["From"] = sender
        msg["To"] = self.recipient
        msg["Date"] = format_datetime(now)
        msg["Message-ID"] = make_msgid(domain=hostname)
        msg["Auto-Submitted"] = "auto-generated"
        # Whitespace collapsed: a subject from the network must not fold into a new header;
        # "=?" broken up: an encoded word decoding to CR LF would write one on Python before
        # 3.11.10 (CVE-2024-6923).
        subject = " ".join((self.subject or "").split())[:200].replace("=?", "= ?")
        msg["Subject"] = f"Secure message: {subject}" if subject else "You have a secure message"
        msg.set_content(self.text())
        return msg.as_bytes()

    def text(self) -> str:
        """The body, English then Italian. It asks for nothing and holds one link, once: a
        recipient told "our mail has a single link, to the portal" can check that."""
        if self.phrase:
            head = phrase_lines(self.phrase)
            english = (
                "If an email claiming to be from us lacks your security phrase, it is not\n"
                "ours. Sign in with your password to read the message."
            )
            italian = (
                "Se un'email che dice di venire da noi non riporta la tua frase di\n"
                "sicurezza, non è nostra. Accedi con la tua password per leggere il messaggio."
            )
        else:
            head = ""
            english = (
                "On your first visit you choose a password; it opens only the mail sent to\n"
                "this address."
            )
            italian = (
                "Alla prima visita scegli una password; apre solo la posta inviata a questo\n"
                "indirizzo."
            )
        return (
            f"{head}"
            "You have received a secure message. For your protection it was not sent by\n"
            "ordinary email.\n"
            "Hai ricevuto un messaggio sicuro. Per proteggerti non è stato inviato per\n"
            "email ordinaria.\n\n"
            f"    {self.link}\n\n"
            f"{english}\nWe will never ask for your password by email.\n\n"
            "---\n\n"
            f"{italian}\nNon ti chiederemo mai la password per email.\n"
        )


@dataclass(frozen=True)
class SendResult:
    outcome: str
    """``sent``, ``deferred`` or ``failed``."""
    reason: str
    reply: Reply | None = None
    mx_host: str | None = None
    mx_ip: str | None = None
    tls_version: str | None = None


async def send_opportunistic(
    recipient: str, data: bytes, settings: Settings, resolver: MXResolver
) -> SendResult:
    """Send to the recipient's MX with TLS when offered, plaintext otherwise.

    Only for mail that carries no message content: notifications, account mail (a reset link,
    "your password was changed"), and the copy of a portal reply its author asked for after
    being warned that it travels as ordinary email."""
    domain = recipient.rpartition("@")[2].lower()
    mx = await resolver.lookup(domain)
    if mx.status == "permanent":
        return SendResult("failed", mx.reason)
    if mx.status == "temporary":
        return SendResult("deferred", mx.reason)
    problems: list[str] = []
    for host in mx.hosts:
        for ip in host.addresses:
            for use_tls in (True, False):
                session = Session(
                    ip, settings.delivery.mx_port, settings.smtp.hostname, settings.delivery
                )
                try:
                    await session.open()
                    version = None
                    if use_tls and session.offers_starttls:
                        tls = await session.starttls(host.name, opportunistic_context(), "none")
                        version = tls.version
                    result = await session.transaction(settings.notify.from_, [recipient], data)
                except TLSFailure as exc:
                    # Content-free, so a failed handshake may fall back to plaintext.
                    problems.append(f"{host.name}[{ip}]: {exc}")
                    continue
                except SessionError as exc:
                    problems.append(f"{host.name}[{ip}]: {exc}")
                    break
                finally:
                    await session.quit()
                reply = result.data or result.rcpt.get(recipient) or result.mail
                where = {"mx_host": host.name, "mx_ip": ip, "tls_version": version}
                if 200 <= reply.code < 300:
                    return SendResult("sent", "notification sent", reply, **where)
                if 400 <= reply.code < 500:
                    return SendResult("deferred", reply.line, reply, **where)
                return SendResult("failed", reply.line, reply, **where)
    return SendResult("deferred", "; ".join(problems) or "no MX address")
