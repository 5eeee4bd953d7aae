"""Engine and session factory for the store; SQLite by default, PostgreSQL by URL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The database cannot be reached or used; the message says which and why."""


def async_url(url: str) -> str:
    """Map the configured URL to the async driver: aiosqlite or asyncpg."""
    parsed = make_url(url)
    if parsed.drivername in ("sqlite", "sqlite+aiosqlite"):
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if parsed.drivername in ("postgresql", "postgresql+asyncpg", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise StoreUnavailable(f"unsupported database URL scheme {parsed.drivername!r}")


def database_exists(url: str) -> bool:
    """False only for a SQLite file that is not there yet (opening it would create it)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return True
    return Path(parsed.database).exists()


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str) -> AsyncEngine:
    aurl = async_url(url)
    parsed = make_url(aurl)
    kwargs: dict[str, Any] = {}
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        # Sized for the portal's and the workers' concurrency: connections beyond the pool are
        # closed on return, and under load that meant opening dozens a second.
        kwargs["pool_size"] = 20
        kwargs["max_overflow"] = 10
        kwargs["pool_pre_ping"] = True
    engine = create_async_engine(aurl, **kwargs)
    if parsed.drivername.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; synchronous=FULL makes every commit reach the
    # disk before we answer 250, which is what accepting responsibility for mail means.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


Work = Callable[[Session], T]
"""A unit of writing: plain synchronous ORM code, run inside a group commit."""


def _run_works(engine: Engine, works: list[Work[Any]]) -> list[Any]:
    with Session(engine, expire_on_commit=False) as session, session.begin():
        return [work(session) for work in works]


class Store:
    """Owns the engine. Reads use ``session()``; every write goes through ``write()``."""

    def __init__(self, url: str, max_batch: int = 256) -> None:
        self.url = url
        self.engine = create_engine(url)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.max_batch = max_batch
        # SQLite writes run in one thread on a synchronous connection: a batch then costs one
        # hand-off between threads instead of one per statement, and the event loop does no
        # ORM work for it. PostgreSQL writes use asyncpg on the event loop.
        self._sync_engine: Engine | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sigillo-commit")
        if is_sqlite(self.engine):
            self._sync_engine = sa_create_engine(
                self.engine.url.set(drivername="sqlite"), connect_args={"timeout": 30}
            )
            event.listen(self._sync_engine, "connect", _sqlite_pragmas)
        self._pending: asyncio.Queue[tuple[Work[Any], asyncio.Future[Any]]] | None = None
        self._committer: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    async def write(self, work: Work[T]) -> T:
        """Run ``work`` in a write transaction; return once it is committed.

        Group commit: works submitted while a commit is in flight share the next one, so
        one fsync and one round of ORM bookkeeping serve many messages. A work that raises
        fails alone: its batch is rolled back and the others re-run one by one.
        """
        if self._pending is None:
            self._pending = asyncio.Queue()
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_loop(self._pending))
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._pending.put((work, future))
        return await future

    async def _commit_loop(
        self, pending: asyncio.Queue[tuple[Work[Any], asyncio.Future[Any]]]
    ) -> None:
        while True:
            batch = [await pending.get()]
            while len(batch) < self.max_batch and not pending.empty():
                batch.append(pending.get_nowait())
            live = [(w, f) for w, f in batch if not f.cancelled()]
            if not live:
                continue
            try:
                results = await self._run(live)
            except Exception:
                # Someone's work (or the commit) failed: give each its own transaction so
                # one bad message cannot take the others' acknowledgements down with it.
                for work, future in live:
                    try:
                        [result] = await self._run([(work, future)])
                    except Exception as exc:
                        if not future.done():
                            future.set_exception(exc)
                    else:
                        if not future.done():
                            future.set_result(result)
                continue
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _run(self, batch: list[tuple[Work[Any], asyncio.Future[Any]]]) -> list[Any]:
        works = [work for work, _ in batch]
        if self._sync_engine is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._thread, _run_works, self._sync_engine, works)
        async with self.sessions() as session, session.begin():
            return await session.run_sync(lambda sync: [work(sync) for work in works])

    async def close(self) -> None:
        if self._committer is not None:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
        self._thread.shutdown(wait=True)
        if self._sync_engine is not None:
            self._sync_engine.dispose()
        await self.engine.dispose()
