"""Portal accounts: creating one from a notification link, signing in, resetting and
changing the password, the security phrase. Every outcome is written to the audit log in the
same transaction.

The security phrase is the recipient's own words, shown in every later notification so that an
imitation without it stands out. It is sealed with the keyring like message content (associated
data ``portal-phrase:<id>``) and opened only to be written into our own mail to its owner
(notifications, account mail) and to keep a new password apart from it. It is never logged,
audited, shown in the portal or shown to staff.

Password hashing (argon2id, deliberately slow) runs in worker threads, at most a few at a time,
so sign-ins neither block the event loop nor let a burst of requests exhaust memory.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from sigillo.notify import new_token, token_hash
from sigillo.portal import sessions, throttle
from sigillo.portal.hashslots import HashSlots
from sigillo.portal.passwords import PasswordHasher, normalise
from sigillo.store import audit
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import Account, PasswordReset
from sigillo.store.rotation import portal_phrase_id

RESET_VALIDITY = timedelta(minutes=30)
RESETS_PER_HOUR = 3
"""Reset links mailed to one address per hour: enough for a person, too few to mail-bomb."""
MAX_ADDRESS = 320
PHRASE_MIN = 4
PHRASE_MAX = 80
"""Characters of a security phrase, after trimming: short enough to read at a glance."""

_SCHEME = re.compile(r"://|\b(?:https?|ftp|file|mailto|tel|javascript)\s*:", re.I)
"""Schemes mail clients link even without ``//`` ("data" is left out: Italian for "date")."""
_HOSTLIKE = re.compile(r"[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}")
"""``word.word``: mail clients turn such text into a link (``bank.example``, ``a.b.co``)."""
_DOTS = str.maketrans({"\u3002": ".", "\uff61": ".", "\ufe52": "."})
"""Full stops that some linkifiers read as a domain's dots; NFKC leaves these alone."""


def normalise_address(value: str) -> str:
    return value.strip().lower()


class PhraseProblem(enum.StrEnum):
    """Why a security phrase was refused; stable codes, translated by the portal."""

    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    UNPRINTABLE = "unprintable"
    LINK = "link"
    OVERLAPS_CREDENTIAL = "overlaps_credential"


def clean_phrase(value: str) -> str:
    """The phrase as it will be stored and shown: NFKC, trimmed."""
    return unicodedata.normalize("NFKC", value).strip()


def check_phrase(phrase: str, password: str) -> list[PhraseProblem]:
    """Every reason to refuse ``phrase`` (already cleaned); [] means acceptable.

    A notification keeps exactly one link, so nothing a mail client would turn into another
    (a URL, a host name, an address) may sit in it. The phrase goes out in every notification,
    over mail that may travel in plaintext: it must not give away the password, nor any part
    of it."""
    problems: list[PhraseProblem] = []
    if len(phrase) < PHRASE_MIN:
        problems.append(PhraseProblem.TOO_SHORT)
    if len(phrase) > PHRASE_MAX:
        problems.append(PhraseProblem.TOO_LONG)
    if not phrase.isprintable():
        # Control and format characters too: a bidi override could make it read otherwise.
        problems.append(PhraseProblem.UNPRINTABLE)
    flat = phrase.translate(_DOTS)
    if _SCHEME.search(flat) or _HOSTLIKE.search(flat) or "@" in flat:
        problems.append(PhraseProblem.LINK)
    folded_phrase = phrase.casefold()
    folded_password = normalise(password).casefold().strip()
    if folded_password and (
        folded_password in folded_phrase or (folded_phrase and folded_phrase in folded_password)
    ):
        problems.append(PhraseProblem.OVERLAPS_CREDENTIAL)
    return problems


def phrase_messages(gettext: Callable[[str], str], problems: list[PhraseProblem]) -> list[str]:
    _ = gettext
    text = {
        PhraseProblem.TOO_SHORT: _("The security phrase must have at least 4 characters."),
        PhraseProblem.TOO_LONG: _("The security phrase must have at most 80 characters."),
        PhraseProblem.UNPRINTABLE: _(
            "The security phrase may hold only letters, digits, spaces and punctuation."
        ),
        PhraseProblem.LINK: _(
            "The security phrase must not look like a web address or an email address."
        ),
        PhraseProblem.OVERLAPS_CREDENTIAL: _(
            "The security phrase must not contain your password, nor be part of it."
        ),
    }
    return [text[p] for p in problems]


def seal_phrase(session: Session, keyring: Keyring, account_id: int, phrase: str | None) -> None:
    """Store the account's phrase sealed, or remove it (None)."""
    values: dict[str, object] = {
        "phrase_kek_id": None,
        "phrase_wrapped_key": None,
        "security_phrase": None,
    }
    if phrase is not None:
        sealed = keyring.seal(portal_phrase_id(account_id), phrase.encode())
        values = {
            "phrase_kek_id": sealed.kek_id,
            "phrase_wrapped_key": sealed.wrapped_key,
            "security_phrase": sealed.content,
        }
    session.execute(update(Account).where(Account.id == account_id).values(**values))


def phrase_of(keyring: Keyring, account: Account) -> str | None:
    """The account's security phrase in clear, or None if it has none."""
    if (
        account.phrase_kek_id is None
        or account.phrase_wrapped_key is None
        or account.security_phrase is None
    ):
        return None
    return keyring.open(
        portal_phrase_id(account.id),
        account.phrase_kek_id,
        account.phrase_wrapped_key,
        account.security_phrase,
    ).decode()


class PasswordChange(enum.Enum):
    CHANGED = "changed"
    WRONG = "wrong"
    """The current password is wrong, or sign-in is locked."""
    PHRASE = "phrase"
    """The new password overlaps the security phrase."""


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

    async def register(
        self,
        address: str,
        password: str,
        client: str,
        now: datetime,
        *,
        phrase: str | None = None,
        keyring: Keyring | None = None,
    ) -> str | None:
        """Create the account (with its security phrase, if chosen: ``keyring`` seals it) and
        sign it in; returns the session cookie value, or None when the address already has an
        account (a second link must never reset a password)."""
        if phrase is not None and keyring is None:
            raise ValueError("a security phrase needs the keyring to seal it")
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
            if phrase is not None and keyring is not None:
                seal_phrase(session, keyring, created, phrase)
            # Whether a phrase was chosen, never the phrase.
            audit.record(
                session,
                "portal.register",
                actor=address,
                at=now,
                client=client,
                details={"phrase": phrase is not None},
            )
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
        *,
        keyring: Keyring | None = None,
    ) -> PasswordChange:
        """Change the password of a signed-in user who knows the current one; every other
        session ends. With ``keyring``, a password that overlaps the account's security phrase
        is refused, but only once the current password is proven: otherwise a session alone
        would be an oracle for the phrase, which the portal deliberately does not show."""
        account = await self._confirmed(user, current, client, now, "portal.password_change_failed")
        if account is None:
            return PasswordChange.WRONG
        phrase = None if keyring is None else phrase_of(keyring, account)
        if phrase is not None and PhraseProblem.OVERLAPS_CREDENTIAL in check_phrase(
            phrase, password
        ):
            return PasswordChange.PHRASE
        encoded = await self._hash(password)

        def write(session: Session) -> None:
            _set_password(session, user.account_id, encoded, now)
            sessions.ROWS.end_all(session, user.account_id, keep=user.session_hash)
            audit.record(
                session, "portal.password_changed", actor=user.address, at=now, client=client
            )

        await self.store.write(write)
        return PasswordChange.CHANGED

    async def _confirmed(
        self, user: sessions.SignedIn, current: str, client: str, now: datetime, failure: str
    ) -> Account | None:
        """The signed-in user's account if ``current`` is its password and sign-in is not
        locked; otherwise None, and a wrong password counts towards the lockout like a failed
        sign-in (audited as ``failure``)."""
        if await throttle.PORTAL.locked(self.store, user.address, client, now):
            return None
        account = await self.find(user.address)
        if account is not None and await self._verify(account.password_hash, current):
            return account

        def failed(session: Session) -> None:
            throttle.PORTAL.record_failure(session, user.address, client, now)
            audit.record(session, failure, actor=user.address, at=now, client=client)

        await self.store.write(failed)
        return None

    async def change_phrase(
        self,
        user: sessions.SignedIn,
        current: str,
        phrase: str | None,
        keyring: Keyring,
        client: str,
        now: datetime,
    ) -> bool:
        """Set (or, with None, remove) the security phrase of a signed-in user who confirms
        the current password: a session left open on a shared computer must not be enough to
        change what tells this person's genuine mail from an imitation. False when the
        password is wrong or sign-in is locked; the caller checks the phrase first."""
        account = await self._confirmed(user, current, client, now, "portal.phrase_change_failed")
        if account is None:
            return False
        account_id = account.id

        def write(session: Session) -> None:
            seal_phrase(session, keyring, account_id, phrase)
            audit.record(
                session,
                "portal.phrase_changed",
                actor=user.address,
                at=now,
                client=client,
                details={"phrase": phrase is not None},
            )

        await self.store.write(write)
        return True


def _set_password(session: Session, account_id: int, encoded: str, now: datetime) -> None:
    session.execute(
        update(Account)
        .where(Account.id == account_id)
        .values(password_hash=encoded, password_changed_at=now)
    )
