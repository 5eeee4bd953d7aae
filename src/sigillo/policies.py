"""Per-recipient-domain policies set in the staff console: TLS level and retention.

The config file's ``[delivery.domains]`` stays authoritative for TLS (a reviewed file wins over
a click); the console adds domains the file does not name, and sets how long each domain's
portal conversations are kept. Every change is audited.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from sigillo.config import TLSLevel
from sigillo.store import audit
from sigillo.store.db import Store
from sigillo.store.models import Conversation, DomainPolicy

TLS_LEVELS: tuple[TLSLevel, ...] = ("verify", "encrypt", "portal")


def nearest(domain: str, keys: Collection[str]) -> str | None:
    """The key that governs ``domain``: the domain itself, else the nearest ``.parent`` entry
    (``.example.com`` covers every subdomain of example.com, not example.com itself), in
    Postfix's order."""
    domain = domain.lower().rstrip(".")
    if domain in keys:
        return domain
    labels = domain.split(".")
    for i in range(1, len(labels)):
        key = "." + ".".join(labels[i:])
        if key in keys:
            return key
    return None


def normalise_domain(value: str) -> str:
    """``Example.COM.`` -> ``example.com``; a leading dot (subdomains) is kept. Raises
    ValueError for something that is not a domain name."""
    key = value.strip().lower().rstrip(".")
    bare = key.removeprefix(".")
    labels = bare.split(".")
    if (
        not bare
        or len(bare) > 253
        or len(labels) < 2
        or any(
            not label
            or len(label) > 63
            or label.startswith("-")
            or label.endswith("-")
            or not all(c.isalnum() or c == "-" for c in label)
            or not label.isascii()
            for label in labels
        )
    ):
        raise ValueError(f"not a domain name: {value!r}")
    return key


@dataclass(frozen=True)
class DomainPolicies:
    """A snapshot of the console's domain policies."""

    rules: Mapping[str, DomainPolicy]

    @classmethod
    async def load(cls, store: Store) -> DomainPolicies:
        async with store.session() as session:
            rows = (await session.execute(select(DomainPolicy))).scalars().all()
        return cls({row.domain: row for row in rows})

    def tls(self) -> dict[str, TLSLevel]:
        """The TLS overrides, for ``tlspolicy.policy_for(..., console=...)``."""
        return {k: r.tls for k, r in self.rules.items() if r.tls in TLS_LEVELS}

    def retention(self, domain: str, default_days: int) -> timedelta:
        key = nearest(domain, {k for k, r in self.rules.items() if r.retention_days})
        days = self.rules[key].retention_days if key is not None else None
        return timedelta(days=days or default_days)

    def expires_at(self, conversation: Conversation, default_days: int) -> datetime:
        """When ``conversation`` expires: the date staff set, else its domain's retention
        after its last message."""
        if conversation.expires_at is not None:
            return conversation.expires_at
        domain = conversation.recipient.rpartition("@")[2]
        return conversation.last_message_at + self.retention(domain, default_days)


def set_policy(
    session: Session,
    domain: str,
    *,
    tls: TLSLevel | None,
    retention_days: int | None,
    actor: str,
    at: datetime,
    client: str | None = None,
) -> None:
    """Create, change or (both None) remove the console policy of ``domain``; audited as
    ``policy.changed`` with the old and new values."""
    domain = normalise_domain(domain)
    if tls is not None and tls not in TLS_LEVELS:
        raise ValueError(f"TLS level must be one of {', '.join(TLS_LEVELS)}")
    if retention_days is not None and not 1 <= retention_days <= 3650:
        raise ValueError("retention must be between 1 and 3650 days")
    row = session.get(DomainPolicy, domain, with_for_update=True)
    before = {"tls": row.tls, "retention_days": row.retention_days} if row else None
    if tls is None and retention_days is None:
        if row is not None:
            session.execute(delete(DomainPolicy).where(DomainPolicy.domain == domain))
    elif row is None:
        session.add(
            DomainPolicy(
                domain=domain,
                tls=tls,
                retention_days=retention_days,
                updated_at=at,
                updated_by=actor,
            )
        )
    else:
        row.tls, row.retention_days, row.updated_at, row.updated_by = (
            tls,
            retention_days,
            at,
            actor,
        )
    audit.record(
        session,
        "policy.changed",
        actor=actor,
        at=at,
        client=client,
        details={
            "domain": domain,
            "before": before,
            "after": None
            if tls is None and retention_days is None
            else {"tls": tls, "retention_days": retention_days},
        },
    )
