"""Key rotation: a new key-encryption key, every data key re-wrapped under it, old keys retired.

A run goes through three phases; each is safe to interrupt (Ctrl-C, SIGTERM, SIGKILL) and the
next run resumes where it stopped, with every row readable at every moment:

A. Start. Unless the key file still holds an older key (an earlier run was interrupted, or
   left it for its grace period), a new key is added and made active, and ``keys.rotated`` is
   audited. Running processes seal under it from their next seal (see ``crypto``).
B. Re-wrap. Data keys sealed under an older key are unwrapped and wrapped under the active one,
   a batch per transaction, walking each table by primary key. An UPDATE applies only while
   the row still holds the wrapped key it was read with, so a data key shredded meanwhile is
   never written back and a row re-wrapped by another run is left alone. Content ciphertext
   is never touched.
C. Retire. An older key leaves the file once its successor has been active for the grace
   period (by then every running process has re-read the file and none can still seal under
   it), a last pass has re-wrapped anything sealed under it in that window, and no row uses
   it. ``keys.retired`` is audited before the file changes, so a crash in between leaves an
   entry for a key the next run retires without a second entry.

The audit entry for a new key follows the file change; a run that resumes a rotation whose
entry is missing writes it then.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, bindparam, func, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from sigillo.store import audit
from sigillo.store.crypto import Keyring, KeyringError, KeySet, update_key_file
from sigillo.store.db import Store
from sigillo.store.models import Account, AuditEvent, Base, Message, StaffAccount

ROTATED = "keys.rotated"
RETIRED = "keys.retired"


def staff_totp_id(staff_id: int) -> str:
    """The id a staff member's TOTP secret is sealed under (its associated data)."""
    return f"staff-totp:{staff_id}"


def portal_phrase_id(account_id: int) -> str:
    """The id a portal account's security phrase is sealed under (its associated data)."""
    return f"portal-phrase:{account_id}"


class Sealing(enum.StrEnum):
    """The columns holding a wrapped data key."""

    MESSAGES = "messages"
    STAFF_TOTP = "staff_totp"
    PORTAL_PHRASE = "portal_phrase"


@dataclass(frozen=True)
class _Columns:
    model: type[Base]
    id: InstrumentedAttribute[Any]
    kek_id: InstrumentedAttribute[Any]
    wrapped_key: InstrumentedAttribute[Any]
    first: object
    """A value below every primary key: where a walk over the table starts."""
    sealed_id: Callable[[Any], str]


def _columns(sealing: Sealing) -> _Columns:
    if sealing is Sealing.MESSAGES:
        return _Columns(Message, Message.id, Message.kek_id, Message.wrapped_key, "", str)
    if sealing is Sealing.PORTAL_PHRASE:
        return _Columns(
            Account,
            Account.id,
            Account.phrase_kek_id,
            Account.phrase_wrapped_key,
            -1,
            portal_phrase_id,
        )
    return _Columns(
        StaffAccount,
        StaffAccount.id,
        StaffAccount.totp_kek_id,
        StaffAccount.totp_wrapped_key,
        -1,
        staff_totp_id,
    )


class Progress(Protocol):
    """What a run reports while it works; the CLI draws it, tests interrupt through it."""

    def rewrapping(self, total: int) -> None:
        """A re-wrap pass starts over ``total`` rows."""

    def advanced(self, rows: int) -> None:
        """A batch of ``rows`` rows committed."""

    def waiting(self, until: datetime) -> None:
        """Waiting for the grace period of an older key to end."""


class Quiet:
    def rewrapping(self, total: int) -> None:
        pass

    def advanced(self, rows: int) -> None:
        pass

    def waiting(self, until: datetime) -> None:
        pass


@dataclass(frozen=True)
class KeptKey:
    kek_id: str
    reason: str
    rows: int
    """Rows still sealed under it."""
    retire_after: datetime | None
    """When its grace period ends; None when rows hold it."""


@dataclass(frozen=True)
class Unreadable:
    """A row whose data key did not open under the key it names: it cannot be re-wrapped,
    and its key stays."""

    sealing: Sealing
    row: str
    kek_id: str


@dataclass(frozen=True)
class RotationResult:
    active: str
    previous: str | None
    """The key active before this rotation."""
    created: bool
    """This run made the new key (False: it resumed an unfinished rotation)."""
    rewrapped: int
    retired: tuple[str, ...]
    kept: tuple[KeptKey, ...]
    unreadable: tuple[Unreadable, ...]
    missing: dict[str, int]
    """Rows naming a key the file does not hold (lost before this run), by key id."""


@dataclass(frozen=True)
class BatchResult:
    seen: int
    rewrapped: int
    last: object | None
    """The last primary key looked at; None when the table has no more."""
    unreadable: tuple[Unreadable, ...]


def rewrap_batch(
    session: Session,
    sealing: Sealing,
    keyring: Keyring,
    after: object,
    limit: int,
) -> BatchResult:
    """Re-wrap up to ``limit`` rows of ``sealing`` past primary key ``after``: one batch, in
    the caller's transaction."""
    cols = _columns(sealing)
    older = keyring.keyset.older
    rows = session.execute(
        select(cols.id, cols.kek_id, cols.wrapped_key)
        .where(cols.kek_id.in_(older), cols.id > after)
        .order_by(cols.id)
        .limit(limit)
    ).all()
    changes: list[dict[str, object]] = []
    unreadable: list[Unreadable] = []
    for row_id, kek_id, wrapped in rows:
        try:
            new_kek, new_wrapped = keyring.rewrap(cols.sealed_id(row_id), kek_id, wrapped)
        except KeyringError:
            unreadable.append(Unreadable(sealing, str(row_id), kek_id))
            continue
        changes.append(
            {
                "b_id": row_id,
                "b_old_kek": kek_id,
                "b_old_key": wrapped,
                "b_kek": new_kek,
                "b_key": new_wrapped,
            }
        )
    rewrapped = 0
    if changes:
        # Only while the row still holds the wrapped key read above: a data key shredded
        # meanwhile is never written back, and a row re-wrapped by another run is left as it
        # is. One executemany on the connection: a quarter of the time of an ORM statement per row.
        stmt = (
            update(cols.model)
            .where(
                cols.id == bindparam("b_id"),
                cols.kek_id == bindparam("b_old_kek"),
                cols.wrapped_key == bindparam("b_old_key"),
            )
            .values({cols.kek_id: bindparam("b_kek"), cols.wrapped_key: bindparam("b_key")})
            .execution_options(synchronize_session=False)
        )
        result = cast("CursorResult[Any]", session.connection().execute(stmt, changes))
        rewrapped = result.rowcount
        if rewrapped < 0:
            # asyncpg reports no rowcount for executemany: count the rows now under the key
            # this batch wrapped to (another run wrapping to the same key would count too).
            ids = [c["b_id"] for c in changes]
            targets = {c["b_kek"] for c in changes}
            rewrapped = session.execute(
                select(func.count()).where(cols.id.in_(ids), cols.kek_id.in_(targets))
            ).scalar_one()
    last = rows[-1][0] if len(rows) == limit else None
    return BatchResult(len(rows), rewrapped, last, tuple(unreadable))


def _batch_work(
    sealing: Sealing, keyring: Keyring, after: object, limit: int
) -> Callable[[Session], BatchResult]:
    return lambda session: rewrap_batch(session, sealing, keyring, after, limit)


async def key_usage(store: Store) -> dict[str, int]:
    """Rows sealed under each key id, over every table holding wrapped data keys."""
    usage: dict[str, int] = {}
    async with store.session() as session:
        for sealing in Sealing:
            cols = _columns(sealing)
            result = await session.execute(
                select(cols.kek_id, func.count())
                .where(cols.kek_id.is_not(None))
                .group_by(cols.kek_id)
            )
            for kek_id, count in result.all():
                usage[kek_id] = usage.get(kek_id, 0) + count
    return usage


async def _rewrap_pass(
    store: Store, keyring: Keyring, batch_size: int, progress: Progress
) -> tuple[int, tuple[Unreadable, ...]]:
    keyring.refresh()
    usage = await key_usage(store)
    total = sum(usage.get(k, 0) for k in keyring.keyset.older)
    progress.rewrapping(total)
    rewrapped = 0
    unreadable: list[Unreadable] = []
    for sealing in Sealing:
        after = _columns(sealing).first
        while True:
            # Another rotation may have made a newer key active: follow it, as serve does.
            keyring.refresh()
            batch = await store.write(_batch_work(sealing, keyring, after, batch_size))
            rewrapped += batch.rewrapped
            unreadable.extend(batch.unreadable)
            progress.advanced(batch.seen)
            if batch.last is None:
                break
            after = batch.last
    return rewrapped, tuple(unreadable)


async def _named_in_audit(store: Store, action: str, member: str) -> set[str]:
    async with store.session() as session:
        details = await session.scalars(
            select(AuditEvent.details).where(AuditEvent.action == action)
        )
        named: set[str] = set()
        for entry in details:
            value = (entry or {}).get(member)
            if isinstance(value, str):
                named.add(value)
            elif isinstance(value, list):
                named.update(v for v in value if isinstance(v, str))
        return named


def _previous(keyset: KeySet) -> str | None:
    """The key active before the active one: the most recently activated older key."""
    dated = [(keyset.activated.get(k), k) for k in keyset.older]
    known = [(when, k) for when, k in dated if when is not None]
    if known:
        return max(known)[1]
    return dated[0][1] if dated else None


def _start(key_file: Path, now: datetime) -> tuple[KeySet, bool]:
    created = False

    def change(current: KeySet) -> KeySet:
        nonlocal created
        if current.older:
            return current
        created = True
        return current.with_new_active(now)

    return update_key_file(key_file, change), created


async def rotate(
    store: Store,
    key_file: Path,
    *,
    actor: str,
    batch_size: int = 500,
    grace: timedelta = timedelta(minutes=5),
    wait: bool = True,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> RotationResult:
    """Rotate the key-encryption key, or finish a rotation an earlier run left unfinished.

    ``wait``: when an older key is unused but still in its grace period, wait for the grace
    to end and retire it (True), or keep it and say so (False; a later run retires it).
    """
    if batch_size < 1:
        raise ValueError("batch size must be at least 1")
    progress = progress or Quiet()

    # Phase A
    keyset, created = await asyncio.to_thread(_start, key_file, clock())
    previous = _previous(keyset)
    if created:
        await audit.log(
            store,
            ROTATED,
            actor=actor,
            at=clock(),
            details={"kek_id": keyset.active, "previous": previous},
        )
    elif keyset.older and keyset.active not in await _named_in_audit(store, ROTATED, "kek_id"):
        await audit.log(
            store,
            ROTATED,
            actor=actor,
            at=clock(),
            details={"kek_id": keyset.active, "previous": previous, "recorded_on_resume": True},
        )
    keyring = Keyring.load(key_file)

    # Phase B
    rewrapped, unreadable = await _rewrap_pass(store, keyring, batch_size, progress)

    # Phase C
    stuck = {u.kek_id for u in unreadable}
    keyset = keyring.keyset
    pending = [k for k in keyset.older if k not in stuck]
    ends = [_grace_end(keyset, k, grace) for k in pending]
    until = max((e for e in ends if e is not None), default=None)
    if wait and until is not None and until > clock():
        progress.waiting(until)
        while (left := (until - clock()).total_seconds()) > 0:
            await sleep(min(left, 1.0))
        # Anything sealed under an older key by a process that had not yet seen the new file.
        more, unreadable = await _rewrap_pass(store, keyring, batch_size, progress)
        rewrapped += more
    retired, kept = await _retire(store, keyring, key_file, grace, actor, clock)
    usage = await key_usage(store)
    missing = {k: n for k, n in usage.items() if k not in keyring.keyset.keys}
    return RotationResult(
        active=keyring.active,
        previous=previous,
        created=created,
        rewrapped=rewrapped,
        retired=retired,
        kept=kept,
        unreadable=unreadable,
        missing=missing,
    )


def _grace_end(keyset: KeySet, kek_id: str, grace: timedelta) -> datetime | None:
    replaced = keyset.replaced_at(kek_id)
    return None if replaced is None else replaced + grace


async def _retire(
    store: Store,
    keyring: Keyring,
    key_file: Path,
    grace: timedelta,
    actor: str,
    clock: Callable[[], datetime],
) -> tuple[tuple[str, ...], tuple[KeptKey, ...]]:
    keyring.refresh()
    keyset = keyring.keyset
    usage = await key_usage(store)
    now = clock()
    due: list[str] = []
    kept: list[KeptKey] = []
    for kek_id in keyset.older:
        rows = usage.get(kek_id, 0)
        end = _grace_end(keyset, kek_id, grace)
        if rows:
            kept.append(KeptKey(kek_id, f"{rows} row(s) still sealed under it", rows, None))
        elif end is not None and end > now:
            kept.append(KeptKey(kek_id, f"in its grace period until {end.isoformat()}", 0, end))
        else:
            due.append(kek_id)
    if not due:
        return (), tuple(kept)
    already = await _named_in_audit(store, RETIRED, "kek_ids")
    if fresh := sorted(set(due) - already):
        await audit.log(store, RETIRED, actor=actor, at=now, details={"kek_ids": fresh})
    gone = frozenset(due)
    await asyncio.to_thread(update_key_file, key_file, lambda current: current.without(gone))
    keyring.refresh()
    return tuple(sorted(due)), tuple(kept)


def describe(result: RotationResult) -> Iterable[str]:
    """The run in a few lines for an operator."""
    if result.created:
        yield f"new key {result.active} is active (previous: {result.previous or 'none'})"
    else:
        yield f"resumed the rotation to key {result.active}"
    yield f"re-wrapped {result.rewrapped} data key(s)"
    for kek_id in result.retired:
        yield f"retired key {kek_id}"
    for kept in result.kept:
        yield f"kept key {kept.kek_id}: {kept.reason}"
    for kek_id, rows in sorted(result.missing.items()):
        yield f"warning: {rows} row(s) name key {kek_id}, which the key file does not hold"
