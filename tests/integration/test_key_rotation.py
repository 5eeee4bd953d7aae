"""``sigillo keys rotate`` over SQLite and PostgreSQL: every data key re-wrapped, every row
still opening with the same plaintext, old keys retired only when unused and after the grace,
interruptions (an exception between batches, SIGKILL of the real command) resumed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from sigillo.gateway.queue import new_message
from sigillo.portal.accounts import phrase_of, seal_phrase
from sigillo.portal.sessions import FormTokens
from sigillo.store import migrate
from sigillo.store.crypto import Keyring, Sealed, read_key_file, update_key_file
from sigillo.store.db import Store
from sigillo.store.models import Account, AuditEvent, Message, StaffAccount
from sigillo.store.rotation import (
    RETIRED,
    ROTATED,
    Quiet,
    RotationResult,
    Sealing,
    key_usage,
    rewrap_batch,
    rotate,
    staff_totp_id,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)
ACTOR = "cli:test"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = Store(store_url)
    await migrate.upgrade(s)
    yield s
    await s.close()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "sigillo.keys"
    Keyring.load_or_create(path)
    return path


def body(i: int) -> bytes:
    return f"Subject: results {i}\r\n\r\nDear patient {i}, the results are fine.\r\n".encode()


async def seed_messages(store: Store, keyring: Keyring, count: int) -> dict[str, bytes]:
    """``count`` messages sealed under the keyring's active key: id -> plaintext."""
    plain: dict[str, bytes] = {}
    for start in range(0, count, 1000):
        rows = [
            new_message(
                keyring,
                mail_from="doctor@org.example",
                content=body(i),
                client_address="127.0.0.1",
                now=T0,
            )
            for i in range(start, min(start + 1000, count))
        ]
        plain.update((m.id, body(start + n)) for n, m in enumerate(rows))
        values = [{c.key: getattr(m, c.key) for c in Message.__table__.columns} for m in rows]
        await store.write(lambda s, v=values: s.execute(insert(Message), v))
    return plain


async def seed_staff(store: Store, keyring: Keyring, count: int) -> dict[int, bytes]:
    """Staff accounts with a sealed TOTP secret, as enrolment leaves them: id -> secret."""

    def work(session: Session) -> dict[int, bytes]:
        secrets: dict[int, bytes] = {}
        for i in range(count):
            staff = StaffAccount(
                email=f"staff{i}@org.example",
                roles="agent",
                created_at=T0,
                created_by=ACTOR,
            )
            session.add(staff)
            session.flush()
            secret = base64.b32encode(os.urandom(20))
            sealed = keyring.seal(staff_totp_id(staff.id), secret)
            staff.totp_kek_id = sealed.kek_id
            staff.totp_wrapped_key = sealed.wrapped_key
            staff.totp_secret = sealed.content
            secrets[staff.id] = secret
        return secrets

    return await store.write(work)


async def assert_all_open(
    store: Store, key_file: Path, messages: dict[str, bytes], staff: dict[int, bytes]
) -> None:
    """Every row opens, with a keyring read from the file now, to the same plaintext."""
    keyring = Keyring.load(key_file)
    async with store.session() as session:
        rows = (await session.execute(select(Message))).scalars().all()
        accounts = (await session.execute(select(StaffAccount))).scalars().all()
    assert {m.id for m in rows} == set(messages)
    for m in rows:
        assert keyring.open(m.id, m.kek_id, m.wrapped_key, m.content) == messages[m.id]
    assert {a.id for a in accounts} == set(staff)
    for a in accounts:
        assert a.totp_kek_id and a.totp_wrapped_key and a.totp_secret
        opened = keyring.open(staff_totp_id(a.id), a.totp_kek_id, a.totp_wrapped_key, a.totp_secret)
        assert opened == staff[a.id]


async def audit_details(store: Store, action: str) -> list[dict[str, object]]:
    async with store.session() as session:
        found = await session.scalars(
            select(AuditEvent.details).where(AuditEvent.action == action).order_by(AuditEvent.seq)
        )
        return [d or {} for d in found]


class Clock:
    """Test time: advances only when the rotation sleeps."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.meanwhile: list[asyncio.Task[object]] = []
        """Work that happens while the rotation sleeps."""

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await asyncio.gather(*self.meanwhile)
        self.meanwhile.clear()
        self.now += timedelta(seconds=seconds)


@dataclass
class Recorder(Quiet):
    batches: list[int] = field(default_factory=list)
    waits: list[datetime] = field(default_factory=list)
    after_batch: Callable[[int], None] | None = None

    def advanced(self, rows: int) -> None:
        self.batches.append(rows)
        if self.after_batch is not None:
            self.after_batch(len(self.batches))

    def waiting(self, until: datetime) -> None:
        self.waits.append(until)


class Interrupted(Exception):
    pass


async def test_rotation_rewraps_every_row_and_retires_the_old_key(
    store: Store, key_file: Path
) -> None:
    keyring = Keyring.load(key_file)
    old = keyring.active
    old_key = keyring.keyset.keys[old]
    messages = await seed_messages(store, keyring, 45)
    staff = await seed_staff(store, keyring, 3)
    before = {}
    async with store.session() as session:
        for m in (await session.execute(select(Message))).scalars():
            before[m.id] = m.content

    progress = Recorder()
    result = await rotate(
        store, key_file, actor=ACTOR, batch_size=7, grace=timedelta(0), progress=progress
    )

    assert result.created and result.previous == old and result.active != old
    assert result.rewrapped == 48 and result.retired == (old,) and not result.kept
    assert not result.unreadable and not result.missing
    assert sum(progress.batches) == 48
    assert await key_usage(store) == {result.active: 48}
    keyset, _ = read_key_file(key_file)
    assert set(keyset.keys) == {result.active} and keyset.active == result.active
    await assert_all_open(store, key_file, messages, staff)
    # The content ciphertext is untouched: only the data keys were wrapped again.
    async with store.session() as session:
        for m in (await session.execute(select(Message))).scalars():
            assert m.content == before[m.id]
    assert await audit_details(store, ROTATED) == [{"kek_id": result.active, "previous": old}]
    assert await audit_details(store, RETIRED) == [{"kek_ids": [old]}]
    async with store.session() as session:
        entries = (await session.execute(select(AuditEvent))).scalars().all()
    dumped = json.dumps([e.details for e in entries]).encode()
    for key in (old_key, keyset.keys[result.active]):
        assert base64.b64encode(key) not in dumped and key.hex().encode() not in dumped


async def test_old_key_kept_while_rows_use_it(store: Store, key_file: Path) -> None:
    keyring = Keyring.load(key_file)
    old = keyring.active
    messages = await seed_messages(store, keyring, 5)
    # A row whose data key no longer opens (damaged): it cannot be re-wrapped, so the key
    # it names must stay, or whatever could still be recovered from it is lost for good.
    broken = new_message(
        keyring, mail_from="a@org.example", content=b"x", client_address="-", now=T0
    )
    broken.wrapped_key = bytes(len(broken.wrapped_key))
    await store.write(lambda s: s.add(broken))

    result = await rotate(store, key_file, actor=ACTOR, batch_size=2, grace=timedelta(0))

    assert [(u.row, u.kek_id) for u in result.unreadable] == [(broken.id, old)]
    assert result.retired == ()
    assert [(k.kek_id, k.rows) for k in result.kept] == [(old, 1)]
    assert old in read_key_file(key_file)[0].keys
    fresh = Keyring.load(key_file)
    async with store.session() as session:
        for m in (await session.execute(select(Message))).scalars():
            if m.id != broken.id:
                assert m.kek_id == result.active
                assert fresh.open(m.id, m.kek_id, m.wrapped_key, m.content) == messages[m.id]
    assert await audit_details(store, RETIRED) == []

    # Once the damaged row is gone (shredded), the next run retires the key, and creates no
    # third key: it finishes the rotation it found.
    await store.write(lambda s: s.execute(delete(Message).where(Message.id == broken.id)))
    again = await rotate(store, key_file, actor=ACTOR, batch_size=2, grace=timedelta(0))
    assert not again.created and again.active == result.active and again.retired == (old,)
    assert set(read_key_file(key_file)[0].keys) == {result.active}


async def test_old_key_kept_through_the_grace(store: Store, key_file: Path) -> None:
    keyring = Keyring.load(key_file)
    old = keyring.active
    messages = await seed_messages(store, keyring, 10)
    clock = Clock(T0)

    first = await rotate(
        store,
        key_file,
        actor=ACTOR,
        grace=timedelta(hours=1),
        wait=False,
        clock=clock,
        sleep=clock.sleep,
    )
    assert first.created and first.rewrapped == 10 and first.retired == ()
    [kept] = first.kept
    assert kept.kek_id == old and kept.rows == 0 and kept.retire_after == T0 + timedelta(hours=1)
    assert old in read_key_file(key_file)[0].keys

    # Still inside the grace: nothing to do, and no further key.
    clock.now = T0 + timedelta(minutes=59)
    second = await rotate(
        store, key_file, actor=ACTOR, grace=timedelta(hours=1), wait=False, clock=clock
    )
    assert not second.created and second.active == first.active and second.retired == ()
    assert len(read_key_file(key_file)[0].keys) == 2

    clock.now = T0 + timedelta(hours=1, seconds=1)
    third = await rotate(
        store, key_file, actor=ACTOR, grace=timedelta(hours=1), wait=False, clock=clock
    )
    assert not third.created and third.retired == (old,) and not third.kept
    assert set(read_key_file(key_file)[0].keys) == {first.active}
    await assert_all_open(store, key_file, messages, {})
    assert len(await audit_details(store, ROTATED)) == 1


async def test_waiting_out_the_grace_catches_rows_sealed_by_a_stale_process(
    store: Store, key_file: Path
) -> None:
    """A process that read the key file before the rotation may still seal under the old key
    for a moment; the pass after the grace re-wraps what it wrote before the key goes."""
    stale = Keyring(Keyring.load(key_file).keyset)  # no file: never sees the new key
    old = stale.active
    messages = await seed_messages(store, stale, 6)
    clock = Clock(T0)
    late = new_message(
        stale, mail_from="a@org.example", content=b"late", client_address="-", now=T0
    )

    class SealsWhileWaiting(Recorder):
        def waiting(self, until: datetime) -> None:
            super().waiting(until)
            clock.meanwhile.append(asyncio.create_task(store.write(lambda s: s.add(late))))

    progress = SealsWhileWaiting()
    result = await rotate(
        store,
        key_file,
        actor=ACTOR,
        grace=timedelta(minutes=5),
        progress=progress,
        clock=clock,
        sleep=clock.sleep,
    )
    assert progress.waits == [T0 + timedelta(minutes=5)]
    assert late.kek_id == old
    assert result.retired == (old,) and result.rewrapped == 7
    await assert_all_open(store, key_file, {**messages, late.id: b"late"}, {})


async def test_interrupted_rotation_resumes(store: Store, key_file: Path) -> None:
    keyring = Keyring.load(key_file)
    old = keyring.active
    messages = await seed_messages(store, keyring, 40)
    staff = await seed_staff(store, keyring, 4)

    def stop(batches: int) -> None:
        if batches == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        await rotate(
            store,
            key_file,
            actor=ACTOR,
            batch_size=7,
            grace=timedelta(0),
            progress=Recorder(after_batch=stop),
        )
    keyset, _ = read_key_file(key_file)
    new = keyset.active
    assert new != old and set(keyset.keys) == {old, new}
    assert await key_usage(store) == {new: 14, old: 30}
    # Half-way, every row opens: old ones under the old key, re-wrapped ones under the new.
    await assert_all_open(store, key_file, messages, staff)

    result = await rotate(store, key_file, actor=ACTOR, batch_size=7, grace=timedelta(0))
    assert not result.created and result.active == new and result.previous == old
    assert result.rewrapped == 30 and result.retired == (old,)
    assert await key_usage(store) == {new: 44}
    assert set(read_key_file(key_file)[0].keys) == {new}
    await assert_all_open(store, key_file, messages, staff)
    assert await audit_details(store, ROTATED) == [{"kek_id": new, "previous": old}]
    assert await audit_details(store, RETIRED) == [{"kek_ids": [old]}]


async def test_rows_shredded_meanwhile_are_left_alone(store: Store, key_file: Path) -> None:
    keyring = Keyring.load(key_file)
    messages = await seed_messages(store, keyring, 20)
    ordered = sorted(messages)
    gone = {ordered[1], ordered[15]}  # one already re-wrapped, one not yet
    shredding: list[asyncio.Task[object]] = []

    def shred(batches: int) -> None:
        if batches == 1:
            delete_gone = delete(Message).where(Message.id.in_(gone))
            shredding.append(asyncio.create_task(store.write(lambda s: s.execute(delete_gone))))

    result = await rotate(
        store,
        key_file,
        actor=ACTOR,
        batch_size=5,
        grace=timedelta(0),
        progress=Recorder(after_batch=shred),
    )
    await asyncio.gather(*shredding)
    assert result.retired and not result.unreadable
    for message_id in gone:
        del messages[message_id]
    await assert_all_open(store, key_file, messages, {})


async def test_a_data_key_shredded_between_read_and_update_stays_shredded(
    store: Store, key_file: Path
) -> None:
    """The race with crypto-shredding, made deterministic: the data key is wiped after the
    batch read it and before its UPDATE. The UPDATE must not write a key back."""
    keyring = Keyring.load(key_file)
    messages = await seed_messages(store, keyring, 3)
    victim = sorted(messages)[1]
    update_key_file(key_file, lambda current: current.with_new_active(T0))

    class ShredsMeanwhile(Keyring):
        session: Session

        def rewrap(self, message_id: str, kek_id: str, wrapped_key: bytes) -> tuple[str, bytes]:
            rewrapped = super().rewrap(message_id, kek_id, wrapped_key)
            if message_id == victim:
                self.session.execute(
                    update(Message)
                    .where(Message.id == victim)
                    .values(wrapped_key=b"", content=b"")
                    .execution_options(synchronize_session=False)
                )
            return rewrapped

    racing = ShredsMeanwhile.load(key_file)

    def work(session: Session) -> object:
        racing.session = session
        return rewrap_batch(session, Sealing.MESSAGES, racing, "", 10)

    batch = await store.write(work)
    assert batch.rewrapped == 2
    async with store.session() as session:
        row = await session.get(Message, victim)
    assert row is not None and row.wrapped_key == b"" and row.content == b""


async def test_running_keyring_follows_the_rotation(store: Store, key_file: Path) -> None:
    serving = Keyring.load(key_file)  # what a running serve process holds
    old = serving.active
    form_secret = serving.derive("sigillo portal form tokens")
    messages = await seed_messages(store, serving, 12)

    result = await rotate(store, key_file, actor=ACTOR, batch_size=5, grace=timedelta(0))

    async with store.session() as session:
        for m in (await session.execute(select(Message))).scalars():
            assert m.kek_id == result.active
            assert serving.open(m.id, m.kek_id, m.wrapped_key, m.content) == messages[m.id]
    sealed = serving.seal("after", b"new content")
    assert sealed.kek_id == result.active != old
    assert Keyring.load(key_file).open("after", *_parts(sealed)) == b"new content"
    # Secrets derived from the key file follow the active key.
    assert serving.derive("sigillo portal form tokens") != form_secret


def _parts(sealed: Sealed) -> tuple[str, bytes, bytes]:
    return sealed.kek_id, sealed.wrapped_key, sealed.content


async def test_form_secrets_of_the_old_key_accepted_until_it_is_retired(
    store: Store, key_file: Path
) -> None:
    serving = Keyring.load(key_file)
    before = serving.derive("purpose")
    clock = Clock(T0)
    await rotate(store, key_file, actor=ACTOR, grace=timedelta(hours=1), wait=False, clock=clock)
    signing, *accepted = serving.derive_all("purpose")
    assert signing != before and accepted == [before]
    clock.now += timedelta(hours=2)
    await rotate(store, key_file, actor=ACTOR, grace=timedelta(hours=1), wait=False, clock=clock)
    assert serving.derive_all("purpose") == (signing,)


async def test_a_form_served_before_a_rotation_is_accepted_after_it(
    store: Store, key_file: Path
) -> None:
    serving = Keyring.load(key_file)
    tokens = FormTokens(lambda: serving.derive_all("sigillo portal form tokens"))
    served = tokens.token("cookie")
    clock = Clock(T0)
    await rotate(store, key_file, actor=ACTOR, grace=timedelta(hours=1), wait=False, clock=clock)
    assert tokens.valid("cookie", served) and not tokens.valid("other cookie", served)
    assert tokens.token("cookie") != served  # new forms are signed under the new key
    clock.now += timedelta(hours=2)
    await rotate(store, key_file, actor=ACTOR, grace=timedelta(hours=1), wait=False, clock=clock)
    assert not tokens.valid("cookie", served)  # its key is gone
    assert tokens.valid("cookie", tokens.token("cookie"))


async def test_rotation_needs_an_existing_key_file(store: Store, tmp_path: Path) -> None:
    from sigillo.store.crypto import KeyringError

    with pytest.raises(KeyringError, match="cannot read key file"):
        await rotate(store, tmp_path / "absent.keys", actor=ACTOR)


# -- the real command ------------------------------------------------------------------


def env_for(store: Store, key_file: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SIGILLO_STORAGE__DATABASE_URL": store.url,
        "SIGILLO_STORAGE__KEY_FILE": str(key_file),
    }


async def sigillo(*args: str, cwd: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sigillo",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_sigkill_mid_rotation_then_resume(
    store: Store, key_file: Path, tmp_path: Path
) -> None:
    keyring = Keyring.load(key_file)
    old = keyring.active
    messages = await seed_messages(store, keyring, 4000)
    staff = await seed_staff(store, keyring, 5)
    env = env_for(store, key_file)

    proc = await sigillo(
        "keys", "rotate", "--batch-size", "10", "--grace", "0", "--json", cwd=tmp_path, env=env
    )
    new = None
    async with asyncio.timeout(60):
        while True:
            if new is None:
                active = read_key_file(key_file)[0].active
                new = active if active != old else None
            if new is not None:
                async with store.session() as session:
                    done = await session.scalar(
                        select(func.count()).select_from(Message).where(Message.kek_id == new)
                    )
                if done:
                    break
            assert proc.returncode is None, "the rotation ended before it could be killed"
            await asyncio.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    await proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    usage = await key_usage(store)
    assert usage.get(old), "killed after its last batch: nothing left to resume"
    assert set(read_key_file(key_file)[0].keys) == {old, new}
    await assert_all_open(store, key_file, messages, staff)

    again = await sigillo("keys", "rotate", "--grace", "0", "--json", cwd=tmp_path, env=env)
    out, err = await again.communicate()
    assert again.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["created"] is False and report["active"] == new
    assert report["retired"] == [old] and report["unreadable"] == []
    assert await key_usage(store) == {new: 4005}
    assert set(read_key_file(key_file)[0].keys) == {new}
    await assert_all_open(store, key_file, messages, staff)
    assert len(await audit_details(store, ROTATED)) == 1


async def test_command_output_and_errors(store: Store, key_file: Path, tmp_path: Path) -> None:
    keyring = Keyring.load(key_file)
    await seed_messages(store, keyring, 3)
    env = env_for(store, key_file)

    bad_grace = await sigillo("keys", "rotate", "--grace", "soon", cwd=tmp_path, env=env)
    _, err = await bad_grace.communicate()
    assert bad_grace.returncode == 2 and err.decode().startswith("sigillo: --grace")

    os.chmod(key_file, 0o644)
    loose = await sigillo("keys", "rotate", cwd=tmp_path, env=env)
    _, err = await loose.communicate()
    assert loose.returncode == 1 and "chmod 600" in err.decode()
    assert len(err.decode().strip().splitlines()) == 1 and b"Traceback" not in err
    os.chmod(key_file, 0o600)

    down = await sigillo(
        "keys",
        "rotate",
        cwd=tmp_path,
        env={**env, "SIGILLO_STORAGE__DATABASE_URL": "postgresql://sigillo@127.0.0.1:1/none"},
    )
    _, err = await down.communicate()
    assert down.returncode == 1 and "database unavailable" in err.decode()
    assert b"Traceback" not in err
    assert read_key_file(key_file)[0].active == keyring.active  # nothing changed

    ok = await sigillo("keys", "rotate", "--grace", "0", cwd=tmp_path, env=env)
    out, err = await ok.communicate()
    assert ok.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].startswith("new key ") and "re-wrapped 3 data key(s)" in lines
    assert f"retired key {keyring.active}" in lines


async def test_usage_counts_cover_staff_totp(store: Store, key_file: Path) -> None:
    keyring = Keyring.load(key_file)
    await seed_staff(store, keyring, 2)
    await store.write(
        lambda s: s.execute(
            update(StaffAccount)
            .where(StaffAccount.email == "staff1@org.example")
            .values(totp_kek_id=None, totp_wrapped_key=None, totp_secret=None)
        )
    )
    assert await key_usage(store) == {keyring.active: 1}
    result: RotationResult = await rotate(store, key_file, actor=ACTOR, grace=timedelta(0))
    assert result.rewrapped == 1 and await key_usage(store) == {result.active: 1}


async def test_totp_secrets_sealed_by_enrolment_survive_rotation(
    store: Store, key_file: Path
) -> None:
    """The staff console's own sealing and the rotation agree on the associated data."""
    from sigillo.staff import totp

    keyring = Keyring.load(key_file)
    secret = totp.new_secret()

    def enrol(session: Session) -> int:
        staff = StaffAccount(
            email="agent@org.example", roles="agent", created_at=T0, created_by=ACTOR
        )
        session.add(staff)
        session.flush()
        sealed = totp.sealed_for(keyring, staff.id, secret)
        staff.totp_kek_id, staff.totp_wrapped_key = sealed.kek_id, sealed.wrapped_key
        staff.totp_secret = sealed.content
        return staff.id

    staff_id = await store.write(enrol)
    result = await rotate(store, key_file, actor=ACTOR, grace=timedelta(0))
    assert result.rewrapped == 1 and not result.unreadable
    async with store.session() as session:
        account = await session.get(StaffAccount, staff_id)
    assert account is not None and account.totp_kek_id == result.active
    assert totp.secret_of(Keyring.load(key_file), account) == secret


async def test_security_phrases_are_rewrapped_and_still_open(store: Store, key_file: Path) -> None:
    keyring = Keyring.load(key_file)
    old = keyring.active

    def work(session: Session) -> dict[int, str]:
        phrases: dict[int, str] = {}
        for i in range(5):
            account = Account(
                address=f"recipient{i}@example.net",
                password_hash="$argon2id$unused",
                created_at=T0,
                password_changed_at=T0,
            )
            session.add(account)
            session.flush()
            if i != 2:  # one without a phrase: nothing to re-wrap, nothing to fail
                phrases[account.id] = f"gatto blu numero {i}"
                seal_phrase(session, keyring, account.id, phrases[account.id])
        return phrases

    phrases = await store.write(work)
    before = await key_usage(store)
    assert before == {old: 4}

    result = await rotate(store, key_file, actor=ACTOR, batch_size=3, grace=timedelta(0))

    assert result.rewrapped == 4 and result.retired == (old,) and not result.unreadable
    assert await key_usage(store) == {result.active: 4}
    fresh = Keyring.load(key_file)
    assert old not in fresh.keyset.keys
    async with store.session() as session:
        accounts = (await session.execute(select(Account).order_by(Account.id))).scalars().all()
    opened = {a.id: phrase_of(fresh, a) for a in accounts}
    assert {k: v for k, v in opened.items() if v is not None} == phrases
    assert all(a.phrase_kek_id in (None, result.active) for a in accounts)
