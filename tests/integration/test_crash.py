"""kill -9 loses nothing: a gateway killed mid-delivery or mid-submission delivers, after a
restart on the same database, every message it answered 250 to (at least once).

One ``sigillo serve --role smtp,worker`` process on SQLite, real Postfix behind dnsmasq's MX
records; the lease is short (3 s) so a dead worker's claims come back quickly.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.mailload import (
    MaildirTally,
    Serve,
    Submitter,
    assert_queue_drained,
    batch,
    queue_report,
    reaped,
    wait_queue_settled,
)
from tests.integration.test_cli import peer_env
from tests.peers.dnsmasq import DnsmasqPeer
from tests.peers.fixtures import MxPeers
from tests.peers.net import free_port

pytestmark = pytest.mark.peers

CONCURRENCY = 8
"""delivery.concurrency: at most this many groups (here: messages) are in flight at a kill.
Low enough that twelve submitting clients outrun the worker, so a backlog builds up and the
kill lands with most of the accepted mail still undelivered."""


def gateway_env(tmp_path: Path, mx: MxPeers, dns: DnsmasqPeer, smtp_port: int) -> dict[str, str]:
    return {
        **peer_env(tmp_path, mx, dns),
        "SIGILLO_SMTP__LISTEN": f"127.0.0.1:{smtp_port}",
        "SIGILLO_SMTP__HOSTNAME": "gw.org.example",
        "SIGILLO_DNS__TIMEOUT": "3s",
        "SIGILLO_DELIVERY__LEASE": "3s",
        "SIGILLO_DELIVERY__POLL_INTERVAL": "100ms",
        "SIGILLO_DELIVERY__RETRY_INITIAL": "1s",
        "SIGILLO_DELIVERY__RETRY_MAX": "2s",
        "SIGILLO_DELIVERY__CONCURRENCY": str(CONCURRENCY),
        "SIGILLO_DELIVERY__CONNECT_TIMEOUT": "3s",
        # No bounce is expected; if one were sent it must not reach a real mail server.
        "SIGILLO_RELAY__HOST": f"127.0.0.1:{free_port('127.0.0.1')}",
    }


def in_flight(db: Path) -> set[str]:
    """Recipients of jobs still leased to a worker (claimed, no result recorded) in `db`."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT recipient FROM jobs WHERE state = 'queued' AND lease_owner IS NOT NULL"
        ).fetchall()
    return {row[0] for row in rows}


def report_duplicates(
    counts: Counter[int], name: str, request: pytest.FixtureRequest
) -> tuple[list[int], int]:
    """Print and record (test report, ``--junitxml``) how many messages arrived twice or more.

    Appends to ``user_properties`` as ``record_property`` does, without that fixture's warning
    under the default junit family xunit2 (which ``filterwarnings = error`` makes a failure).
    """
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    extra = sum(n - 1 for n in counts.values())
    print(f"{name}: {len(duplicated)} message(s) delivered more than once, {extra} extra copies")
    request.node.user_properties.append(("duplicates", len(duplicated)))
    request.node.user_properties.append(("extra_copies", extra))
    return duplicated, extra


def test_kill_9_mid_delivery_loses_nothing(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer, request: pytest.FixtureRequest
) -> None:
    total = 500
    started = time.monotonic()
    smtp_port = free_port("127.0.0.1")
    env = gateway_env(tmp_path, mx_peers, dns_peer, smtp_port)
    db = tmp_path / "sigillo.db"
    prefix, mails = batch("crash", total)
    by_recipient = {m.recipient: m.index for m in mails}
    tally = MaildirTally(mx_peers.peer.maildir, prefix)
    processes: list[Serve] = []
    with reaped(processes):
        first = Serve("smtp,worker", env, tmp_path, tmp_path / "serve-1.log")
        processes.append(first)
        first.wait_port(smtp_port)

        submission = Submitter(smtp_port, mails, threads=12).start()
        submission.join(timeout=120)
        result = submission.result
        assert not result.errors and not result.refused and not result.cut, result.errors
        accepted = set(result.accepted)
        assert len(accepted) == total

        # Kill once Postfix holds some of the mail and the worker holds claims on more.
        tally.wait(lambda counts: len(counts) >= 50, timeout=60)
        deadline = time.monotonic() + 30
        while not in_flight(db):
            assert time.monotonic() < deadline, "the worker never held a claim"
            time.sleep(0.002)
        first.kill9()
        seen_at_kill = len(tally.counts())

        # The dead worker's claims: connections Postfix may have completed, results unrecorded.
        leased = {by_recipient[r] for r in in_flight(db)}
        # What Postfix had already accepted reaches the Maildir a moment later.
        before_restart = tally.settled()
        print(
            f"kill -9 at {seen_at_kill} delivered of {total}; {len(before_restart)} after Postfix "
            f"settled; {len(leased)} jobs leased at kill"
        )
        assert len(before_restart) < len(accepted), "the kill did not land mid-delivery"
        assert 0 < len(leased) <= CONCURRENCY, "the worker held no claim when it was killed"

        second = Serve("smtp,worker", env, tmp_path, tmp_path / "serve-2.log")
        processes.append(second)
        try:
            counts = tally.wait(lambda c: accepted <= set(c), timeout=120)
        except TimeoutError:
            missing = sorted(accepted - set(tally.counts()))
            pytest.fail(
                f"{len(missing)} accepted message(s) never delivered, e.g. "
                f"{[mails[i].recipient for i in missing[:5]]}\n"
                f"queue: {queue_report(tmp_path, env)['counts']}\n{second.log()[-3000:]}"
            )
        report = wait_queue_settled(tmp_path, env)
        counts = tally.settled(quiet=1.0)  # a late second copy would show up here
        assert second.terminate() == 0, second.log()[-3000:]

    assert set(counts) <= set(range(total))
    duplicated, _ = report_duplicates(counts, "mid-delivery kill", request)
    # Only a message whose claim died with the worker can arrive twice.
    assert len(duplicated) <= CONCURRENCY
    assert set(duplicated) <= leased, (duplicated, sorted(leased))
    jobs = assert_queue_drained(report, set(by_recipient))
    assert jobs == total
    print(f"mid-delivery kill: {time.monotonic() - started:.1f}s wall time")


def test_kill_9_mid_submission_keeps_every_250(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer, request: pytest.FixtureRequest
) -> None:
    total = 200
    started = time.monotonic()
    smtp_port = free_port("127.0.0.1")
    env = gateway_env(tmp_path, mx_peers, dns_peer, smtp_port)
    prefix, mails = batch("subm", total)
    by_recipient = {m.recipient: m.index for m in mails}
    tally = MaildirTally(mx_peers.peer.maildir, prefix)
    processes: list[Serve] = []
    with reaped(processes):
        first = Serve("smtp,worker", env, tmp_path, tmp_path / "serve-1.log")
        processes.append(first)
        first.wait_port(smtp_port)

        submission = Submitter(smtp_port, mails, threads=4).start()
        deadline = time.monotonic() + 60
        while submission.result.accepted_count() < 40 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert submission.running(), "all clients finished before the kill"
        first.kill9()
        submission.join(timeout=30)
        result = submission.result
        leased = {by_recipient[r] for r in in_flight(tmp_path / "sigillo.db")}
        accepted = set(result.accepted)
        print(
            f"kill -9 during submission: {len(accepted)} answered 250, "
            f"{len(result.cut)} cut off mid-transaction, {len(result.refused)} refused, "
            f"{len(leased)} jobs leased at kill"
        )
        assert 40 <= len(accepted) < total
        assert result.cut, "no client was cut off mid-transaction"
        assert not result.refused, result.refused

        second = Serve("smtp,worker", env, tmp_path, tmp_path / "serve-2.log")
        processes.append(second)
        try:
            tally.wait(lambda c: accepted <= set(c), timeout=120)
        except TimeoutError:
            missing = sorted(accepted - set(tally.counts()))
            pytest.fail(
                f"{len(missing)} message(s) answered 250 never delivered, e.g. "
                f"{[mails[i].recipient for i in missing[:5]]}\n"
                f"queue: {queue_report(tmp_path, env)['counts']}\n{second.log()[-3000:]}"
            )
        report = wait_queue_settled(tmp_path, env)
        assert second.terminate() == 0, second.log()[-3000:]

    # A message stored whose 250 the kill swallowed is delivered too; no other message is.
    stored = {by_recipient[job["recipient"]] for job in report["jobs"]}
    assert accepted <= stored <= accepted | result.cut
    tally.wait(lambda c: stored <= set(c), timeout=30)
    counts = tally.settled(quiet=1.0)
    assert set(counts) == stored, sorted(set(counts) ^ stored)
    duplicated, _ = report_duplicates(counts, "mid-submission kill", request)
    assert len(duplicated) <= CONCURRENCY
    assert set(duplicated) <= leased, (duplicated, sorted(leased))
    assert_queue_drained(report, set(by_recipient))
    print(f"mid-submission kill: {time.monotonic() - started:.1f}s wall time")
