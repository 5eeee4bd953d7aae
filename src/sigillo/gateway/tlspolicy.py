"""Which TLS a recipient domain's copy of message content needs, and the contexts that enforce it.

Levels are ordered like Postfix's ``smtp_tls_security_level``, but the floor is ``encrypt``:
there is no level that lets content travel in plaintext. ``portal`` means "do not try at all".
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from sigillo.config import DeliverySettings, TLSLevel
from sigillo.policies import nearest


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


def policy_for(
    domain: str, settings: DeliverySettings, console: Mapping[str, TLSLevel] | None = None
) -> Policy:
    """The config file's ``[delivery.domains]`` first, then the console's domain policies,
    then ``default_tls``; within each, the nearest match (see ``policies.nearest``)."""
    domain = domain.lower().rstrip(".")
    key = nearest(domain, settings.domains)
    if key is not None:
        return Policy(domain, Level.parse(settings.domains[key]), key)
    key = nearest(domain, console or {})
    if console and key is not None:
        return Policy(domain, Level.parse(console[key]), f"console:{key}")
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
