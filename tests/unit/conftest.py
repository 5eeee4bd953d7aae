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
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The same store contract over both backends."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/sigillo.db"
    else:
        url = request.getfixturevalue("pg_url")
        await _reset_postgres(url)
    s = Store(url)
    await migrate.upgrade(s)
    yield s
    await s.close()


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring.load_or_create(tmp_path / "keys" / "sigillo.keys")
