"""Real-world and malformed mail passes through untouched: sigillo does not need to parse MIME
to deliver it, and must not break what it does not understand."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from sigillo.store.models import JobState
from tests.integration.gateway import received, running_gateway
from tests.peers.dnsmasq import DnsmasqPeer
from tests.peers.fixtures import MxPeers

pytestmark = pytest.mark.peers

CORPUS = sorted((Path(__file__).parent.parent / "corpus").glob("*.eml"))


def _body(raw: bytes) -> bytes:
    raw = raw.replace(b"\r\n", b"\n")  # Postfix's Maildir stores LF line endings
    return raw.split(b"\n\n", 1)[1] if b"\n\n" in raw else raw


async def test_corpus_delivered_byte_for_byte(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer
) -> None:
    assert len(CORPUS) >= 8
    async with running_gateway(tmp_path, mx_peers, dns_peer) as gateway:
        sent: dict[str, bytes] = {}
        for path in CORPUS:
            rcpt = f"corpus-{path.stem}-{secrets.token_hex(3)}@tls.test"
            msg_id = await gateway.send("lab@org.example", [rcpt], path.read_bytes())
            [job] = await gateway.settle(msg_id)
            assert job.state is JobState.DELIVERED, (path.name, job.reason)
            sent[rcpt] = path.read_bytes()
        got = await received(mx_peers, len(sent), lambda m: m.recipient in sent)
        for mail in got:
            original = sent[mail.recipient]
            assert _body(original) in mail.raw.replace(b"\r\n", b"\n"), mail.recipient
