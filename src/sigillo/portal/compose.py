"""The mail a portal reply sends: the reply to staff, and the optional copy to its author.

Every header value here holds text that came from outside (the stored message's subject and
ids, the recipient's file names), so each is reduced to one line before it is set. Encoded-word
syntax is broken up as well: the stdlib decodes RFC 2047 words in values it is given, and
Python before 3.11.10 then writes a decoded CR LF straight into the header (CVE-2024-6923).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import AddressHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import SMTP, Policy
from email.utils import format_datetime, make_msgid
from typing import Any, Self

from sigillo.gateway.addresses import split_mailbox
from sigillo.portal.mailview import (
    SUBJECT_LIMIT,
    message_ids,
    mime_type,
    one_line,
    safe_filename,
)

MAX_REFERENCES = 20
COPY_PREFIX = "Copy of your reply: "

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_HEADERS = HeaderRegistry()
# CR LF line ends, and 7-bit clean (text goes quoted-printable or base64): the relay need not
# offer 8BITMIME.
_POLICY = SMTP.clone(cte_type="7bit")


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


def build_reply(
    *,
    author: str,
    to: str,
    subject: str,
    in_reply_to: str | None,
    references: Sequence[str],
    body: str,
    attachments: Sequence[Upload],
    hostname: str,
    now: datetime,
) -> EmailMessage:
    """The portal user's reply to a staff member, threaded on the message it answers."""
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = _mailbox(author, "author")
    msg["To"] = _mailbox(to, "to")
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=hostname)
    msg["Subject"] = reply_subject(subject)
    # Ids that are not a single printable-ASCII <id> are dropped, not repaired. The parent is
    # the last reference (RFC 5322 3.6.4), even if it also appears earlier.
    parent = in_reply_to if in_reply_to and message_ids(in_reply_to) == [in_reply_to] else None
    thread = list(dict.fromkeys(r for r in references if message_ids(r) == [r] and r != parent))
    if parent:
        msg["In-Reply-To"] = _MessageIds("In-Reply-To", [parent])
        thread.append(parent)
    if thread:
        msg["References"] = _MessageIds("References", thread[-MAX_REFERENCES:])
    msg.set_content(_body_text(body))
    for index, upload in enumerate(attachments):
        _attach(msg, upload.data, upload.content_type, safe_filename(upload.filename, index))
    return msg


def build_copy(
    reply: EmailMessage, *, sender: str, recipient: str, note: str, hostname: str, now: datetime
) -> EmailMessage:
    """A copy of ``reply`` for its author: unthreaded, marked automatic, ``note`` first."""
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = _mailbox(sender, "sender")
    msg["To"] = _mailbox(recipient, "recipient")
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=hostname)
    msg["Auto-Submitted"] = "auto-generated"
    subject = one_line(str(reply.get("Subject", "")), SUBJECT_LIMIT)
    msg["Subject"] = _literal(f"{COPY_PREFIX}{subject}")
    body = reply.get_body(preferencelist=("plain",))
    text = body.get_content() if isinstance(body, EmailMessage) else ""
    msg.set_content(_body_text(f"{note}\n\n{text}"))
    for index, part in enumerate(reply.iter_attachments()):
        data = part.get_payload(decode=True)
        _attach(
            msg,
            data if isinstance(data, bytes) else b"",
            part.get_content_type(),
            safe_filename(part.get_filename(), index),
        )
    return msg


def reply_subject(subject: str) -> str:
    text = one_line(subject, SUBJECT_LIMIT)
    if not text.lower().startswith("re:"):
        text = f"Re: {text}".rstrip()
    return _literal(text)


class _MessageIds(str):
    """An In-Reply-To or References value written as given, one id per line.

    The stdlib folds an unstructured header by turning any word longer than the line into an
    RFC 2047 encoded word, which no mail client reads back as a message id; long ids (common
    from large providers) would silently stop threading. email.policy treats a value with a
    ``name`` as a header object and calls its ``fold``. Every id has passed ``message_ids``:
    printable ASCII, no spaces, so nothing here can break a line.
    """

    name: str
    ids: tuple[str, ...]

    def __new__(cls, name: str, ids: Sequence[str]) -> Self:
        value = super().__new__(cls, " ".join(ids))
        value.name = name
        value.ids = tuple(ids)
        return value

    def fold(self, *, policy: Policy[Any]) -> str:
        return f"{self.name}: {(policy.linesep + ' ').join(self.ids)}{policy.linesep}"


def _mailbox(value: str, what: str) -> str:
    """``value`` if it is one mailbox sigillo can mail, else ValueError."""
    if _CONTROL.search(value) or "=?" in value:
        raise ValueError(f"{what}: control characters and encoded words are not accepted")
    header = _HEADERS("to", value)
    if not isinstance(header, AddressHeader) or header.defects or len(header.addresses) != 1:
        raise ValueError(f"{what}: exactly one well-formed address is needed")
    split_mailbox(header.addresses[0].addr_spec)
    return value


def _literal(text: str) -> str:
    """One-line text set so that the stdlib cannot read an encoded word into it."""
    return text.replace("=?", "= ?")


def _body_text(text: str) -> str:
    # Lone surrogates (from a browser or a codec) cannot be encoded; normalise line endings,
    # the SMTP policy writes CR LF.
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _attach(msg: EmailMessage, data: bytes, content_type: str, filename: str) -> None:
    declared = mime_type(content_type)
    if declared.startswith(("multipart/", "message/")):
        # Bytes cannot be a multipart (it would need a structure) or a message/* (base64 is
        # not allowed there, RFC 2046 5.2.1); such uploads go as opaque data.
        declared = "application/octet-stream"
    maintype, _, subtype = declared.partition("/")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=_literal(filename))
