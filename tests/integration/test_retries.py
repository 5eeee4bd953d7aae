"""Temporary and permanent failures: retry with backoff, expiry, DSNs to the sender."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sigillo.store.models import JobKind, JobState
from tests.integration.gateway import Gateway, received, running_gateway
from tests.integration.test_delivery import SECRET_BODY, addr, mail
from tests.peers.dnsmasq import DnsmasqPeer
from tests.peers.fixtures import MxPeers

pytestmark = pytest.mark.peers


async def _dsn_for(gateway: Gateway, msg_id: str) -> bytes:
    [dsn] = await gateway.jobs(msg_id, JobKind.DSN)
    await gateway.wait_state(dsn.id, {JobState.DELIVERED})
    [(_, _, raw)] = gateway.relay.received
    return raw


async def test_mixed_replies_in_one_transaction(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer
) -> None:
    ok, busy, gone = addr("tls.test"), "defer-" + addr("tls.test"), "reject-" + addr("tls.test")
    async with running_gateway(tmp_path, mx_peers, dns_peer) as gateway:
        msg_id = await gateway.send("rossi@org.example", [ok, busy, gone], mail([ok, busy, gone]))
        jobs = {j.recipient: j for j in await gateway.jobs(msg_id, JobKind.DELIVER)}
        await gateway.wait_state(jobs[gone].id, {JobState.BOUNCED})
        await gateway.wait_state(jobs[ok].id, {JobState.DELIVERED})
        [got] = await received(mx_peers, 1, lambda m: m.recipient == ok)
        assert SECRET_BODY.encode() in got.raw
        busy_job = await gateway.wait_state(jobs[busy].id, {JobState.QUEUED})
        history = await gateway.attempts(busy_job.id)
        assert history and history[0].outcome == "deferred" and history[0].smtp_code == 450
        assert busy_job.next_attempt_at > history[0].at
        raw = await _dsn_for(gateway, msg_id)
        assert gone.encode() in raw and b"5.1.1" in raw and b"mx.tls.test" in raw
        assert ok.encode() not in raw.split(b"\r\n\r\n", 1)[1].split(b"text/rfc822-headers")[0]


async def test_deferred_until_queue_lifetime_then_dsn(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer
) -> None:
    busy, unreachable = "defer-" + addr("tls.test"), addr("dead.test")
    sections = {"delivery": {"queue_lifetime": "4s", "retry_initial": "1s", "retry_max": "1s"}}
    async with running_gateway(tmp_path, mx_peers, dns_peer, sections) as gateway:
        msg_id = await gateway.send(
            "rossi@org.example", [busy, unreachable], mail([busy, unreachable])
        )
        jobs = await gateway.settle(msg_id, timeout=30)
        assert {j.state for j in jobs} == {JobState.BOUNCED}
        for job in jobs:
            history = await gateway.attempts(job.id)
            assert len(history) >= 2, "retried before giving up"
            assert {a.outcome for a in history} == {"deferred"}
            assert "queue lifetime expired" in (job.reason or "")
        by_rcpt = {j.recipient: j for j in jobs}
        assert "no MX reachable" in (by_rcpt[unreachable].reason or "")
        dsns = await gateway.jobs(msg_id, JobKind.DSN)
        assert len(dsns) == 2
        for dsn in dsns:
            await gateway.wait_state(dsn.id, {JobState.DELIVERED})
        reports = b"".join(raw for _, _, raw in gateway.relay.received)
        assert reports.count(b"Status: 4.4.7") == 2


async def test_dns_timeout_defers(tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer) -> None:
    rcpt = addr("dnstimeout.test")
    sections = {"dns": {"timeout": "1s"}}
    async with running_gateway(tmp_path, mx_peers, dns_peer, sections) as gateway:
        msg_id = await gateway.send("rossi@org.example", [rcpt], mail([rcpt]))
        [job] = await gateway.jobs(msg_id, JobKind.DELIVER)
        for _ in range(100):
            history = await gateway.attempts(job.id)
            if history:
                break
            await asyncio.sleep(0.1)
        assert history[0].outcome == "deferred"
        assert "MX lookup" in (history[0].reason or "")
        [job] = await gateway.jobs(msg_id, JobKind.DELIVER)
        assert job.state is JobState.QUEUED and job.next_attempt_at > history[0].at
