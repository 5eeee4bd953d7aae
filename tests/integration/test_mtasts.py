"""MTA-STS against real peers: dnsmasq publishes the ``_mta-sts`` TXT records and the policy
hosts' addresses, an HTTPS server in the test (certificate from the test CA) serves the
policies, and the cache lives in the store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from sigillo.config import DeliverySettings, DNSSettings
from sigillo.gateway.dnssec import SecureResolver
from sigillo.gateway.mtasts import (
    MAX_POLICY_BYTES,
    FetchError,
    MtaSts,
    PolicyError,
    StsPolicy,
    fetch_policy,
    parse_policy,
)
from sigillo.store import migrate
from sigillo.store.db import Store
from sigillo.store.models import MtaStsPolicy
from tests.peers.ca import PeerCA, make_ca
from tests.peers.dnsmasq import DnsmasqPeer
from tests.peers.net import free_loopback_block
from tests.peers.nginx import CertKind, NginxPeer

pytestmark = pytest.mark.peers

ENFORCE = "version: STSv1\r\nmode: enforce\r\nmx: mx.good.test\r\nmax_age: 86400\r\n"
TESTING = "version: STSv1\nmode: testing\nmx: *.good.test\nmax_age: 604800\n"

#: Policy domains: each has ``_mta-sts.<d>`` TXT (unless noted) and ``mta-sts.<d>`` -> server.
TXT = {
    "good.test": ['"v=STSv1; id=1"'],
    "testing.test": ['"v=STSv1; ", "id=t1; ext=x"'],  # two strings in one record
    "redirect.test": ['"v=STSv1; id=1"'],
    "html.test": ['"v=STSv1; id=1"'],
    "huge.test": ['"v=STSv1; id=1"'],
    "streamed.test": ['"v=STSv1; id=1"'],
    "missing.test": ['"v=STSv1; id=1"'],
    "invalid.test": ['"v=STSv1; id=1"'],
    "slow.test": ['"v=STSv1; id=1"'],
    "wrongcert.test": ['"v=STSv1; id=1"'],
    "noaddress.test": ['"v=STSv1; id=1"'],
    "rotated.test": ['"v=STSv1; id=new"'],
    "down.test": ['"v=STSv1; id=new"'],
    "refresh.test": ['"v=STSv1; id=1"'],
    "busy.test": ['"v=STSv1; id=1"'],
    "twotxt.test": ['"v=STSv1; id=1"', '"v=STSv1; id=2"'],
    "badtxt.test": ['"v=STSv1; id=no-dashes"'],
    "spf.test": ['"v=spf1 -all"'],
    "untxt.test": [],  # a policy host but no TXT record at all
    "partial.test": ['"v=STSv1; id=1"'],
    "liar.test": ['"v=STSv1; id=1"'],
}
#: Names the server's certificate covers (mta-sts.wrongcert.test is not among them).
CERT_NAMES = tuple(f"mta-sts.{d}" for d in TXT if d != "wrongcert.test")


@dataclass
class Reply:
    status: int = 200
    content_type: str | None = "text/plain"
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    length: bool = True
    """Send Content-Length; without it the body runs until the connection closes."""
    hang: bool = False
    """Accept the request and never answer."""


@dataclass
class PolicyServer:
    """An HTTPS server answering per Host header; it records every request it gets."""

    address: str
    port: int = 0
    replies: dict[str, Reply] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, host: str) -> int:
        return sum(1 for h, _ in self.requests if h == host)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            target = lines[0].split(" ")[1]
            host = next(v.strip() for k, _, v in (x.partition(":") for x in lines) if k == "Host")
            self.requests.append((host, target))
            reply = self.replies.get(host, Reply(404, body=b"no such policy"))
            if reply.hang:
                await self.release.wait()
                return
            if target != "/.well-known/mta-sts.txt":
                reply = Reply(404, body=b"wrong path")
            out = [f"HTTP/1.1 {reply.status} Whatever", "Connection: close"]
            if reply.content_type is not None:
                out.append(f"Content-Type: {reply.content_type}")
            if reply.length:
                out.append(f"Content-Length: {len(reply.body)}")
            out += [f"{k}: {v}" for k, v in reply.headers]
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + reply.body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client gave up (too large, wrong certificate): its side is under test
        finally:
            writer.close()


@pytest.fixture(scope="module")
def block() -> str:
    return free_loopback_block()


@pytest.fixture(scope="module")
def sts_dns(tmp_path_factory: pytest.TempPathFactory, block: str) -> Iterator[DnsmasqPeer]:
    hosts = {f"mta-sts.{d}": f"{block}.7" for d in TXT if d != "noaddress.test"}
    lines = [f"txt-record=_mta-sts.{d},{r}" for d, records in TXT.items() for r in records]
    peer = DnsmasqPeer(tmp_path_factory.mktemp("sts-dns"), {}, hosts, lines)
    try:
        peer.start()
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="module")
def sts_ca(tmp_path_factory: pytest.TempPathFactory) -> PeerCA:
    return make_ca(tmp_path_factory.mktemp("sts-ca"))


@pytest.fixture
async def server(block: str, sts_ca: PeerCA) -> AsyncIterator[PolicyServer]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sts_ca.ca.issue_cert(*CERT_NAMES).configure_cert(ctx)
    srv = PolicyServer(f"{block}.7")
    listener = await asyncio.start_server(srv.handle, srv.address, 0, ssl=ctx)
    srv.port = listener.sockets[0].getsockname()[1]
    srv.replies.update(
        {
            "mta-sts.good.test": Reply(body=ENFORCE.encode()),
            "mta-sts.testing.test": Reply(content_type="text/plain; charset=utf-8", body=b"x"),
            "mta-sts.redirect.test": Reply(301, headers=(("Location", "/elsewhere"),)),
            "mta-sts.html.test": Reply(content_type="text/html", body=ENFORCE.encode()),
            "mta-sts.huge.test": Reply(body=ENFORCE.encode() + b"#" * MAX_POLICY_BYTES),
            "mta-sts.streamed.test": Reply(body=b"x: y\n" * 20000, length=False),
            "mta-sts.invalid.test": Reply(body=b"version: STSv1\nmode: strict\n"),
            "mta-sts.slow.test": Reply(hang=True),
            "mta-sts.wrongcert.test": Reply(body=ENFORCE.encode()),
            "mta-sts.untxt.test": Reply(body=ENFORCE.encode()),
            "mta-sts.partial.test": Reply(206, body=ENFORCE.encode()),
            # Announces 10 MB, sends a policy and closes: refused before reading any of it.
            "mta-sts.liar.test": Reply(
                body=ENFORCE.encode(), length=False, headers=(("Content-Length", "10000000"),)
            ),
        }
    )
    srv.replies["mta-sts.testing.test"].body = TESTING.encode()
    try:
        yield srv
    finally:
        srv.release.set()
        listener.close()
        await listener.wait_closed()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = Store(store_url)
    await migrate.upgrade(s)
    yield s
    await s.close()


def resolver(dns: DnsmasqPeer) -> SecureResolver:
    return SecureResolver(DNSSettings.model_validate({"nameservers": [dns.nameserver]}))


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def sts(
    store: Store, sts_dns: DnsmasqPeer, server: PolicyServer, sts_ca: PeerCA
) -> AsyncIterator[tuple[MtaSts, Clock]]:
    clock = Clock()
    settings = DeliverySettings.model_validate({"ca_file": str(sts_ca.pem_path)})
    mta_sts = MtaSts(store, resolver(sts_dns), settings, clock, server.port, timeout=5.0)
    yield mta_sts, clock
    await mta_sts.close()


def week(text: str) -> str:
    return text.replace("max_age: 86400", "max_age: 604800")


async def seed(store: Store, domain: str, policy_id: str, text: str, fetched: datetime) -> None:
    """A cached policy as an earlier fetch would have left it."""
    policy = parse_policy(text)
    max_age = policy.max_age

    def work(session: Session) -> None:
        session.add(
            MtaStsPolicy(
                domain=domain,
                policy_id=policy_id,
                mode=policy.mode,
                mx=list(policy.mx),
                max_age=max_age,
                policy_text=text,
                fetched_at=fetched,
                expires_at=fetched + timedelta(seconds=max_age),
                last_attempt_at=fetched,
            )
        )

    await store.write(work)


async def row(store: Store, domain: str) -> MtaStsPolicy | None:
    async with store.session() as session:
        return await session.get(MtaStsPolicy, domain)


# --- fetch_policy ------------------------------------------------------------------------------


async def fetch(
    domain: str, dns: DnsmasqPeer, server: PolicyServer, ca: PeerCA, timeout: float = 5.0
) -> StsPolicy | FetchError | PolicyError:
    try:
        return await fetch_policy(domain, resolver(dns), str(ca.pem_path), timeout, server.port)
    except (FetchError, PolicyError) as exc:
        return exc


async def test_fetch_enforce_policy(
    sts_dns: DnsmasqPeer, server: PolicyServer, sts_ca: PeerCA
) -> None:
    policy = await fetch("Good.Test.", sts_dns, server, sts_ca)
    assert isinstance(policy, StsPolicy), policy
    assert policy.mode == "enforce" and policy.mx == ("mx.good.test",)
    assert server.requests == [("mta-sts.good.test", "/.well-known/mta-sts.txt")]
    # The policy host was resolved through the configured resolver, not the system's.
    assert "query[A] mta-sts.good.test" in sts_dns.log()


async def test_fetch_content_type_with_parameters(
    sts_dns: DnsmasqPeer, server: PolicyServer, sts_ca: PeerCA
) -> None:
    policy = await fetch("testing.test", sts_dns, server, sts_ca)
    assert isinstance(policy, StsPolicy), policy
    assert policy.mode == "testing"


@pytest.mark.parametrize(
    ("domain", "kind"),
    [
        ("redirect.test", "redirect"),
        ("html.test", "content-type"),
        ("huge.test", "too-large"),
        ("streamed.test", "too-large"),
        ("liar.test", "too-large"),
        ("missing.test", "http-404"),
        ("partial.test", "http-206"),
        ("wrongcert.test", "tls"),
        ("noaddress.test", "dns"),
        ("slow.test", "timeout"),
    ],
)
async def test_fetch_failures(
    sts_dns: DnsmasqPeer, server: PolicyServer, sts_ca: PeerCA, domain: str, kind: str
) -> None:
    timeout = 1.0 if kind == "timeout" else 5.0
    error = await fetch(domain, sts_dns, server, sts_ca, timeout)
    assert isinstance(error, FetchError), error
    assert error.kind == kind, error
    if domain == "redirect.test":
        assert [t for _, t in server.requests] == ["/.well-known/mta-sts.txt"]  # not followed


async def test_fetch_certificate_from_unknown_ca(
    tmp_path: Path, sts_dns: DnsmasqPeer, server: PolicyServer
) -> None:
    other = make_ca(tmp_path / "other", organization="someone else")
    error = await fetch("good.test", sts_dns, server, other)
    assert isinstance(error, FetchError) and error.kind == "tls", error
    assert error.result_type == "sts-webpki-invalid"
    assert "certificate" in str(error)


async def test_fetch_invalid_policy(
    sts_dns: DnsmasqPeer, server: PolicyServer, sts_ca: PeerCA
) -> None:
    error = await fetch("invalid.test", sts_dns, server, sts_ca)
    assert isinstance(error, PolicyError)
    assert "mode" in str(error)


async def test_fetch_nothing_listening(
    sts_dns: DnsmasqPeer, server: PolicyServer, sts_ca: PeerCA
) -> None:
    server.port = 9  # nothing listens there on the block's address
    error = await fetch("good.test", sts_dns, server, sts_ca)
    assert isinstance(error, FetchError) and error.kind == "connect", error


# --- MtaSts: discovery and cache ----------------------------------------------------------------


async def test_fetch_then_cache(
    sts: tuple[MtaSts, Clock], server: PolicyServer, store: Store
) -> None:
    mta_sts, clock = sts
    first = await mta_sts.policy("good.test")
    assert first.fresh and first.error is None
    assert first.policy is not None and first.policy.mode == "enforce"
    cached = await row(store, "good.test")
    assert cached is not None and cached.policy_id == "1" and cached.mx == ["mx.good.test"]
    assert cached.expires_at == clock.now + timedelta(seconds=86400)
    clock.now += timedelta(hours=1)
    second = await mta_sts.policy("good.test")
    assert not second.fresh and second.policy == first.policy
    assert server.count("mta-sts.good.test") == 1


async def test_concurrent_callers_share_one_fetch(
    sts: tuple[MtaSts, Clock], server: PolicyServer
) -> None:
    mta_sts, _ = sts
    states = await asyncio.gather(*(mta_sts.policy("busy.test") for _ in range(5)))
    # busy.test's host answers 404: still one attempt for all five callers.
    assert all(s.policy is None and s.result_type == "sts-policy-fetch-error" for s in states)
    assert server.count("mta-sts.busy.test") == 1


async def test_changed_id_refetches(
    sts: tuple[MtaSts, Clock], server: PolicyServer, store: Store
) -> None:
    mta_sts, clock = sts
    old = ENFORCE.replace("mx.good.test", "mx.old.test")
    await seed(store, "rotated.test", "old", week(old), clock.now - timedelta(days=1))
    server.replies["mta-sts.rotated.test"] = Reply(body=TESTING.encode())
    state = await mta_sts.policy("rotated.test")
    assert state.fresh and state.policy is not None and state.policy.mode == "testing"
    stored = await row(store, "rotated.test")
    assert stored is not None and stored.policy_id == "new" and stored.mode == "testing"


async def test_failed_refetch_keeps_valid_cached_policy(
    sts: tuple[MtaSts, Clock], server: PolicyServer, store: Store
) -> None:
    mta_sts, clock = sts
    old = ENFORCE.replace("mx.good.test", "mx.old.test")
    await seed(store, "down.test", "old", week(old), clock.now - timedelta(days=1))
    server.replies["mta-sts.down.test"] = Reply(500, body=b"oops")
    state = await mta_sts.policy("down.test")
    assert state.policy is not None and state.policy.mx == ("mx.old.test",)
    assert not state.fresh
    assert state.result_type == "sts-policy-fetch-error" and "http-500" in (state.error or "")
    stored = await row(store, "down.test")
    assert stored is not None and stored.policy_id == "old" and stored.policy_text == week(old)
    assert stored.last_error is not None and "http-500" in stored.last_error


async def test_expired_policy_is_not_used(
    sts: tuple[MtaSts, Clock], server: PolicyServer, store: Store
) -> None:
    mta_sts, clock = sts
    await seed(store, "down.test", "old", ENFORCE, clock.now - timedelta(days=2))
    server.replies["mta-sts.down.test"] = Reply(500, body=b"oops")
    state = await mta_sts.policy("down.test")
    assert state.policy is None and state.result_type == "sts-policy-fetch-error"


async def test_expired_policy_without_txt_is_not_used(
    sts: tuple[MtaSts, Clock], store: Store
) -> None:
    mta_sts, clock = sts
    await seed(store, "spf.test", "1", ENFORCE, clock.now - timedelta(days=2))
    state = await mta_sts.policy("spf.test")
    assert state.policy is None and state.error is None


async def test_missing_txt_keeps_cached_policy(
    sts: tuple[MtaSts, Clock], server: PolicyServer, store: Store
) -> None:
    # An attacker who strips the TXT record must not switch enforcement off (section 3.3).
    mta_sts, clock = sts
    await seed(store, "untxt.test", "1", ENFORCE, clock.now - timedelta(hours=1))
    state = await mta_sts.policy("untxt.test")
    assert state.policy is not None and state.policy.mode == "enforce"
    assert server.count("mta-sts.untxt.test") == 0
    # Without TXT and without cache there is no policy, and no fetch is tried.
    assert (await mta_sts.policy("nxdomain-here.test")).policy is None


async def test_no_txt_no_cache_means_no_policy(
    sts: tuple[MtaSts, Clock], server: PolicyServer
) -> None:
    mta_sts, _ = sts
    for domain in ("untxt.test", "spf.test"):
        state = await mta_sts.policy(domain)
        assert (state.policy, state.fresh, state.error, state.result_type) == (
            None,
            False,
            None,
            None,
        )
    assert server.count("mta-sts.untxt.test") == 0


@pytest.mark.parametrize(("domain", "problem"), [("twotxt.test", "2 STSv1"), ("badtxt.test", "id")])
async def test_malformed_txt_is_a_recorded_error(
    sts: tuple[MtaSts, Clock], server: PolicyServer, domain: str, problem: str
) -> None:
    mta_sts, _ = sts
    state = await mta_sts.policy(domain)
    assert state.policy is None and state.result_type == "sts-policy-invalid"
    assert state.error is not None and problem in state.error
    assert server.count(f"mta-sts.{domain}") == 0


@pytest.mark.parametrize(
    ("domain", "result_type", "words"),
    [
        ("invalid.test", "sts-policy-invalid", "mode must be"),
        ("wrongcert.test", "sts-webpki-invalid", "tls:"),
        ("html.test", "sts-policy-fetch-error", "content-type:"),
        ("redirect.test", "sts-policy-fetch-error", "redirect:"),
        ("huge.test", "sts-policy-fetch-error", "too-large:"),
    ],
)
async def test_fetch_problems_are_recorded_not_raised(
    sts: tuple[MtaSts, Clock], store: Store, domain: str, result_type: str, words: str
) -> None:
    mta_sts, _ = sts
    state = await mta_sts.policy(domain)
    assert state.policy is None and not state.fresh
    assert state.result_type == result_type
    assert state.error is not None and words in state.error
    stored = await row(store, domain)
    assert stored is not None and stored.policy_text is None
    assert stored.last_error is not None and stored.last_error.startswith(result_type)


async def test_fetch_attempts_are_rate_limited(
    sts: tuple[MtaSts, Clock], server: PolicyServer
) -> None:
    mta_sts, clock = sts
    await mta_sts.policy("missing.test")
    clock.now += timedelta(minutes=4, seconds=59)
    again = await mta_sts.policy("missing.test")
    # No new attempt, and the caller still learns why there is no policy.
    assert server.count("mta-sts.missing.test") == 1
    assert again.policy is None and again.result_type == "sts-policy-fetch-error"
    assert again.error is not None and "http-404" in again.error
    server.replies["mta-sts.missing.test"] = Reply(body=ENFORCE.encode())
    clock.now += timedelta(seconds=1)
    later = await mta_sts.policy("missing.test")
    assert server.count("mta-sts.missing.test") == 2
    assert later.fresh and later.policy is not None


async def test_rate_limit_is_shared_through_the_store(
    sts: tuple[MtaSts, Clock], server: PolicyServer, store: Store, sts_dns: DnsmasqPeer
) -> None:
    # A second process (another MtaSts on the same store) does not fetch again either.
    mta_sts, clock = sts
    await mta_sts.policy("missing.test")
    other = MtaSts(store, resolver(sts_dns), mta_sts_settings(mta_sts), clock, server.port)
    state = await other.policy("missing.test")
    await other.close()
    assert server.count("mta-sts.missing.test") == 1
    assert state.policy is None and state.error is not None


async def test_racing_processes_get_one_fetch_slot(
    sts: tuple[MtaSts, Clock], server: PolicyServer, store: Store, sts_dns: DnsmasqPeer
) -> None:
    # Two processes that both found no recent attempt: the store lets only one of them fetch.
    mta_sts, clock = sts
    other = MtaSts(store, resolver(sts_dns), mta_sts_settings(mta_sts), clock, server.port)
    assert await mta_sts._claim("race.test")
    assert not await other._claim("race.test")
    clock.now += timedelta(minutes=5)
    assert await other._claim("race.test")
    await other.close()


def mta_sts_settings(mta_sts: MtaSts) -> DeliverySettings:
    return DeliverySettings.model_validate({"ca_file": mta_sts.ca_file})


async def test_proactive_refresh_before_expiry(
    sts: tuple[MtaSts, Clock], server: PolicyServer, store: Store
) -> None:
    mta_sts, clock = sts
    server.replies["mta-sts.refresh.test"] = Reply(body=TESTING.encode())
    fetched = clock.now - timedelta(days=6)
    await seed(store, "refresh.test", "1", week(ENFORCE), fetched)
    # Still more than a quarter of max_age left one day earlier: no refresh then.
    clock.now -= timedelta(days=2)
    early = await mta_sts.policy("refresh.test")
    await mta_sts.settle()
    assert early.policy is not None and server.count("mta-sts.refresh.test") == 0
    clock.now += timedelta(days=2)
    state = await mta_sts.policy("refresh.test")
    # Answered from the cache at once; the refresh runs behind it.
    assert not state.fresh and state.policy is not None and state.policy.mode == "enforce"
    await mta_sts.settle()
    assert server.count("mta-sts.refresh.test") == 1
    stored = await row(store, "refresh.test")
    assert stored is not None and stored.mode == "testing"
    assert stored.expires_at == clock.now + timedelta(seconds=604800)
    after = await mta_sts.policy("refresh.test")
    assert after.policy is not None and after.policy.mode == "testing"


async def test_failed_refresh_keeps_policy_until_expiry(
    sts: tuple[MtaSts, Clock], server: PolicyServer, store: Store
) -> None:
    mta_sts, clock = sts
    server.replies["mta-sts.refresh.test"] = Reply(hang=False, status=503)
    await seed(store, "refresh.test", "1", week(ENFORCE), clock.now - timedelta(days=6))
    state = await mta_sts.policy("refresh.test")
    await mta_sts.settle()
    assert state.policy is not None and server.count("mta-sts.refresh.test") == 1
    stored = await row(store, "refresh.test")
    assert stored is not None and stored.policy_text == week(ENFORCE)
    assert stored.last_error is not None and "http-503" in stored.last_error
    # Right before expiry it still applies; right after, it is gone.
    clock.now += timedelta(days=1) - timedelta(seconds=1)
    assert (await mta_sts.policy("refresh.test")).policy is not None
    clock.now += timedelta(seconds=1)
    await mta_sts.settle()
    assert (await mta_sts.policy("refresh.test")).policy is None


async def test_bad_domain_is_an_error_not_a_crash(sts: tuple[MtaSts, Clock]) -> None:
    mta_sts, _ = sts
    state = await mta_sts.policy("exa mple/../x")
    assert state.policy is None and state.error is not None and "not a domain" in state.error


# --- against nginx, as recipient domains publish policies ---------------------------------------

#: domain -> (MX host in DNS, what mta-sts.<domain> serves, certificate kind)
NGINX_CASES: dict[str, tuple[str, str, CertKind]] = {
    "sts-enforce.test": ("mx.sts-enforce.test", "enforce mx.sts-enforce.test", "ca"),
    "sts-exclude.test": ("mx.sts-exclude.test", "enforce mx.elsewhere.test", "ca"),
    "sts-testing.test": ("mx.sts-testing.test", "testing *.sts-testing.test", "ca"),
    "sts-redirect.test": ("mx.sts-redirect.test", "redirect", "ca"),
    "sts-html.test": ("mx.sts-html.test", "text/html", "ca"),
    "sts-notype.test": ("mx.sts-notype.test", "no content type", "ca"),
    "sts-huge.test": ("mx.sts-huge.test", "oversized", "ca"),
    "sts-expired.test": ("mx.sts-expired.test", "enforce mx.sts-expired.test", "expired"),
    "sts-selfsigned.test": (
        "mx.sts-selfsigned.test",
        "enforce mx.sts-selfsigned.test",
        "self-signed",
    ),
    "sts-wrongname.test": ("mx.sts-wrongname.test", "enforce mx.sts-wrongname.test", "wrong-name"),
}


def nginx_policy(mode_and_mx: str) -> str:
    mode, mx = mode_and_mx.split()
    return f"version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n"


@pytest.fixture(scope="module")
def nginx_sites(nginx_peer: NginxPeer) -> Iterator[NginxPeer]:
    path = "/.well-known/mta-sts.txt"
    for domain, (_mx, what, cert) in NGINX_CASES.items():
        host = f"mta-sts.{domain}"
        if what == "redirect":
            nginx_peer.redirect(host, path, "https://mta-sts.sts-enforce.test/.well-known/x")
        elif what == "text/html":
            nginx_peer.serve(host, path, nginx_policy("enforce x.test"), content_type="text/html")
        elif what == "no content type":
            nginx_peer.serve(host, path, nginx_policy("enforce x.test"), content_type=None)
        elif what == "oversized":
            nginx_peer.serve(host, path, nginx_policy("enforce x.test") + "#" * MAX_POLICY_BYTES)
        else:
            nginx_peer.serve(host, path, nginx_policy(what))
        if cert != "ca":
            nginx_peer.certificate(host, cert)
    try:
        yield nginx_peer
    finally:
        for domain in NGINX_CASES:
            nginx_peer.remove(f"mta-sts.{domain}")


@pytest.fixture(scope="module")
def nginx_dns(
    tmp_path_factory: pytest.TempPathFactory, nginx_peer: NginxPeer
) -> Iterator[DnsmasqPeer]:
    mx = {domain: [(10, mx_host)] for domain, (mx_host, _, _) in NGINX_CASES.items()}
    hosts = {f"mta-sts.{domain}": nginx_peer.address for domain in NGINX_CASES}
    lines = [f'txt-record=_mta-sts.{domain},"v=STSv1; id=n1"' for domain in NGINX_CASES]
    peer = DnsmasqPeer(tmp_path_factory.mktemp("sts-nginx-dns"), mx, hosts, lines)
    try:
        peer.start()
        yield peer
    finally:
        peer.stop()


async def mx_hosts(dns: SecureResolver, domain: str) -> list[str]:
    answer = await dns.query(domain, "MX")
    return [r.exchange.to_text(omit_final_dot=True) for r in answer.records]


@pytest.mark.parametrize(
    ("domain", "mode", "mx_allowed"),
    [
        ("sts-enforce.test", "enforce", True),
        ("sts-exclude.test", "enforce", False),
        ("sts-testing.test", "testing", True),
    ],
)
async def test_nginx_policies_decide_the_mx(
    store: Store,
    nginx_sites: NginxPeer,
    nginx_dns: DnsmasqPeer,
    test_ca: PeerCA,
    domain: str,
    mode: str,
    mx_allowed: bool,
) -> None:
    dns = resolver(nginx_dns)
    settings = DeliverySettings.model_validate({"ca_file": str(test_ca.pem_path)})
    mta_sts = MtaSts(store, dns, settings, port=nginx_sites.port)
    state = await mta_sts.policy(domain)
    await mta_sts.close()
    assert state.fresh and state.error is None
    assert state.policy is not None and state.policy.mode == mode
    [mx] = await mx_hosts(dns, domain)
    # An enforce policy that does not list the MX: that MX never gets the content.
    assert state.policy.matches(mx) is mx_allowed
    assert nginx_sites.requests(f"mta-sts.{domain}")[-1:] == ["/.well-known/mta-sts.txt"]


@pytest.mark.parametrize(
    ("domain", "kind", "result_type"),
    [
        ("sts-redirect.test", "redirect", "sts-policy-fetch-error"),
        ("sts-html.test", "content-type", "sts-policy-fetch-error"),
        ("sts-notype.test", "content-type", "sts-policy-fetch-error"),
        ("sts-huge.test", "too-large", "sts-policy-fetch-error"),
        ("sts-expired.test", "tls", "sts-webpki-invalid"),
        ("sts-selfsigned.test", "tls", "sts-webpki-invalid"),
        ("sts-wrongname.test", "tls", "sts-webpki-invalid"),
    ],
)
async def test_nginx_bad_policy_hosts(
    nginx_sites: NginxPeer,
    nginx_dns: DnsmasqPeer,
    test_ca: PeerCA,
    domain: str,
    kind: str,
    result_type: str,
) -> None:
    with pytest.raises(FetchError) as info:
        await fetch_policy(
            domain, resolver(nginx_dns), str(test_ca.pem_path), 10.0, nginx_sites.port
        )
    assert info.value.kind == kind, info.value
    assert info.value.result_type == result_type
    if kind == "redirect":
        # The redirect target was never asked for.
        assert "/.well-known/x" not in nginx_sites.requests("mta-sts.sts-enforce.test")


async def test_nginx_failures_are_states_not_crashes(
    store: Store, nginx_sites: NginxPeer, nginx_dns: DnsmasqPeer, test_ca: PeerCA
) -> None:
    settings = DeliverySettings.model_validate({"ca_file": str(test_ca.pem_path)})
    mta_sts = MtaSts(store, resolver(nginx_dns), settings, port=nginx_sites.port)
    states = {d: await mta_sts.policy(d) for d in ("sts-redirect.test", "sts-huge.test")}
    await mta_sts.close()
    for state in states.values():
        assert state.policy is None and state.result_type == "sts-policy-fetch-error"
