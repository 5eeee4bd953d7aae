"""A recipient server whose TLS is older than the minimum: content goes to the portal.

Postfix on Debian 12 cannot be made to speak TLS 1.0/1.1 (OpenSSL's security level), so this
peer is an aiosmtpd server with a deliberately weak TLS context, on mx.oldtls.test (.6).
"""

from __future__ import annotations

import asyncio
import ssl
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from sigillo.store.models import JobState
from tests.integration.gateway import running_gateway
from tests.integration.test_delivery import SECRET_BODY, addr, mail
from tests.peers.dnsmasq import DnsmasqPeer
from tests.peers.fixtures import MxPeers

pytestmark = pytest.mark.peers


class Recorder:
    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.contents.append(envelope.original_content or b"")
        return "250 OK"


@asynccontextmanager
async def old_tls_server(
    mx: MxPeers, tmp_path: Path, maximum: ssl.TLSVersion
) -> AsyncIterator[Recorder]:
    cert = mx.ca.ca.issue_cert("mx.oldtls.test")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():  # the old versions are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let OpenSSL speak the old protocol at all
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "old.pem"))
    ctx.load_cert_chain(str(tmp_path / "old.pem"))
    recorder = Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(recorder, tls_context=ctx, hostname="mx.oldtls.test"),
        f"{mx.block}.6",
        mx.port,
    )
    try:
        yield recorder
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("server_max", "client_min"),
    [(ssl.TLSVersion.TLSv1_1, "1.2"), (ssl.TLSVersion.TLSv1_2, "1.3")],
)
async def test_tls_below_minimum_goes_to_portal(
    tmp_path: Path,
    mx_peers: MxPeers,
    dns_peer: DnsmasqPeer,
    server_max: ssl.TLSVersion,
    client_min: str,
) -> None:
    rcpt = addr("oldtls.test")
    overrides = {"delivery": {"min_tls_version": client_min}}
    async with (
        old_tls_server(mx_peers, tmp_path, server_max) as recorder,
        running_gateway(tmp_path, mx_peers, dns_peer, overrides) as gateway,
    ):
        msg_id = await gateway.send("rossi@org.example", [rcpt], mail([rcpt]))
        [job] = await gateway.settle(msg_id)
        assert job.state is JobState.PORTAL
        assert "handshake failed" in (job.reason or "")
        [notify] = await gateway.notify_jobs(rcpt)
        await gateway.wait_state(notify.id, {JobState.DELIVERED})
        # The notification reached the weak server; the content never did.
        assert len(recorder.contents) == 1
        assert SECRET_BODY.encode() not in recorder.contents[0]


async def test_same_server_within_policy_gets_the_content(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer
) -> None:
    """Control for the test above: the peer itself works when its TLS meets the minimum."""
    rcpt = addr("oldtls.test")
    async with (
        old_tls_server(mx_peers, tmp_path, ssl.TLSVersion.TLSv1_2) as recorder,
        running_gateway(tmp_path, mx_peers, dns_peer) as gateway,
    ):
        msg_id = await gateway.send("rossi@org.example", [rcpt], mail([rcpt]))
        [job] = await gateway.settle(msg_id)
        assert job.state is JobState.DELIVERED
        [attempt] = await gateway.attempts(job.id)
        assert attempt.tls_version == "TLSv1.2" and attempt.cert_verified
        assert SECRET_BODY.encode() in recorder.contents[0]
