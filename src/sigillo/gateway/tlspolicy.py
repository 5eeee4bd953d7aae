"""Which TLS a recipient domain's copy of message content needs, and the contexts that enforce it.

Levels are ordered like Postfix's ``smtp_tls_security_level``, but the floor is ``encrypt``:
there is no level that lets content travel in plaintext. ``portal`` means "do not try at all".
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from enum import IntEnum

from sigillo.config import DeliverySettings, TLSLevel


class Level(IntEnum):
    PORTAL = 0
    """Never connect; the copy goes to the portal."""
    ENCRYPT = 1
    """STARTTLS required, TLS >= minimum version, any certificate."""
    VERIFY = 2
    """STARTTLS required, TLS >= minimum version, chain valid and name matching the MX host."""

    @classmethod
    def parse(cls, name: TLSLevel) -> Level:
        return cls[name.upper()]

    @property
    def label(self) -> TLSLevel:
        name: TLSLevel = self.name.lower()  # type: ignore[assignment]
        return name


@dataclass(frozen=True)
class Policy:
    domain: str
    level: Level
    source: str
    """What decided the level: ``default`` or the matching ``[delivery.domains]`` key."""


def policy_for(domain: str, settings: DeliverySettings) -> Policy:
    """Exact domain first, then ``.parent`` entries from the nearest parent up (Postfix order)."""
    domain = domain.lower().rstrip(".")
    overrides = settings.domains
    if domain in overrides:
        return Policy(domain, Level.parse(overrides[domain]), domain)
    labels = domain.split(".")
    for i in range(1, len(labels)):
        key = "." + ".".join(labels[i:])
        if key in overrides:
            return Policy(domain, Level.parse(overrides[key]), key)
    return Policy(domain, Level.parse(settings.default_tls), "default")


_MIN_VERSION = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def client_context(level: Level, settings: DeliverySettings) -> ssl.SSLContext:
    """A fresh client context for one connection at ``level``.

    ``encrypt`` still refuses anything below the minimum version; it only gives up on
    authenticating the peer, as the domain's policy allows.
    """
    if level is Level.PORTAL:
        raise ValueError("the portal level never opens a connection")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _MIN_VERSION[settings.min_tls_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if level is Level.VERIFY:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
        if settings.ca_file:
            ctx.load_verify_locations(cafile=settings.ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def verification_label(level: Level, settings: DeliverySettings) -> str:
    if level is Level.VERIFY:
        return "ca_file" if settings.ca_file else "system"
    return "none (encrypt)"
