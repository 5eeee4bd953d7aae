"""Staff accounts: adding, resetting, disabling, changing roles, listing.

The same functions serve ``sigillo staff ...`` and the console's administration pages. Each
runs inside the caller's ``store.write`` transaction and writes its audit entry there, so an
account change and its record are one step. Enrolment links are single use: only the SHA-256
of the token is stored, and a reset or a disable spends every link still open.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from sigillo.notify import new_token
from sigillo.portal.accounts import MAX_ADDRESS, normalise_address
from sigillo.staff import sessions, throttle, totp
from sigillo.staff.roles import ORDER, format_roles, parse_roles
from sigillo.store import audit
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import StaffAccount, StaffEnrolment, StaffRole

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class StaffError(Exception):
    """A refused account change, with a one-line reason for the CLI or the page."""


class Refusal(StaffError):
    """The change would leave no enabled admin."""


def valid_email(value: str) -> str:
    """The address lower-cased; StaffError if it does not look like one."""
    email = normalise_address(value)
    if len(email) > MAX_ADDRESS or not _EMAIL.match(email) or not email.isprintable():
        raise StaffError(f"not an email address: {value!r}")
    return email


def enrolment_link(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/staff/enrol/{token}"


@dataclass(frozen=True)
class StaffSummary:
    id: int
    email: str
    roles: frozenset[StaffRole]
    enrolled_at: datetime | None
    last_login_at: datetime | None
    disabled_at: datetime | None

    def role_names(self) -> list[str]:
        return [role.value for role in ORDER if role in self.roles]

    def as_json(self) -> dict[str, object]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "email": self.email,
            "roles": self.role_names(),
            "enrolled_at": iso(self.enrolled_at),
            "last_login_at": iso(self.last_login_at),
            "disabled_at": iso(self.disabled_at),
        }


async def list_staff(store: Store) -> list[StaffSummary]:
    async with store.session() as session:
        rows = (
            (await session.execute(select(StaffAccount).order_by(StaffAccount.email)))
            .scalars()
            .all()
        )
    return [
        StaffSummary(
            row.id,
            row.email,
            parse_roles(row.roles),
            row.enrolled_at,
            row.last_login_at,
            row.disabled_at,
        )
        for row in rows
    ]


def add(
    session: Session,
    keyring: Keyring,
    email: str,
    roles: Iterable[StaffRole],
    *,
    actor: str,
    at: datetime,
    valid: timedelta,
    client: str | None = None,
) -> str:
    """Create the account with a fresh TOTP secret and an enrolment link; returns the
    link's token (shown once, never stored)."""
    email = valid_email(email)
    chosen = frozenset(roles)
    if not chosen:
        raise StaffError("give at least one role")
    if session.execute(select(StaffAccount.id).where(StaffAccount.email == email)).first():
        raise StaffError(f"{email} already has a staff account")
    account = StaffAccount(email=email, roles=format_roles(chosen), created_at=at, created_by=actor)
    session.add(account)
    session.flush()  # the id is the TOTP secret's associated data
    _new_secret(keyring, account)
    token = _new_enrolment(session, account.id, at, valid)
    audit.record(
        session,
        "staff.added",
        actor=actor,
        at=at,
        client=client,
        details={"staff": email, "roles": format_roles(chosen).split(",")},
    )
    return token


def reset(
    session: Session,
    keyring: Keyring,
    email: str,
    *,
    actor: str,
    at: datetime,
    valid: timedelta,
    client: str | None = None,
) -> str:
    """A lost phone or password: the password and the TOTP secret are cleared, a new secret
    and a new enrolment link issued, every session ended. Returns the link's token."""
    account = _account(session, email)
    if account.disabled_at is not None:
        raise StaffError(f"{account.email} is disabled: a link would not work")
    account.password_hash = None
    account.enrolled_at = None
    account.totp_last_step = None
    _new_secret(keyring, account)
    _spend_enrolments(session, account.id)
    sessions.end_all(session, account.id)
    throttle.clear_address(session, account.email)
    token = _new_enrolment(session, account.id, at, valid)
    audit.record(
        session, "staff.reset", actor=actor, at=at, client=client, details={"staff": account.email}
    )
    return token


def disable(
    session: Session,
    email: str,
    *,
    actor: str,
    at: datetime,
    client: str | None = None,
    keep_an_admin: bool = True,
) -> None:
    """Disable the account and end its sessions. From the console the last enabled admin
    cannot be disabled (``keep_an_admin``); the command line, which holds the key file
    anyway, may."""
    account = _account(session, email)
    if account.disabled_at is not None:
        raise StaffError(f"{account.email} is already disabled")
    if keep_an_admin and StaffRole.ADMIN in parse_roles(account.roles):
        _keep_another_admin(session, account.id)
    account.disabled_at = at
    _spend_enrolments(session, account.id)
    sessions.end_all(session, account.id)
    audit.record(
        session,
        "staff.disabled",
        actor=actor,
        at=at,
        client=client,
        details={"staff": account.email},
    )


def set_roles(
    session: Session,
    email: str,
    roles: Iterable[StaffRole],
    *,
    actor: str,
    at: datetime,
    client: str | None = None,
) -> None:
    """Replace the account's roles; an admin's own or another's, but never the last enabled
    admin's admin role."""
    chosen = frozenset(roles)
    if not chosen:
        raise StaffError("give at least one role")
    account = _account(session, email)
    before = parse_roles(account.roles)
    if before == chosen:
        return
    if StaffRole.ADMIN in before and StaffRole.ADMIN not in chosen and account.disabled_at is None:
        _keep_another_admin(session, account.id)
    account.roles = format_roles(chosen)
    audit.record(
        session,
        "staff.roles_changed",
        actor=actor,
        at=at,
        client=client,
        details={
            "staff": account.email,
            "before": format_roles(before).split(","),
            "after": format_roles(chosen).split(","),
        },
    )


def _account(session: Session, email: str) -> StaffAccount:
    email = normalise_address(email)
    account = (
        session.execute(select(StaffAccount).where(StaffAccount.email == email).with_for_update())
        .scalars()
        .first()
    )
    if account is None:
        raise StaffError(f"no staff account for {email}")
    return account


def _keep_another_admin(session: Session, staff_id: int) -> None:
    # Locked (PostgreSQL) so that two admins disabling each other at once cannot both win.
    admins = session.execute(
        select(StaffAccount.id, StaffAccount.roles)
        .where(StaffAccount.disabled_at.is_(None), StaffAccount.id != staff_id)
        .with_for_update()
    ).all()
    if not any(StaffRole.ADMIN in parse_roles(roles) for _, roles in admins):
        raise Refusal("this is the last enabled admin: make another admin first")


def _new_secret(keyring: Keyring, account: StaffAccount) -> None:
    sealed = totp.sealed_for(keyring, account.id, totp.new_secret())
    account.totp_kek_id = sealed.kek_id
    account.totp_wrapped_key = sealed.wrapped_key
    account.totp_secret = sealed.content


def _new_enrolment(session: Session, staff_id: int, at: datetime, valid: timedelta) -> str:
    token, digest = new_token()
    session.add(
        StaffEnrolment(
            token_hash=digest, staff_id=staff_id, created_at=at, expires_at=at + valid, used=False
        )
    )
    return token


def _spend_enrolments(session: Session, staff_id: int) -> None:
    session.execute(
        update(StaffEnrolment)
        .where(StaffEnrolment.staff_id == staff_id, StaffEnrolment.used.is_(False))
        .values(used=True)
    )


async def enabled_admins(store: Store) -> int:
    async with store.session() as session:
        rows = await session.execute(
            select(StaffAccount.roles).where(StaffAccount.disabled_at.is_(None))
        )
        return sum(StaffRole.ADMIN in parse_roles(roles) for roles in rows.scalars())
