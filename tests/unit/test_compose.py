"""Portal replies: threaded, one header per line whatever the recipient typed or uploaded."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sigillo.portal.compose import Upload, build_copy, build_reply

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
LONG_ID = "<" + "A1b2" * 25 + "@DM6PR11MB0000.namprd11.prod.outlook.example>"


def reply(
    *,
    subject: str = "Lab results",
    in_reply_to: str | None = "<m2@org.example>",
    references: Sequence[str] = ("<m1@org.example>",),
    body: str = "Thank you.",
    attachments: Sequence[Upload] = (),
    author: str = "anna@home.example",
    to: str = "desk@org.example",
) -> EmailMessage:
    return build_reply(
        author=author,
        to=to,
        subject=subject,
        in_reply_to=in_reply_to,
        references=references,
        body=body,
        attachments=attachments,
        hostname="sigillo.org.example",
        now=NOW,
    )


def wire(msg: EmailMessage) -> EmailMessage:
    """What the relay gets, read back by the stdlib."""
    raw = msg.as_bytes()
    assert re.search(rb"(?<!\r)\n", raw) is None  # CR LF only
    assert max(raw) < 0x80  # 7-bit clean
    parsed = message_from_bytes(raw, policy=default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def header_names(msg: EmailMessage) -> list[str]:
    return [name.lower() for name in msg]


def test_reply_headers_and_body() -> None:
    msg = wire(reply(body="Thank you.\r\nSee you on\rMonday — Anna"))
    assert header_names(msg) == [
        "from",
        "to",
        "date",
        "message-id",
        "subject",
        "in-reply-to",
        "references",
        "content-type",
        "content-transfer-encoding",
        "mime-version",
    ]
    assert msg["From"] == "anna@home.example"
    assert msg["To"] == "desk@org.example"
    assert msg["Date"].datetime == NOW
    assert re.fullmatch(r"<[^<>@\s]+@sigillo\.org\.example>", msg["Message-ID"])
    assert msg["Subject"] == "Re: Lab results"
    assert msg["In-Reply-To"] == "<m2@org.example>"
    assert msg["References"] == "<m1@org.example> <m2@org.example>"
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "utf-8"
    assert msg.get_content() == "Thank you.\r\nSee you on\r\nMonday — Anna\r\n"


def test_each_reply_has_its_own_message_id() -> None:
    assert reply()["Message-ID"] != reply()["Message-ID"]


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Lab results", "Re: Lab results"),
        ("Re: Lab results", "Re: Lab results"),
        ("RE:Lab results", "RE:Lab results"),
        ("re: x", "re: x"),
        ("Reply needed", "Re: Reply needed"),
        ("  Spaced \t out  ", "Re: Spaced out"),
        ("", "Re:"),
        ("Résultats d’analyse", "Re: Résultats d’analyse"),
    ],
)
def test_subject(subject: str, expected: str) -> None:
    assert wire(reply(subject=subject))["Subject"] == expected


def test_threading_without_a_parent() -> None:
    msg = wire(reply(in_reply_to=None, references=()))
    assert msg["In-Reply-To"] is None
    assert msg["References"] is None


def test_references_are_deduplicated_and_capped() -> None:
    refs = [f"<r{n}@org.example>" for n in range(30)] + ["<r3@org.example>", "<r29@org.example>"]
    msg = wire(reply(references=refs, in_reply_to="<r5@org.example>"))
    # The parent is the last id even when it also appears earlier.
    expected = [f"<r{n}@org.example>" for n in range(11, 30)] + ["<r5@org.example>"]
    assert msg["References"].split() == expected


def test_parent_stays_last_in_references() -> None:
    refs = [f"<r{n}@org.example>" for n in range(25)]
    msg = wire(reply(references=refs, in_reply_to="<parent@org.example>"))
    ids = msg["References"].split()
    assert len(ids) == 20
    assert ids[-1] == "<parent@org.example>"
    assert ids[0] == "<r6@org.example>"


def test_long_message_ids_are_not_encoded() -> None:
    raw = reply(in_reply_to=LONG_ID, references=[LONG_ID.replace("A1", "Z9")]).as_bytes()
    assert b"=?" not in raw
    msg = wire(reply(in_reply_to=LONG_ID, references=[LONG_ID.replace("A1", "Z9")]))
    assert msg["In-Reply-To"] == LONG_ID
    assert msg["References"].split() == [LONG_ID.replace("A1", "Z9"), LONG_ID]
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


@pytest.mark.parametrize(
    "bad",
    [
        "<a@x>\r\nBcc: evil@x.example",
        "<a@x>\nBcc: evil@x.example",
        "no-brackets@x",
        "<two@x> <ids@x>",
        "<sp ace@x>",
        "<a@x>\x00",
        "",
    ],
)
def test_unusable_ids_are_dropped(bad: str) -> None:
    msg = wire(reply(in_reply_to=bad, references=[bad, "<ok@org.example>"]))
    assert msg["Bcc"] is None
    assert msg["In-Reply-To"] is None
    assert msg["References"] == "<ok@org.example>"


INJECTION_SUBJECTS = [
    "Results\r\nBcc: evil@x.example",
    "Results\nBcc: evil@x.example",
    "Results\rBcc: evil@x.example",
    "Results\x85Bcc: evil@x.example",
    "Results\u2028Bcc: evil@x.example",
    "=?utf-8?q?Results=0D=0ABcc:_evil@x.example?=",
    "=?utf-8?b?UmVzdWx0cw0KQmNjOiBldmlsQHguZXhhbXBsZQ==?=",
    "ok =?utf-8?q?=0D=0A?=Bcc: evil@x.example",
]


@pytest.mark.parametrize("subject", INJECTION_SUBJECTS)
def test_subject_cannot_add_a_header(subject: str) -> None:
    msg = wire(reply(subject=subject))
    assert msg["Bcc"] is None
    assert "bcc" not in header_names(msg)
    assert "\n" not in msg["Subject"]
    assert "\r" not in msg["Subject"]
    assert msg["Subject"].startswith("Re: ")


@pytest.mark.parametrize(
    "filename",
    [
        "x.pdf\r\nBcc: evil@x.example",
        'x.pdf"\r\nBcc: evil@x.example\r\nX: "',
        "=?utf-8?q?x.pdf=0D=0ABcc:_evil@x.example?=",
        "=?utf-8?q?x=22=0D=0ABcc:_evil@x.example?=.pdf",
        'a"; filename="evil.exe',
    ],
)
def test_filename_cannot_add_a_header(filename: str) -> None:
    msg = wire(reply(attachments=[Upload(filename, "application/pdf", b"%PDF")]))
    assert msg["Bcc"] is None
    parts = list(msg.iter_attachments())
    assert len(parts) == 1
    assert header_names(parts[0]) == [
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "mime-version",
    ]
    name = parts[0].get_filename()
    assert name is not None
    assert "\r" not in name
    assert "\n" not in name
    assert parts[0].get_content() == b"%PDF"


@pytest.mark.parametrize(
    "address",
    [
        "anna@home.example\r\nBcc: evil@x.example",
        "anna@home.example\nBcc: evil@x.example",
        "=?utf-8?q?a=0D=0ABcc:_evil@x.example?= <anna@home.example>",
        "anna@home.example, evil@x.example",
        "anna@home.example\x00",
        "not an address",
        "",
        "anna@localhost",
    ],
)
def test_addresses_must_be_one_clean_mailbox(address: str) -> None:
    with pytest.raises(ValueError):
        reply(author=address)
    with pytest.raises(ValueError):
        reply(to=address)


def test_attachments_round_trip() -> None:
    uploads = [
        Upload("../../etc/report.pdf", "application/PDF", b"%PDF-1.7\x00\xff"),
        Upload("..\\..\\boot.ini", "text/plain; charset=utf-8", b"[boot]\r\n\xff"),
        Upload("photo\u202egpj.exe", "image/jpeg", b"\xff\xd8\xff"),
        Upload("", "not a type", b"x"),
        Upload("forward.eml", "message/rfc822", b"Subject: x\r\n\r\nbody"),
        Upload("parts", "multipart/mixed", b"--b--"),
        Upload("é" * 300 + ".docx", "application/msword", b"d" * 100_000),
    ]
    msg = wire(reply(attachments=uploads))
    assert msg.get_content_type() == "multipart/mixed"
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    assert body.get_content() == "Thank you.\r\n"
    parts = list(msg.iter_attachments())
    assert [(p.get_filename(), p.get_content_type()) for p in parts] == [
        ("report.pdf", "application/pdf"),
        ("boot.ini", "text/plain"),
        ("photogpj.exe", "image/jpeg"),
        ("attachment-4", "application/octet-stream"),
        ("forward.eml", "application/octet-stream"),
        ("parts", "application/octet-stream"),
        ("é" * 115 + ".docx", "application/msword"),
    ]
    assert [p.get_payload(decode=True) for p in parts] == [u.data for u in uploads]


def test_copy_for_the_author() -> None:
    original = reply(
        subject="Lab results",
        body="Thank you.\nAnna",
        attachments=[Upload("scan.pdf", "application/pdf", b"%PDF-scan")],
    )
    copy = build_copy(
        original,
        sender="secure@org.example",
        recipient="anna@home.example",
        note="This is a copy of the reply you sent.",
        hostname="sigillo.org.example",
        now=NOW,
    )
    msg = wire(copy)
    assert msg["From"] == "secure@org.example"
    assert msg["To"] == "anna@home.example"
    assert msg["Date"].datetime == NOW
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Subject"] == "Copy of your reply: Re: Lab results"
    assert msg["Message-ID"] != original["Message-ID"]
    assert msg["In-Reply-To"] is None
    assert msg["References"] is None
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    assert body.get_content() == (
        "This is a copy of the reply you sent.\r\n\r\nThank you.\r\nAnna\r\n"
    )
    parts = list(msg.iter_attachments())
    assert [
        (p.get_filename(), p.get_content_type(), p.get_payload(decode=True)) for p in parts
    ] == [("scan.pdf", "application/pdf", b"%PDF-scan")]


def test_copy_of_a_hostile_reply_stays_one_header_per_line() -> None:
    original = reply(
        subject="=?utf-8?q?x=0D=0ABcc:_evil@x.example?=",
        attachments=[Upload("=?utf-8?q?a=0D=0AX-Evil:_1?=.txt", "text/plain", b"t")],
    )
    msg = wire(
        build_copy(
            original,
            sender="Sigillo <secure@org.example>",
            recipient="anna@home.example",
            note="Copy.",
            hostname="sigillo.org.example",
            now=NOW,
        )
    )
    assert msg["Bcc"] is None
    assert msg["From"].addresses[0].addr_spec == "secure@org.example"
    part = next(msg.iter_attachments())
    assert "x-evil" not in header_names(part)
    assert part.get_payload(decode=True) == b"t"


def test_copy_sender_and_recipient_are_checked() -> None:
    with pytest.raises(ValueError):
        build_copy(
            reply(),
            sender="secure@org.example",
            recipient="anna@home.example\r\nBcc: evil@x.example",
            note="",
            hostname="sigillo.org.example",
            now=NOW,
        )


PIECES = ["a", "é", " ", "\r", "\n", "\t", "\x00", "\x85", "\u2028", ":", '"', ";", "\\", "/"]
PIECES += ["=?utf-8?q?", "=?utf-8?b?", "=0D=0A", "DQo=", "?=", "Bcc: x@y.example", "<a@b>"]
HEADERISH = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)


@settings(max_examples=200, deadline=None)
@given(
    subject=HEADERISH,
    parent=HEADERISH,
    refs=st.lists(HEADERISH, max_size=3),
    filename=HEADERISH,
    content_type=HEADERISH,
    body=st.text(max_size=50),
)
def test_no_input_adds_a_header(
    subject: str, parent: str, refs: list[str], filename: str, content_type: str, body: str
) -> None:
    msg = wire(
        reply(
            subject=subject,
            in_reply_to=parent,
            references=refs,
            body=body,
            attachments=[Upload(filename, content_type, b"x")],
        )
    )
    assert set(header_names(msg)) <= {
        "from",
        "to",
        "date",
        "message-id",
        "subject",
        "in-reply-to",
        "references",
        "content-type",
        "mime-version",
    }
    assert not msg.defects
    part = next(msg.iter_attachments())
    assert header_names(part) == [
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "mime-version",
    ]
    assert part.get_payload(decode=True) == b"x"
