"""Reading a message the way a mail client would show it, without failing on what it meets.

The stdlib parser with the compat32 policy accepts anything (broken boundaries, 8-bit
headers, unknown charsets) and records defects instead of raising; everything read from it
is decoded here with fallbacks, so no charset or encoding can stop a check. Limits on depth,
parts and text keep a hostile message from costing more than an ordinary one.
"""

from __future__ import annotations

import email
import email.errors
import email.header
import email.parser
import email.utils
import re
from dataclasses import dataclass, field
from email.message import Message
from email.policy import compat32

from sigillo.phishing.htmltext import HtmlContent, parse_html

MAX_DEPTH = 20
"""Nesting (multipart in multipart, forwarded message in message) read before giving up."""
MAX_PARTS = 500
MAX_TEXT = 2 * 1024 * 1024
"""Characters of text (plain and HTML together) analysed; the rest is not read."""


@dataclass(frozen=True)
class Address:
    name: str
    """Display name, encoded words decoded."""
    addr: str
    """``local@domain`` as written; the domain lower-cased."""

    @property
    def domain(self) -> str:
        return self.addr.rpartition("@")[2]


@dataclass
class Parsed:
    headers: list[tuple[str, str]]
    """The outer message's header fields, in order: (lower-case name, raw value)."""
    plain: list[str] = field(default_factory=list)
    html: list[HtmlContent] = field(default_factory=list)
    limit: str | None = None
    """Set when a limit stopped the reading: what was not read."""

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def addresses(self, name: str) -> list[Address]:
        """Every address in every ``name`` field; entries without an ``@`` are dropped."""
        found: list[Address] = []
        for value in self.values(name):
            # Addresses are parsed before encoded words are decoded: a display name that
            # decodes to "<x@y>" must stay a name, not become an address.
            for display, addr in email.utils.getaddresses([_unicode(value)]):
                if "=?" in addr:
                    # Not valid in an address, yet some clients show it decoded.
                    addr = decode_words(addr)
                local, at, domain = addr.rpartition("@")
                if at and local and domain:
                    found.append(Address(decode_words(display), f"{local}@{domain.lower()}"))
        return found


def parse(raw: bytes) -> Parsed:
    try:
        msg = email.message_from_bytes(raw, policy=compat32)
    except RecursionError:
        # The stdlib parser recurses once per nesting level; past Python's limit only the
        # outer header is read, and the message is still judged on it.
        msg = email.parser.BytesParser(policy=compat32).parsebytes(raw, headersonly=True)
        headers = [(name.lower(), _unicode(str(value))) for name, value in msg.raw_items()]
        return Parsed(headers, limit=f"nested more than {MAX_DEPTH} levels deep")
    headers = [(name.lower(), _unicode(str(value))) for name, value in msg.raw_items()]
    parsed = Parsed(headers)
    budget = MAX_TEXT
    parts = 0
    # An explicit stack rather than Message.walk(): depth is bounded here, not by recursion.
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        parts += 1
        if parts > MAX_PARTS:
            parsed.limit = f"more than {MAX_PARTS} parts"
            break
        if depth > MAX_DEPTH:
            parsed.limit = f"nested more than {MAX_DEPTH} levels deep"
            continue
        if part.is_multipart():
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend(
                    (child, depth + 1) for child in reversed(children) if isinstance(child, Message)
                )
            continue
        ctype = part.get_content_type()
        if budget <= 0 or not (ctype.startswith("text/") or ctype.startswith("multipart/")):
            continue
        text = part_text(part)[:budget]
        budget -= len(text)
        if ctype == "text/html":
            parsed.html.append(parse_html(text))
        else:
            # Plain text, other text types, and a multipart whose boundary is missing (the
            # parser leaves it unsplit): a client shows those as text, so they are read.
            parsed.plain.append(text)
    return parsed


def part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    return decode_bytes(payload, part.get_content_charset())


def decode_bytes(data: bytes, charset: str | None) -> str:
    """``data`` in its declared charset, else UTF-8, else windows-1252 (never fails)."""
    for name in (charset, "utf-8"):
        if not name:
            continue
        try:
            # Non-text codecs ("base64", "rot13") raise LookupError here, as unknown ones do.
            return data.decode(name)
        except (LookupError, UnicodeError, ValueError, TypeError):
            continue
    return data.decode("windows-1252", errors="replace")


def decode_words(value: str) -> str:
    """A header value with RFC 2047 encoded words decoded, folded whitespace collapsed."""
    value = _unicode(value)
    if "=?" in value:
        try:
            chunks = email.header.decode_header(value)
        except (email.errors.HeaderParseError, ValueError, LookupError, UnicodeError):
            chunks = [(value, None)]
        value = "".join(_chunk_text(chunk, charset) for chunk, charset in chunks)
    return " ".join(value.split())


def _chunk_text(chunk: bytes | str, charset: str | None) -> str:
    if isinstance(chunk, str):
        return chunk
    if charset is None:
        # decode_header turns the text between encoded words into raw-unicode-escape bytes.
        return chunk.decode("raw-unicode-escape", errors="replace")
    return decode_bytes(chunk, charset)


_SURROGATES = re.compile("[\udc80-\udcff]")


def _unicode(value: str) -> str:
    """compat32 keeps 8-bit header bytes as surrogates; read them as UTF-8 (or replace)."""
    if _SURROGATES.search(value):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value
