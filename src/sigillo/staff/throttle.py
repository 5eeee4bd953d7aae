"""Console sign-in throttling: the portal's rules and counting, under keys of its own.

``staff:<email>`` counts failures for one staff address (5 lock it for 15 minutes, right
password and code or not); ``staff-client:<ip>`` counts one client's failures across
addresses (20 in 15 minutes lock that client). The keys never meet the portal's, so a
recipient's lockout never touches a member of staff with the same address, or back.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from sigillo.portal import throttle
from sigillo.store.db import Store
from sigillo.store.models import LoginThrottle

PER_ADDRESS = throttle.Rule("staff:", limit=5, window=timedelta(days=1), lock=timedelta(minutes=15))
PER_CLIENT = throttle.Rule(
    "staff-client:", limit=20, window=timedelta(minutes=15), lock=timedelta(minutes=15)
)


def keys(email: str, client: str) -> tuple[str, str]:
    return PER_ADDRESS.prefix + email, PER_CLIENT.prefix + client


async def locked(store: Store, email: str, client: str, now: datetime) -> bool:
    async with store.session() as session:
        rows = await session.execute(
            select(LoginThrottle.locked_until).where(
                LoginThrottle.key.in_(keys(email, client)),
                LoginThrottle.locked_until > now,
            )
        )
        return rows.first() is not None


def record_failure(session: Session, email: str, client: str, now: datetime) -> None:
    for rule, key in zip((PER_ADDRESS, PER_CLIENT), keys(email, client), strict=True):
        throttle._count(session, rule, key, now)  # the portal's counting, shared


def clear_address(session: Session, email: str) -> None:
    session.execute(delete(LoginThrottle).where(LoginThrottle.key == PER_ADDRESS.prefix + email))
