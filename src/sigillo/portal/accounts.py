"""Portal accounts: creating one from a notification link, signing in, resetting and
changing the password. Every outcome is written to the audit log in the same transaction.

Password hashing (argon2id, deliberately slow) runs in worker threads, at most a few at a time,
so sign-ins neither block the event loop nor let a burst of requests exhaust memory.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from sigillo.notify import new_token, token_hash
from sigillo.portal import sessions, throttle
from sigillo.portal.hashslots import HashSlots
from sigillo.portal.passwords import PasswordHasher
from sigillo.store import audit
from sigillo.store.db import Store
from sigillo.store.models import Account, PasswordReset

RESET_VALIDITY = timedelta(minutes=30)
RESETS_PER_HOUR = 3
"""Reset links mailed to one address per hour: enough for a person, too few to mail-bomb."""
MAX_ADDRESS = 320


def normalise_address(value: str) -> str:
    return value.strip().lower()


class SignIn(enum.Enum):
    OK = "ok"
    WRONG = "wrong"
    """Unknown address or wrong password: the page never says which."""
    LOCKED = "locked"


@dataclass(frozen=True)
class SignInResult:
    outcome: SignIn
    cookie: str | None = None
    account_id: int | None = None


class Accounts(HashSlots):
    def __init__(self, store: Store, hasher: PasswordHasher, *, hash_slots: int = 2) -> None:
        self.store = store
        super().__init__(hasher, hash_slots)

    async def find(self, address: str) -> Account | None:
        async with self.store.session() as session:
            row = await session.execute(select(Account).where(Account.address == address))
            return row.scalars().first()

    async def register(self, address: str, password: str, client: str, now: datetime) -> str | None:
        """Create the account and sign it in; returns the session cookie value, or None when
        the address already has an account (a second link must never reset a password)."""
        encoded = await self._hash(password)

        def create(session: Session) -> str | None:
            insert = (
                postgresql.insert
                if session.get_bind().dialect.name == "postgresql"
                else sqlite.insert
            )
            created = session.execute(
                insert(Account)
                .values(
                    address=address,
                    password_hash=encoded,
                    created_at=now,
                    password_changed_at=now,
                )
                .on_conflict_do_nothing(index_elements=["address"])
                .returning(Account.id)
            ).scalar()
            if created is None:
                return None
            audit.record(session, "portal.register", actor=address, at=now, client=client)
            audit.record(session, "portal.login", actor=address, at=now, client=client)
            return sessions.ROWS.start(session, created, client, now)

        return await self.store.write(create)

    async def sign_in(
        self, address: str, password: str, client: str, now: datetime
    ) -> SignInResult:
        if await throttle.PORTAL.locked(self.store, address, client, now):
            # Refused before the password is looked at: the right one does not help.
            await audit.log(
                self.store, "portal.login_refused", actor=address, at=now, client=client
            )
            return SignInResult(SignIn.LOCKED)
        account = await self.find(address)
        good = await self._verify(account.password_hash if account else None, password)
        if account is None or not good:

            def failed(session: Session) -> None:
                throttle.PORTAL.record_failure(session, address, client, now)
                audit.record(session, "portal.login_failed", actor=address, at=now, client=client)

            await self.store.write(failed)
            return SignInResult(SignIn.WRONG)
        account_id = account.id
        rehash = await self._rehash(account.password_hash, password)

        def succeeded(session: Session) -> str:
            throttle.PORTAL.clear_address(session, address)
            if rehash is not None:
                session.execute(
                    update(Account).where(Account.id == account_id).values(password_hash=rehash)
                )
            audit.record(session, "portal.login", actor=address, at=now, client=client)
            return sessions.ROWS.start(session, account_id, client, now)

        cookie = await self.store.write(succeeded)
        return SignInResult(SignIn.OK, cookie, account_id)

    async def sign_out(self, user: sessions.SignedIn, client: str, now: datetime) -> None:
        def write(session: Session) -> None:
            sessions.ROWS.end(session, user.session_hash)
            audit.record(session, "portal.logout", actor=user.address, at=now, client=client)

        await self.store.write(write)

    async def request_reset(
        self, address: str, client: str, now: datetime
    ) -> tuple[Account, str] | None:
        """A fresh reset token for the address's account, or None (no account, or too many
        links already sent this hour). The caller mails it; the page says the same either way.
        Every request is audited, so someone probing for accounts shows up in the log."""
        account = await self.find(address)
        if account is None:
            await audit.log(
                self.store,
                "portal.reset_requested",
                actor=address,
                at=now,
                client=client,
                details={"account": False},
            )
            return None
        account_id = account.id
        token, digest = new_token()

        def write(session: Session) -> bool:
            # Locked so that concurrent requests count each other's links (PostgreSQL).
            session.execute(select(Account.id).where(Account.id == account_id).with_for_update())
            recent = session.execute(
                select(func.count())
                .select_from(PasswordReset)
                .where(
                    PasswordReset.account_id == account_id,
                    PasswordReset.created_at > now - timedelta(hours=1),
                )
            ).scalar_one()
            mailed = recent < RESETS_PER_HOUR
            if mailed:
                session.add(
                    PasswordReset(
                        token_hash=digest,
                        account_id=account_id,
                        created_at=now,
                        expires_at=now + RESET_VALIDITY,
                        used=False,
                    )
                )
            audit.record(
                session,
                "portal.reset_requested",
                actor=address,
                at=now,
                client=client,
                details={"account": True, "mailed": mailed},
            )
            return mailed

        return (account, token) if await self.store.write(write) else None

    async def reset_target(self, token: str, now: datetime) -> Account | None:
        """The account a reset link may still set a password for."""
        async with self.store.session() as session:
            row = await session.execute(
                select(Account)
                .join(PasswordReset, PasswordReset.account_id == Account.id)
                .where(
                    PasswordReset.token_hash == token_hash(token),
                    PasswordReset.used.is_(False),
                    PasswordReset.expires_at > now,
                )
            )
            return row.scalars().first()

    async def reset(self, token: str, password: str, client: str, now: datetime) -> Account | None:
        """Set the password through a reset link (single use); ends every session."""
        account = await self.reset_target(token, now)
        if account is None:
            return None
        encoded = await self._hash(password)
        account_id, address = account.id, account.address

        def write(session: Session) -> bool:
            # Spend the token first: of two concurrent uses, only one finds it unused.
            spent = session.execute(
                update(PasswordReset)
                .where(
                    PasswordReset.token_hash == token_hash(token),
                    PasswordReset.used.is_(False),
                    PasswordReset.expires_at > now,
                )
                .values(used=True)
                .returning(PasswordReset.token_hash)
            ).first()
            if spent is None:
                return False
            _set_password(session, account_id, encoded, now)
            sessions.ROWS.end_all(session, account_id)
            # The link proved control of the mailbox: an address lockout ends with it.
            throttle.PORTAL.clear_address(session, address)
            audit.record(session, "portal.password_reset", actor=address, at=now, client=client)
            return True

        return account if await self.store.write(write) else None

    async def change_password(
        self,
        user: sessions.SignedIn,
        current: str,
        password: str,
        client: str,
        now: datetime,
    ) -> bool:
        """Change the password of a signed-in user who knows the current one; every other
        session ends."""
        if await throttle.PORTAL.locked(self.store, user.address, client, now):
            return False
        account = await self.find(user.address)
        if account is None or not await self._verify(account.password_hash, current):

            def failed(session: Session) -> None:
                throttle.PORTAL.record_failure(session, user.address, client, now)
                audit.record(
                    session,
                    "portal.password_change_failed",
                    actor=user.address,
                    at=now,
                    client=client,
                )

            await self.store.write(failed)
            return False
        encoded = await self._hash(password)

        def write(session: Session) -> None:
            _set_password(session, user.account_id, encoded, now)
            sessions.ROWS.end_all(session, user.account_id, keep=user.session_hash)
            audit.record(
                session, "portal.password_changed", actor=user.address, at=now, client=client
            )

        await self.store.write(write)
        return True


def _set_password(session: Session, account_id: int, encoded: str, now: datetime) -> None:
    session.execute(
        update(Account)
        .where(Account.id == account_id)
        .values(password_hash=encoded, password_changed_at=now)
    )
