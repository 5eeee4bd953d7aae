"""DSNs: RFC 3464 structure, what leaves the gateway about the original, and hostile input."""

from __future__ import annotations

import email
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage, Message
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sigillo.gateway.dsn import (
    DIAGNOSTIC_LIMIT,
    Action,
    FailedRecipient,
    build_dsn,
    dsn_bytes,
)

T0 = datetime(2026, 3, 1, 9, 30, 0, tzinfo=UTC)
ARRIVAL = T0 - timedelta(days=5)
SECRET = b"Diagnosis: the patient's biopsy came back malignant (BODY-SENTINEL-7f3a9c)"
SENTINEL = b"BODY-SENTINEL-7f3a9c"

ORIGINAL = (
    b"Return-Path: <staff@org.example>\r\n"
    b"From: Dr Rossi <staff@org.example>\r\n"
    b"To: patient@example.net\r\n"
    b"Subject: Your results\r\n"
    b"Message-ID: <abc123@org.example>\r\n"
    b"Date: Sun, 22 Feb 2026 10:00:00 +0100\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n" + SECRET + b"\r\n"
)

BOUNCE = FailedRecipient(
    address="patient@example.net",
    status="5.1.1",
    action="failed",
    diagnostic="550 5.1.1 <patient@example.net>: Recipient address rejected: User unknown",
    remote_mta="mx1.example.net",
    last_attempt=T0 - timedelta(minutes=1),
)
EXPIRED = FailedRecipient(
    address="other@example.org",
    status="4.4.7",
    action="failed",
    diagnostic="421 4.7.0 Try again later",
    remote_mta="mx.example.org",
    last_attempt=T0 - timedelta(hours=1),
)
DELAYED = FailedRecipient(
    address="slow@example.com",
    status="4.4.1",
    action="delayed",
    diagnostic=None,
    remote_mta=None,
    last_attempt=None,
)


def make(**overrides: Any) -> EmailMessage:
    kwargs: dict[str, Any] = {
        "original": ORIGINAL,
        "envelope_from": "staff@org.example",
        "reporting_mta": "gw.org.example",
        "postmaster": "MAILER-DAEMON@gw.org.example",
        "recipients": [BOUNCE],
        "arrival": ARRIVAL,
        "now": T0,
    }
    kwargs.update(overrides)
    return build_dsn(**kwargs)


def reparse(msg: EmailMessage) -> EmailMessage:
    parsed = email.message_from_bytes(dsn_bytes(msg), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def parts(msg: Message) -> list[Message]:
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return [p for p in payload if isinstance(p, Message)]


def content(part: Message) -> str:
    """Decoded text of a part, with the wire's CRLF as plain newlines."""
    assert isinstance(part, EmailMessage)
    text = part.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def words(part: Message) -> str:
    """The text with wrapping undone, for phrases that may span lines."""
    return " ".join(content(part).split())


def status_blocks(msg: EmailMessage) -> list[dict[str, str]]:
    """The delivery-status part as the email package parses it: one header block each."""
    return [dict(block.items()) for block in parts(parts(msg)[1])]


def section(raw: bytes, content_type: bytes) -> bytes:
    """The raw bytes of the part with ``content_type``, between its headers and the boundary."""
    start = raw.index(b"Content-Type: " + content_type)
    body = raw.index(b"\r\n\r\n", start) + 4
    end = raw.index(b"\r\n--", body)
    return raw[body:end]


# --- structure ---------------------------------------------------------------------------


def test_is_a_three_part_delivery_status_report() -> None:
    msg = reparse(make())
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts(msg)] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert msg["MIME-Version"] == "1.0"


def test_top_level_headers() -> None:
    msg = reparse(make())
    assert msg["To"].addresses[0].addr_spec == "staff@org.example"
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@gw.org.example"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Date"].datetime == T0
    assert re.fullmatch(r"<[^<>@\s]+@gw\.org\.example>", msg["Message-ID"])


def test_message_ids_are_fresh() -> None:
    assert make()["Message-ID"] != make()["Message-ID"]


def test_subject_says_delayed_only_when_every_recipient_is_delayed() -> None:
    assert make(recipients=[DELAYED])["Subject"] == "Delayed Mail (still being retried)"
    assert make(recipients=[DELAYED, BOUNCE])["Subject"] == "Undelivered Mail Returned to Sender"


def test_wire_form_uses_crlf_only() -> None:
    raw = dsn_bytes(make(recipients=[BOUNCE, EXPIRED, DELAYED], envid="ENV-1"))
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


# --- the human-readable part -------------------------------------------------------------


def test_explanation_names_each_recipient_and_reason() -> None:
    text = words(parts(reparse(make(recipients=[BOUNCE, EXPIRED])))[0])
    assert "NOT be delivered" in text
    assert "patient@example.net" in text
    assert "User unknown" in text
    assert "other@example.org" in text
    assert "queue lifetime" in text
    assert "Subject: Your results" in text


def test_explanation_for_a_delay_says_it_is_still_trying() -> None:
    text = words(parts(reparse(make(recipients=[DELAYED])))[0])
    assert "NOT been delivered yet" in text
    assert "still trying" in text
    assert "slow@example.com" in text


def test_explanation_strips_invisible_and_direction_changing_characters() -> None:
    sneaky = replace(BOUNCE, diagnostic="550 user \u202egnp.exe\u202c unknown\x1b[31m\x00")
    text = words(parts(reparse(make(recipients=[sneaky])))[0])
    assert "\u202e" not in text
    assert "\x1b" not in text
    assert "\x00" not in text
    assert "550 user gnp.exe unknown [31m" in text


# --- the delivery-status part ------------------------------------------------------------


def test_per_message_and_per_recipient_fields() -> None:
    blocks = status_blocks(reparse(make(recipients=[BOUNCE, DELAYED], envid="QQ314159")))
    assert blocks == [
        {
            "Reporting-MTA": "dns; gw.org.example",
            "Original-Envelope-Id": "QQ314159",
            "Arrival-Date": "Tue, 24 Feb 2026 09:30:00 +0000",
        },
        {
            "Final-Recipient": "rfc822; patient@example.net",
            "Action": "failed",
            "Status": "5.1.1",
            "Remote-MTA": "dns; mx1.example.net",
            "Diagnostic-Code": (
                "smtp; 550 5.1.1 <patient@example.net>: Recipient address rejected: User unknown"
            ),
            "Last-Attempt-Date": "Sun, 01 Mar 2026 09:29:00 +0000",
        },
        {"Final-Recipient": "rfc822; slow@example.com", "Action": "delayed", "Status": "4.4.1"},
    ]


def test_delivery_status_bytes_are_header_blocks_separated_by_one_empty_line() -> None:
    raw = dsn_bytes(make(recipients=[BOUNCE, EXPIRED]))
    body = section(raw, b"message/delivery-status")
    blocks = body.split(b"\r\n\r\n")
    assert len(blocks) == 3
    assert blocks[0].startswith(b"Reporting-MTA: dns; gw.org.example\r\n")
    assert blocks[1].startswith(b"Final-Recipient: rfc822; patient@example.net\r\n")
    assert blocks[2].startswith(b"Final-Recipient: rfc822; other@example.org\r\n")
    assert blocks[2].endswith(b"Last-Attempt-Date: Sun, 01 Mar 2026 08:30:00 +0000\r\n")
    assert all(re.match(rb"[A-Za-z-]+: |\s", line) for line in body.split(b"\r\n") if line)


def test_expiry_keeps_its_4xx_status_with_action_failed() -> None:
    blocks = status_blocks(reparse(make(recipients=[EXPIRED])))
    assert (blocks[1]["Action"], blocks[1]["Status"]) == ("failed", "4.4.7")


def test_long_diagnostic_is_folded_not_encoded_and_capped() -> None:
    long = "550 5.7.1 " + " ".join(["blocked"] * 400) + " " + "x" * 3000
    raw = dsn_bytes(make(recipients=[replace(BOUNCE, diagnostic=long)]))
    body = section(raw, b"message/delivery-status")
    assert b"=?" not in body
    assert max(len(line) for line in body.split(b"\r\n")) <= 998
    field = status_blocks(reparse(make(recipients=[replace(BOUNCE, diagnostic=long)])))[1]
    diagnostic = field["Diagnostic-Code"].removeprefix("smtp; ")
    assert diagnostic.startswith("550 5.7.1 blocked blocked")
    assert len(diagnostic) <= DIAGNOSTIC_LIMIT + 2  # a word over 900 characters gains a space


def test_optional_fields_are_absent_when_unknown() -> None:
    blocks = status_blocks(reparse(make(recipients=[DELAYED])))
    assert "Original-Envelope-Id" not in blocks[0]
    assert set(blocks[1]) == {"Final-Recipient", "Action", "Status"}


@pytest.mark.parametrize(
    ("status", "action", "expected"),
    [
        ("9.9.9", "failed", "5.0.0"),
        ("5.1.1 ", "failed", "5.1.1"),
        ("2.0.0", "failed", "5.0.0"),
        ("5.1.1", "delayed", "4.0.0"),
        ("", "delayed", "4.0.0"),
        ("5.1.1\r\nX: y", "failed", "5.0.0"),
        ("5.\u0661.\u0661", "failed", "5.0.0"),  # Arabic-Indic digits are digits, not ASCII
    ],
)
def test_status_from_the_network_is_normalised(status: str, action: Action, expected: str) -> None:
    recipient = replace(BOUNCE, status=status, action=action)
    assert status_blocks(reparse(make(recipients=[recipient])))[1]["Status"] == expected


def test_non_ascii_recipient_uses_the_rfc6533_utf8_type() -> None:
    recipient = replace(BOUNCE, address="jürgen+x@exämple.de")
    block = status_blocks(reparse(make(recipients=[recipient])))[1]
    assert block["Final-Recipient"] == r"utf-8; j\x{FC}rgen\x{2B}x@ex\x{E4}mple.de"
    assert "jürgen+x@exämple.de" in words(parts(reparse(make(recipients=[recipient])))[0])


def test_non_ascii_sender_is_written_raw_for_smtputf8() -> None:
    raw = dsn_bytes(make(envelope_from="chiara@università.example"))
    assert b"To: chiara@universit\xc3\xa0.example\r\n" in raw
    assert reparse(make(envelope_from="chiara@università.example"))["To"] == (
        "chiara@università.example"
    )


# --- what is returned of the original ----------------------------------------------------


def test_by_default_only_the_header_section_is_returned() -> None:
    msg = make()
    raw = dsn_bytes(msg)
    assert SENTINEL not in raw
    third = parts(reparse(msg))[2]
    assert third.get_content_type() == "text/rfc822-headers"
    headers = content(third)
    assert "Subject: Your results\n" in headers
    assert "Message-ID: <abc123@org.example>\n" in headers
    assert "SENTINEL" not in headers
    assert "biopsy" not in raw.decode("ascii")


def test_include_content_returns_the_whole_message() -> None:
    msg = reparse(make(include_content=True))
    third = parts(msg)[2]
    assert isinstance(third, EmailMessage)
    assert third.get_content_type() == "message/rfc822"
    embedded = third.get_content()
    assert embedded["Subject"] == "Your results"
    assert SENTINEL.decode() in embedded.get_content()
    assert "your message itself is not attached" not in words(parts(msg)[0])


def test_by_default_the_sender_is_told_why_the_content_is_missing() -> None:
    assert "your message itself is not attached" in words(parts(reparse(make()))[0])


WEIRD_ORIGINALS = {
    "empty": b"",
    "lf": b"Subject: lf\nFrom: a@b.example\n\nbody " + SENTINEL + b"\n",
    "crlf_no_trailing_newline": b"Subject: x\r\n\r\n" + SENTINEL,
    "lone_cr": b"Subject: cr\rFrom: a@b.example\r\r" + SENTINEL + b"\r",
    "no_blank_line": b"Subject: no separator\nFrom: a@b.example\nDear patient, " + SENTINEL,
    "headers_only": b"Subject: only headers\r\nFrom: a@b.example",
    "eight_bit_headers": (
        b"Subject: r\xc3\xa9sultats \xff\xfe\r\nFrom: J\xe9r\xf4me <j@b.example>\r\n\r\n" + SENTINEL
    ),
    "malformed_first_line": b"this is not a header\r\nSubject: x\r\n\r\n" + SENTINEL,
    "continuation_first": b" folded\r\nSubject: x\r\n\r\n" + SENTINEL,
    "mbox_from_line": b"From staff@org.example Mon Jan  1 00:00:00 2026\nSubject: x\n\n" + SENTINEL,
    "whitespace_line_separator": b"Subject: x\r\n \r\n" + SENTINEL,
    "nul_and_controls": b"Subject: a\x00b\x1bc\r\nX-\x7f: y\r\n\r\n" + SENTINEL,
    "long_header": b"X-Long: " + b"a" * 5000 + b"\r\n\r\n" + SENTINEL,
    "encoded_words": b"Subject: =?utf-8?b?w6k=?= =?bogus?q?x?= =?utf-8?q?=ZZ?=\r\n\r\n" + SENTINEL,
    "broken_multipart": (
        b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n"
        b"\r\n" + SENTINEL + b"\r\n--z"
    ),
    "binary": bytes(range(256)) + SENTINEL,
}


@pytest.mark.parametrize("name", sorted(WEIRD_ORIGINALS))
def test_weird_originals_never_raise_nor_leak_the_body(name: str) -> None:
    original = WEIRD_ORIGINALS[name]
    msg = make(original=original)
    raw = dsn_bytes(msg)
    assert SENTINEL not in raw
    parsed = reparse(msg)
    assert [p.get_content_type() for p in parts(parsed)][2] == "text/rfc822-headers"
    assert SENTINEL.decode() not in content(parts(parsed)[2])


@pytest.mark.parametrize(
    "original",
    [ORIGINAL, WEIRD_ORIGINALS["eight_bit_headers"], WEIRD_ORIGINALS["long_header"]],
)
def test_include_content_returns_the_original_bytes_unchanged(original: bytes) -> None:
    raw = dsn_bytes(make(original=original, include_content=True))
    assert section(raw, b"message/rfc822") == original


def test_include_content_makes_line_endings_crlf() -> None:
    original = WEIRD_ORIGINALS["lf"]
    raw = dsn_bytes(make(original=original, include_content=True))
    assert section(raw, b"message/rfc822").rstrip(b"\r\n") == original.replace(
        b"\n", b"\r\n"
    ).rstrip(b"\r\n")


@pytest.mark.parametrize("name", sorted(WEIRD_ORIGINALS))
def test_weird_originals_can_be_returned_whole(name: str) -> None:
    msg = make(original=WEIRD_ORIGINALS[name], include_content=True)
    parsed = reparse(msg)
    third = parts(parsed)[2]
    assert third.get_content_type() == "message/rfc822"
    assert third["Content-Transfer-Encoding"] in ("7bit", "8bit", "binary")
    assert isinstance(msg.as_string(), str)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lf", "Subject: lf\nFrom: a@b.example\n"),
        ("lone_cr", "Subject: cr\nFrom: a@b.example\n"),
        ("no_blank_line", "Subject: no separator\nFrom: a@b.example\n"),
        ("headers_only", "Subject: only headers\nFrom: a@b.example\n"),
        (
            "eight_bit_headers",
            "Subject: résultats \ufffd\ufffd\nFrom: J\ufffdr\ufffdme <j@b.example>\n",
        ),
        ("malformed_first_line", ""),
        ("continuation_first", ""),
        ("mbox_from_line", ""),
        ("whitespace_line_separator", "Subject: x\n"),
        ("nul_and_controls", "Subject: a\ufffdb\ufffdc\n"),  # DEL is no field-name character
        ("empty", ""),
    ],
)
def test_header_section_extraction(name: str, expected: str) -> None:
    third = parts(reparse(make(original=WEIRD_ORIGINALS[name])))[2]
    assert content(third).rstrip("\n") == expected.rstrip("\n")


def test_returned_headers_are_capped() -> None:
    original = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 70) for i in range(5000)) + b"\r\n"
    headers = content(parts(reparse(make(original=original)))[2])
    assert 60_000 < len(headers.encode()) <= 64 * 1024


# --- header injection --------------------------------------------------------------------

INJECTION = "\r\nBcc: attacker@evil.example\r\nSubject: pwned\r\n\r\n--boundary\r\nowned"


def test_injection_through_every_network_value_is_neutralised() -> None:
    hostile = FailedRecipient(
        address="patient@example.net" + INJECTION,
        status="5.1.1" + INJECTION,
        action="failed",
        diagnostic="550 no" + INJECTION + "\n\u2028X-Evil: 1\x85Y-Evil: 2",
        remote_mta="mx.example.net" + INJECTION,
        last_attempt=T0,
    )
    msg = make(
        recipients=[hostile],
        envid="ENV" + INJECTION,
    )
    raw = dsn_bytes(msg)
    lines = raw.split(b"\r\n")
    assert not any(
        line.startswith((b"Bcc:", b"Subject: pwned", b"X-Evil", b"Y-Evil")) for line in lines
    )
    assert not any(line == b"--boundary" for line in lines)
    parsed = reparse(msg)
    assert "Bcc" not in parsed
    assert parsed.get_all("Subject") == ["Undelivered Mail Returned to Sender"]
    assert len(parsed["To"].addresses) == 1
    assert len(parts(parsed)) == 3
    blocks = status_blocks(parsed)
    assert len(blocks) == 2
    assert set(blocks[0]) == {"Reporting-MTA", "Original-Envelope-Id", "Arrival-Date"}
    assert set(blocks[1]) == {
        "Final-Recipient",
        "Action",
        "Status",
        "Remote-MTA",
        "Diagnostic-Code",
        "Last-Attempt-Date",
    }
    assert blocks[1]["Status"] == "5.0.0"
    assert blocks[1]["Diagnostic-Code"].startswith("smtp; 550 no Bcc: attacker@evil.example")


def test_comma_in_sender_cannot_add_a_recipient() -> None:
    parsed = reparse(make(envelope_from='"a@x.example, evil@evil.example"@org.example'))
    assert len(parsed["To"].addresses) == 1
    assert parsed["To"].addresses[0].domain == "org.example"


# --- caller mistakes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"recipients": []},
        {"envelope_from": ""},
        {"envelope_from": "<>"},
        {"envelope_from": "no-at-sign"},
        {"envelope_from": "a@bad domain"},
        {"envelope_from": "staff@org.example\r\nBcc: attacker@evil.example"},
        {"reporting_mta": "bad host\r\nX: y"},
        {"postmaster": "postmaster"},
        {"arrival": datetime(2026, 1, 1)},
        {"now": datetime(2026, 1, 1)},
        {"recipients": [replace(BOUNCE, last_attempt=datetime(2026, 1, 1))]},
        {"recipients": [replace(BOUNCE, action="delivered")]},  # type: ignore[arg-type]
    ],
)
def test_caller_mistakes_raise_value_error(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make(**overrides)


def test_non_utc_times_are_written_in_utc() -> None:
    cet = timezone(timedelta(hours=1))
    blocks = status_blocks(reparse(make(arrival=ARRIVAL.astimezone(cet))))
    assert blocks[0]["Arrival-Date"] == "Tue, 24 Feb 2026 09:30:00 +0000"


# --- properties --------------------------------------------------------------------------

header_like = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from(
            [
                b"Subject: hello",
                b"From: a@b.example",
                b" continued",
                b"\tcontinued",
                b"X-8bit: \xc3\xa9\xff",
                b"Content-Type: multipart/mixed; boundary=b",
                b"--b",
                b"no colon here",
                b"=?utf-8?q?=C3=A9?=",
                b"",
            ]
        ),
    ),
    max_size=12,
).map(lambda lines: b"\r\n".join(lines))
any_text = st.characters(exclude_categories=())
"""Every code point, lone surrogates included: a reply may be decoded with surrogateescape."""
separators = st.sampled_from(
    [b"\r\n\r\n", b"\n\n", b"\r\r", b"\r\n\n", b"\n \n", b"\nNot a header "]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    head=st.one_of(st.binary(max_size=300), header_like),
    separator=separators,
    body=st.binary(max_size=200),
    diagnostic=st.one_of(st.none(), st.text(any_text, max_size=2000)),
    address=st.text(any_text, max_size=100),
    remote_mta=st.one_of(st.none(), st.text(any_text, max_size=60)),
)
def test_never_raises_and_never_returns_the_body(
    head: bytes,
    separator: bytes,
    body: bytes,
    diagnostic: str | None,
    address: str,
    remote_mta: str | None,
) -> None:
    assume(SENTINEL not in head)
    assume(SENTINEL.decode() not in (diagnostic or "") + address + (remote_mta or ""))
    recipient = replace(BOUNCE, address=address, diagnostic=diagnostic, remote_mta=remote_mta)
    msg = make(original=head + separator + body + SENTINEL + body, recipients=[recipient])
    raw = dsn_bytes(msg)
    assert SENTINEL not in raw
    parsed = reparse(msg)
    human, _, headers = parts(parsed)
    assert SENTINEL.decode() not in content(human)
    assert SENTINEL.decode() not in content(headers)
    assert len(status_blocks(parsed)) == 2
    assert parsed.get_all("Subject") == ["Undelivered Mail Returned to Sender"]


@settings(max_examples=200, deadline=None)
@given(
    original=st.one_of(st.binary(max_size=500), header_like),
    diagnostic=st.text(any_text, max_size=300),
)
def test_whole_original_never_raises(original: bytes, diagnostic: str) -> None:
    msg = make(
        original=original, recipients=[replace(BOUNCE, diagnostic=diagnostic)], include_content=True
    )
    parsed = reparse(msg)
    assert [p.get_content_type() for p in parts(parsed)] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]
