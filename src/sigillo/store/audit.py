"""The audit log: one row per access to personal data or change to an account or policy.

Entries are written in the same transaction as the action they record, so an action that
happened is never missing from the log and a logged action always happened. Entries carry
identifiers only: never message content, never passwords or tokens.

The log is a hash chain. Each entry's ``hash`` is SHA-256 over the previous entry's hash and
this entry's canonical JSON, so changing, removing or reordering any entry breaks every link
after it; ``audit_head`` holds the last link, so a removed tail shows too. Appending takes the
head row's lock first, which makes the entries of every process one chain. Anyone able to
rewrite the whole table could recompute the chain, which is why ``sigillo audit verify``
prints the head hash: recorded elsewhere (a ticket, the SIEM), it pins everything before it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, event, func, insert, select, update
from sqlalchemy.orm import Session

from sigillo.store.db import Store
from sigillo.store.models import AuditEvent, AuditHead

GENESIS = "0" * 64
"""The ``prev_hash`` of the first entry."""

BATCH = 2000
"""Entries read per query by ``verify`` and ``export``: memory stays flat at any log size."""


@dataclass(frozen=True)
class Entry:
    """An entry as its hash sees it: every column but the row id and the two hashes."""

    seq: int
    at: datetime
    actor: str
    action: str
    client: str | None
    conversation_id: int | None
    message_id: str | None
    details: Mapping[str, object] | None

    @classmethod
    def of(cls, row: Any) -> Entry:
        """From an ``audit_events`` row (ORM object or selected row)."""
        return cls(
            seq=row.seq,
            at=row.at,
            actor=row.actor,
            action=row.action,
            client=row.client_address,
            conversation_id=row.conversation_id,
            message_id=row.message_id,
            details=row.details,
        )

    def fields(self) -> dict[str, object]:
        """The entry in the fixed form its hash covers; an export carries exactly these keys,
        so anyone can recompute the chain from the export alone."""
        return {
            "seq": self.seq,
            "at": self.at.astimezone(UTC).isoformat(timespec="microseconds"),
            "actor": self.actor,
            "action": self.action,
            "client": self.client,
            "conversation": self.conversation_id,
            "message": self.message_id,
            "details": self.details,
        }

    def canonical(self) -> bytes:
        return json.dumps(
            self.fields(), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        ).encode()

    def hash(self, prev_hash: str) -> str:
        """This entry's link: SHA-256 over the previous entry's hash and this entry."""
        return hashlib.sha256(prev_hash.encode() + b"\n" + self.canonical()).hexdigest()


def record(
    session: Session,
    action: str,
    *,
    actor: str,
    at: datetime,
    client: str | None = None,
    conversation_id: int | None = None,
    message_id: str | None = None,
    details: dict[str, object] | None = None,
) -> int:
    """Append an entry in ``session``'s transaction; its position in the chain (``seq``)."""
    chain: tuple[int, str] | None = session.info.get(_CHAIN)
    if chain is None:
        # The transaction's first entry: the UPDATE comes first, so it takes the head's row
        # lock (PostgreSQL) or the write lock (SQLite) before anything is read, and
        # concurrent writers queue instead of forking the chain or deadlocking on a lock
        # upgrade. Later entries of the same transaction hold that lock already and chain
        # on in memory; the head is written once, just before the commit.
        seq, prev = session.execute(
            update(AuditHead)
            .where(AuditHead.id == 1)
            .values(seq=AuditHead.seq + 1)
            .returning(AuditHead.seq, AuditHead.hash)
            .execution_options(synchronize_session=False)
        ).one()
        if not session.info.get(_HOOKED):
            event.listen(session, "before_commit", _save_head)
            event.listen(session, "after_commit", _forget_chain)
            event.listen(session, "after_rollback", _forget_chain)
            session.info[_HOOKED] = True
    else:
        seq, prev = chain[0] + 1, chain[1]
    actor = actor or "-"
    digest = Entry(seq, at, actor, action, client, conversation_id, message_id, details).hash(prev)
    session.execute(
        insert(AuditEvent).values(
            seq=seq,
            prev_hash=prev,
            hash=digest,
            at=at,
            actor=actor,
            action=action,
            client_address=client,
            conversation_id=conversation_id,
            message_id=message_id,
            details=details,
        )
    )
    session.info[_CHAIN] = (seq, digest)
    return int(seq)


_CHAIN = "sigillo.audit.chain"
"""``session.info`` key: (seq, hash) of the last entry this transaction appended."""
_HOOKED = "sigillo.audit.hooked"


def _save_head(session: Session) -> None:
    chain = session.info.get(_CHAIN)
    if chain is not None:
        session.execute(
            update(AuditHead)
            .where(AuditHead.id == 1)
            .values(seq=chain[0], hash=chain[1])
            .execution_options(synchronize_session=False)
        )


def _forget_chain(session: Session) -> None:
    session.info.pop(_CHAIN, None)


async def log(
    store: Store,
    action: str,
    *,
    actor: str,
    at: datetime,
    client: str | None = None,
    conversation_id: int | None = None,
    message_id: str | None = None,
    details: dict[str, object] | None = None,
) -> None:
    """An entry in a transaction of its own, for an access that changes nothing else."""
    await store.write(
        lambda session: record(
            session,
            action,
            actor=actor,
            at=at,
            client=client,
            conversation_id=conversation_id,
            message_id=message_id,
            details=details,
        )
    )


# -- verification and export -------------------------------------------------------------


class AuditLogError(Exception):
    """The log cannot be read as stored; the message says where."""


@dataclass(frozen=True)
class BrokenEntry:
    """The first place the chain fails, and how."""

    seq: int | None
    """Chain position of the entry found wrong (or missing); None when only the head is."""
    row_id: int | None
    """The database row, when there is one (``id``; never trusted for order)."""
    reason: str


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    entries: int
    """Entries checked and found intact, in chain order."""
    head_seq: int
    head_hash: str
    """The head as it stood when verification began: record it elsewhere to pin the chain."""
    first_broken: BrokenEntry | None = None


_Entry = Row[*tuple[Any, ...]]


@dataclass(frozen=True)
class _Unreadable:
    """A row whose stored values no longer parse (an edit outside sigillo)."""

    seq: int
    id: int


_COLUMNS = (
    AuditEvent.id,
    AuditEvent.seq,
    AuditEvent.prev_hash,
    AuditEvent.hash,
    AuditEvent.at,
    AuditEvent.actor,
    AuditEvent.action,
    AuditEvent.client_address,
    AuditEvent.conversation_id,
    AuditEvent.message_id,
    AuditEvent.details,
)


async def _head(store: Store) -> tuple[int, str] | None:
    async with store.session() as session:
        row = (
            await session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1))
        ).one_or_none()
    return None if row is None else (row.seq, row.hash)


async def _batch(
    store: Store, start: int, upto: int | None, *where: Any
) -> list[_Entry | _Unreadable]:
    """Up to BATCH entries from ``seq >= start`` in chain order (``id`` breaks a tie only
    in a table whose unique constraint was dropped). ``seq >=`` rather than a row-value
    comparison keeps the query on the seq index on both backends."""
    conditions = [AuditEvent.seq >= start, *where]
    if upto is not None:
        conditions.append(AuditEvent.seq <= upto)
    order = (AuditEvent.seq, AuditEvent.id)
    async with store.session() as session:
        try:
            query = select(*_COLUMNS).where(*conditions).order_by(*order).limit(BATCH)
            return list((await session.execute(query)).all())
        except (ValueError, TypeError):
            pass
        # Some value in this batch does not parse: read the rows one by one, so the checks
        # still run in chain order and the bad one is named.
        keys = (
            await session.execute(
                select(AuditEvent.seq, AuditEvent.id)
                .where(*conditions)
                .order_by(*order)
                .limit(BATCH)
            )
        ).all()
        rows: list[_Entry | _Unreadable] = []
        for seq, row_id in keys:
            try:
                query = select(*_COLUMNS).where(AuditEvent.id == row_id)
                rows.append((await session.execute(query)).one())
            except (ValueError, TypeError):
                rows.append(_Unreadable(seq, row_id))
        return rows


def _check(
    row: _Entry | _Unreadable, expected: int, prev: str, anchor: tuple[int, str] | None
) -> str | None:
    """Why ``row`` cannot be entry ``expected`` following a link whose hash is ``prev``."""
    if row.seq > expected:
        if expected == 1:
            return f"sequence starts at {row.seq}, not 1 (first entries deleted)"
        return f"sequence jumps from {expected - 1} to {row.seq} (entries deleted)"
    if row.seq < expected:
        return f"sequence {row.seq} appears twice (an entry inserted)"
    if isinstance(row, _Unreadable):
        return "stored values cannot be read (edited)"
    if row.prev_hash != prev:
        if expected == 1:
            return "prev_hash is not the start of the chain (entries deleted or reordered)"
        return f"prev_hash does not match entry {expected - 1} (deleted or reordered)"
    if Entry.of(row).hash(row.prev_hash) != row.hash:
        return "hash does not match its content (edited)"
    if anchor is not None and row.seq == anchor[0] and row.hash != anchor[1]:
        return f"hash differs from the recorded {anchor[1]} (chain rewritten)"
    return None


async def verify(store: Store, *, anchor: tuple[int, str] | None = None) -> ChainReport:
    """Walk the chain in ``seq`` order, recomputing every hash, up to the head as it stood
    when the walk began (entries appended meanwhile are left for the next run).

    ``anchor`` is a (seq, hash) recorded earlier, for instance from a previous run's output:
    a chain rewritten from scratch, which the links alone cannot reveal, no longer holds it.
    """
    head = await _head(store)
    limit = head[0] if head is not None else None
    prev, expected, last_id = GENESIS, 1, None
    broken: BrokenEntry | None = None
    start, seen = 1, set[int]()
    while broken is None:
        batch = await _batch(store, start, limit)
        fresh = [row for row in batch if row.id not in seen]
        for row in fresh:
            reason = _check(row, expected, prev, anchor)
            if reason is not None or isinstance(row, _Unreadable):
                broken = BrokenEntry(row.seq, row.id, reason or "unreadable")
                break
            prev, expected, last_id = row.hash, expected + 1, row.id
        if broken is not None or len(batch) < BATCH or not fresh:
            break
        # Rows of the last seq seen are fetched again by ``seq >=``: skip them by id.
        start = batch[-1].seq
        seen = {row.id for row in batch if row.seq == start}
        await asyncio.sleep(0)  # a long walk must not starve the loop's other tasks
    last = expected - 1
    if broken is None:
        broken = await _check_ends(store, head, last, prev, last_id, anchor)
    seq, digest = head if head is not None else (last, prev)
    return ChainReport(broken is None, last, seq, digest, broken)


async def _check_ends(
    store: Store,
    head: tuple[int, str] | None,
    last: int,
    prev: str,
    last_id: int | None,
    anchor: tuple[int, str] | None,
) -> BrokenEntry | None:
    """The head against the last entry walked, and nothing beyond the head."""
    if head is None:
        return BrokenEntry(None, None, "head row missing (audit_head is empty)")
    seq, digest = head
    if last < seq:
        return BrokenEntry(
            last + 1,
            None,
            f"head says seq {seq} hash {digest} but the last entry is "
            f"{f'seq {last} hash {prev}' if last else 'none'} (entries at the end deleted)",
        )
    if prev != digest:
        return BrokenEntry(
            seq, last_id, f"head says seq {seq} hash {digest} but entry {seq} has hash {prev}"
        )
    if anchor is not None and anchor[0] > last:
        return BrokenEntry(
            anchor[0], None, f"the recorded entry is beyond the chain's end at seq {last}"
        )
    # The newest entry is read before the head: a legitimate append commits both at once,
    # so a head behind it means entries added or a head rewound outside sigillo.
    async with store.session() as session:
        newest = (await session.execute(select(func.max(AuditEvent.seq)))).scalar()
    now = await _head(store)
    if now is None:
        return BrokenEntry(None, None, "head row missing (audit_head is empty)")
    if now[0] < seq:
        return BrokenEntry(seq, last_id, f"head moved back from seq {seq} to {now[0]}")
    if newest is not None and newest > now[0]:
        async with store.session() as session:
            beyond = (
                await session.execute(
                    select(AuditEvent.seq, AuditEvent.id)
                    .where(AuditEvent.seq > now[0])
                    .order_by(AuditEvent.seq, AuditEvent.id)
                    .limit(1)
                )
            ).one()
        return BrokenEntry(
            beyond.seq,
            beyond.id,
            f"entries after the head (seq {now[0]}) up to seq {newest}, appended outside sigillo",
        )
    return None


async def export(
    store: Store, since: datetime, until: datetime | None = None
) -> AsyncIterator[dict[str, object]]:
    """Entries with ``since <= at < until``, in chain order, as JSON-ready dicts carrying
    ``seq``, ``prev_hash`` and ``hash``: a contiguous export can be checked on its own,
    starting from the first entry's ``prev_hash``. Entries appended after the export began
    are left out, so the export is a fixed set and its own audit entry is not in it."""
    head = await _head(store)
    if head is None:
        raise AuditLogError("the audit log has no head row: run 'sigillo audit verify'")
    where = [AuditEvent.at >= since]
    if until is not None:
        where.append(AuditEvent.at < until)
    start, seen = 1, set[int]()
    while True:
        batch = await _batch(store, start, head[0], *where)
        fresh = [row for row in batch if row.id not in seen]
        for row in fresh:
            if isinstance(row, _Unreadable):
                raise AuditLogError(
                    f"audit entry {row.seq} (row {row.id}) cannot be read: "
                    "run 'sigillo audit verify'"
                )
            yield {**Entry.of(row).fields(), "prev_hash": row.prev_hash, "hash": row.hash}
        if len(batch) < BATCH or not fresh:
            return
        start = batch[-1].seq
        seen = {row.id for row in batch if row.seq == start}
