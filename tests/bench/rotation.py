"""Key rotation speed: data keys re-wrapped per second, on SQLite or PostgreSQL.

What is measured
    A fresh database gets ``--rows`` messages (2 KiB of content each, sealed under the key
    file's first key), then ``sigillo.store.rotation.rotate`` runs in-process with
    ``--batch-size`` and a zero grace, exactly as ``sigillo keys rotate --grace 0`` does. The
    clock covers the re-wrap pass only (Phase B: read a batch, unwrap and wrap every data key,
    one conditional UPDATE per row, commit); the key file change and the retirement are
    reported separately. Afterwards every message is opened and compared with its plaintext.

    .venv/bin/python tests/bench/rotation.py --rows 20000
    .venv/bin/python tests/bench/rotation.py --rows 20000 \\
        --database-url postgresql://postgres@127.0.0.1:5432/sigillo_bench

A PostgreSQL database named by the URL is emptied (schema ``public`` dropped) first: give it
one made for the purpose. This is a measurement, not a test: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, select

from sigillo.gateway.queue import new_message
from sigillo.store import migrate
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import Message
from sigillo.store.rotation import Quiet, rotate


class Timed(Quiet):
    def __init__(self) -> None:
        self.started = 0.0
        self.last = 0.0
        self.rows = 0

    def rewrapping(self, total: int) -> None:
        if not self.started:
            self.started = time.perf_counter()

    def advanced(self, rows: int) -> None:
        self.rows += rows
        self.last = time.perf_counter()


async def seed(store: Store, keyring: Keyring, rows: int) -> dict[str, bytes]:
    now = datetime.now(UTC)
    plain: dict[str, bytes] = {}
    for start in range(0, rows, 2000):
        batch = []
        for i in range(start, min(start + 2000, rows)):
            content = f"Subject: bench {i}\r\n\r\n".encode() + os.urandom(1024).hex().encode()
            m = new_message(
                keyring, mail_from="bench@org.example", content=content, client_address="-", now=now
            )
            plain[m.id] = content
            batch.append({c.key: getattr(m, c.key) for c in Message.__table__.columns})
        await store.write(lambda s, b=batch: s.execute(insert(Message), b))
    return plain


async def main_async(args: argparse.Namespace, workdir: Path) -> int:
    url = args.database_url or f"sqlite:///{workdir}/bench.db"
    store = Store(url)
    try:
        if not url.startswith("sqlite"):
            async with store.engine.begin() as conn:
                await conn.exec_driver_sql("DROP SCHEMA public CASCADE")
                await conn.exec_driver_sql("CREATE SCHEMA public")
        await migrate.upgrade(store)
        key_file = workdir / "sigillo.keys"
        keyring = Keyring.load_or_create(key_file)
        plain = await seed(store, keyring, args.rows)

        timed = Timed()
        started = time.perf_counter()
        result = await rotate(
            store,
            key_file,
            actor="bench",
            batch_size=args.batch_size,
            grace=timedelta(0),
            progress=timed,
        )
        total = time.perf_counter() - started
        rewrap = timed.last - timed.started

        check = Keyring.load(key_file)
        async with store.session() as session:
            for m in (await session.execute(select(Message))).scalars():
                if check.open(m.id, m.kek_id, m.wrapped_key, m.content) != plain[m.id]:
                    print(f"MISMATCH {m.id}", file=sys.stderr)
                    return 1
        backend = url.split(":", 1)[0]
        print(
            f"{backend}: {result.rewrapped} rows re-wrapped in {rewrap:.2f} s "
            f"({result.rewrapped / rewrap:,.0f} rows/s, batch {args.batch_size}); "
            f"whole run {total:.2f} s; retired {list(result.retired)}; all rows open"
        )
        return 0
    finally:
        await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sigillo-rotation-") as tmp:
        return asyncio.run(main_async(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
