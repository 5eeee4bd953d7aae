"""Audit log throughput: appends per second, and how fast ``verify`` and ``export`` walk it.

What is measured, on each backend
    sequential  ``audit.log`` awaited one entry at a time: one transaction (and on SQLite one
                fsync) per entry, what a single portal request pays.
    concurrent  ``audit.log`` for many entries at once (``--in-flight`` at a time): entries share
                group commits, but every append still takes the head row's lock, so this is the
                ceiling of the chain, whatever the number of writers.
    two stores  the same, split over two Store objects on one database, as two processes would.
    verify      ``audit.verify`` over the whole log (every hash recomputed), entries per second.
    export      ``audit.export`` of the whole log, entries per second.

Afterwards the chain must verify intact with exactly the entries written, or the script fails.

    .venv/bin/python tests/bench/audit.py --backend both --entries 100000

PostgreSQL: a throw-away database is created through the admin URLs the test suite uses
(``SIGILLO_TEST_PG_ADMIN_URL`` or postgres/root over trust auth) and dropped afterwards.
This is a measurement, not a test; other work on the machine skews it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from sigillo.store import audit, migrate  # noqa: E402
from sigillo.store.db import Store  # noqa: E402
from tests.peers.fixtures import _pg_create, _pg_execute  # noqa: E402


async def _append(store: Store, i: int) -> None:
    await audit.log(
        store,
        "portal.view",
        actor=f"patient{i % 997}@example.net",
        at=datetime.now(UTC),
        client="192.0.2.7",
        conversation_id=i,
        message_id=f"{i:032x}",
        details={"attachment": i % 3},
    )


async def _bounded(count: int, in_flight: int, make: Callable[[int], Awaitable[None]]) -> None:
    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            await make(i)

    await asyncio.gather(*(lane() for _ in range(in_flight)))


def _rate(label: str, count: int, seconds: float) -> None:
    print(f"  {label:<11} {count:>8} entries in {seconds:7.2f} s = {count / seconds:9.0f} /s")


async def bench(url: str, entries: int, sequential: int, in_flight: int) -> None:
    store = Store(url)
    other = Store(url)
    try:
        await migrate.upgrade(store)
        started = time.perf_counter()
        for i in range(sequential):
            await _append(store, i)
        _rate("sequential", sequential, time.perf_counter() - started)

        half = entries // 2
        started = time.perf_counter()
        await _bounded(half, in_flight, lambda i: _append(store, i))
        _rate("concurrent", half, time.perf_counter() - started)

        rest = entries - half
        started = time.perf_counter()
        await asyncio.gather(
            _bounded(rest // 2, in_flight // 2, lambda i: _append(store, i)),
            _bounded(rest - rest // 2, in_flight // 2, lambda i: _append(other, i)),
        )
        _rate("two stores", rest, time.perf_counter() - started)

        total = sequential + entries
        started = time.perf_counter()
        report = await audit.verify(store)
        _rate("verify", report.entries, time.perf_counter() - started)
        if not report.ok or report.entries != total:
            raise SystemExit(f"chain not intact after the run: {report}")

        started = time.perf_counter()
        exported = 0
        async for _ in audit.export(store, datetime(2000, 1, 1, tzinfo=UTC)):
            exported += 1
        _rate("export", exported, time.perf_counter() - started)
        if exported != total:
            raise SystemExit(f"exported {exported} of {total} entries")
    finally:
        await other.close()
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--entries", type=int, default=100_000, help="concurrent appends")
    parser.add_argument(
        "--sequential", type=int, default=None, help="one-at-a-time appends (default N/20)"
    )
    parser.add_argument("--in-flight", type=int, default=512)
    args = parser.parse_args()
    sequential = args.sequential if args.sequential is not None else max(1, args.entries // 20)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    for backend in backends:
        print(f"{backend}:")
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                asyncio.run(
                    bench(f"sqlite:///{tmp}/audit.db", args.entries, sequential, args.in_flight)
                )
            continue
        name = f"sigillo_bench_{os.getpid()}_{secrets.token_hex(4)}"
        admin = _pg_create(name)
        try:
            url = f"{admin.rsplit('/', 1)[0]}/{name}"
            asyncio.run(bench(url, args.entries, sequential, args.in_flight))
        finally:
            asyncio.run(_pg_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
