from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sigillo.store import migrate
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """The same store contract over both backends (a fresh schema for every test)."""
    s = Store(store_url)
    await migrate.upgrade(s)
    yield s
    await s.close()


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring.load_or_create(tmp_path / "keys" / "sigillo.keys")
