"""Group commit: many writers share commits, and a failing write fails alone."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sigillo.store.db import Store
from sigillo.store.models import Conversation


def _conversation(address: str) -> Conversation:
    from sigillo.gateway.queue import utcnow

    now = utcnow()
    return Conversation(recipient=address, created_at=now, last_message_at=now)


async def _count(store: Store) -> int:
    async with store.session() as session:
        return (await session.execute(select(func.count()).select_from(Conversation))).scalar_one()


async def test_concurrent_writes_all_commit(store: Store) -> None:
    async def add(i: int) -> int:
        def work(session: Session) -> int:
            session.add(_conversation(f"r{i}@x.example"))
            return i

        return await store.write(work)

    results = await asyncio.gather(*(add(i) for i in range(300)))
    assert results == list(range(300))
    assert await _count(store) == 300


async def test_a_failing_write_fails_alone(store: Store) -> None:
    def good(session: Session) -> str:
        session.add(_conversation("ok@x.example"))
        return "ok"

    def bad(session: Session) -> str:
        session.add(_conversation("bad@x.example"))
        session.flush()
        raise RuntimeError("this write is refused")

    outcomes = await asyncio.gather(
        store.write(good), store.write(bad), store.write(good), return_exceptions=True
    )
    assert outcomes[0] == outcomes[2] == "ok"
    assert isinstance(outcomes[1], RuntimeError)
    async with store.session() as session:
        rows = (await session.execute(select(Conversation.recipient))).scalars().all()
    assert sorted(rows) == ["ok@x.example", "ok@x.example"]


async def test_database_error_reaches_the_writer(store: Store) -> None:
    def broken(session: Session) -> None:
        session.add(_conversation("lost@x.example"))
        session.execute(select(func.no_such_function()))

    with pytest.raises(Exception):  # noqa: B017 - each backend raises its own type
        await store.write(broken)
    assert await _count(store) == 0
