"""Whatever arrives, the check answers: broken MIME, odd charsets, deep nesting, many parts,
huge messages and random bytes give a verdict, never an exception."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from sigillo.phishing import Checker, CheckPolicy, Report
from sigillo.phishing import message as message_module
from sigillo.phishing.message import MAX_DEPTH, MAX_PARTS, parse

CORPUS = Path(__file__).parent.parent / "corpus"
POLICY = CheckPolicy(org_domains=("org.example",), portal_host="portal.org.example")
VERDICTS = {"genuine", "suspicious", "phishing", "errored"}


def check(raw: bytes, policy: CheckPolicy = POLICY) -> Report:
    return Checker(policy).check(raw, "patient@example.net")


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.eml")), ids=lambda p: p.name)
def test_every_sample_gets_a_verdict(path: Path) -> None:
    report = check(path.read_bytes())
    assert report.verdict in {"suspicious", "phishing"}, report.findings
    assert "check-error" not in {f.code for f in report.findings}


def test_iso_2022_jp_body_is_read() -> None:
    body = "パスワードを入力してください https://evil.example/login".encode("iso-2022-jp")
    raw = (
        b"From: a@example.net\r\nTo: patient@example.net\r\n"
        b"Subject: =?ISO-2022-JP?B?GyRCJUYlOSVIGyhC?=\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=ISO-2022-JP\r\n"
        b"Content-Transfer-Encoding: 7bit\r\n\r\n" + body + b"\r\n"
    )
    report = check(raw)
    assert report.verdict == "phishing"
    assert "credential-link-elsewhere" in {f.code for f in report.findings}


def test_windows_1252_and_bogus_charsets() -> None:
    text = "Gentile cliente, inserisci la password: ecco l’accesso".encode("windows-1252")
    for charset in (b"windows-1252", b"x-no-such-charset", b"base64", b"rot13"):
        raw = (
            b"From: a@example.net\r\nContent-Type: text/plain; charset=" + charset + b"\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + text + b"\r\n"
        )
        report = check(raw)
        assert "asks-for-secrets" in {f.code for f in report.findings}, charset


def test_eight_bit_headers() -> None:
    raw = "From: Banca Amica àè <info@example.net>\r\nSubject: città\r\n\r\nciao\r\n"
    for encoded in (raw.encode("utf-8"), raw.encode("latin-1")):
        assert check(encoded).verdict == "suspicious"


def nested(depth: int) -> bytes:
    inner = b"From: x@example.net\r\nContent-Type: text/plain\r\n\r\nhttp://deep.example/\r\n"
    for _ in range(depth):
        inner = b"From: x@example.net\r\nContent-Type: message/rfc822\r\n\r\n" + inner
    return inner


@pytest.mark.parametrize("depth", [200, 5000])
def test_deeply_nested_forwarded_messages(depth: int) -> None:
    report = check(nested(depth))
    assert report.verdict == "suspicious"
    assert "mime-too-complex" in {f.code for f in report.findings}
    assert "not-from-org" in {f.code for f in report.findings}


def test_deeply_nested_multiparts() -> None:
    inner = b"Content-Type: text/plain\r\n\r\nhi\r\n"
    for i in range(3000):
        inner = (
            b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
            + inner
            + b"\r\n--b%d--\r\n" % i
        )
    report = check(b"From: x@org.example\r\n" + inner)
    assert report.verdict == "phishing"
    assert "mime-too-complex" in {f.code for f in report.findings}


def test_nesting_within_the_limit_is_read() -> None:
    shallow = check(nested(MAX_DEPTH - 1))
    assert "link-http" in {f.code for f in shallow.findings}


def test_thousands_of_parts() -> None:
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(5000))
    raw = (
        b"From: x@example.net\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        + parts
        + b"--b--\r\n"
    )
    report = check(raw)
    assert [f.evidence for f in report.findings if f.code == "mime-too-complex"] == [
        f"more than {MAX_PARTS} parts"
    ]


def test_a_large_message_below_the_limit() -> None:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "x@example.net"
    # 3 MB of text (beyond the 2 MB the check reads) and a 14 MiB attachment.
    msg.set_content("Inserisci la password qui.\n" + "lorem ipsum dolor sit amet\n" * 110_000)
    msg.add_attachment(b"\0" * (14 * 1024 * 1024), maintype="application", subtype="zip")
    raw = msg.as_bytes()
    assert 20 * 1024**2 < len(raw) < POLICY.max_size
    report = check(raw)
    assert report.verdict == "phishing"
    assert "asks-for-secrets" in {f.code for f in report.findings}


def test_over_the_size_limit_is_errored() -> None:
    policy = CheckPolicy(org_domains=("org.example",), portal_host="p", max_size=25 * 1024**2)
    report = check(b"x" * (30 * 1024**2), policy)
    assert report.verdict == "errored"
    assert report.findings[0].code == "check-error"
    assert report.findings[0].evidence == (
        "message is 30 MiB, larger than the 25 MiB the check reads"
    )


def test_an_internal_failure_is_errored_never_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(raw: bytes) -> None:
        raise ValueError(f"cannot read {raw!r}")  # an error that quotes the mail

    monkeypatch.setattr(message_module, "parse", broken)
    with capture_logs() as logs:
        report = check(b"From: a@org.example\r\n\r\nMy IBAN is IT60X0542811101000000123456")
    assert report.verdict == "errored"
    assert report.to_json()["findings"][0]["code"] == "check-error"  # type: ignore[index]
    # Logged: what failed and where, never the message text the exception carried.
    [entry] = [e for e in logs if e["event"] == "check_failed"]
    assert entry["error"] == "ValueError" and "IBAN" not in repr(logs)


def test_missing_boundary_text_is_still_read() -> None:
    raw = (
        b"From: x@example.net\r\nContent-Type: multipart/mixed\r\n\r\n"
        b"enter your password at http://evil.example/\r\n"
    )
    codes = {f.code for f in check(raw).findings}
    assert {"asks-for-secrets", "link-http"} <= codes


def test_parse_keeps_header_order() -> None:
    parsed = parse(b"Received: a\r\nFrom: x@example.net\r\nReceived: b\r\n\r\n")
    assert [n for n, _ in parsed.headers] == ["received", "from", "received"]


SAMPLE = (CORPUS / "nested-rfc822.eml").read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes(raw: bytes) -> None:
    assert check(raw).verdict in VERDICTS


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(SAMPLE)), st.integers(0, 40), st.binary(max_size=40)),
        max_size=8,
    )
)
def test_mutated_message(edits: list[tuple[int, int, bytes]]) -> None:
    raw = SAMPLE
    for at, cut, insert in edits:
        raw = raw[:at] + insert + raw[at + cut :]
    report = check(raw)
    assert report.verdict in VERDICTS
    assert report.verdict != "errored", report.findings
