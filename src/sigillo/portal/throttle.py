"""Sign-in throttling, per address and per client.

Per address: 5 consecutive failures (a success, or a day without failures, starts the count
again) refuse that address for 15 minutes, right password or not. The count is keyed by the
address typed, whether or not it has an account, so a lockout tells nothing about who has one.
Per client: 20 failures within 15 minutes refuse that client address for 15 minutes, for any
account, which slows one client guessing across many addresses. Failures for one address never
lock out another address.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from sigillo.store.db import Store
from sigillo.store.models import LoginThrottle


@dataclass(frozen=True)
class Rule:
    prefix: str
    limit: int
    window: timedelta
    """Failures further apart than this do not add up."""
    lock: timedelta


@dataclass(frozen=True)
class Throttle:
    """The throttling of one sign-in (the portal's, the staff console's): its two rules,
    whose key prefixes keep its counts apart from any other's."""

    per_address: Rule
    per_client: Rule

    def keys(self, address: str, client: str) -> tuple[str, str]:
        return self.per_address.prefix + address, self.per_client.prefix + client

    async def locked(self, store: Store, address: str, client: str, now: datetime) -> bool:
        async with store.session() as session:
            rows = await session.execute(
                select(LoginThrottle.locked_until).where(
                    LoginThrottle.key.in_(self.keys(address, client)),
                    LoginThrottle.locked_until > now,
                )
            )
            return rows.first() is not None

    def record_failure(self, session: Session, address: str, client: str, now: datetime) -> None:
        rules = (self.per_address, self.per_client)
        for rule, key in zip(rules, self.keys(address, client), strict=True):
            _count(session, rule, key, now)

    def clear_address(self, session: Session, address: str) -> None:
        session.execute(
            delete(LoginThrottle).where(LoginThrottle.key == self.per_address.prefix + address)
        )


PER_ADDRESS = Rule("account:", limit=5, window=timedelta(days=1), lock=timedelta(minutes=15))
PER_CLIENT = Rule("client:", limit=20, window=timedelta(minutes=15), lock=timedelta(minutes=15))
PORTAL = Throttle(PER_ADDRESS, PER_CLIENT)


def _count(session: Session, rule: Rule, key: str, now: datetime) -> None:
    # Create the row if missing without failing on a concurrent insert (a failed statement
    # would abort the whole group commit), then lock it so concurrent failures all count.
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(LoginThrottle)
        .values(key=key, failures=0, last_failure_at=now, locked_until=None)
        .on_conflict_do_nothing(index_elements=["key"])
    )
    row = session.execute(
        select(LoginThrottle).where(LoginThrottle.key == key).with_for_update()
    ).scalar_one()
    if now - row.last_failure_at > rule.window:
        row.failures = 0
    row.failures += 1
    row.last_failure_at = now
    if row.failures >= rule.limit:
        row.locked_until = now + rule.lock
        row.failures = 0
