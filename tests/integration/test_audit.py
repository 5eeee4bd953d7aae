"""The audit log's chain: intact, refused changes, tampering found, concurrent appends,
the backfill of older databases, and ``sigillo audit verify|export`` as operators run them.

Tampering is done the way an insider with the database owner's rights would: switch the
append-only triggers off, then change rows directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, delete, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from sigillo.store import audit, migrate
from sigillo.store.audit import GENESIS, BrokenEntry, Entry
from sigillo.store.db import Store
from sigillo.store.models import AuditEvent, AuditHead
from tests.integration.test_cli import sigillo

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
ENTRIES = 8


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = Store(store_url)
    await migrate.upgrade(s)
    yield s
    await s.close()


async def append(store: Store, n: int, *, actor: str = "anna@example.net") -> None:
    for i in range(n):
        await audit.log(
            store,
            f"test.action{i % 3}",
            actor=actor,
            at=T0 + timedelta(minutes=i),
            client="192.0.2.7",
            conversation_id=i if i % 2 else None,
            message_id=f"{i:032x}",
            details={"n": i, "nested": {"ok": True, "why": "città"}, "list": [1, 2.5, None]},
        )


async def rows(store: Store) -> dict[int, AuditEvent]:
    """seq -> row."""
    async with store.session() as session:
        found = (await session.execute(select(AuditEvent))).scalars().all()
    return {row.seq: row for row in found}


async def as_owner(store: Store, change: Callable[[Connection], object]) -> None:
    """Run ``change`` with the append-only triggers switched off, as the table's owner can."""

    def go(conn: Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ALTER TABLE audit_events DISABLE TRIGGER USER")
        else:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_events_no_update")
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_events_no_delete")
        change(conn)

    async with store.engine.begin() as conn:
        await conn.run_sync(go)


def rehash(seq: int, prev: str, row: AuditEvent, **changes: Any) -> str:
    return replace(Entry.of(row), seq=seq, **changes).hash(prev)


# -- intact and append-only --------------------------------------------------------------


async def test_an_intact_chain_verifies(store: Store) -> None:
    empty = await audit.verify(store)
    assert (empty.ok, empty.entries, empty.head_seq, empty.head_hash) == (True, 0, 0, GENESIS)
    await append(store, ENTRIES)
    report = await audit.verify(store)
    by_seq = await rows(store)
    assert report.ok and report.first_broken is None
    assert report.entries == report.head_seq == ENTRIES
    assert report.head_hash == by_seq[ENTRIES].hash
    assert by_seq[1].prev_hash == GENESIS
    assert all(by_seq[s].prev_hash == by_seq[s - 1].hash for s in range(2, ENTRIES + 1))
    # The pinned head of this run holds in a later one.
    assert (await audit.verify(store, anchor=(report.head_seq, report.head_hash))).ok


async def test_entries_of_one_transaction_chain_and_a_rollback_leaves_no_trace(
    store: Store,
) -> None:
    def three(session: Session, fail: bool) -> list[int]:
        seqs = [
            audit.record(session, f"test.batch{i}", actor="anna@example.net", at=T0)
            for i in range(3)
        ]
        if fail:
            raise RuntimeError("the action failed, so its entries must not exist")
        return seqs

    assert await store.write(lambda session: three(session, False)) == [1, 2, 3]
    with pytest.raises(RuntimeError):
        await store.write(lambda session: three(session, True))
    await append(store, 2)
    assert await store.write(lambda session: three(session, False)) == [6, 7, 8]
    assert sorted(await rows(store)) == list(range(1, 9))
    report = await audit.verify(store)
    assert report.ok and report.entries == 8 and report.head_seq == 8


async def test_a_long_chain_is_read_in_batches(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "BATCH", 3)
    await append(store, 10)
    assert (await audit.verify(store)).entries == 10
    assert [e["seq"] for e in [e async for e in audit.export(store, T0)]] == list(range(1, 11))
    by_seq = await rows(store)
    await as_owner(
        store,
        lambda conn: conn.execute(
            update(AuditEvent).where(AuditEvent.seq == 7).values(actor="mallory")
        ),
    )
    assert (await audit.verify(store)).first_broken == BrokenEntry(
        7, by_seq[7].id, "hash does not match its content (edited)"
    )


async def test_the_apps_connection_cannot_change_or_remove_entries(store: Store) -> None:
    await append(store, 3)
    statements = [
        "UPDATE audit_events SET actor = 'mallory' WHERE seq = 2",
        "DELETE FROM audit_events WHERE seq = 3",
        "DELETE FROM audit_events",
    ]
    if store.engine.dialect.name == "postgresql":
        statements.append("TRUNCATE audit_events")
    for statement in statements:

        def attempt(session: Session, sql: str = statement) -> None:
            session.execute(text(sql))

        with pytest.raises(DBAPIError, match="append-only"):
            await store.write(attempt)
    report = await audit.verify(store)
    assert report.ok and report.entries == 3
    assert {row.actor for row in (await rows(store)).values()} == {"anna@example.net"}


# -- tampering found ---------------------------------------------------------------------

Tamper = Callable[[Connection, dict[int, AuditEvent]], None]


def edit_actor(conn: Connection, by_seq: dict[int, AuditEvent]) -> None:
    conn.execute(update(AuditEvent).where(AuditEvent.seq == 4).values(actor="someone-else"))


def edit_details(conn: Connection, by_seq: dict[int, AuditEvent]) -> None:
    details = {**(by_seq[4].details or {}), "n": 99}
    conn.execute(update(AuditEvent).where(AuditEvent.seq == 4).values(details=details))


def edit_at(conn: Connection, by_seq: dict[int, AuditEvent]) -> None:
    moved = by_seq[4].at - timedelta(days=1)
    conn.execute(update(AuditEvent).where(AuditEvent.seq == 4).values(at=moved))


def edit_and_rehash(conn: Connection, by_seq: dict[int, AuditEvent]) -> None:
    """Edit an entry and give it its new hash: the next link no longer fits."""
    digest = rehash(4, by_seq[4].prev_hash, by_seq[4], actor="someone-else")
    conn.execute(
        update(AuditEvent).where(AuditEvent.seq == 4).values(actor="someone-else", hash=digest)
    )


def delete_middle(conn: Connection, by_seq: dict[int, AuditEvent]) -> None:
    conn.execute(delete(AuditEvent).where(AuditEvent.seq == 4))


def delete_first(conn: Connection, by_seq: dict[int, AuditEvent]) -> None:
    conn.execute(delete(AuditEvent).where(AuditEvent.seq == 1))


def delete_last(conn: Connection, by_seq: dict[int, AuditEvent]) -> None:
    conn.execute(delete(AuditEvent).where(AuditEvent.seq == ENTRIES))


def _set_seq(conn: Connection, row_id: int, seq: int) -> None:
    conn.execute(update(AuditEvent).where(AuditEvent.id == row_id).values(seq=seq))


def reorder(conn: Connection, by_seq: dict[int, AuditEvent]) -> None:
    """Entries 3 and 5 trade places in the chain, each keeping its own content and hashes."""
    _set_seq(conn, by_seq[3].id, -1)
    _set_seq(conn, by_seq[5].id, 3)
    _set_seq(conn, by_seq[3].id, 5)


def swap_contents(conn: Connection, by_seq: dict[int, AuditEvent]) -> None:
    """Entries 3 and 5 trade what they say, keeping their place and hashes."""
    for seq, other in ((3, by_seq[5]), (5, by_seq[3])):
        conn.execute(
            update(AuditEvent)
            .where(AuditEvent.seq == seq)
            .values(at=other.at, action=other.action, details=other.details)
        )


def insert_forged(conn: Connection, by_seq: dict[int, AuditEvent]) -> None:
    """A made-up entry 5, hashed correctly onto entry 4; the later entries and the head
    shifted by one so that numbering and head look right."""
    conn.execute(update(AuditEvent).where(AuditEvent.seq >= 5).values(seq=-AuditEvent.seq))
    conn.execute(update(AuditEvent).where(AuditEvent.seq < 0).values(seq=1 - AuditEvent.seq))
    forged = {
        "at": by_seq[4].at,
        "actor": "someone-else",
        "action": "portal.view",
        "client": None,
        "conversation_id": None,
        "message_id": None,
        "details": None,
    }
    digest = Entry(seq=5, **forged).hash(by_seq[4].hash)  # type: ignore[arg-type]
    conn.execute(
        insert(AuditEvent).values(
            seq=5,
            prev_hash=by_seq[4].hash,
            hash=digest,
            at=forged["at"],
            actor="someone-else",
            action="portal.view",
        )
    )
    conn.execute(
        update(AuditHead)
        .values(seq=ENTRIES + 1, hash=by_seq[ENTRIES].hash)
        .where(AuditHead.id == 1)
    )


def append_forged(conn: Connection, by_seq: dict[int, AuditEvent]) -> None:
    """A made-up entry after the last, chained correctly, the head left alone."""
    last = by_seq[ENTRIES]
    digest = rehash(ENTRIES + 1, last.hash, last, actor="someone-else")
    conn.execute(
        insert(AuditEvent).values(
            seq=ENTRIES + 1,
            prev_hash=last.hash,
            hash=digest,
            at=last.at,
            actor="someone-else",
            action=last.action,
            client_address=last.client_address,
            conversation_id=last.conversation_id,
            message_id=last.message_id,
            details=last.details,
        )
    )


def delete_head(conn: Connection, by_seq: dict[int, AuditEvent]) -> None:
    conn.execute(delete(AuditHead))


def rewind_head(conn: Connection, by_seq: dict[int, AuditEvent]) -> None:
    conn.execute(update(AuditHead).values(seq=ENTRIES - 1, hash=by_seq[ENTRIES - 1].hash))


def edit_head(conn: Connection, by_seq: dict[int, AuditEvent]) -> None:
    conn.execute(update(AuditHead).values(hash="f" * 64))


# (tamper, seq of the first broken entry, its row as the seq it had before, entries intact
# before it, words of the reason)
CASES: dict[str, tuple[Tamper, int | None, int | None, int, str]] = {
    "edit actor": (edit_actor, 4, 4, 3, "hash does not match its content (edited)"),
    "edit details": (edit_details, 4, 4, 3, "hash does not match its content (edited)"),
    "edit at": (edit_at, 4, 4, 3, "hash does not match its content (edited)"),
    "edit and rehash": (edit_and_rehash, 5, 5, 4, "prev_hash does not match entry 4"),
    "delete middle": (delete_middle, 5, 5, 3, "sequence jumps from 3 to 5 (entries deleted)"),
    "delete first": (delete_first, 2, 2, 0, "sequence starts at 2, not 1"),
    "delete last": (
        delete_last,
        ENTRIES,
        None,
        ENTRIES - 1,
        f"head says seq {ENTRIES} hash {{head}} but the last entry is seq {ENTRIES - 1}",
    ),
    "reorder": (reorder, 3, 5, 2, "prev_hash does not match entry 2 (deleted or reordered)"),
    "swap contents": (swap_contents, 3, 3, 2, "hash does not match its content (edited)"),
    "insert forged": (insert_forged, 6, 5, 5, "prev_hash does not match entry 5"),
    "append forged": (
        append_forged,
        ENTRIES + 1,
        None,
        ENTRIES,
        f"entries after the head (seq {ENTRIES})",
    ),
    "delete head": (delete_head, None, None, ENTRIES, "head row missing"),
    "rewind head": (
        rewind_head,
        ENTRIES,
        ENTRIES,
        ENTRIES - 1,
        f"entries after the head (seq {ENTRIES - 1}) up to seq {ENTRIES}",
    ),
    "edit head": (
        edit_head,
        ENTRIES,
        ENTRIES,
        ENTRIES,
        f"head says seq {ENTRIES} hash {'f' * 64} but entry {ENTRIES} has hash {{last}}",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_tampering_is_found_at_the_first_broken_entry(store: Store, case: str) -> None:
    tamper, seq, row_of, intact_before, reason = CASES[case]
    await append(store, ENTRIES)
    intact = await audit.verify(store)
    by_seq = await rows(store)
    await as_owner(store, lambda conn: tamper(conn, by_seq))
    report = await audit.verify(store)
    assert not report.ok
    broken = report.first_broken
    assert broken is not None
    assert (broken.seq, report.entries) == (seq, intact_before), broken
    if case == "append forged":
        assert broken.row_id == max(r.id for r in (await rows(store)).values())
    else:
        assert broken.row_id == (by_seq[row_of].id if row_of is not None else None)
    assert reason.format(head=intact.head_hash, last=by_seq[ENTRIES].hash) in broken.reason


async def test_unparseable_values_are_named_not_crashed_on(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    if store.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's column types refuse such values")
    monkeypatch.setattr(audit, "BATCH", 4)
    await append(store, ENTRIES)
    by_seq = await rows(store)
    await as_owner(
        store,
        lambda conn: conn.exec_driver_sql(
            "UPDATE audit_events SET details = '{not json' WHERE seq = 6"
        ),
    )
    broken = (await audit.verify(store)).first_broken
    assert broken == BrokenEntry(6, by_seq[6].id, "stored values cannot be read (edited)")
    await as_owner(
        store,
        lambda conn: conn.exec_driver_sql("UPDATE audit_events SET at = 'yesterday' WHERE seq = 2"),
    )
    broken = (await audit.verify(store)).first_broken
    assert broken == BrokenEntry(2, by_seq[2].id, "stored values cannot be read (edited)")
    with pytest.raises(audit.AuditLogError, match="entry 2"):
        _ = [e async for e in audit.export(store, T0)]


async def test_a_chain_rewritten_from_scratch_misses_the_recorded_head(store: Store) -> None:
    """Links alone cannot show a full rewrite; the head printed earlier can."""
    await append(store, ENTRIES)
    pinned = await audit.verify(store)
    by_seq = await rows(store)

    def rewrite(conn: Connection) -> None:
        prev = by_seq[2].hash
        for seq in range(3, ENTRIES + 1):
            changes = {"actor": "someone-else"} if seq == 3 else {}
            digest = rehash(seq, prev, by_seq[seq], **changes)
            conn.execute(
                update(AuditEvent)
                .where(AuditEvent.seq == seq)
                .values(prev_hash=prev, hash=digest, **changes)
            )
            prev = digest
        conn.execute(update(AuditHead).values(hash=prev))

    await as_owner(store, rewrite)
    assert (await audit.verify(store)).ok
    report = await audit.verify(store, anchor=(pinned.head_seq, pinned.head_hash))
    assert report.first_broken is not None
    assert report.first_broken.seq == ENTRIES
    assert "chain rewritten" in report.first_broken.reason
    beyond = await audit.verify(store, anchor=(ENTRIES + 5, pinned.head_hash))
    assert (
        beyond.first_broken is not None and "beyond the chain's end" in beyond.first_broken.reason
    )


# -- concurrent writers ------------------------------------------------------------------


async def test_two_processes_appending_at_once_make_one_chain(store_url: str) -> None:
    first, second = Store(store_url), Store(store_url)
    try:
        await migrate.upgrade(first)

        async def writer(store: Store, actor: str) -> None:
            await asyncio.gather(
                *(
                    audit.log(store, "test.concurrent", actor=actor, at=T0, details={"i": i})
                    for i in range(200)
                )
            )

        await asyncio.gather(writer(first, "one@example.net"), writer(second, "two@example.net"))
        report = await audit.verify(first)
        assert report.ok and report.entries == report.head_seq == 400
        by_seq = await rows(first)
        assert sorted(by_seq) == list(range(1, 401))
        actors = [row.actor for row in by_seq.values()]
        assert actors.count("one@example.net") == actors.count("two@example.net") == 200
    finally:
        await first.close()
        await second.close()


# -- older databases ---------------------------------------------------------------------


async def test_entries_from_before_the_chain_are_chained_by_the_upgrade(store_url: str) -> None:
    store = Store(store_url)
    try:

        def to_0002(conn: Connection) -> None:
            cfg = migrate.alembic_config(store_url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0002")

        async with store.engine.begin() as conn:
            await conn.run_sync(to_0002)
            for i in range(5):
                await conn.execute(
                    text(
                        "INSERT INTO audit_events (at, actor, action, client_address, "
                        "conversation_id, message_id, details) "
                        "VALUES (:at, :actor, :action, NULL, :conv, NULL, :details)"
                    ),
                    {
                        # Written as 0002 wrote them: clock order is not chain order.
                        "at": (T0 - timedelta(hours=i)).replace(tzinfo=None)
                        if conn.dialect.name == "sqlite"
                        else T0 - timedelta(hours=i),
                        "actor": f"old{i}@example.net",
                        "action": "portal.view",
                        "conv": i,
                        "details": json.dumps({"i": i}),
                    },
                )
        await migrate.upgrade(store)
        report = await audit.verify(store)
        assert report.ok and report.entries == 5
        by_seq = await rows(store)
        assert [by_seq[s].actor for s in range(1, 6)] == [f"old{i}@example.net" for i in range(5)]
        await audit.log(store, "test.after", actor="new@example.net", at=T0)
        report = await audit.verify(store)
        assert report.ok and report.entries == report.head_seq == 6
    finally:
        await store.close()


# -- the command line --------------------------------------------------------------------


def run_async(fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(fn())  # type: ignore[arg-type]


def test_verify_and_export_from_the_command_line(store_url: str, tmp_path: Path) -> None:
    env = {"SIGILLO_STORAGE__DATABASE_URL": store_url}
    assert sigillo("db", "upgrade", cwd=tmp_path, env=env).returncode == 0

    async def seed() -> None:
        store = Store(store_url)
        try:
            await append(store, ENTRIES)
            await audit.log(store, "test.later", actor="x@example.net", at=T0 + timedelta(days=3))
        finally:
            await store.close()

    run_async(seed)
    intact = sigillo("audit", "verify", cwd=tmp_path, env=env)
    assert intact.returncode == 0, intact.stderr
    [line] = intact.stdout.splitlines()
    assert line.startswith(f"audit log intact: {ENTRIES + 1} entries, head {ENTRIES + 1} ")
    head_hash = line.rsplit(" ", 1)[1]
    assert len(head_hash) == 64

    # Export of a window to a private file, which verifies on its own.
    out = tmp_path / "audit.jsonl"
    exported = sigillo(
        "audit", "export", "--since", "2025-03-01", "--until", "2025-03-02T00:00:00+00:00",
        "--output", str(out), cwd=tmp_path, env=env,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    entries = [json.loads(x) for x in out.read_text().splitlines()]
    assert [e["seq"] for e in entries] == list(range(1, ENTRIES + 1))
    prev = entries[0]["prev_hash"]
    for entry in entries:
        body = {k: entry[k] for k in entry if k not in ("prev_hash", "hash")}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        assert entry["prev_hash"] == prev
        assert hashlib.sha256(f"{prev}\n{canonical}".encode()).hexdigest() == entry["hash"]
        prev = entry["hash"]
    assert not list(tmp_path.glob(".audit.jsonl*"))  # no partial file left behind

    # To stdout; the export above was recorded, and this one will be.
    to_stdout = sigillo("audit", "export", "--since", "2025-03-05", cwd=tmp_path, env=env)
    assert to_stdout.returncode == 0, to_stdout.stderr
    lines = [json.loads(x) for x in to_stdout.stdout.splitlines()]
    assert [e["action"] for e in lines] == ["audit.exported"]
    assert lines[0]["details"] == {
        "since": "2025-03-01T00:00:00+00:00",
        "until": "2025-03-02T00:00:00+00:00",
        "count": ENTRIES,
        "to": "file",
    }
    assert lines[0]["actor"].startswith("cli:")
    report = json.loads(sigillo("audit", "verify", "--json", cwd=tmp_path, env=env).stdout)
    assert report["ok"] and report["entries"] == ENTRIES + 3
    pinned = f"{ENTRIES + 1}:{head_hash}"
    assert sigillo("audit", "verify", "--anchor", pinned, cwd=tmp_path, env=env).returncode == 0

    # Bad usage: one line, exit 2.
    for args in (
        ("export", "--since", "last tuesday"),
        ("export", "--since", "2025-03-02", "--until", "2025-03-01"),
        ("verify", "--anchor", "12:nothex"),
    ):
        bad = sigillo("audit", *args, cwd=tmp_path, env=env)
        assert bad.returncode == 2, (args, bad.stderr)
        assert "Traceback" not in bad.stderr and len(bad.stderr.splitlines()) == 1

    # Tampered: exit 1 and one line naming the entry.
    async def tamper() -> None:
        store = Store(store_url)
        try:
            await as_owner(
                store,
                lambda conn: conn.execute(
                    update(AuditEvent).where(AuditEvent.seq == 3).values(actor="mallory")
                ),
            )
        finally:
            await store.close()

    run_async(tamper)
    broken = sigillo("audit", "verify", cwd=tmp_path, env=env)
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    [line] = broken.stdout.splitlines()
    assert line.startswith("audit log broken at entry 3 (row id ")
    assert line.endswith("hash does not match its content (edited); 2 entries intact before it")
    as_json = sigillo("audit", "verify", "--json", cwd=tmp_path, env=env)
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["first_broken"]["seq"] == 3


def test_database_down_is_one_clear_line(tmp_path: Path) -> None:
    env = {"SIGILLO_STORAGE__DATABASE_URL": "postgresql://sigillo@127.0.0.1:1/none"}
    for args in (("verify",), ("export", "--since", "2025-01-01")):
        down = sigillo("audit", *args, cwd=tmp_path, env=env)
        assert down.returncode == 1 and "database unavailable" in down.stderr
        assert "Traceback" not in down.stderr
    fresh = sigillo("audit", "verify", cwd=tmp_path)
    assert fresh.returncode == 1 and "sigillo db upgrade" in fresh.stderr


async def test_export_window_and_count(store: Store) -> None:
    await append(store, ENTRIES)
    window = [
        e async for e in audit.export(store, T0 + timedelta(minutes=2), T0 + timedelta(minutes=5))
    ]
    assert [e["seq"] for e in window] == [3, 4, 5]
    assert set(window[0]) == {
        "seq", "at", "actor", "action", "client", "conversation", "message", "details",
        "prev_hash", "hash",
    }  # fmt: skip
    async with store.session() as session:
        total = (await session.execute(select(func.count()).select_from(AuditEvent))).scalar()
    assert total == ENTRIES  # exporting through the API writes nothing by itself
