"""Staff console sessions: the portal's rules on a table of their own.

The console keeps its own cookie (``__Host-sigillo-staff`` under https, ``sigillo-staff``
otherwise) and its own ``staff_sessions`` rows, which store only the SHA-256 of the cookie
value. The timeouts are the portal's: 15 minutes idle, 12 hours at most. A session of an
account that has been disabled since it began is no session.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from sigillo.portal.sessions import (
    ABSOLUTE_TIMEOUT,
    IDLE_TIMEOUT,
    TOUCH_AFTER,
    FormTokens,
    cookie_name,
    new_cookie_value,
    session_hash,
)
from sigillo.staff.roles import parse_roles
from sigillo.store.db import Store
from sigillo.store.models import StaffAccount, StaffRole, StaffSession


@dataclass(frozen=True)
class SignedInStaff:
    staff_id: int
    email: str
    roles: frozenset[StaffRole]
    session_hash: str


@dataclass(frozen=True)
class Lookup:
    user: SignedInStaff | None
    expired: bool
    """The cookie named a session that has timed out (the page says so)."""
    touch: bool


class StaffSessions:
    def __init__(self, store: Store, secret: bytes, *, https: bool) -> None:
        self.store = store
        self.tokens = FormTokens(secret)
        self.https = https
        self.cookie_name = cookie_name("sigillo-staff", https=https)

    async def lookup(self, cookie_value: str, now: datetime) -> Lookup:
        digest = session_hash(cookie_value)
        async with self.store.session() as session:
            row = (
                await session.execute(
                    select(
                        StaffSession.staff_id,
                        StaffSession.created_at,
                        StaffSession.last_seen_at,
                        StaffAccount.email,
                        StaffAccount.roles,
                        StaffAccount.disabled_at,
                    )
                    .join(StaffAccount, StaffAccount.id == StaffSession.staff_id)
                    .where(StaffSession.id_hash == digest)
                )
            ).first()
        if row is None:
            return Lookup(None, expired=False, touch=False)
        staff_id, created_at, last_seen_at, email, roles, disabled_at = row
        if disabled_at is not None:
            await self.store.write(lambda s: end(s, digest))
            return Lookup(None, expired=False, touch=False)
        if now - last_seen_at >= IDLE_TIMEOUT or now - created_at >= ABSOLUTE_TIMEOUT:
            await self.store.write(lambda s: end(s, digest))
            return Lookup(None, expired=True, touch=False)
        user = SignedInStaff(staff_id, email, parse_roles(roles), digest)
        return Lookup(user, expired=False, touch=now - last_seen_at >= TOUCH_AFTER)

    async def touch(self, user: SignedInStaff, now: datetime) -> None:
        def write(session: Session) -> None:
            session.execute(
                update(StaffSession)
                .where(StaffSession.id_hash == user.session_hash)
                .values(last_seen_at=now)
            )

        await self.store.write(write)


def start(session: Session, staff_id: int, client: str, now: datetime) -> str:
    """Open a session in the caller's transaction; returns the new cookie value (a value
    the browser had before signing in never becomes a session)."""
    value = new_cookie_value()
    session.add(
        StaffSession(
            id_hash=session_hash(value),
            staff_id=staff_id,
            created_at=now,
            last_seen_at=now,
            client_address=client,
        )
    )
    return value


def end(session: Session, digest: str) -> None:
    session.execute(delete(StaffSession).where(StaffSession.id_hash == digest))


def end_all(session: Session, staff_id: int) -> None:
    session.execute(delete(StaffSession).where(StaffSession.staff_id == staff_id))
