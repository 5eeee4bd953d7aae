"""Notifications may travel with weaker TLS, so they must not be able to carry content."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default

import pytest

from sigillo.notify import Notification, new_token, token_hash

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_notification_type_has_no_room_for_content() -> None:
    # The phrase is the recipient's own few words, checked when chosen (tests/portal).
    fields = [f.name for f in dataclasses.fields(Notification)]
    assert fields == ["recipient", "link", "subject", "phrase"]


BASE_URL = "https://portal.org.example"
URLISH = re.compile(r"(?i)\b(?:[a-z][a-z0-9+.-]*://|www\.)\S+")


@pytest.mark.parametrize("phrase", [None, "blue lighthouse seven"])
@pytest.mark.parametrize("subject", [None, "Your results"])
def test_a_notification_holds_exactly_one_link_to_the_portal(
    phrase: str | None, subject: str | None
) -> None:
    link = f"{BASE_URL}/c/{new_token()[0]}"
    raw = Notification("anna@x.example", link, subject, phrase=phrase).render(
        "secure@org.example", "gw.org.example", NOW
    )
    text = message_from_bytes(raw, policy=default).get_content()
    urls = URLISH.findall(text)
    assert urls == [link]
    assert urls[0].startswith(f"{BASE_URL}/")
    # It asks for nothing: no reply, no password, no code.
    lowered = text.lower()
    assert "reply to" not in lowered and "rispondi" not in lowered
    assert "never ask for your password" in lowered


def test_the_security_phrase_is_shown_in_english_and_italian() -> None:
    raw = Notification("anna@x.example", f"{BASE_URL}/c/T", phrase="gatto   blu sul tetto").render(
        "secure@org.example", "gw.org.example", NOW
    )
    text = message_from_bytes(raw, policy=default).get_content()
    head = text.splitlines()[:2]
    assert head == [
        "Your security phrase: \u00abgatto blu sul tetto\u00bb",
        "La tua frase di sicurezza: \u00abgatto blu sul tetto\u00bb",
    ]
    assert "If an email claiming to be from us lacks your security phrase" in text
    assert "non riporta la tua frase di" in text
    assert raw.isascii()  # quoted-printable: a signature survives relays


def test_without_a_phrase_nothing_mentions_one() -> None:
    raw = Notification("anna@x.example", f"{BASE_URL}/c/T").render(
        "secure@org.example", "gw.org.example", NOW
    )
    text = message_from_bytes(raw, policy=default).get_content()
    assert "phrase" not in text and "frase" not in text


def test_rendered_notification_is_plain_and_content_free() -> None:
    raw = Notification("anna@x.example", "https://portal.example/c/TOKEN").render(
        "secure@org.example", "gw.org.example", NOW
    )
    msg = message_from_bytes(raw, policy=default)
    assert msg["Subject"] == "You have a secure message"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert not msg.is_multipart()
    assert "https://portal.example/c/TOKEN" in msg.get_content()


def test_subject_only_when_configured_and_never_injects_headers() -> None:
    raw = Notification("anna@x.example", "https://p/c/T", "Results\r\nBcc: evil@x.example").render(
        "secure@org.example", "gw.org.example", NOW
    )
    msg = message_from_bytes(raw, policy=default)
    assert msg["Bcc"] is None
    assert "Results" in msg["Subject"]


def test_an_encoded_word_in_the_subject_cannot_write_a_header() -> None:
    subject = "=?utf-8?q?Results=0D=0ABcc:_evil@x.example?="
    raw = Notification("anna@x.example", "https://p/c/T", subject).render(
        "secure@org.example", "gw.org.example", NOW
    )
    assert b"\r\nBcc:" not in raw
    assert message_from_bytes(raw, policy=default)["Bcc"] is None


@pytest.mark.parametrize("_", range(3))
def test_tokens_are_long_random_and_stored_hashed(_: int) -> None:
    token, digest = new_token()
    assert len(token) >= 43  # 256 bits, URL-safe base64
    assert digest == token_hash(token) != token
    assert new_token()[0] != token
