"""Notifications may travel with weaker TLS, so they must not be able to carry content."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default

import pytest

from sigillo.notify import Notification, new_token, token_hash

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_notification_type_has_no_room_for_content() -> None:
    assert [f.name for f in dataclasses.fields(Notification)] == ["recipient", "link", "subject"]


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
