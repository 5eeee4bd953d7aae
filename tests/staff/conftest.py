from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.staff.harness import ConsoleHarness, running_console, staff_settings


@pytest.fixture
async def console(tmp_path: Path, store_url: str) -> AsyncIterator[ConsoleHarness]:
    """The console over SQLite and over PostgreSQL."""
    async with running_console(staff_settings(tmp_path, store_url)) as harness:
        yield harness
