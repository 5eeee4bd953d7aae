"""The migrations build exactly the schema the models describe, on every backend."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from sigillo.store.db import Store
from sigillo.store.models import Base


async def test_migrated_schema_matches_models(store: Store) -> None:
    def diff(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))

    async with store.engine.connect() as conn:
        differences = await conn.run_sync(diff)
    assert differences == []
