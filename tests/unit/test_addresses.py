from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sigillo.gateway.addresses import AddressError, split_mailbox


@pytest.mark.parametrize(
    ("address", "domain"),
    [
        ("anna@Clinic.Example", "clinic.example"),
        ("first.last+tag@mail.example.org", "mail.example.org"),
        ('"quoted local"@example.com', "example.com"),
        ("x@a-b.example", "a-b.example"),
    ],
)
def test_valid(address: str, domain: str) -> None:
    assert split_mailbox(address)[1] == domain


@pytest.mark.parametrize(
    "address",
    [
        "no-at-sign",
        "@example.com",
        "user@",
        "user@localhost",
        "user@[192.0.2.1]",
        "a..b@example.com",
        ".a@example.com",
        "user@-bad.example",
        "user@bad_label.example",
        "user@exa mple.com",
        "x" * 65 + "@example.com",
        "user@" + "a" * 64 + ".com",
        "us\r\ner@example.com",
        "user@example.com\r\nRCPT TO:<x@y.z>",
    ],
)
def test_invalid(address: str) -> None:
    with pytest.raises(AddressError):
        split_mailbox(address)


@given(st.text(max_size=300))
def test_never_raises_anything_else(address: str) -> None:
    try:
        _local, domain = split_mailbox(address)
    except AddressError:
        return
    assert "\r" not in address and "\n" not in address
    assert domain == domain.lower() and "@" in address
