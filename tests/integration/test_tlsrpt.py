"""TLS reports (RFC 8460) as the recipient domains receive them: ``_smtp._tls`` records served
by dnsmasq, reports POSTed to a local HTTPS receiver (test CA) or queued as a signed mail that
the worker delivers to Postfix. Each (day, domain) is reported once; bad records, redirects,
untrusted certificates and internal addresses end in a recorded outcome, never in a crash."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import secrets
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import h11
import pytest
import trustme
from sqlalchemy import select

from sigillo.config import Settings
from sigillo.gateway import tlsrpt
from sigillo.gateway.dnssec import SecureResolver
from sigillo.gateway.tlsrpt import HttpsPoster, SessionResult
from sigillo.portal.outbox import TLS_REPORT
from sigillo.store import migrate
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import Job, JobKind, JobState, Message, TLSReportSent
from tests.integration.gateway import received, running_gateway
from tests.integration.test_own_mail import published, verifies
from tests.peers.ca import PeerCA
from tests.peers.dnsmasq import DnsmasqPeer
from tests.peers.fixtures import MxPeers, dns_records
from tests.peers.net import free_port
from tests.peers.postfix import ReceivedMail

pytestmark = pytest.mark.peers

DAY = date(2026, 3, 14)
AT = datetime(2026, 3, 14, 10, 0, tzinfo=UTC)
SENT_AT = datetime(2026, 3, 15, 1, 0, tzinfo=UTC)
STS = ("version: STSv1", "mode: enforce", "mx: mx.tls.test", "max_age: 86400")
MAILBOX = f"tlsrpt-{secrets.token_hex(4)}@tls.test"
"""Where mail.test wants its reports: a mailbox of the Postfix peer, new for each run."""

RECORDS = {
    "https.test": ["v=TLSRPTv1; rua=https://reports.https.test/v1/tlsrpt"],
    "redirect.test": ["v=TLSRPTv1; rua=https://reports.https.test/redirect"],
    "flaky.test": ["v=TLSRPTv1; rua=https://reports.https.test/flaky"],
    "untrusted.test": ["v=TLSRPTv1; rua=https://reports.untrusted.test/"],
    "malformed.test": ["v=TLSRPTv1; rua=ftp://reports.https.test/"],
    "twice.test": ["v=TLSRPTv1; rua=mailto:a@tls.test", "v=TLSRPTv1; rua=mailto:b@tls.test"],
    "mail.test": [f"v=TLSRPTv1; rua=mailto:{MAILBOX}"],
}


@dataclass
class Request:
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTPS endpoint taking reports: 200, except ``/redirect`` (302) and ``/flaky``
    (503 the first time)."""

    host: str
    cert: trustme.LeafCert
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(ctx)
        self.server = await asyncio.start_server(self.handle, self.host, self.port, ssl=ctx)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            if request is None:
                return
            target = request.target.decode()
            self.requests.append(
                Request(target, {k.decode(): v.decode() for k, v in request.headers}, body)
            )
            status, headers = 200, [("Content-Length", "0")]
            if target == "/redirect":
                status = 302
                headers.append(("Location", "https://reports.https.test/v1/tlsrpt"))
            elif target == "/flaky" and len([r for r in self.requests if r.target == target]) == 1:
                status = 503
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture(scope="module")
def report_dns(tmp_path_factory: pytest.TempPathFactory, peer_block: str) -> Iterator[DnsmasqPeer]:
    """The recipients' records plus the ``_smtp._tls`` records of ``RECORDS``; the report
    hosts are on the peer block (.7 with a test-CA certificate, .8 with an unknown CA's)."""
    mx, hosts = dns_records(peer_block)
    hosts["reports.https.test"] = f"{peer_block}.7"
    hosts["reports.untrusted.test"] = f"{peer_block}.8"
    lines = ["server=/dnstimeout.test/127.0.0.1#9"]
    for domain, texts in RECORDS.items():
        lines += [f'txt-record=_smtp._tls.{domain},"{text}"' for text in texts]
    peer = DnsmasqPeer(tmp_path_factory.mktemp("tlsrpt-dns"), mx, hosts, lines)
    try:
        peer.start()
        yield peer
    finally:
        peer.stop()


@dataclass
class Endpoints:
    trusted: Receiver
    untrusted: Receiver

    @property
    def port(self) -> int:
        return self.trusted.port


@pytest.fixture
async def endpoints(test_ca: PeerCA, peer_block: str) -> AsyncIterator[Endpoints]:
    port = free_port(f"{peer_block}.7")
    trusted = Receiver(f"{peer_block}.7", test_ca.ca.issue_cert("reports.https.test"), port)
    stranger = trustme.CA(organization_name="nobody sigillo trusts")
    untrusted = Receiver(f"{peer_block}.8", stranger.issue_cert("reports.untrusted.test"), port)
    await trusted.start()
    await untrusted.start()
    try:
        yield Endpoints(trusted, untrusted)
    finally:
        await trusted.stop()
        await untrusted.stop()


def report_settings(tmp_path: Path, store_url: str, dns: DnsmasqPeer, ca: PeerCA) -> Settings:
    return Settings.model_validate(
        {
            "smtp": {"hostname": "gw.org.example"},
            "dns": {"nameservers": [dns.nameserver], "timeout": "2s"},
            "delivery": {"ca_file": str(ca.pem_path)},
            "tlsrpt": {"organization_name": "Org Example"},
            "storage": {"database_url": store_url, "key_file": str(tmp_path / "sigillo.keys")},
        }
    )


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = Store(store_url)
    await migrate.upgrade(s)
    yield s
    await s.close()


async def count_sessions(store: Store, *domains: str) -> None:
    def work(session: Any) -> None:
        for domain in domains:
            ok = SessionResult(domain, "sts", STS, "mx.tls.test", "127.0.0.2", "success")
            bad = SessionResult(
                domain, "sts", STS, "mx.tls.test", "127.0.0.2", "validation-failure"
            )
            for result in (ok, ok, bad):
                tlsrpt.count(session, result, AT)

    await store.write(work)


async def sent_rows(store: Store) -> dict[str, str]:
    async with store.session() as session:
        rows = await session.execute(select(TLSReportSent).where(TLSReportSent.day == "2026-03-14"))
        return {r.policy_domain: r.outcome for r in rows.scalars()}


def gunzipped(body: bytes) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(gzip.decompress(body))
    return report


async def test_reports_are_posted_once_and_every_failure_is_recorded(
    tmp_path: Path,
    store: Store,
    store_url: str,
    report_dns: DnsmasqPeer,
    test_ca: PeerCA,
    endpoints: Endpoints,
) -> None:
    settings = report_settings(tmp_path, store_url, report_dns, test_ca)
    keyring = Keyring.load_or_create(settings.storage.key_file)
    resolver = SecureResolver(settings.dns)
    # The receivers are on loopback: only this test may allow that (see the next test).
    poster = HttpsPoster(resolver, str(test_ca.pem_path), port=endpoints.port, allow=lambda _: True)
    domains = [*RECORDS, "none.test", "dnstimeout.test"]
    domains.remove("mail.test")
    await count_sessions(store, *domains)

    outcomes = dict(
        await tlsrpt.send_due_reports(
            store, settings, resolver, keyring, DAY, now=SENT_AT, poster=poster
        )
    )
    assert sorted(outcomes) == sorted(domains)
    assert outcomes["https.test"] == "https://reports.https.test/v1/tlsrpt: sent: HTTP 200"
    assert "HTTP 302" in outcomes["redirect.test"]
    assert "redirects are not followed" in outcomes["redirect.test"]
    assert "certificate not valid" in outcomes["untrusted.test"]
    assert outcomes["malformed.test"].startswith("not sent: no usable rua URI")
    assert outcomes["twice.test"] == "not sent: 2 v=TLSRPTv1 records (exactly one is allowed)"
    assert outcomes["none.test"] == "not sent: no _smtp._tls record (nxdomain)"
    assert outcomes["dnstimeout.test"].startswith("deferred: DNS did not answer")
    assert outcomes["flaky.test"].startswith("deferred: ") and "HTTP 503" in outcomes["flaky.test"]
    # Deferred ones hold no claim: the next run takes them up.
    recorded = await sent_rows(store)
    assert sorted(recorded) == sorted(set(domains) - {"dnstimeout.test", "flaky.test"})
    assert recorded["untrusted.test"] == outcomes["untrusted.test"]

    # What the receiver got: one POST per report, gzip JSON, and no redirect followed.
    posted = endpoints.trusted.requests
    assert [r.target for r in posted] == ["/flaky", "/v1/tlsrpt", "/redirect"]
    assert endpoints.untrusted.requests == []  # the handshake failed: nothing was sent
    request = posted[1]
    assert request.headers["content-type"] == "application/tlsrpt+gzip"
    assert request.headers["host"] == f"reports.https.test:{endpoints.port}"
    report = gunzipped(request.body)
    assert report["report-id"] == "2026-03-14.https.test@gw.org.example"
    assert report["organization-name"] == "Org Example"
    [policy] = report["policies"]
    assert policy["policy"] == {
        "policy-type": "sts",
        "policy-string": list(STS),
        "policy-domain": "https.test",
        "mx-host": ["mx.tls.test"],
    }
    assert policy["summary"] == {
        "total-successful-session-count": 2,
        "total-failure-session-count": 1,
    }
    [detail] = policy["failure-details"]
    assert detail["result-type"] == "validation-failure"
    assert detail["receiving-ip"] == "127.0.0.2"
    assert detail["failed-session-count"] == 1

    # The next run: only what was deferred, and the flaky endpoint now takes it.
    again = await tlsrpt.send_due_reports(
        store, settings, resolver, keyring, DAY, now=SENT_AT + timedelta(hours=1), poster=poster
    )
    assert [d for d, _ in again] == ["dnstimeout.test", "flaky.test"]
    assert dict(again)["flaky.test"] == "https://reports.https.test/flaky: sent: HTTP 200"
    assert [r.target for r in endpoints.trusted.requests] == [
        "/flaky",
        "/v1/tlsrpt",
        "/redirect",
        "/flaky",
    ]
    assert gunzipped(endpoints.trusted.requests[-1].body)["report-id"].startswith("2026-03-14.")


async def test_reports_are_never_posted_to_internal_addresses(
    tmp_path: Path,
    store: Store,
    store_url: str,
    report_dns: DnsmasqPeer,
    test_ca: PeerCA,
    endpoints: Endpoints,
) -> None:
    settings = report_settings(tmp_path, store_url, report_dns, test_ca)
    keyring = Keyring.load_or_create(settings.storage.key_file)
    resolver = SecureResolver(settings.dns)
    await count_sessions(store, "https.test")
    poster = HttpsPoster(resolver, str(test_ca.pem_path), port=endpoints.port)
    [(domain, outcome)] = await tlsrpt.send_due_reports(
        store, settings, resolver, keyring, DAY, now=SENT_AT, poster=poster
    )
    assert domain == "https.test"
    assert outcome == (
        "https://reports.https.test/v1/tlsrpt: failed: "
        f"reports.https.test: no public address ({endpoints.trusted.host})"
    )
    assert endpoints.trusted.requests == []


async def test_a_mailto_report_is_queued_signed_and_delivered(
    tmp_path: Path, store_url: str, mx_peers: MxPeers, report_dns: DnsmasqPeer
) -> None:
    key = tmp_path / "dkim" / "dkim.key"
    overrides = {
        "notify": {"dkim_key_file": str(key)},
        "storage": {"database_url": store_url},
        "tlsrpt": {"organization_name": "Org Example"},
    }

    def ours(m: ReceivedMail) -> bool:
        return m.recipient == MAILBOX

    earlier = [m for m in mx_peers.peer.messages() if ours(m)]
    async with running_gateway(tmp_path, mx_peers, report_dns, overrides) as gateway:
        await count_sessions(gateway.store, "mail.test")
        resolver = SecureResolver(gateway.settings.dns)
        [(domain, outcome)] = await tlsrpt.send_due_reports(
            gateway.store, gateway.settings, resolver, gateway.keyring, DAY, now=SENT_AT
        )
        assert (domain, outcome) == ("mail.test", f"mailto:{MAILBOX}: queued")
        async with gateway.store.session() as session:
            [job] = (
                (await session.execute(select(Job).where(Job.recipient == MAILBOX))).scalars().all()
            )
            message = await session.get(Message, job.message_id)
        assert job.kind is JobKind.MAIL
        assert message is not None and message.client_address == TLS_REPORT
        await gateway.wait_state(job.id, {JobState.DELIVERED})
        # The mailbox is shared by the runs over both backends: this run's mail is the last.
        mail = (await received(mx_peers, len(earlier) + 1, ours))[-1]

    assert verifies(mail.raw, published(tmp_path, key))
    parsed = message_from_bytes(mail.raw, policy=default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed["TLS-Report-Domain"] == "mail.test"
    [_, attachment] = list(parsed.iter_parts())
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    report = gunzipped(attachment.get_content())
    assert report["report-id"] == "2026-03-14.mail.test@gw.org.example"
    assert report["policies"][0]["summary"]["total-successful-session-count"] == 2


def test_show_prints_what_would_be_sent(
    tmp_path: Path, store_url: str, report_dns: DnsmasqPeer, test_ca: PeerCA
) -> None:
    settings = report_settings(tmp_path, store_url, report_dns, test_ca)

    async def seed() -> None:
        store = Store(store_url)
        try:
            await migrate.upgrade(store)
            await count_sessions(store, "https.test", "malformed.test")
        finally:
            await store.close()

    asyncio.run(seed())
    env = {
        **os.environ,
        "SIGILLO_STORAGE__DATABASE_URL": store_url,
        "SIGILLO_DNS__NAMESERVERS": json.dumps(settings.dns.nameservers),
        "SIGILLO_SMTP__HOSTNAME": "gw.org.example",
    }

    def sigillo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sigillo", "tlsrpt", "show", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    shown = sigillo("--date", "2026-03-14", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["date"] == "2026-03-14"
    [https, malformed] = data["domains"]
    assert https["domain"] == "https.test"
    assert https["rua"] == ["https://reports.https.test/v1/tlsrpt"]
    assert https["sent"] is None
    assert https["report"]["report-id"] == "2026-03-14.https.test@gw.org.example"
    assert https["report"]["policies"][0]["summary"]["total-failure-session-count"] == 1
    assert malformed["rua"] == [] and "ftp" in malformed["rua_problem"]

    assert json.loads(sigillo("--date", "2026-03-13", "--json").stdout)["domains"] == []
    bad = sigillo("--date", "14/03/2026")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "sigillo: --date '14/03/2026' is not a day YYYY-MM-DD"
    assert sigillo("--date", "2026-02-30").returncode == 2


async def test_the_daily_job_reports_yesterday_after_its_delay(
    tmp_path: Path, store: Store, store_url: str, report_dns: DnsmasqPeer, test_ca: PeerCA
) -> None:
    settings = report_settings(tmp_path, store_url, report_dns, test_ca)
    keyring = Keyring.load_or_create(settings.storage.key_file)
    await count_sessions(store, "none.test")

    async def run_job(at: datetime, delay: timedelta) -> dict[str, str]:
        stop = asyncio.Event()
        job = asyncio.create_task(
            tlsrpt.report_job(settings, store, keyring, stop, clock=lambda: at, delay=delay)
        )
        # The job either runs at once (and records an outcome) or goes to sleep: a few
        # turns of the loop and a DNS answer are all it needs before ``stop``.
        for _ in range(100):
            if await sent_rows(store) or job.done():
                break
            await asyncio.sleep(0.02)
        stop.set()
        await job
        return await sent_rows(store)

    # Before midnight plus the delay: nothing yet.
    assert await run_job(SENT_AT, timedelta(hours=1, minutes=30)) == {}
    # Disabled: never.
    settings.tlsrpt.enabled = False
    assert await run_job(SENT_AT, timedelta(0)) == {}
    settings.tlsrpt.enabled = True
    assert await run_job(SENT_AT, timedelta(minutes=30)) == {
        "none.test": "not sent: no _smtp._tls record (nxdomain)"
    }
