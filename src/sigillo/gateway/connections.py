"""Reuse of TLS sessions to recipients' MX hosts (Postfix's connection cache).

A session is returned here only after a completed transaction, and handed out again only
for the same MX address, MX name and TLS level, so a reused session is exactly as trusted
as a fresh one: its certificate was checked against the same name under the same policy.
Before reuse it must answer RSET; a session the server has dropped is discarded.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from sigillo.gateway.smtpclient import Session
from sigillo.gateway.tlspolicy import Level

CacheKey = tuple[str, int, str, Level]
"""(MX address, port, MX host name, TLS level)."""


@dataclass
class _Idle:
    session: Session
    since: float
    opened: float


class ConnectionCache:
    def __init__(self, idle_limit: float = 5.0, age_limit: float = 300.0) -> None:
        self.idle_limit = idle_limit
        """Seconds an unused session is kept (servers drop idle clients after minutes)."""
        self.age_limit = age_limit
        """Seconds after which a session is not reused at all (Postfix: 300 s)."""
        self._idle: dict[CacheKey, list[_Idle]] = defaultdict(list)
        self._opened: dict[int, float] = {}

    def opened(self, session: Session) -> None:
        self._opened[id(session)] = time.monotonic()

    async def take(self, key: CacheKey) -> Session | None:
        """An idle session for ``key`` that still answers, or None."""
        now = time.monotonic()
        idle = self._idle.get(key)
        while idle:
            entry = idle.pop()
            if now - entry.since > self.idle_limit or now - entry.opened > self.age_limit:
                await self._discard(entry.session)
                continue
            if await entry.session.reset():
                self._opened[id(entry.session)] = entry.opened
                return entry.session
            await self._discard(entry.session)
        return None

    async def give(self, key: CacheKey, session: Session) -> None:
        """Keep a session after a completed transaction, or close it when it is too old."""
        now = time.monotonic()
        opened = self._opened.pop(id(session), now)
        if not session.connected or now - opened > self.age_limit:
            await session.quit()
            return
        self._idle[key].append(_Idle(session, now, opened))
        await self.expire(now)

    async def expire(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for key, entries in list(self._idle.items()):
            keep = []
            for entry in entries:
                if now - entry.since > self.idle_limit:
                    await entry.session.quit()
                else:
                    keep.append(entry)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    async def close(self) -> None:
        for entries in self._idle.values():
            for entry in entries:
                await entry.session.quit()
        self._idle.clear()

    async def _discard(self, session: Session) -> None:
        self._opened.pop(id(session), None)
        session.close()
