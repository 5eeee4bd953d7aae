from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sigillo.store import migrate
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store


async def _reset_postgres(url: str) -> None:
    store = Store(url)
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        await conn.exec_driver_sql("CREATE SCHEMA public")
    await store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sigillo.db"
    # pg_url is resolved here, outside the event loop: it creates its database synchronously.
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """The same store contract over both backends (a fresh schema for every test)."""
    if store_url.startswith("postgresql"):
        await _reset_postgres(store_url)
    s = Store(store_url)
    await migrate.upgrade(s)
    yield s
    await s.close()


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring.load_or_create(tmp_path / "keys" / "sigillo.keys")
