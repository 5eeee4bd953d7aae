"""sigillo's DKIM signature on its own mail: it verifies against the record ``sigillo dkim
show`` prints, breaks when a header is added, and is put only on mail sigillo wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest

from sigillo.commands.dkim import TXT_STRING_LIMIT, txt_strings, zone_line
from sigillo.config import Settings
from sigillo.dkim import DkimSigner
from sigillo.gateway.worker import signs_queued_mail
from sigillo.notify import Notification
from sigillo.portal.compose import build_copy, build_reply
from sigillo.portal.outbox import ACCOUNT_MAIL, AUTO_ANSWER, Outbox

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
OURS = "secure@org.example"


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> DkimSigner:
    path = tmp_path_factory.mktemp("dkim") / "dkim.key"
    return DkimSigner.load_or_create(path, "sigillo", "org.example")


def dns_for(signer: DkimSigner) -> Callable[..., bytes]:
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        if name.decode().rstrip(".") == signer.dns_name:
            return signer.txt_value().encode()
        return b""

    return lookup


def composer() -> Outbox:
    settings = Settings.model_validate({"notify": {"from": OURS}})
    return Outbox(settings, None, None)  # type: ignore[arg-type]  # compose only


def notification(phrase: str | None = None) -> bytes:
    link = "https://portal.org.example/c/TOKEN"
    return Notification("anna@x.example", link, phrase=phrase).render(OURS, "gw.org.example", NOW)


def test_a_signed_notification_verifies_against_the_published_key(signer: DkimSigner) -> None:
    signed = signer.sign(notification("blue lighthouse"))
    assert signed.startswith(b"DKIM-Signature:")
    assert dkim.verify(signed, dnsfunc=dns_for(signer))


@pytest.mark.parametrize(
    "added",
    [
        b"From: Phisher <secure@org.example.evil.test>",
        b"Subject: Urgent: confirm your card number",
        b"Reply-To: help@evil.test",
        b"Cc: help@evil.test",
        b"To: someone-else@x.example",
    ],
)
def test_a_header_added_after_signing_fails(signer: DkimSigner, added: bytes) -> None:
    # Signed once more than it occurs ("oversigned"): a copy with one more, placed where a
    # mail client would show it, no longer verifies. A notification has no Reply-To: it must
    # be signed as absent, or a phisher could add one and keep the signature.
    signed = signer.sign(notification())
    assert dkim.verify(signed, dnsfunc=dns_for(signer))
    assert not dkim.verify(added + b"\r\n" + signed, dnsfunc=dns_for(signer))


def test_a_changed_body_fails(signer: DkimSigner) -> None:
    signed = signer.sign(notification())
    forged = signed.replace(b"portal.org.example", b"portal.org.evil.test")
    assert forged != signed
    assert not dkim.verify(forged, dnsfunc=dns_for(signer))


def test_our_mail_is_seven_bit_so_relays_cannot_reencode_it() -> None:
    # A relay converting 8-bit text for a server without 8BITMIME breaks a signature.
    for raw in (
        notification("frase sicurezza è «mia»"),
        composer().compose(
            "anna@x.example",
            "Reimposta la password",
            "Qualcuno ha chiesto di reimpostare la password è così via.",
            NOW,
            "frase è mia",
        ),
    ):
        assert raw.isascii()


def test_txt_record_is_split_into_strings_of_at_most_255_bytes(signer: DkimSigner) -> None:
    value = signer.txt_value()
    strings = txt_strings(value)
    assert strings[0] == "v=DKIM1; k=rsa; "
    assert strings[1].startswith("p=")
    assert all(len(s.encode()) <= TXT_STRING_LIMIT for s in strings)
    assert "".join(strings) == value
    line = zone_line(signer.dns_name, value)
    assert line.startswith('sigillo._domainkey.org.example. IN TXT ( "v=DKIM1; k=rsa; " "p=')
    assert line.endswith('" )')


def _sigillo(*args: str, cwd: Path, key: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sigillo", "dkim", "show", *args],
        cwd=cwd,
        env={
            **os.environ,
            "SIGILLO_NOTIFY__DKIM_KEY_FILE": str(key),
            "SIGILLO_NOTIFY__FROM": "secure@mail.org.example",
        },
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_dkim_show_creates_the_key_and_prints_the_record(tmp_path: Path) -> None:
    key = tmp_path / "var" / "dkim.key"
    shown = _sigillo(cwd=tmp_path, key=key)
    assert shown.returncode == 0, shown.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    [line] = shown.stdout.splitlines()  # only the record: a script can append it to a zone
    assert line.startswith('sigillo._domainkey.mail.org.example. IN TXT ( "v=DKIM1; k=rsa; "')
    assert "Publish this TXT record" in shown.stderr

    as_json = _sigillo("--json", cwd=tmp_path, key=key)
    assert as_json.returncode == 0, as_json.stderr
    record = json.loads(as_json.stdout)
    signer = DkimSigner.load(key, "sigillo", "mail.org.example")
    assert record == {
        "name": "sigillo._domainkey.mail.org.example",
        "value": signer.txt_value(),
        "selector": "sigillo",
        "domain": "mail.org.example",
    }
    assert line == zone_line(record["name"], record["value"])  # the same key, not a new one


def test_dkim_show_with_a_bad_key_file_is_one_clear_line(tmp_path: Path) -> None:
    key = tmp_path / "dkim.key"
    key.write_text("not a key\n")
    shown = _sigillo(cwd=tmp_path, key=key)
    assert shown.returncode == 1
    assert shown.stdout == ""
    [line] = shown.stderr.splitlines()
    assert line.startswith(f"sigillo: DKIM key {key} is not a PEM private key")
    assert key.read_text() == "not a key\n"  # never replaced


def _reply(author: str) -> EmailMessage:
    return build_reply(
        author=author,
        to="rossi@org.example",
        subject="Your results",
        in_reply_to=None,
        references=(),
        body="Visit http://evil.test/login and enter your card number",
        attachments=(),
        hostname="gw.org.example",
        now=NOW,
    )


def test_account_mail_is_signed_but_not_a_copy_of_a_recipients_reply() -> None:
    account_mail = composer().compose(
        "anna@x.example", "Reset your password", "Open this link.", NOW
    )
    assert signs_queued_mail(account_mail, ACCOUNT_MAIL, OURS)
    copy = build_copy(
        _reply("anna@x.example"),
        sender=OURS,
        recipient="anna@x.example",
        note="A copy of your reply.",
        hostname="gw.org.example",
        now=NOW,
    ).as_bytes()
    # From is ours, but the words are the recipient's (queued from the visitor's address):
    # the organisation does not sign them.
    assert not signs_queued_mail(copy, "192.0.2.7", OURS)
    # Nor anything whose From is not our address.
    assert not signs_queued_mail(_reply("anna@x.example").as_bytes(), ACCOUNT_MAIL, OURS)
    other = account_mail.replace(b"From: secure@org.example", b"From: other@org.example")
    assert not signs_queued_mail(other, ACCOUNT_MAIL, OURS)
    two = account_mail.replace(
        b"From: secure@org.example", b"From: secure@org.example, mallory@x.example"
    )
    assert not signs_queued_mail(two, AUTO_ANSWER, OURS)
