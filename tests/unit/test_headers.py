"""Header parsing on the delivery path never raises, whatever the bytes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sigillo.gateway.queue import header_message_id, message_id_hash
from sigillo.portal.handoff import referenced_hashes


def test_threading_headers() -> None:
    mail = (
        b"Message-ID: <b@org.example>\r\nIn-Reply-To: <a@org.example>\r\n"
        b"References: <x@org.example>\r\n <a@org.example> junk\r\n\r\nbody"
    )
    assert header_message_id(mail) == message_id_hash("<b@org.example>")
    assert message_id_hash("b@org.example") == message_id_hash(" <b@org.example> ")
    assert referenced_hashes(mail) == [
        message_id_hash("<a@org.example>"),
        message_id_hash("<x@org.example>"),
        message_id_hash("<a@org.example>"),
    ]
    assert header_message_id(b"Subject: none\r\n\r\n") is None


@given(st.binary(max_size=2000))
def test_arbitrary_bytes(data: bytes) -> None:
    value = header_message_id(data)
    assert value is None or len(value) == 64
    assert all(len(h) == 64 for h in referenced_hashes(data))


@given(st.lists(st.text(min_size=1, max_size=40), max_size=5))
def test_arbitrary_reference_lists(ids: list[str]) -> None:
    header = "References: " + " ".join(f"<{i}>" for i in ids)
    raw = header.encode("utf-8", "surrogateescape") + b"\r\n\r\n"
    assert all(len(h) == 64 for h in referenced_hashes(raw))
