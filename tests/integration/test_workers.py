"""Scale-out on one PostgreSQL store: an SMTP-only process and two worker-only processes.

Both workers claim from the same queue; ``FOR UPDATE SKIP LOCKED`` claims must hand every job
to exactly one of them, so with no crash every message arrives exactly once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.integration.mailload import (
    MaildirTally,
    Serve,
    Submitter,
    assert_queue_drained,
    batch,
    reaped,
    wait_queue_settled,
)
from tests.integration.test_cli import peer_env, sigillo
from tests.peers.dnsmasq import DnsmasqPeer
from tests.peers.fixtures import MxPeers
from tests.peers.net import free_port

pytestmark = pytest.mark.peers


async def _reset_schema(url: str) -> None:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await connection.close()


def reset_schema(url: str) -> None:
    """An empty public schema: `pg_url` is one database for the whole session."""
    asyncio.run(_reset_schema(url))


def delivered_messages(log: str) -> Counter[str]:
    """Message ids from the worker's ``delivered`` JSON log lines (one per delivered group)."""
    seen: Counter[str] = Counter()
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("event") == "delivered":
            assert set(entry["outcomes"].values()) == {"tls"}, entry
            seen[entry["message"]] += 1
    return seen


def test_two_workers_share_one_postgresql_store(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer, pg_url: str
) -> None:
    total = 200
    started = time.monotonic()
    smtp_port = free_port("127.0.0.1")
    env = {
        **peer_env(tmp_path, mx_peers, dns_peer),
        "SIGILLO_STORAGE__DATABASE_URL": pg_url,
        "SIGILLO_SMTP__LISTEN": f"127.0.0.1:{smtp_port}",
        "SIGILLO_SMTP__HOSTNAME": "gw.org.example",
        "SIGILLO_DNS__TIMEOUT": "3s",
        "SIGILLO_DELIVERY__POLL_INTERVAL": "100ms",
        "SIGILLO_DELIVERY__RETRY_INITIAL": "1s",
        "SIGILLO_DELIVERY__CONNECT_TIMEOUT": "3s",
        "SIGILLO_RELAY__HOST": f"127.0.0.1:{free_port('127.0.0.1')}",
    }
    prefix, mails = batch("pair", total)
    tally = MaildirTally(mx_peers.peer.maildir, prefix)
    reset_schema(pg_url)
    processes: list[Serve] = []
    try:
        with reaped(processes):
            upgrade = sigillo("db", "upgrade", cwd=tmp_path, env=env)
            assert upgrade.returncode == 0, upgrade.stderr

            # The SMTP process creates the key file; the workers must find it, not race for it.
            smtp = Serve("smtp", env, tmp_path, tmp_path / "smtp.log")
            processes.append(smtp)
            smtp.wait_port(smtp_port)
            assert (tmp_path / "sigillo.keys").is_file()
            workers = [Serve("worker", env, tmp_path, tmp_path / f"worker-{n}.log") for n in (1, 2)]
            processes.extend(workers)
            for worker in workers:
                worker.wait_log('"worker_started"')

            submission = Submitter(smtp_port, mails, threads=4).start()
            submission.join(timeout=120)
            result = submission.result
            assert not result.errors and not result.refused, (result.errors, result.refused)
            assert len(result.accepted) == total

            tally.wait(lambda c: len(c) >= total, timeout=90)
            report = wait_queue_settled(tmp_path, env)
            counts = tally.settled(quiet=1.0)  # a late second copy would show up here
            logs = [worker.log() for worker in workers]
            codes = [process.terminate() for process in processes]
            assert codes == [0, 0, 0], [p.log()[-2000:] for p in processes]
    finally:
        reset_schema(pg_url)

    assert set(counts) == set(range(total))
    twice = sorted(mails[i].recipient for i, n in counts.items() if n > 1)
    assert not twice, f"{len(twice)} message(s) delivered more than once: {twice[:5]}"

    per_worker = [delivered_messages(log) for log in logs]
    shares = [len(seen) for seen in per_worker]
    print(f"two workers: deliveries per worker {shares}; {time.monotonic() - started:.1f}s")
    both = set(per_worker[0]) & set(per_worker[1])
    assert not both, f"delivered by both workers: {sorted(both)[:5]}"
    assert all(n == 1 for seen in per_worker for n in seen.values())
    assert set(per_worker[0]) | set(per_worker[1]) == set(result.accepted.values())
    assert all(shares), f"one worker delivered nothing: {shares}"
    assert assert_queue_drained(report, {m.recipient for m in mails}) == total
