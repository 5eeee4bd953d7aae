"""RFC 5321 mailbox syntax (section 4.1.2), strict enough to refuse what no MTA should relay."""

from __future__ import annotations

import re

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
# qtextSMTP is %d32-33 / %d35-91 / %d93-126; quoted-pairSMTP is backslash + %d32-126.
_QUOTED_STRING = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LOCAL_PART = re.compile(rf"^(?:{_DOT_STRING}|{_QUOTED_STRING})$")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256


class AddressError(ValueError):
    """The address is not an RFC 5321 mailbox; the message says what is wrong."""


def split_mailbox(address: str) -> tuple[str, str]:
    """Validate ``local@domain`` and return (local part, lower-case domain).

    Address literals (``user@[192.0.2.1]``) are refused: a gateway delivering sensitive
    content must resolve a domain's MX and apply that domain's TLS policy.
    """
    if len(address) > MAX_PATH:
        raise AddressError("address longer than 256 characters")
    local, sep, domain = address.rpartition("@")
    if not sep or not local:
        raise AddressError("address needs a local part and a domain")
    if len(local.encode()) > MAX_LOCAL_PART:
        raise AddressError("local part longer than 64 octets")
    if not _LOCAL_PART.match(local):
        raise AddressError("local part has characters RFC 5321 does not allow")
    if domain.startswith("["):
        raise AddressError("address literals are not accepted; use a domain")
    check_domain(domain)
    return local, domain.lower()


def check_domain(domain: str) -> None:
    if not domain or len(domain) > MAX_DOMAIN:
        raise AddressError("domain missing or longer than 255 characters")
    labels = domain.split(".")
    if len(labels) < 2:
        raise AddressError("domain must have at least two labels")
    for label in labels:
        if not _LABEL.match(label):
            raise AddressError(f"domain label {label[:70]!r} is not a valid host name label")
