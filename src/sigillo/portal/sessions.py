"""Server-side sessions and form tokens.

Every browser carries one cookie holding 128 random bits. While nobody is signed in the value
exists only in the cookie; signing in replaces it with a fresh value whose SHA-256 is stored
with the account (so a fixated or leaked pre-login value never becomes a session, and a copy
of the database holds no usable session). Form tokens are an HMAC of the cookie value under a
secret derived from the key file: a page on another site can neither read nor forge one.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

from sqlalchemy import Row, Select, delete, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from sigillo.store.db import Store
from sigillo.store.models import Account, PortalSession, StaffSession

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


def cookie_name(base: str, *, https: bool) -> str:
    """The session cookie's name. Under https the __Host- prefix makes the browser refuse
    the cookie unless it is Secure, set by this host itself, with Path=/ and no Domain: no
    subdomain can plant one."""
    return f"__Host-{base}" if https else base


class FormTokens:
    """Form tokens bound to a cookie value: an HMAC under a secret of their own, so a page
    on another site can neither read nor forge one (the portal and the staff console each
    derive their own secret).

    ``secrets`` gives the current secrets, the one to sign with first (``Keyring.derive_all``):
    after a key rotation, a form served just before it still validates until its key is
    retired, in every process, whenever each re-read the key file."""

    def __init__(self, secrets: Callable[[], Sequence[bytes]]) -> None:
        self._secrets = secrets

    @staticmethod
    def _mac(secret: bytes, cookie_value: str) -> str:
        return hmac.new(secret, b"form:" + cookie_value.encode(), hashlib.sha256).hexdigest()

    def token(self, cookie_value: str) -> str:
        return self._mac(self._secrets()[0], cookie_value)

    def valid(self, cookie_value: str, token: object) -> bool:
        if not isinstance(token, str):
            return False
        return any(
            hmac.compare_digest(self._mac(secret, cookie_value), token)
            for secret in self._secrets()
        )


class SessionUser(Protocol):
    @property
    def session_hash(self) -> str: ...


U = TypeVar("U", bound=SessionUser)
Model = TypeVar("Model", PortalSession, StaffSession)
SessionQuery: TypeAlias = Select[*tuple[Any, ...]]
SessionRow: TypeAlias = Row[*tuple[Any, ...]]


@dataclass(frozen=True)
class Lookup(Generic[U]):
    user: U | None
    expired: bool
    """The cookie named a session that has timed out (the page says so)."""
    touch: bool
    """``last_seen_at`` is due for a refresh."""


@dataclass(frozen=True)
class SessionRows(Generic[Model]):
    """Where one kind of session is kept (the portal's, the console's): its table and the
    column that names whose session a row is."""

    model: type[Model]
    owner: InstrumentedAttribute[int]

    def start(self, session: Session, owner_id: int, client: str, now: datetime) -> str:
        """Open a session in the caller's transaction; returns the new cookie value (a value
        the browser had before signing in never becomes a session)."""
        value = new_cookie_value()
        session.add(
            self.model(
                id_hash=session_hash(value),
                created_at=now,
                last_seen_at=now,
                client_address=client,
                **{self.owner.key: owner_id},
            )
        )
        return value

    def end(self, session: Session, digest: str) -> None:
        session.execute(delete(self.model).where(self.model.id_hash == digest))

    def end_all(self, session: Session, owner_id: int, keep: str | None = None) -> None:
        """End every session of the owner, but ``keep`` if given."""
        statement = delete(self.model).where(self.owner == owner_id)
        if keep is not None:
            statement = statement.where(self.model.id_hash != keep)
        session.execute(statement)

    def touch(self, session: Session, digest: str, now: datetime) -> None:
        session.execute(
            update(self.model).where(self.model.id_hash == digest).values(last_seen_at=now)
        )


class CookieSessions(abc.ABC, Generic[U]):
    """Sessions behind one cookie, with the same timeouts for the portal and the console:
    15 minutes idle, 12 hours at most. A subclass says how a session's row and owner are
    read (``_select``, ``_user``) and whose sessions end without having timed out."""

    def __init__(
        self,
        store: Store,
        tokens: FormTokens,
        rows: SessionRows[Any],
        *,
        cookie: str,
        https: bool,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.rows = rows
        self.https = https
        self.cookie_name = cookie_name(cookie, https=https)

    @abc.abstractmethod
    def _select(self, digest: str) -> SessionQuery:
        """The session row with ``digest`` and what ``_user`` needs of its owner; it has
        ``created_at`` and ``last_seen_at`` columns."""

    @abc.abstractmethod
    def _user(self, row: SessionRow, digest: str) -> U:
        """The signed-in owner of a live session."""

    def _refused(self, row: SessionRow) -> bool:
        """The owner may no longer sign in: the session ends, and no page says it timed out."""
        return False

    async def lookup(self, cookie_value: str, now: datetime) -> Lookup[U]:
        digest = session_hash(cookie_value)
        async with self.store.session() as session:
            row = (await session.execute(self._select(digest))).first()
        if row is None:
            return Lookup(None, expired=False, touch=False)
        if self._refused(row):
            await self.store.write(lambda s: self.rows.end(s, digest))
            return Lookup(None, expired=False, touch=False)
        if now - row.last_seen_at >= IDLE_TIMEOUT or now - row.created_at >= ABSOLUTE_TIMEOUT:
            await self.store.write(lambda s: self.rows.end(s, digest))
            return Lookup(None, expired=True, touch=False)
        user = self._user(row, digest)
        return Lookup(user, expired=False, touch=now - row.last_seen_at >= TOUCH_AFTER)

    async def touch(self, user: U, now: datetime) -> None:
        await self.store.write(lambda s: self.rows.touch(s, user.session_hash, now))


ROWS = SessionRows(PortalSession, PortalSession.account_id)
"""The portal's session rows: ``start`` them when signing in, ``end`` them when signing out."""


class Sessions(CookieSessions[SignedIn]):
    """The portal's sessions: ``portal_sessions`` rows, the ``sigillo`` cookie."""

    def __init__(self, store: Store, tokens: FormTokens, *, https: bool) -> None:
        super().__init__(store, tokens, ROWS, cookie="sigillo", https=https)

    def _select(self, digest: str) -> SessionQuery:
        return (
            select(
                PortalSession.account_id,
                PortalSession.created_at,
                PortalSession.last_seen_at,
                Account.address,
            )
            .join(Account, Account.id == PortalSession.account_id)
            .where(PortalSession.id_hash == digest)
        )

    def _user(self, row: SessionRow, digest: str) -> SignedIn:
        return SignedIn(row.account_id, row.address, digest)
