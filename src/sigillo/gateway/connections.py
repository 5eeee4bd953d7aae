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

CacheKey = tuple[str, int, str, Level, str]
"""(MX address, port, MX host name, TLS level, ``Requirement.cache_tag``): a session is reused
only under the very requirement that authorised it."""


@dataclass
class _Idle:
    session: Session
    since: float


class ConnectionCache:
    def __init__(self, idle_limit: float = 5.0, age_limit: float = 300.0) -> None:
        self.idle_limit = idle_limit
        """Seconds an unused session is kept (servers drop idle clients after minutes)."""
        self.age_limit = age_limit
        """Seconds after which a session is not reused at all (Postfix: 300 s)."""
        self._idle: dict[CacheKey, list[_Idle]] = defaultdict(list)

    async def take(self, key: CacheKey) -> Session | None:
        """An idle session for ``key`` that still answers, or None."""
        now = time.monotonic()
        idle = self._idle.get(key)
        while idle:
            entry = idle.pop()
            fresh = now - entry.session.opened_at <= self.age_limit
            if fresh and now - entry.since <= self.idle_limit and await entry.session.reset():
                return entry.session
            entry.session.close()
        return None

    async def give(self, key: CacheKey, session: Session) -> None:
        """Keep a session after a completed transaction, or close it when it is too old."""
        now = time.monotonic()
        if not session.connected or now - session.opened_at > self.age_limit:
            await session.quit()
            return
        self._idle[key].append(_Idle(session, now))
        await self.expire(now)

    async def expire(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        # Unlink every expired entry before the first await: a concurrent take() must never
        # see a list that is about to be replaced, or it could hand out a session twice.
        expired: list[Session] = []
        for key in list(self._idle):
            entries = self._idle[key]
            expired += [e.session for e in entries if now - e.since > self.idle_limit]
            entries[:] = [e for e in entries if now - e.since <= self.idle_limit]
            if not entries:
                del self._idle[key]
        for session in expired:
            await session.quit()

    async def close(self) -> None:
        sessions = [entry.session for entries in self._idle.values() for entry in entries]
        self._idle.clear()
        for session in sessions:
            await session.quit()
