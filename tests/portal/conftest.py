from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.portal.harness import PortalHarness, portal_settings, running_portal


@pytest.fixture
async def portal(tmp_path: Path, store_url: str) -> AsyncIterator[PortalHarness]:
    async with running_portal(portal_settings(tmp_path, store_url)) as harness:
        yield harness
