"""Staff console sessions: the portal's rules on a table of their own.

The console keeps its own cookie (``__Host-sigillo-staff`` under https, ``sigillo-staff``
otherwise) and its own ``staff_sessions`` rows, which store only the SHA-256 of the cookie
value. The timeouts are the portal's: 15 minutes idle, 12 hours at most. A session of an
account that has been disabled since it began is no session.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from sigillo.portal.sessions import (
    CookieSessions,
    FormTokens,
    SessionQuery,
    SessionRow,
    SessionRows,
)
from sigillo.staff.roles import parse_roles
from sigillo.store.db import Store
from sigillo.store.models import StaffAccount, StaffRole, StaffSession

ROWS = SessionRows(StaffSession, StaffSession.staff_id)
"""The console's session rows: ``start`` them when signing in, ``end`` them when signing out."""


@dataclass(frozen=True)
class SignedInStaff:
    staff_id: int
    email: str
    roles: frozenset[StaffRole]
    session_hash: str


class StaffSessions(CookieSessions[SignedInStaff]):
    def __init__(self, store: Store, tokens: FormTokens, *, https: bool) -> None:
        super().__init__(store, tokens, ROWS, cookie="sigillo-staff", https=https)

    def _select(self, digest: str) -> SessionQuery:
        return (
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

    def _refused(self, row: SessionRow) -> bool:
        return row.disabled_at is not None

    def _user(self, row: SessionRow, digest: str) -> SignedInStaff:
        return SignedInStaff(row.staff_id, row.email, parse_roles(row.roles), digest)


def end_all(session: Session, staff_id: int) -> None:
    """End every session of the member (an account reset or disabled)."""
    ROWS.end_all(session, staff_id)
