"""Shared pytest configuration: the real test peers (Postfix, dnsmasq, PostgreSQL), and the
store URL every store-backed test runs over (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sigillo.store.db import Store

pytest_plugins = ["tests.peers.fixtures"]


async def _reset_postgres(url: str) -> None:
    store = Store(url)
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        await conn.exec_driver_sql("CREATE SCHEMA public")
    await store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a new SQLite file, or the session's PostgreSQL database with a
    fresh schema. Resolved outside the event loop (it runs its own)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sigillo.db"
    url: str = request.getfixturevalue("pg_url")
    asyncio.run(_reset_postgres(url))
    return url
