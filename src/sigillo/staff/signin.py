"""Staff enrolment and sign-in: a password and a TOTP code, both, every time.

A wrong password and a wrong code get the same answer; an unknown address costs the same
argon2 verification as a known one (against the hasher's decoy). Disabled accounts and
accounts not yet enrolled cannot sign in. Throttling is the portal's (``staff:`` keys):
five failures lock the address for 15 minutes. Every outcome is audited, and the audit
entry of a failure says which factor failed, so a right password with a wrong code (a
stolen password) stands out to the auditor; the page never says.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from sigillo.notify import token_hash
from sigillo.portal.hashslots import HashSlots
from sigillo.portal.passwords import PasswordHasher
from sigillo.staff import sessions, throttle, totp
from sigillo.staff.sessions import SignedInStaff
from sigillo.store import audit
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import StaffAccount, StaffEnrolment


class SignIn(enum.Enum):
    OK = "ok"
    WRONG = "wrong"
    """Unknown address, wrong password, wrong or replayed code, disabled or not enrolled:
    the page never says which."""
    LOCKED = "locked"


@dataclass(frozen=True)
class SignInResult:
    outcome: SignIn
    cookie: str | None = None


@dataclass(frozen=True)
class EnrolTarget:
    """An enrolment link that can still be used, and what its page shows."""

    staff_id: int
    email: str
    secret: str


class Enrol(enum.Enum):
    OK = "ok"
    WRONG_CODE = "wrong_code"
    GONE = "gone"
    """The link was used, expired or spent meanwhile."""


@dataclass(frozen=True)
class EnrolResult:
    outcome: Enrol
    cookie: str | None = None


class StaffSignIn(HashSlots):
    def __init__(
        self, store: Store, keyring: Keyring, hasher: PasswordHasher, *, hash_slots: int = 2
    ) -> None:
        self.store = store
        self.keyring = keyring
        super().__init__(hasher, hash_slots)

    # -- enrolment -----------------------------------------------------------------------

    async def enrolment(self, token: str, now: datetime) -> EnrolTarget | None:
        async with self.store.session() as session:
            account = (
                (
                    await session.execute(
                        select(StaffAccount)
                        .join(StaffEnrolment, StaffEnrolment.staff_id == StaffAccount.id)
                        .where(
                            StaffEnrolment.token_hash == token_hash(token),
                            StaffEnrolment.used.is_(False),
                            StaffEnrolment.expires_at > now,
                            StaffAccount.disabled_at.is_(None),
                        )
                    )
                )
                .scalars()
                .first()
            )
        if account is None:
            return None
        secret = totp.secret_of(self.keyring, account)
        return EnrolTarget(account.id, account.email, secret) if secret else None

    async def enrol(
        self, target: EnrolTarget, token: str, password: str, code: str, client: str, now: datetime
    ) -> EnrolResult:
        """Set the password, confirm the authenticator with one code, spend the link and
        sign in. The password is checked against the rules by the caller."""
        step = totp.accepted_step(target.secret, code, None, now)
        if step is None:
            return EnrolResult(Enrol.WRONG_CODE)
        encoded = await self._hash(password)

        def write(session: Session) -> str | None:
            # Spending the link comes first: of two concurrent uses only one finds it unused.
            spent = session.execute(
                update(StaffEnrolment)
                .where(
                    StaffEnrolment.token_hash == token_hash(token),
                    StaffEnrolment.used.is_(False),
                    StaffEnrolment.expires_at > now,
                )
                .values(used=True)
                .returning(StaffEnrolment.staff_id)
            ).first()
            if spent is None or spent[0] != target.staff_id:
                return None
            enrolled = session.execute(
                update(StaffAccount)
                .where(StaffAccount.id == target.staff_id, StaffAccount.disabled_at.is_(None))
                .values(
                    password_hash=encoded,
                    enrolled_at=now,
                    totp_last_step=step,
                    last_login_at=now,
                )
                .returning(StaffAccount.id)
            ).first()
            if enrolled is None:
                return None
            audit.record(session, "staff.enrolled", actor=target.email, at=now, client=client)
            audit.record(session, "staff.login", actor=target.email, at=now, client=client)
            return sessions.ROWS.start(session, target.staff_id, client, now)

        cookie = await self.store.write(write)
        if cookie is None:
            return EnrolResult(Enrol.GONE)
        return EnrolResult(Enrol.OK, cookie)

    # -- sign-in -------------------------------------------------------------------------

    async def sign_in(
        self, email: str, password: str, code: str, client: str, now: datetime
    ) -> SignInResult:
        if await throttle.STAFF.locked(self.store, email, client, now):
            # Refused before either factor is looked at: the right ones do not help.
            await audit.log(self.store, "staff.login_refused", actor=email, at=now, client=client)
            return SignInResult(SignIn.LOCKED)
        async with self.store.session() as session:
            account = (
                (await session.execute(select(StaffAccount).where(StaffAccount.email == email)))
                .scalars()
                .first()
            )
        usable = (
            account is not None
            and account.disabled_at is None
            and account.enrolled_at is not None
            and account.password_hash is not None
        )
        encoded = account.password_hash if account is not None and usable else None
        password_ok = await self._verify(encoded, password)
        step = None
        if account is not None and password_ok:
            secret = totp.secret_of(self.keyring, account)
            if secret is not None:
                step = totp.accepted_step(secret, code, account.totp_last_step, now)
        if account is None or step is None:
            reason = (
                "unknown"
                if account is None
                else "disabled"
                if account.disabled_at is not None
                else "not_enrolled"
                if account.enrolled_at is None
                else "password"
                if not password_ok
                else "code"
            )
            await self._failed(email, client, now, reason)
            return SignInResult(SignIn.WRONG)
        staff_id = account.id
        rehash = await self._rehash(encoded, password)

        def succeeded(session: Session) -> str | None:
            # The step is claimed atomically: the same code sent twice at once signs in once.
            claimed = session.execute(
                update(StaffAccount)
                .where(
                    StaffAccount.id == staff_id,
                    StaffAccount.disabled_at.is_(None),
                    or_(StaffAccount.totp_last_step.is_(None), StaffAccount.totp_last_step < step),
                )
                .values(totp_last_step=step, last_login_at=now)
                .returning(StaffAccount.id)
            ).first()
            if claimed is None:
                return None
            if rehash is not None:
                session.execute(
                    update(StaffAccount)
                    .where(StaffAccount.id == staff_id)
                    .values(password_hash=rehash)
                )
            throttle.STAFF.clear_address(session, email)
            audit.record(session, "staff.login", actor=email, at=now, client=client)
            return sessions.ROWS.start(session, staff_id, client, now)

        cookie = await self.store.write(succeeded)
        if cookie is None:
            await self._failed(email, client, now, "code")
            return SignInResult(SignIn.WRONG)
        return SignInResult(SignIn.OK, cookie)

    async def _failed(self, email: str, client: str, now: datetime, reason: str) -> None:
        def write(session: Session) -> None:
            throttle.STAFF.record_failure(session, email, client, now)
            audit.record(
                session,
                "staff.login_failed",
                actor=email,
                at=now,
                client=client,
                details={"reason": reason},
            )

        await self.store.write(write)

    async def sign_out(self, user: SignedInStaff, client: str, now: datetime) -> None:
        def write(session: Session) -> None:
            sessions.ROWS.end(session, user.session_hash)
            audit.record(session, "staff.logout", actor=user.email, at=now, client=client)

        await self.store.write(write)
