"""What the portal shows of a stored message: display headers, bodies, attachments.

Everything here reads hostile bytes (anyone can mail a portal recipient) and must never raise.
The stdlib ``email`` package does the work in two layers:

- the MIME structure and payloads come from the compat32 parser, which interprets no header
  while parsing: policy.default re-parses every Content-Type several times per part, which
  made a 1 MB message of 20,000 tiny parts take 2.5 s instead of 0.2 s, and can raise from
  inside the parser;
- every header that is shown or whose parameters matter (names, dates, addresses) is decoded
  with policy.default's header classes, cut to MAX_HEADER_CHARS first, each call guarded:
  on crafted values they have raised IndexError, ValueError and RecursionError.

Header text is returned as plain ``str`` for the templates to autoescape; only the sanitised
HTML body is ``Markup``.
"""

from __future__ import annotations

import re
import unicodedata
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.headerregistry import (
    AddressHeader,
    BaseHeader,
    DateHeader,
    HeaderRegistry,
    ParameterizedMIMEHeader,
)
from email.message import Message
from email.parser import BytesParser
from email.policy import Compat32

import nh3
from markupsafe import Markup

from sigillo.gateway.addresses import split_mailbox

MAX_PARTS = 100
"""MIME parts looked at per message (containers included); the rest are ignored."""
MAX_DEPTH = 20
"""Multipart nesting looked into; deeper containers are ignored."""
MAX_HEADER_CHARS = 8192
"""The stdlib's structured header parser is superlinear on crafted values (a 280 KB subject of
encoded words takes seconds), so every header is cut to this length before it is parsed."""
SUBJECT_LIMIT = 300
ADDRESS_LIMIT = 500
FILENAME_LIMIT = 120
EXTENSION_LIMIT = 10
KEPT_REFERENCES = 100
"""References kept from a message (the last ones: a reply threads on its nearest ancestors)."""

_BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
# Control characters that are not whitespace, and the bidi controls behind the
# "invoice\u202egpj.exe" trick: dropped from every one-line text.
_INVISIBLE = {
    cp: None
    for cp in range(0xA0)
    if unicodedata.category(chr(cp)) == "Cc" and not chr(cp).isspace()
}
_INVISIBLE.update(dict.fromkeys(map(ord, _BIDI_CONTROLS)))
# Body text keeps tab and newline (and bidi controls, which right-to-left scripts need).
_TEXT_CONTROLS = {cp: None for cp in range(0xA0) if unicodedata.category(chr(cp)) == "Cc"}
del _TEXT_CONTROLS[ord("\t")], _TEXT_CONTROLS[ord("\n")]

# Printable ASCII without "<", ">" or space, so an id copied into a reply's References can
# never carry a line break or a second header.
_MESSAGE_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,250}>")
_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_PATH_SEPARATORS = re.compile(r"[/\\]")


class _StructurePolicy(Compat32):
    """compat32, with every header value cut to MAX_HEADER_CHARS as it is read from the source:
    both compat32's parameter splitting and policy.default's header classes are superlinear in
    a value's length (a 280 KB subject of encoded words takes seconds to decode)."""

    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        name, value = super().header_source_parse(sourcelines)
        return name, value[:MAX_HEADER_CHARS]


_STRUCTURE = _StructurePolicy()
_HEADERS = HeaderRegistry()  # policy.default's header classes
# Writes an attached message back out as received: its source headers exactly as they came.
_EML_POLICY = policy.default.clone(refold_source="none", linesep="\r\n")

# fmt: off
_HTML_TAGS = frozenset({
    "a", "b", "blockquote", "br", "caption", "code", "dd", "div", "dl", "dt", "em", "h1", "h2",
    "h3", "h4", "h5", "h6", "hr", "i", "li", "ol", "p", "pre", "s", "small", "span", "strong",
    "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul",
})
# Removed together with everything inside them. Any other tag not allowed above (img, input,
# link, meta, base, ...) is removed and only its text, if it has any, kept.
_HTML_DROPPED = frozenset({
    "applet", "audio", "button", "embed", "form", "frame", "frameset", "iframe", "math",
    "noembed", "noframes", "noscript", "object", "script", "select", "style", "svg", "template",
    "textarea", "title", "video",
})
# fmt: on

_HTML = nh3.Cleaner(
    tags=_HTML_TAGS,
    clean_content_tags=_HTML_DROPPED,
    # No style (overlays, CSS exfiltration), no class/id/name (page CSS, DOM clobbering), no
    # on* handlers, no src/background (remote content).
    attributes={
        "*": {"lang", "title"},
        "a": {"href"},
        "td": {"colspan", "rowspan"},
        "th": {"colspan", "rowspan"},
    },
    url_schemes={"http", "https", "mailto"},
    # A relative or protocol-relative link would point into the portal itself or elsewhere
    # without a visible scheme.
    url_relative="deny",
    link_rel="noopener noreferrer nofollow",
    strip_comments=True,
)


@dataclass(frozen=True)
class AttachmentInfo:
    index: int
    """0-based position among the message's attachments (walk order); used in download URLs."""
    name: str
    """Safe display and download name, never empty."""
    content_type: str
    """As declared, lowercased; for information only, never for serving."""
    size: int
    """Decoded bytes."""


@dataclass(frozen=True)
class MessageView:
    sender: str
    """The From header as written (name and address)."""
    sender_name: str
    """The display name of the first From address; empty when there is none."""
    to: str
    date: datetime | None
    subject: str
    message_id: str | None
    references: tuple[str, ...]
    reply_to: str | None
    from_address: str | None
    text: str | None
    html: Markup | None
    attachments: tuple[AttachmentInfo, ...]


def parse_message(raw: bytes) -> MessageView:
    """The page's view of a stored message; any bytes give a view."""
    msg, complete = _parse(raw)
    text, html, attachments = _contents(msg) if complete else _unparsed(raw)
    sender = _header(msg, "from")  # parsed once: three fields come from it
    references = message_ids(_raw_header(msg, "references"))
    references += message_ids(_raw_header(msg, "in-reply-to"))
    ids = message_ids(_raw_header(msg, "message-id"))
    return MessageView(
        sender=one_line(_shown(sender, _raw_header(msg, "from")), ADDRESS_LIMIT),
        sender_name=one_line(_display_name(sender), ADDRESS_LIMIT),
        to=one_line(_display(msg, "to"), ADDRESS_LIMIT),
        date=_date(msg),
        subject=one_line(_display(msg, "subject"), SUBJECT_LIMIT),
        message_id=ids[0] if ids else None,
        references=tuple(dict.fromkeys(references))[-KEPT_REFERENCES:],
        reply_to=_first_mailbox(msg, "reply-to"),
        from_address=_mailbox(sender),
        text=text,
        html=html,
        attachments=tuple(info for info, _ in attachments),
    )


def open_attachment(raw: bytes, index: int) -> tuple[AttachmentInfo, bytes]:
    """Attachment ``index`` as listed by parse_message, with its decoded bytes."""
    msg, complete = _parse(raw)
    _, _, attachments = _contents(msg) if complete else _unparsed(raw)
    for info, data in attachments:
        if info.index == index:
            return info, data
    raise LookupError(f"no attachment {index}")


def sanitize_html(html: str) -> Markup:
    """HTML that neither runs nor loads anything: formatting and plain links only."""
    # nh3 takes valid Unicode only; a lone surrogate would raise.
    clean = _HTML.clean(html.encode("utf-8", "replace").decode("utf-8"))
    return Markup(clean)  # noqa: S704 - nh3 output under the allow-list above


def one_line(value: str, limit: int) -> str:
    """Display text from a header: one line, no controls or bidi overrides, at most ``limit``."""
    text = " ".join(_unescape(value).translate(_INVISIBLE).split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def mime_type(value: str) -> str:
    """``type/subtype`` lowercased, without parameters; application/octet-stream unless it is
    two plain tokens."""
    value = value.partition(";")[0].strip().lower()
    return value if _MIME_TYPE.fullmatch(value) else "application/octet-stream"


def message_ids(value: str) -> list[str]:
    """The ``<id>`` tokens in a header value, restricted to printable ASCII."""
    return _MESSAGE_ID.findall(value)


def safe_filename(name: str | None, index: int) -> str:
    """A name to show and to offer for download: no path, no controls, no bidi overrides."""
    text = _PATH_SEPARATORS.split(name or "")[-1]
    text = " ".join(_unescape(text).translate(_INVISIBLE).split()).lstrip(". ")
    if len(text) > FILENAME_LIMIT:
        stem, dot, extension = text.rpartition(".")
        if dot and stem and len(extension) <= EXTENSION_LIMIT:
            stem = stem[: FILENAME_LIMIT - len(extension) - 1].rstrip()
            text = f"{stem}.{extension}"
        else:
            text = text[:FILENAME_LIMIT].rstrip()
    return text or f"attachment-{index + 1}"


def content_disposition(name: str) -> str:
    """A download header value: an ASCII fallback name, and the exact name per RFC 6266/5987."""
    fallback = (
        "".join("_" if not (" " <= c <= "~") or c in '"\\;%' else c for c in name) or "attachment"
    )
    # Unreserved plus RFC 5987 attr-char; everything else is percent-encoded UTF-8.
    encoded = urllib.parse.quote(name.encode("utf-8", "replace"), safe="!#$&+-.^_`|~")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


# --- parsing -------------------------------------------------------------------------------

_Attachment = tuple[AttachmentInfo, bytes]


def _parse(raw: bytes) -> tuple[Message, bool]:
    """The parsed message, and whether its body was parsed too."""
    parser = BytesParser(policy=_STRUCTURE)
    try:
        return parser.parsebytes(raw), True
    except Exception:  # RecursionError on deeply nested parts, among others: headers alone
        try:
            return parser.parsebytes(raw, headersonly=True), False
        except Exception:
            return Message(policy=_STRUCTURE), False


def _unparsed(raw: bytes) -> tuple[None, None, list[_Attachment]]:
    # A body the parser could not take apart is still the recipient's: offer it whole.
    info = AttachmentInfo(index=0, name="message.eml", content_type="message/rfc822", size=len(raw))
    return None, None, [(info, raw)]


def _contents(msg: Message) -> tuple[str | None, Markup | None, list[_Attachment]]:
    """The first inline text/plain and text/html parts, and everything else as attachments."""
    text: str | None = None
    html: Markup | None = None
    attachments: list[_Attachment] = []
    for part, content_type in _leaves(msg):
        name = _filename(part)
        if content_type.startswith("message/"):
            data = _serialise(part)
            if content_type in ("message/rfc822", "message/global"):
                # Named after its subject when unnamed; the extension opens it in a mail app.
                name = name or _inner_subject(part).replace("/", "_").replace("\\", "_")
                if not name.lower().endswith(".eml"):
                    name = f"{name or 'message'}.eml"
        else:
            inline = name is None and _disposition(part) != "attachment"
            if inline and content_type == "text/plain" and text is None:
                text = _decode(part).translate(_TEXT_CONTROLS)
                continue
            if inline and content_type == "text/html" and html is None:
                html = sanitize_html(_decode(part))
                continue
            data = _payload(part)
        index = len(attachments)
        info = AttachmentInfo(index, safe_filename(name, index), content_type, len(data))
        attachments.append((info, data))
    return text, html, attachments


def _leaves(msg: Message) -> Iterator[tuple[Message, str]]:
    """Parts that are not multipart containers, with their content type, in walk order, within
    the caps."""
    stack: list[tuple[Message, int]] = [(msg, 0)]
    seen = 0
    while stack and seen < MAX_PARTS:
        part, depth = stack.pop()
        seen += 1
        content_type = _content_type(part)
        if content_type.startswith("multipart/"):
            if depth < MAX_DEPTH:
                stack.extend((child, depth + 1) for child in reversed(_children(part)))
            continue
        yield part, content_type


def _children(part: Message) -> list[Message]:
    payload = part.get_payload()
    if not isinstance(payload, list):
        return []  # a multipart without a usable boundary: nothing to show
    return [child for child in payload if isinstance(child, Message)]


def _content_type(part: Message) -> str:
    try:
        return mime_type(part.get_content_type())
    except Exception:
        return "application/octet-stream"


def _disposition(part: Message) -> str | None:
    try:
        return part.get_content_disposition()
    except Exception:
        return None


def _filename(part: Message) -> str | None:
    """The declared name, RFC 2231 and encoded words (also inside quotes) decoded."""
    for name, parameter in (("content-disposition", "filename"), ("content-type", "name")):
        if "name" not in _raw_header(part, name).lower():
            continue  # no name to find: spare the (costly) structured parse
        header = _header(part, name)
        if isinstance(header, ParameterizedMIMEHeader):
            value = header.params.get(parameter)
            if isinstance(value, str):
                if "=?" in value:
                    value = _header_text("subject", value) or value
                return value
    return None


def _payload(part: Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:
        return b""
    return data if isinstance(data, bytes) else b""


def _decode(part: Message) -> str:
    data = _payload(part)
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    if charset in (None, "us-ascii", "ascii"):
        charset = "utf-8"  # ASCII is a subset; undeclared 8-bit text is most often UTF-8
    try:
        text = data.decode(charset, "replace")
    except Exception:  # unknown charsets, and codecs that are not text codecs or refuse "replace"
        text = data.decode("utf-8", "replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _serialise(part: Message) -> bytes:
    """The content of a message/* part, as bytes (an .eml file for message/rfc822)."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        return _payload(part)
    try:
        return b"".join(
            inner.as_bytes(policy=_EML_POLICY) for inner in payload if isinstance(inner, Message)
        )
    except Exception:  # RecursionError on deep nesting, or a generator error on odd content
        return b""


def _inner_subject(part: Message) -> str:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return one_line(_display(payload[0], "subject"), FILENAME_LIMIT)
    return ""


# --- headers -------------------------------------------------------------------------------


def _raw_header(msg: Message, name: str) -> str:
    """The first ``name`` header as received (folded, undecoded), or ""."""
    for key, value in msg.raw_items():
        if key.lower() == name:
            return str(value)
    return ""


def _header(msg: Message, name: str) -> BaseHeader | None:
    """The first ``name`` header, parsed by policy.default's header classes, or None."""
    raw = _raw_header(msg, name)
    if not raw:
        return None
    try:
        return _HEADERS(name, "".join(raw.splitlines()))
    except Exception:
        return None


def _header_text(name: str, value: str) -> str | None:
    try:
        return str(_HEADERS(name, "".join(value.splitlines())))
    except Exception:
        return None


def _display(msg: Message, name: str) -> str:
    """The decoded value of the first ``name`` header; the raw value if it does not parse."""
    raw = _raw_header(msg, name)
    if not raw:
        return ""
    decoded = _header_text(name, raw)
    return raw if decoded is None else decoded


def _shown(header: BaseHeader | None, raw: str) -> str:
    """A parsed header's decoded text; the raw value if it did not parse."""
    return str(header) if header is not None else raw


def _display_name(header: BaseHeader | None) -> str:
    if not isinstance(header, AddressHeader) or not header.addresses:
        return ""
    return str(header.addresses[0].display_name or "")


def _first_mailbox(msg: Message, name: str) -> str | None:
    return _mailbox(_header(msg, name))


def _mailbox(header: BaseHeader | None) -> str | None:
    """The addr-spec of the header's first address, if it is a mailbox sigillo can mail."""
    if not isinstance(header, AddressHeader) or not header.addresses:
        return None
    try:
        local, domain = split_mailbox(header.addresses[0].addr_spec)
    except Exception:  # AddressError; UnicodeError from raw 8-bit bytes kept as surrogates
        return None
    return f"{local}@{domain}"


def _date(msg: Message) -> datetime | None:
    header = _header(msg, "date")
    value = header.datetime if isinstance(header, DateHeader) else None
    if value is None:
        return None
    # "-0000" means an unknown zone (RFC 5322 3.3); the instant is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _unescape(value: str) -> str:
    """The parser keeps raw 8-bit header bytes as surrogate escapes; read them as UTF-8."""
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = value.encode("utf-8", "replace")
    return data.decode("utf-8", "replace")
