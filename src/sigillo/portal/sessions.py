"""Server-side sessions and form tokens.

Every browser carries one cookie holding 128 random bits. While nobody is signed in the value
exists only in the cookie; signing in replaces it with a fresh value whose SHA-256 is stored
with the account (so a fixated or leaked pre-login value never becomes a session, and a copy
of the database holds no usable session). Form tokens are an HMAC of the cookie value under a
secret derived from the key file: a page on another site can neither read nor forge one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from sigillo.store.db import Store
from sigillo.store.models import Account, PortalSession

IDLE_TIMEOUT = timedelta(minutes=15)
ABSOLUTE_TIMEOUT = timedelta(hours=12)
TOUCH_AFTER = timedelta(minutes=1)
"""``last_seen_at`` is written at most this often: a session may end up to a minute early,
never late, and reading a page does not cost a write every time."""
SESSION_BYTES = 16
"""128-bit session identifiers."""


def new_cookie_value() -> str:
    return secrets.token_urlsafe(SESSION_BYTES)


def session_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class SignedIn:
    account_id: int
    address: str
    session_hash: str


@dataclass(frozen=True)
class Lookup:
    user: SignedIn | None
    expired: bool
    """The cookie named a session that has timed out (the page says so)."""
    touch: bool
    """``last_seen_at`` is due for a refresh."""


def cookie_name(base: str, *, https: bool) -> str:
    """The session cookie's name. Under https the __Host- prefix makes the browser refuse
    the cookie unless it is Secure, set by this host itself, with Path=/ and no Domain: no
    subdomain can plant one."""
    return f"__Host-{base}" if https else base


class FormTokens:
    """Form tokens bound to a cookie value: an HMAC under a secret of their own, so a page
    on another site can neither read nor forge one (the portal and the staff console each
    derive their own secret)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def token(self, cookie_value: str) -> str:
        mac = hmac.new(self._secret, b"form:" + cookie_value.encode(), hashlib.sha256)
        return mac.hexdigest()

    def valid(self, cookie_value: str, token: object) -> bool:
        return isinstance(token, str) and hmac.compare_digest(self.token(cookie_value), token)


class Sessions:
    def __init__(self, store: Store, secret: bytes, *, https: bool) -> None:
        self.store = store
        self._tokens = FormTokens(secret)
        self.https = https
        self.cookie_name = cookie_name("sigillo", https=https)

    def csrf_token(self, cookie_value: str) -> str:
        return self._tokens.token(cookie_value)

    def csrf_valid(self, cookie_value: str, token: object) -> bool:
        return self._tokens.valid(cookie_value, token)

    async def lookup(self, cookie_value: str, now: datetime) -> Lookup:
        digest = session_hash(cookie_value)
        async with self.store.session() as session:
            row = (
                await session.execute(
                    select(
                        PortalSession.account_id,
                        PortalSession.created_at,
                        PortalSession.last_seen_at,
                        Account.address,
                    )
                    .join(Account, Account.id == PortalSession.account_id)
                    .where(PortalSession.id_hash == digest)
                )
            ).first()
        if row is None:
            return Lookup(None, expired=False, touch=False)
        account_id, created_at, last_seen_at, address = row
        if now - last_seen_at >= IDLE_TIMEOUT or now - created_at >= ABSOLUTE_TIMEOUT:
            await self.store.write(lambda s: end(s, digest))
            return Lookup(None, expired=True, touch=False)
        user = SignedIn(account_id, address, digest)
        return Lookup(user, expired=False, touch=now - last_seen_at >= TOUCH_AFTER)

    async def touch(self, user: SignedIn, now: datetime) -> None:
        def write(session: Session) -> None:
            session.execute(
                update(PortalSession)
                .where(PortalSession.id_hash == user.session_hash)
                .values(last_seen_at=now)
            )

        await self.store.write(write)


def start(session: Session, account_id: int, client: str, now: datetime) -> str:
    """Open a session for ``account_id`` in the caller's transaction; returns the cookie value."""
    value = new_cookie_value()
    session.add(
        PortalSession(
            id_hash=session_hash(value),
            account_id=account_id,
            created_at=now,
            last_seen_at=now,
            client_address=client,
        )
    )
    return value


def end(session: Session, digest: str) -> None:
    session.execute(delete(PortalSession).where(PortalSession.id_hash == digest))


def end_all(session: Session, account_id: int, keep: str | None = None) -> None:
    """End every session of the account (a password change), but ``keep`` if given."""
    statement = delete(PortalSession).where(PortalSession.account_id == account_id)
    if keep is not None:
        statement = statement.where(PortalSession.id_hash != keep)
    session.execute(statement)
