"""Schema migrations (Alembic), run from the CLI and on ``serve`` start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from sigillo.store.db import Store

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["sigillo_url"] = url
    return cfg


def _upgrade(connection: Connection, url: str) -> None:
    if connection.dialect.name == "postgresql":
        # Several workers may start at once; one migrates, the others wait and find it done.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7346193)")
    cfg = alembic_config(url)
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def _current(connection: Connection) -> tuple[str | None, str | None]:
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    return MigrationContext.configure(connection).get_current_revision(), head


async def upgrade(store: Store) -> None:
    async with store.engine.begin() as conn:
        await conn.run_sync(_upgrade, store.url)


async def revision(store: Store) -> tuple[str | None, str | None]:
    """(revision of the database, newest revision this code knows)."""
    async with store.engine.connect() as conn:
        return await conn.run_sync(_current)
