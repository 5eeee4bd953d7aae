"""Delivery status notifications (RFC 3464 inside an RFC 6522 multipart/report).

A DSN goes back to the internal sender when a recipient's copy bounces (5xx) or stays in the
queue past its lifetime. Recipient addresses, MX names and SMTP replies come from the network,
so every value that reaches a header or a DSN field is reduced to one line of printable ASCII
first: a CR/LF in a remote's reply must not become a header of ours. The original message is
returned as its header section only unless the caller asks for more: a DSN is a report, and the
body may hold the very personal data this gateway exists to protect.
"""

from __future__ import annotations

import re
import secrets
import textwrap
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesHeaderParser
from email.policy import SMTP, EmailPolicy, Policy
from email.utils import format_datetime
from typing import Any, Literal

Action = Literal["failed", "delayed"]

DIAGNOSTIC_LIMIT = 1000
"""Characters of a remote reply kept in Diagnostic-Code; a hostile peer may send megabytes."""
ADDRESS_LIMIT = 512
"""Generous: RFC 5321 caps a path at 256 octets, but escapes can lengthen it."""
HOST_LIMIT = 255
ENVID_LIMIT = 100
"""RFC 3461 section 4.4: an ENVID is at most 100 characters."""
HEADERS_LIMIT = 64 * 1024
"""Bytes of the original header section returned; enough for any real header, bounded for fakes."""
SUBJECT_LIMIT = 200

_MAX_WORD = 900
"""No word in a DSN field exceeds this, so a folded line stays under RFC 5322's 998."""

_POLICY: EmailPolicy[EmailMessage] = SMTP.clone(refold_source="none")
"""CRLF, and headers of a returned original are written as they came rather than refolded."""

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_FIELD_START = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
"""RFC 5322 field name (printable ASCII but colon), obsolete whitespace before the colon allowed."""
_STATUS = re.compile(r"([245])\.[0-9]{1,3}\.[0-9]{1,3}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")
_DOMAIN = re.compile(r"[\w-]+(?:\.[\w-]+)*|\[[\x21-\x5a\x5e-\x7e]+\]")
"""Dot-separated labels (Unicode allowed for SMTPUTF8 senders) or an address literal."""
_UTF8_ADDR_SAFE = frozenset(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "+=\\")
"""RFC 6533 QCHAR: what utf-8-addr-xtext carries unescaped."""


@dataclass(frozen=True)
class FailedRecipient:
    address: str
    """Final recipient, as given in RCPT TO."""
    status: str
    """RFC 3463 enhanced status code: ``5.1.1`` for a bounce, ``4.4.7`` for a queue expiry."""
    action: Action
    """``failed``: given up (a 5xx, or a 4xx until the queue lifetime ran out). ``delayed``: still
    queued; this DSN is a warning."""
    diagnostic: str | None
    """The remote SMTP reply text, e.g. ``550 5.1.1 <x@y>: user unknown``."""
    remote_mta: str | None
    """The MX host that answered."""
    last_attempt: datetime | None
    """Aware, UTC."""


def build_dsn(
    *,
    original: bytes,
    envelope_from: str,
    reporting_mta: str,
    postmaster: str,
    recipients: Sequence[FailedRecipient],
    arrival: datetime,
    envid: str | None = None,
    include_content: bool = False,
    now: datetime | None = None,
) -> EmailMessage:
    """A multipart/report for ``envelope_from`` covering ``recipients``.

    Never raises on what the network or the original supplies (message bytes, addresses,
    replies, host names). Raises ``ValueError`` for caller mistakes: no recipients, a null or
    unusable ``envelope_from`` (RFC 5321 section 4.5.5: no DSN to the null reverse-path, or
    bounces loop), a bad ``reporting_mta`` or ``postmaster``, naive datetimes. Send the result
    with ``dsn_bytes`` and an empty envelope sender, ``MAIL FROM:<>``, for the same reason.
    """
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    for recipient in recipients:
        if recipient.action not in ("failed", "delayed"):
            raise ValueError(f"unsupported DSN action {recipient.action!r}")
    host = _hostname(reporting_mta)
    to = _address(envelope_from, what="envelope_from")
    sender = _address(postmaster, what="postmaster", display_name="Mail Delivery System")
    now = datetime.now(UTC) if now is None else _aware(now, "now")
    arrival = _aware(arrival, "arrival")
    headers = _capped(_split(original)[0])

    all_delayed = all(r.action == "delayed" for r in recipients)
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = (
        "Delayed Mail (still being retried)"
        if all_delayed
        else "Undelivered Mail Returned to Sender"
    )
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = f"<dsn.{secrets.token_hex(16)}@{host}>"
    msg["Auto-Submitted"] = "auto-replied"
    msg["MIME-Version"] = "1.0"
    # Random, and "=_" cannot occur in quoted-printable: no part can contain the delimiter.
    boundary = f"=_dsn_{secrets.token_hex(16)}"
    msg["Content-Type"] = f'multipart/report; report-type=delivery-status; boundary="{boundary}"'
    msg.set_payload(
        [
            _human_part(
                host, recipients, arrival, _subject(headers), content_attached=include_content
            ),
            _status_part(host, recipients, arrival, envid),
            _original_part(original) if include_content else _headers_part(headers),
        ]
    )
    return msg


def dsn_bytes(msg: EmailMessage) -> bytes:
    """The wire form: CRLF line endings, headers folded for SMTP.

    A sender or postmaster address with non-ASCII characters can only be written raw (RFC 6532),
    never as RFC 2047 encoded words, so such a DSN is produced for an SMTPUTF8 session.
    """
    needs_utf8 = any(not str(msg.get(name, "")).isascii() for name in ("From", "To"))
    return msg.as_bytes(policy=_POLICY.clone(utf8=True) if needs_utf8 else _POLICY)


class _DsnField(str):
    """A sanitised DSN field that folds itself.

    The email package would RFC 2047-encode a long word and re-parse structured values; neither
    belongs in message/delivery-status. Stored as a header object, this value is written as is,
    only folded at its spaces.
    """

    name: str

    def __new__(cls, name: str, value: str) -> _DsnField:
        field = super().__new__(cls, value)
        field.name = name
        return field

    def fold(self, *, policy: Policy[Any]) -> str:
        width = min(policy.max_line_length or 998, 998)
        lines: list[str] = []
        line = f"{self.name}:"
        for word in self.split(" "):
            if line != f"{self.name}:" and len(line) + 1 + len(word) > width:
                lines.append(line)
                line = ""
            line += " " + word
        lines.append(line)
        return policy.linesep.join(lines) + policy.linesep


def _block(fields: list[tuple[str, str]]) -> MIMEPart:
    block = MIMEPart(policy=_POLICY)
    for name, value in fields:
        block[name] = _DsnField(name, value)
    return block


def _status_part(
    host: str, recipients: Sequence[FailedRecipient], arrival: datetime, envid: str | None
) -> MIMEPart:
    """message/delivery-status: the email package wants its body as a list of header blocks."""
    per_message = [("Reporting-MTA", f"dns; {host}")]
    if envid is not None and (text := _field_text(envid, ENVID_LIMIT)):
        per_message.append(("Original-Envelope-Id", text))
    per_message.append(("Arrival-Date", format_datetime(arrival.astimezone(UTC))))
    blocks: list[Message | str] = [_block(per_message)]
    for recipient in recipients:
        fields = [
            ("Final-Recipient", _final_recipient(recipient.address)),
            ("Action", recipient.action),
            ("Status", _status(recipient)),
        ]
        if recipient.remote_mta is not None and (
            mta := _field_text(recipient.remote_mta, HOST_LIMIT)
        ):
            fields.append(("Remote-MTA", f"dns; {mta}"))
        if recipient.diagnostic is not None and (
            diagnostic := _field_text(recipient.diagnostic, DIAGNOSTIC_LIMIT)
        ):
            fields.append(("Diagnostic-Code", f"smtp; {diagnostic}"))
        if recipient.last_attempt is not None:
            last = _aware(recipient.last_attempt, "last_attempt").astimezone(UTC)
            fields.append(("Last-Attempt-Date", format_datetime(last)))
        blocks.append(_block(fields))
    part = MIMEPart(policy=_POLICY)
    part["Content-Type"] = "message/delivery-status"
    part["Content-Description"] = "Delivery report"
    part.set_payload(blocks)
    return part


def _headers_part(headers: list[bytes]) -> MIMEPart:
    text = "".join(
        _printable_or_replacement(line.decode("utf-8", "replace")) + "\n" for line in headers
    )
    part = _text_part(text, subtype="rfc822-headers")
    part["Content-Description"] = "Undelivered message headers"
    return part


def _original_part(original: bytes) -> MIMEPart:
    """message/rfc822 with everything: only on request, see the module docstring.

    The original is written back as it came, bar line endings, rather than parsed and
    regenerated: the email package refolds parsed headers, and raises on some malformed
    multiparts. Its header section travels as one self-writing header object and its body as
    text, which the generator writes verbatim (8-bit bytes included, via surrogateescape).
    """
    lines, body_start = _split(original)
    embedded = MIMEPart(policy=_POLICY)
    if lines:
        embedded[_VerbatimHeaders.name] = _VerbatimHeaders(lines)
    embedded.set_payload(original[body_start:].decode("ascii", "surrogateescape"))
    part = MIMEPart(policy=_POLICY)
    part["Content-Type"] = "message/rfc822"
    part["Content-Transfer-Encoding"] = _transfer_class(original)
    part["Content-Description"] = "Undelivered message"
    payload: list[Message | str] = [embedded]
    part.set_payload(payload)
    return part


class _VerbatimHeaders(str):
    """A whole header section that folds to its own lines; the name is never written."""

    name = "X-Sigillo-Verbatim-Headers"
    decoded: list[str]

    def __new__(cls, lines: list[bytes]) -> _VerbatimHeaders:
        decoded = [line.decode("ascii", "surrogateescape") for line in lines]
        section = super().__new__(cls, "\r\n".join(decoded))
        section.decoded = decoded
        return section

    def fold(self, *, policy: Policy[Any]) -> str:
        return policy.linesep.join(self.decoded) + policy.linesep


def _text_part(text: str, *, subtype: str) -> MIMEPart:
    """7bit when it can be, else quoted-printable: a DSN should survive any relay unchanged."""
    plain = text.isascii() and all(len(line) <= 998 for line in text.splitlines())
    part = MIMEPart(policy=_POLICY)
    part.set_content(
        text,
        subtype=subtype,
        charset="us-ascii" if text.isascii() else "utf-8",
        cte="7bit" if plain else "quoted-printable",
    )
    return part


def _transfer_class(data: bytes) -> str:
    """RFC 2046 section 5.2.1: message/rfc822 may only be labelled, never encoded."""
    if b"\0" in data or any(len(line) > 998 for line in _LINE_BREAK.split(data)):
        return "binary"
    return "7bit" if data.isascii() else "8bit"


def _split(original: bytes) -> tuple[list[bytes], int]:
    """The header section of ``original`` line by line, and the offset where its body starts.

    The headers end at the first empty or blank line, and also at the first line that is neither
    a header field nor a continuation of one: an original with no separating empty line must not
    leak its body. A body line shaped like a field (``Diagnosis: ...``) right after the headers,
    with no empty line between, is indistinguishable from a header; any parser would agree.
    """
    lines: list[bytes] = []
    for line, start, after in _lines(original):
        if line[:1] in (b" ", b"\t"):
            if lines and line.strip():
                lines.append(line)
                continue
        elif _FIELD_START.match(line):
            lines.append(line)
            continue
        return lines, after if not line.strip() else start
    return lines, len(original)


def _capped(lines: list[bytes]) -> list[bytes]:
    kept: list[bytes] = []
    size = 0
    for line in lines:
        size += len(line) + 1
        if size > HEADERS_LIMIT:
            break
        kept.append(line)
    return kept


def _lines(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """Lines under any convention (CRLF, LF, lone CR), with where each starts and the next does.

    Lazy: only the header section is wanted, and the body may be large.
    """
    pos = 0
    while pos < len(data):
        match = _LINE_BREAK.search(data, pos)
        end, after = (len(data), len(data)) if match is None else match.span()
        yield data[pos:end], pos, after
        pos = after


def _subject(headers: list[bytes]) -> str | None:
    """The original Subject, so the reader knows which message this is about."""
    try:
        parsed = BytesHeaderParser(policy=_POLICY).parsebytes(b"\r\n".join(headers) + b"\r\n\r\n")
        subject = parsed.get("Subject")
        return None if subject is None else _display(str(subject), SUBJECT_LIMIT)
    except Exception:  # a courtesy line; a parser bug in it must not cost the sender the bounce
        return None


def _human_part(
    host: str,
    recipients: Sequence[FailedRecipient],
    arrival: datetime,
    subject: str | None,
    *,
    content_attached: bool,
) -> MIMEPart:
    """Plain words for the staff member who sent the message, not for a mail administrator."""
    bounced = [r for r in recipients if r.action == "failed" and _status(r).startswith("5")]
    expired = [r for r in recipients if r.action == "failed" and _status(r).startswith("4")]
    delayed = [r for r in recipients if r.action == "delayed"]
    out = _para(f"This is an automatic message from the mail system at {host}.")
    out.append("")
    if bounced or expired:
        out += _para(
            "Your message could NOT be delivered to the recipients listed below under "
            '"NOT DELIVERED". They have not received it, and the mail system will not try '
            "again."
        )
    else:
        out += _para(
            "Your message has NOT been delivered yet to the recipients listed below. The mail "
            "system is still trying; you do not need to do anything now. If it has to give up, "
            "you will receive another message like this one."
        )
    out.append("")
    if subject:
        out += _para(f"Subject: {subject}")
    out += _para(f"Sent: {arrival.astimezone(UTC):%Y-%m-%d %H:%M} UTC")
    out.append("")
    if bounced:
        out += _para("NOT DELIVERED: the recipient's mail server refused the message.")
        out.append("")
        out += _recipient_lines(bounced, said="said")
        out += _para(
            "What you can do: check the address for typing mistakes and send the message "
            "again. If the address is right, contact the recipient another way, or forward "
            "this notice to IT support."
        )
        out.append("")
    if expired:
        out += _para(
            "NOT DELIVERED: the mail system kept trying, but could not deliver the message "
            "within the time it may keep a message waiting (its queue lifetime), and has "
            "stopped trying."
        )
        out.append("")
        out += _recipient_lines(expired, said="last said")
        out += _para(
            "What you can do: the recipient's mail server could not be reached, or kept "
            "putting the message off. Send it again later, contact the recipient another way, "
            "or forward this notice to IT support."
        )
        out.append("")
    if delayed:
        out += _para("NOT DELIVERED YET: still trying.")
        out.append("")
        out += _recipient_lines(delayed, said="last said")
    if not content_attached:
        out += _para(
            "To protect its content, your message itself is not attached; you will find it in "
            "your sent mail."
        )
        out.append("")
    out += _para("The technical details below are meant for IT support.")
    return _text_part("\n".join(out) + "\n", subtype="plain")


def _recipient_lines(recipients: list[FailedRecipient], *, said: str) -> list[str]:
    out: list[str] = []
    for recipient in recipients:
        out.append("    " + (_display(recipient.address, ADDRESS_LIMIT) or "(no address)"))
        diagnostic = _display(recipient.diagnostic or "", DIAGNOSTIC_LIMIT)
        server = _display(recipient.remote_mta or "", HOST_LIMIT)
        whose = f"Their mail server ({server})" if server else "Their mail server"
        if diagnostic:
            out += _para(f"{whose} {said}: {diagnostic}", indent=" " * 8)
        elif server:
            out += _para(f"{whose} gave no reason.", indent=" " * 8)
        out.append("")
    return out


def _para(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(
        text, width=76, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
    )


def _status(recipient: FailedRecipient) -> str:
    """The given status if it fits the action; a generic one if the network sent nonsense."""
    match = _STATUS.fullmatch(recipient.status.strip())
    allowed = "45" if recipient.action == "failed" else "4"
    if match is not None and match.group(1) in allowed:
        return match.group(0)
    return "5.0.0" if recipient.action == "failed" else "4.0.0"


def _final_recipient(address: str) -> str:
    """``rfc822; addr``, or RFC 6533 ``utf-8; addr`` with escapes for an SMTPUTF8 address."""
    bare = _strip_controls(address).strip().removeprefix("<").removesuffix(">").strip()
    if bare.isascii():
        return f"rfc822; {_field_text(bare, ADDRESS_LIMIT) or 'unknown'}"
    escaped = "".join(ch if ch in _UTF8_ADDR_SAFE else f"\\x{{{ord(ch):02X}}}" for ch in bare)
    return f"utf-8; {_break_long_words(escaped[:ADDRESS_LIMIT])}"


def _field_text(value: str, limit: int) -> str:
    """One line of printable ASCII: controls become spaces, non-ASCII becomes ``\\x{HEX}``."""
    pieces: list[str] = []
    for ch in value[: 4 * limit]:
        code = ord(ch)
        if 0x21 <= code <= 0x7E:
            pieces.append(ch)
        elif code < 0x80:
            pieces.append(" ")
        else:
            pieces.append(f"\\x{{{code:02X}}}")
    text = " ".join("".join(pieces).split())
    return _break_long_words(text[:limit].rstrip())


def _break_long_words(text: str) -> str:
    if len(text) <= _MAX_WORD:
        return text
    return " ".join(
        " ".join(word[i : i + _MAX_WORD] for i in range(0, len(word), _MAX_WORD))
        for word in text.split(" ")
    )


def _display(value: str, limit: int) -> str:
    """One line for a human: no controls, no invisible or direction-changing characters."""
    pieces: list[str] = []
    for ch in value[: 4 * limit]:
        category = unicodedata.category(ch)
        if category in ("Cc", "Zl", "Zp") or ch.isspace():
            pieces.append(" ")
        elif category == "Cs":
            pieces.append("\ufffd")
        elif category not in ("Cf", "Co"):
            pieces.append(ch)
    text = " ".join("".join(pieces).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _printable_or_replacement(line: str) -> str:
    """Header text returned as data: keep it verbatim except for control characters."""
    return "".join(
        "\ufffd" if unicodedata.category(ch) in ("Cc", "Zl", "Zp") and ch != "\t" else ch
        for ch in line
    )


def _strip_controls(value: str) -> str:
    return "".join(ch for ch in value if unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))


def _address(value: str, *, what: str, display_name: str = "") -> Address:
    """An Address built from parts, so a comma or quote in the input cannot add a recipient.

    These come from our own listener and configuration, never with control characters; one
    present means the value is not what it claims to be, and stripping it would change which
    mailbox the DSN names, so it is refused.
    """
    bare = value.strip().removeprefix("<").removesuffix(">").strip()
    local, at, domain = bare.rpartition("@")
    if not at or not local or not _DOMAIN.fullmatch(domain) or _strip_controls(local) != local:
        raise ValueError(f"{what} is not a usable mail address: {bare!r}")
    return Address(display_name=display_name, username=local, domain=domain)


def _hostname(value: str) -> str:
    host = value.strip().removesuffix(".")
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"reporting_mta is not a host name: {value!r}")
    return host


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
    return value
