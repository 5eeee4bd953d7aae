"""The connection cache never hands one session to two deliveries at once."""

from __future__ import annotations

import asyncio
import random
import time
from typing import cast

from sigillo.gateway.connections import ConnectionCache
from sigillo.gateway.smtpclient import Session
from sigillo.gateway.tlspolicy import Level

KEY = ("192.0.2.1", 25, "mx.example", Level.VERIFY, "verify")


class FakeSession:
    """Stands in for an SMTP session: the property under test is bookkeeping, not SMTP."""

    def __init__(self) -> None:
        self.opened_at = time.monotonic()
        self.connected = True
        self.in_use = False

    async def reset(self) -> bool:
        await asyncio.sleep(random.random() / 1000)
        return self.connected

    async def quit(self) -> None:
        await asyncio.sleep(random.random() / 200)  # a slow QUIT widens any race window
        self.connected = False

    def close(self) -> None:
        self.connected = False


async def test_no_double_hand_out_under_concurrency() -> None:
    cache = ConnectionCache(idle_limit=0.001)
    double: list[FakeSession] = []

    async def delivery() -> None:
        session = cast(FakeSession | None, await cache.take(KEY)) or FakeSession()
        if session.in_use:
            double.append(session)
        session.in_use = True
        await asyncio.sleep(random.random() / 300)
        session.in_use = False
        await cache.give(KEY, cast(Session, session))

    async def deliveries() -> None:
        for _ in range(20):
            await asyncio.gather(*(delivery() for _ in range(50)))

    async def expirer() -> None:
        for _ in range(400):
            await cache.expire()
            await asyncio.sleep(0.0005)

    await asyncio.gather(expirer(), deliveries())
    assert double == []
    await cache.close()


async def test_take_during_expiry_cannot_resurrect_a_session() -> None:
    """[fresh A, expired B, fresh C]: while expiry waits on B's QUIT, two deliveries take C
    and A. When expiry resumes, A must not come back into the cache while still in use."""
    cache = ConnectionCache(idle_limit=5)
    a, b, c = FakeSession(), FakeSession(), FakeSession()
    quitting, release = asyncio.Event(), asyncio.Event()

    async def slow_quit() -> None:
        quitting.set()
        await release.wait()
        b.connected = False

    b.quit = slow_quit  # type: ignore[method-assign]
    for session in (a, b, c):
        await cache.give(KEY, cast(Session, session))
    cache._idle[KEY][1].since -= 10  # B has been idle too long
    expiry = asyncio.create_task(cache.expire())
    await quitting.wait()
    taken = [await cache.take(KEY), await cache.take(KEY)]
    assert {id(t) for t in taken} == {id(a), id(c)}
    release.set()
    await expiry
    assert await cache.take(KEY) is None  # nothing idle: A and C are both still in use


async def test_dead_and_old_sessions_are_not_reused() -> None:
    cache = ConnectionCache(age_limit=10)
    dead, old = FakeSession(), FakeSession()
    await cache.give(KEY, cast(Session, dead))
    dead.connected = False
    assert await cache.take(KEY) is None
    old.opened_at -= 11
    await cache.give(KEY, cast(Session, old))
    assert await cache.take(KEY) is None and not old.connected
