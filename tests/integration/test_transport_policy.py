"""The policy layers (override > DANE > MTA-STS > default) against real peers: where the content
went, for each case (TLS to which listener, the portal, or deferred).

DNS is unbound validating nsd's signed zones (``dnssec_peer``), the MX hosts are the shared
Postfix listeners (``mx_peers``), MTA-STS policies come from nginx with the test CA
(``nginx_peer``). Postfix only accepts mail for its own domains, so the policy domain under test
(a fresh name in the signed zone) is passed to the Deliverer separately from the envelope
recipient, who is at a domain Postfix accepts. The worker-level cases use a scripted peer on the
block's free ``.6`` address, which accepts any recipient.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import smtplib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from sigillo.config import Settings
from sigillo.gateway import queue
from sigillo.gateway.dane import spki_der
from sigillo.gateway.delivery import Deliverer, GroupResult, Outcome
from sigillo.gateway.dnssec import SecureResolver
from sigillo.gateway.mtasts import MAX_POLICY_BYTES, MtaSts
from sigillo.gateway.mx import MXResolver
from sigillo.store import migrate
from sigillo.store.db import Store
from sigillo.store.models import JobKind, JobState, TLSReportCount
from tests.integration.gateway import running_gateway
from tests.integration.test_cli import sigillo
from tests.integration.test_delivery import addr
from tests.peers.ca import self_signed_cert
from tests.peers.dnsmasq import DnsmasqPeer
from tests.peers.dnssec import INSECURE_ZONE, DnssecPeer
from tests.peers.fixtures import MxPeers
from tests.peers.nginx import NginxPeer
from tests.peers.postfix import ReceivedMail
from tests.unit.test_requiretls import ScriptedPeer

pytestmark = pytest.mark.peers

SENDER = "rossi@org.example"
POLICY_PATH = "/.well-known/mta-sts.txt"
#: Content of these tests' messages; not test_delivery's, whose checks assume no content ever
#: reaches the wrongname listener (here DANE and overrides legitimately send it there).
CONTENT = "Referral under transport policy: HIV viral load undetectable"


def mail(rcpts: list[str]) -> bytes:
    return (
        f"From: Dr Rossi <{SENDER}>\r\nTo: {', '.join(rcpts)}\r\n"
        f"Subject: Referral\r\nMessage-ID: <{secrets.token_hex(8)}@org.example>\r\n"
        f"\r\n{CONTENT}\r\n"
    ).encode()


def carries_content(m: ReceivedMail) -> bool:
    return CONTENT.encode() in m.raw


def leaf_of(address: str, port: int) -> bytes:
    """The certificate a Postfix listener presents after STARTTLS (no verification: the
    point is to learn it, then pin it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(address, port, timeout=10) as client:
        client.starttls(context=ctx)
        sock = client.sock
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
    assert der
    return der


def tlsa_311(der: bytes) -> str:
    return "3 1 1 " + hashlib.sha256(spki_der(der)).hexdigest().upper()


@pytest.fixture(scope="module")
def wrongname_pin(mx_peers: MxPeers) -> str:
    """TLSA 3 1 1 data matching the self-signed certificate of the ``wrongname`` listener."""
    return tlsa_311(leaf_of(mx_peers.wrongname, mx_peers.port))


def settings_for(
    mx: MxPeers, dns: DnssecPeer, delivery: dict[str, Any] | None = None, **dns_extra: Any
) -> Settings:
    return Settings.model_validate(
        {
            "dns": {"nameservers": [dns.nameserver], "timeout": "3s", **dns_extra},
            "delivery": {
                "mx_port": mx.port,
                "ca_file": str(mx.ca_file),
                "connect_timeout": "3s",
                "command_timeout": "20s",
                **(delivery or {}),
            },
        }
    )


@asynccontextmanager
async def deliverer_for(
    settings: Settings, store: Store, web: NginxPeer | None = None
) -> AsyncIterator[Deliverer]:
    secure = SecureResolver(settings.dns)
    port = web.port if web else 443
    mtasts = MtaSts(store, secure, settings.delivery, port=port, timeout=5.0)
    deliverer = Deliverer(
        settings.delivery,
        MXResolver(settings.dns, secure=secure),
        "gw.org.example",
        secure=secure,
        mtasts=mtasts,
    )
    try:
        yield deliverer
    finally:
        await deliverer.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite:///{tmp_path}/sigillo.db")
    await migrate.upgrade(store)
    yield store
    await store.close()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    store = Store(store_url)
    await migrate.upgrade(store)
    yield store
    await store.close()


async def send(
    deliverer: Deliverer, domain: str, accepted: str = "wrongname.test", requiretls: bool = False
) -> tuple[GroupResult, str]:
    """Deliver one message with content for ``domain``'s policy to a recipient Postfix takes."""
    rcpt = addr(accepted)
    result = await deliverer.deliver(domain, SENDER, [rcpt], mail([rcpt]), requiretls)
    return result, rcpt


async def arrived(mx: MxPeers, rcpt: str, listener: str) -> None:
    [got] = await asyncio.to_thread(mx.peer.wait_for, 1, 30, match=lambda m: m.recipient == rcpt)
    assert got.listener == listener and got.tls in ("TLSv1.2", "TLSv1.3")
    assert carries_content(got)


def never_arrived(mx: MxPeers, result: GroupResult, rcpt: str) -> None:
    """No MAIL FROM was sent for the copy (no transaction in the trail) and nothing for the
    recipient is in the Maildir."""
    assert all(step["result"] != "transaction" for step in result.trail)
    assert not [m for m in mx.peer.messages() if m.recipient == rcpt]


def layer(result: GroupResult, name: str) -> dict[str, Any]:
    [found] = [f for f in result.layers() if f["layer"] == name]
    return found


def counted(result: GroupResult) -> list[tuple[str, str, str]]:
    return [(s.policy_type, s.mx_host, s.result_type) for s in result.sessions]


# -- default layer -----------------------------------------------------------------------


async def test_ca_certified_mx_without_dane_or_sts_is_verify(
    mx_peers: MxPeers, dnssec_peer: DnssecPeer, sqlite_store: Store
) -> None:
    domain = dnssec_peer.fresh_domain("ca")
    dnssec_peer.publish([f"{domain}. MX 10 mx.tls.test.", f"mx.tls.test. A {mx_peers.tls}"])
    async with deliverer_for(settings_for(mx_peers, dnssec_peer), sqlite_store) as deliverer:
        result, rcpt = await send(deliverer, domain, "tls.test")
    assert [r.outcome for r in result.results] == [Outcome.TLS]
    assert result.authority == "verify" and result.tls and result.tls.verified
    assert layer(result, "dane")["finding"]["mx.tls.test"]["state"] == "none"
    assert layer(result, "mta-sts")["applies"] is False
    assert counted(result) == [("no-policy-found", "mx.tls.test", "success")]
    await arrived(mx_peers, rcpt, mx_peers.tls)


# -- DANE --------------------------------------------------------------------------------


async def test_self_signed_mx_pinned_by_tlsa_gets_tls_and_without_dane_the_portal(
    mx_peers: MxPeers, dnssec_peer: DnssecPeer, sqlite_store: Store, wrongname_pin: str
) -> None:
    domain = dnssec_peer.fresh_domain("dane")
    mx = f"mx.{domain}"
    dnssec_peer.publish(
        [
            f"{domain}. MX 10 {mx}.",
            f"{mx}. A {mx_peers.wrongname}",
            f"_25._tcp.{mx}. TLSA {wrongname_pin}",
        ]
    )
    async with deliverer_for(settings_for(mx_peers, dnssec_peer), sqlite_store) as deliverer:
        result, rcpt = await send(deliverer, domain)
    assert [r.outcome for r in result.results] == [Outcome.TLS], result.results
    assert result.authority == "dane"
    assert result.tls and result.tls.verified and result.tls.verification.startswith("dane: 3 1 1")
    assert counted(result) == [("tlsa", mx, "success")]
    assert result.sessions[0].policy_strings == (wrongname_pin,)
    await arrived(mx_peers, rcpt, mx_peers.wrongname)

    # The same domain without DANE (switched off, or an AD bit not trusted): the self-signed
    # certificate fails ``verify``, the copy goes to the portal and no content leaves.
    for delivery, dns in (({"dane": False}, {}), ({}, {"trust_ad": False})):
        settings = settings_for(mx_peers, dnssec_peer, delivery, **dns)
        async with deliverer_for(settings, sqlite_store) as deliverer:
            result, rcpt = await send(deliverer, domain)
        assert [r.outcome for r in result.results] == [Outcome.PORTAL]
        assert layer(result, "dane")["applies"] is False
        assert result.trail[0]["result"] == "certificate" and result.authority is None
        never_arrived(mx_peers, result, rcpt)


async def test_same_host_under_a_name_whose_tlsa_does_not_match_is_not_used(
    mx_peers: MxPeers, dnssec_peer: DnssecPeer, sqlite_store: Store, wrongname_pin: str
) -> None:
    domain = dnssec_peer.fresh_domain("mismatch")
    mx = f"mx2.{domain}"
    other = hashlib.sha256(b"some other key").hexdigest()
    dnssec_peer.publish(
        [
            f"{domain}. MX 10 {mx}.",
            f"{mx}. A {mx_peers.wrongname}",
            f"_25._tcp.{mx}. TLSA 3 1 1 {other}",
        ]
    )
    async with deliverer_for(settings_for(mx_peers, dnssec_peer), sqlite_store) as deliverer:
        result, rcpt = await send(deliverer, domain)
    [outcome] = result.results
    assert outcome.outcome is Outcome.PORTAL and "dane" in outcome.reason
    assert result.trail[0]["result"] == "dane" and result.trail[0]["layer"] == "dane"
    assert counted(result) == [("tlsa", mx, "certificate-not-trusted")]
    never_arrived(mx_peers, result, rcpt)

    # An override wins over the failing DANE check: the precedence, a reviewed decision.
    settings = settings_for(mx_peers, dnssec_peer, {"domains": {domain: "encrypt"}})
    async with deliverer_for(settings, sqlite_store) as deliverer:
        result, rcpt = await send(deliverer, domain)
    assert [r.outcome for r in result.results] == [Outcome.TLS]
    assert result.authority == "encrypt" and layer(result, "override")["applies"]
    assert layer(result, "dane")["applies"] is False  # not consulted
    await arrived(mx_peers, rcpt, mx_peers.wrongname)


async def test_a_failing_dane_mx_is_left_for_the_next_one(
    mx_peers: MxPeers, dnssec_peer: DnssecPeer, sqlite_store: Store, wrongname_pin: str
) -> None:
    domain = dnssec_peer.fresh_domain("next")
    bad, good = f"bad.{domain}", f"good.{domain}"
    other = hashlib.sha256(b"some other key").hexdigest()
    dnssec_peer.publish(
        [
            f"{domain}. MX 10 {bad}.",
            f"{domain}. MX 20 {good}.",
            f"{bad}. A {mx_peers.wrongname}",
            f"{good}. A {mx_peers.wrongname}",
            f"_25._tcp.{bad}. TLSA 3 1 1 {other}",
            f"_25._tcp.{good}. TLSA {wrongname_pin}",
        ]
    )
    async with deliverer_for(settings_for(mx_peers, dnssec_peer), sqlite_store) as deliverer:
        result, rcpt = await send(deliverer, domain)
    assert [r.outcome for r in result.results] == [Outcome.TLS]
    assert [(t["host"], t["result"]) for t in result.trail] == [
        (bad, "dane"),
        (good, "transaction"),
    ]
    assert result.mx_host == good and result.authority == "dane"
    await arrived(mx_peers, rcpt, mx_peers.wrongname)


async def test_tlsa_published_but_unusable_means_encrypt(
    mx_peers: MxPeers, dnssec_peer: DnssecPeer, sqlite_store: Store, wrongname_pin: str
) -> None:
    domain = dnssec_peer.fresh_domain("unusable")
    mx = f"mx.{domain}"
    pkix_ee = wrongname_pin.replace("3 1 1", "1 1 1")  # PKIX-EE: not for SMTP (RFC 7672 3.1.3)
    dnssec_peer.publish(
        [
            f"{domain}. MX 10 {mx}.",
            f"{mx}. A {mx_peers.wrongname}",
            f"_25._tcp.{mx}. TLSA {pkix_ee}",
        ]
    )
    async with deliverer_for(settings_for(mx_peers, dnssec_peer), sqlite_store) as deliverer:
        result, rcpt = await send(deliverer, domain)
    assert [r.outcome for r in result.results] == [Outcome.TLS]
    assert result.authority == "encrypt" and result.tls and not result.tls.verified
    assert result.tls.verification == "none (TLSA unusable)"
    assert layer(result, "dane")["finding"][mx]["usable"] == 0
    await arrived(mx_peers, rcpt, mx_peers.wrongname)

    # Unusable TLSA still demands TLS: the same host name on the plaintext listener.
    plain = dnssec_peer.fresh_domain("unusable-plain")
    mx = f"mx.{plain}"
    dnssec_peer.publish(
        [f"{plain}. MX 10 {mx}.", f"{mx}. A {mx_peers.plain}", f"_25._tcp.{mx}. TLSA {pkix_ee}"]
    )
    async with deliverer_for(settings_for(mx_peers, dnssec_peer), sqlite_store) as deliverer:
        result, rcpt = await send(deliverer, plain, "plain.test")
    assert [r.outcome for r in result.results] == [Outcome.PORTAL]
    assert result.trail[0]["result"] == "no STARTTLS"
    never_arrived(mx_peers, result, rcpt)


async def test_bogus_tlsa_defers_and_never_connects(
    mx_peers: MxPeers, dnssec_peer: DnssecPeer, sqlite_store: Store, wrongname_pin: str
) -> None:
    domain = dnssec_peer.fresh_domain("bogus")
    mx = f"mx.{domain}"
    dnssec_peer.publish([f"{domain}. MX 10 {mx}.", f"{mx}. A {mx_peers.tls}"])
    # The TLSA RRset alone fails validation (SERVFAIL); the MX and address records are fine.
    dnssec_peer.publish(f"_25._tcp.{mx}. TLSA {wrongname_pin}", bogus=True)
    async with deliverer_for(settings_for(mx_peers, dnssec_peer), sqlite_store) as deliverer:
        result, rcpt = await send(deliverer, domain, "tls.test")
    [outcome] = result.results
    assert outcome.outcome is Outcome.DEFERRED and outcome.status.startswith("4.")
    assert "TLSA lookup failed" in outcome.reason
    assert [(t["layer"], t["result"]) for t in result.trail] == [("dane", "deferred")]
    assert "ip" not in result.trail[0]  # not even a connection
    assert counted(result) == [("tlsa", mx, "dnssec-invalid")]
    never_arrived(mx_peers, result, rcpt)


async def test_unsigned_zone_dane_does_not_apply(
    mx_peers: MxPeers, dnssec_peer: DnssecPeer, sqlite_store: Store, wrongname_pin: str
) -> None:
    domain = dnssec_peer.fresh_domain("unsigned", zone=INSECURE_ZONE)
    mx = f"mx.{domain}"
    dnssec_peer.publish(
        [
            f"{domain}. MX 10 {mx}.",
            f"{mx}. A {mx_peers.wrongname}",
            f"_25._tcp.{mx}. TLSA {wrongname_pin}",
        ]
    )
    async with deliverer_for(settings_for(mx_peers, dnssec_peer), sqlite_store) as deliverer:
        result, rcpt = await send(deliverer, domain)
    assert [r.outcome for r in result.results] == [Outcome.PORTAL]
    dane = layer(result, "dane")
    assert dane["applies"] is False and "not DNSSEC-validated" in dane["finding"]
    assert result.trail[0]["layer"] == "default" and result.trail[0]["result"] == "certificate"
    never_arrived(mx_peers, result, rcpt)


# -- MTA-STS -----------------------------------------------------------------------------


def sts_domain(dns: DnssecPeer, web: NginxPeer, label: str, mx_host: str | None, mx_ip: str) -> str:
    """A fresh domain with an ``_mta-sts`` TXT record, its policy host on nginx, and one MX
    (``mx_host``, or ``mx.<domain>`` for None) at ``mx_ip``."""
    domain = dns.fresh_domain(label)
    mx_host = mx_host or f"mx.{domain}"
    dns.publish(
        [
            f"{domain}. MX 10 {mx_host}.",
            f"{mx_host}. A {mx_ip}",
            f'_mta-sts.{domain}. TXT "v=STSv1; id=1"',
            f"mta-sts.{domain}. A {web.address}",
        ]
    )
    return domain


def policy(mode: str, mx: str) -> str:
    return f"version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: 86400\n"


async def test_sts_enforce_with_matching_mx(
    mx_peers: MxPeers, dnssec_peer: DnssecPeer, nginx_peer: NginxPeer, store: Store
) -> None:
    domain = sts_domain(dnssec_peer, nginx_peer, "sts-ok", "mx.tls.test", mx_peers.tls)
    nginx_peer.serve(f"mta-sts.{domain}", POLICY_PATH, policy("enforce", "mx.tls.test"))
    settings = settings_for(mx_peers, dnssec_peer)
    async with deliverer_for(settings, store, nginx_peer) as deliverer:
        result, rcpt = await send(deliverer, domain, "tls.test")
    assert [r.outcome for r in result.results] == [Outcome.TLS]
    assert result.authority == "mta-sts" and result.tls and result.tls.verified
    assert layer(result, "mta-sts")["finding"]["mode"] == "enforce"
    [session] = result.sessions
    assert (session.policy_type, session.result_type) == ("sts", "success")
    assert "mode: enforce" in session.policy_strings
    await arrived(mx_peers, rcpt, mx_peers.tls)


async def test_sts_enforce_excluding_the_mx_sends_to_the_portal(
    mx_peers: MxPeers, dnssec_peer: DnssecPeer, nginx_peer: NginxPeer, store: Store
) -> None:
    domain = sts_domain(dnssec_peer, nginx_peer, "sts-ex", "mx.tls.test", mx_peers.tls)
    nginx_peer.serve(f"mta-sts.{domain}", POLICY_PATH, policy("enforce", "mx.elsewhere.test"))
    async with deliverer_for(settings_for(mx_peers, dnssec_peer), store, nginx_peer) as d:
        result, rcpt = await send(d, domain, "tls.test")
    [outcome] = result.results
    assert outcome.outcome is Outcome.PORTAL and "mta-sts" in outcome.reason
    assert result.trail == [
        {
            "host": "mx.tls.test",
            "layer": "mta-sts",
            "result": "policy",
            "detail": "MX mx.tls.test is not in the MTA-STS policy",
        }
    ]
    assert counted(result) == [("sts", "mx.tls.test", "validation-failure")]
    never_arrived(mx_peers, result, rcpt)


async def test_sts_testing_delivers_by_default_and_reports(
    mx_peers: MxPeers, dnssec_peer: DnssecPeer, nginx_peer: NginxPeer, store: Store
) -> None:
    domain = sts_domain(dnssec_peer, nginx_peer, "sts-test", "mx.tls.test", mx_peers.tls)
    nginx_peer.serve(f"mta-sts.{domain}", POLICY_PATH, policy("testing", "mx.elsewhere.test"))
    async with deliverer_for(settings_for(mx_peers, dnssec_peer), store, nginx_peer) as d:
        result, rcpt = await send(d, domain, "tls.test")
    assert [r.outcome for r in result.results] == [Outcome.TLS]
    assert result.authority == "verify"
    # What enforce would have refused is counted for the domain's TLS report.
    assert counted(result) == [("sts", "mx.tls.test", "validation-failure")]
    await arrived(mx_peers, rcpt, mx_peers.tls)


async def test_sts_enforce_needs_a_certificate_valid_for_the_mx_name(
    mx_peers: MxPeers, dnssec_peer: DnssecPeer, nginx_peer: NginxPeer, store: Store
) -> None:
    domain = sts_domain(dnssec_peer, nginx_peer, "sts-cert", None, mx_peers.wrongname)
    mx = f"mx.{domain}"
    nginx_peer.serve(f"mta-sts.{domain}", POLICY_PATH, policy("enforce", mx))
    settings = settings_for(mx_peers, dnssec_peer, {"default_tls": "encrypt"})
    async with deliverer_for(settings, store, nginx_peer) as d:
        result, rcpt = await send(d, domain)
    # The default alone (encrypt) would take the self-signed peer; enforce does not.
    assert [r.outcome for r in result.results] == [Outcome.PORTAL]
    assert [(t["layer"], t["result"]) for t in result.trail] == [("mta-sts", "certificate")]
    assert counted(result) == [("sts", mx, "certificate-not-trusted")]
    never_arrived(mx_peers, result, rcpt)


async def test_sts_never_overrides_a_failing_dane_check(
    mx_peers: MxPeers, dnssec_peer: DnssecPeer, nginx_peer: NginxPeer, store: Store
) -> None:
    # implicit.test is a name the CA certificate of the tls listener carries, so PKIX (and
    # with it MTA-STS) accepts that peer; its TLSA record matches nothing.
    mx = "implicit.test"
    domain = sts_domain(dnssec_peer, nginx_peer, "sts-dane", mx, mx_peers.tls)
    other = hashlib.sha256(b"some other key").hexdigest()
    dnssec_peer.publish(f"_25._tcp.{mx}. TLSA 3 1 1 {other}")
    nginx_peer.serve(f"mta-sts.{domain}", POLICY_PATH, policy("enforce", mx))
    try:
        async with deliverer_for(settings_for(mx_peers, dnssec_peer), store, nginx_peer) as d:
            result, rcpt = await send(d, domain, "tls.test")
    finally:
        dnssec_peer.withdraw(f"_25._tcp.{mx}")
    assert [r.outcome for r in result.results] == [Outcome.PORTAL]
    assert [(t["layer"], t["result"]) for t in result.trail] == [("dane", "dane")]
    assert layer(result, "mta-sts")["finding"]["mode"] == "enforce"
    never_arrived(mx_peers, result, rcpt)


@pytest.mark.parametrize("problem", ["redirect", "content-type", "too-large"])
async def test_sts_fetch_errors_are_recorded_and_delivery_falls_to_the_default(
    mx_peers: MxPeers, dnssec_peer: DnssecPeer, nginx_peer: NginxPeer, store: Store, problem: str
) -> None:
    domain = sts_domain(dnssec_peer, nginx_peer, "sts-bad", "mx.tls.test", mx_peers.tls)
    host = f"mta-sts.{domain}"
    text = policy("enforce", "mx.elsewhere.test")  # would exclude the MX, were it valid
    if problem == "redirect":
        nginx_peer.redirect(host, POLICY_PATH, f"https://{host}/other.txt")
    elif problem == "content-type":
        nginx_peer.serve(host, POLICY_PATH, text, content_type="text/html")
    else:
        nginx_peer.serve(host, POLICY_PATH, text + "#" * MAX_POLICY_BYTES)
    async with deliverer_for(settings_for(mx_peers, dnssec_peer), store, nginx_peer) as d:
        result, rcpt = await send(d, domain, "tls.test")
    assert [r.outcome for r in result.results] == [Outcome.TLS]
    assert result.authority == "verify"
    sts = layer(result, "mta-sts")
    assert sts["applies"] is False and problem in sts["finding"]["error"]
    assert counted(result) == [
        ("sts", "", "sts-policy-fetch-error"),
        ("no-policy-found", "mx.tls.test", "success"),
    ]
    await arrived(mx_peers, rcpt, mx_peers.tls)


async def test_a_session_opened_under_an_override_is_never_reused_for_dane(
    mx_peers: MxPeers, dnssec_peer: DnssecPeer, sqlite_store: Store
) -> None:
    """The same MX name and address, first for a domain whose override says ``encrypt`` (no
    DANE check), then for a domain DANE governs: the cached session must not serve the second,
    or its TLSA record would never be checked."""
    lax, strict = dnssec_peer.fresh_domain("lax"), dnssec_peer.fresh_domain("strict")
    mx = f"mx.{strict}"
    other = hashlib.sha256(b"some other key").hexdigest()
    dnssec_peer.publish(
        [
            f"{lax}. MX 10 {mx}.",
            f"{strict}. MX 10 {mx}.",
            f"{mx}. A {mx_peers.wrongname}",
            f"_25._tcp.{mx}. TLSA 3 1 1 {other}",
        ]
    )
    settings = settings_for(mx_peers, dnssec_peer, {"domains": {lax: "encrypt"}})
    async with deliverer_for(settings, sqlite_store) as deliverer:
        first, _ = await send(deliverer, lax)
        second, rcpt = await send(deliverer, strict)
    assert [r.outcome for r in first.results] == [Outcome.TLS]
    assert [r.outcome for r in second.results] == [Outcome.PORTAL]
    assert "reused" not in second.trail[0] and second.trail[0]["result"] == "dane"
    never_arrived(mx_peers, second, rcpt)


# -- override ------------------------------------------------------------------------------


async def test_portal_override_beats_everything(
    mx_peers: MxPeers, dnssec_peer: DnssecPeer, sqlite_store: Store, wrongname_pin: str
) -> None:
    domain = dnssec_peer.fresh_domain("override")
    mx = f"mx.{domain}"
    dnssec_peer.publish(
        [
            f"{domain}. MX 10 {mx}.",
            f"{mx}. A {mx_peers.wrongname}",
            f"_25._tcp.{mx}. TLSA {wrongname_pin}",
        ]
    )
    settings = settings_for(mx_peers, dnssec_peer, {"domains": {domain: "portal"}})
    async with deliverer_for(settings, sqlite_store) as deliverer:
        result, rcpt = await send(deliverer, domain)
    assert [r.outcome for r in result.results] == [Outcome.PORTAL]
    assert [(f["layer"], f["applies"]) for f in result.layers()] == [
        ("override", True),
        ("dane", False),
        ("mta-sts", False),
        ("default", False),
    ]
    assert layer(result, "override")["finding"] == f"portal ({domain})"
    assert result.trail == [] and result.sessions == []
    never_arrived(mx_peers, result, rcpt)


# -- REQUIRETLS ----------------------------------------------------------------------------


async def test_requiretls_needs_dane_or_sts_and_the_peer_s_promise(
    mx_peers: MxPeers, dnssec_peer: DnssecPeer, sqlite_store: Store, wrongname_pin: str
) -> None:
    # Verify-only peer: never even connected to for a REQUIRETLS message.
    domain = dnssec_peer.fresh_domain("rt-verify")
    dnssec_peer.publish([f"{domain}. MX 10 mx.tls.test.", f"mx.tls.test. A {mx_peers.tls}"])
    async with deliverer_for(settings_for(mx_peers, dnssec_peer), sqlite_store) as deliverer:
        result, rcpt = await send(deliverer, domain, "tls.test", requiretls=True)
    [outcome] = result.results
    assert outcome.outcome is Outcome.PORTAL and "REQUIRETLS" in outcome.reason
    assert result.trail[0]["layer"] == "requiretls" and "ip" not in result.trail[0]
    never_arrived(mx_peers, result, rcpt)

    # DANE-authorised Postfix, which does not offer REQUIRETLS: the session is left unused.
    domain = dnssec_peer.fresh_domain("rt-dane")
    mx = f"mx.{domain}"
    dnssec_peer.publish(
        [
            f"{domain}. MX 10 {mx}.",
            f"{mx}. A {mx_peers.wrongname}",
            f"_25._tcp.{mx}. TLSA {wrongname_pin}",
        ]
    )
    async with deliverer_for(settings_for(mx_peers, dnssec_peer), sqlite_store) as deliverer:
        result, rcpt = await send(deliverer, domain, requiretls=True)
    [outcome] = result.results
    assert outcome.outcome is Outcome.PORTAL and "REQUIRETLS" in outcome.reason
    assert result.trail[0]["result"] == "no REQUIRETLS"
    never_arrived(mx_peers, result, rcpt)


@pytest.fixture
def scripted_cert(tmp_path: Path) -> tuple[ssl.SSLContext, str]:
    """A self-signed server context for a scripted peer, and its TLSA 3 1 1 pin."""
    files = self_signed_cert("mx.scripted.test", tmp_path, "scripted")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(files.cert), str(files.key))
    der = ssl.PEM_cert_to_DER_cert(files.cert.read_text())
    return ctx, tlsa_311(der)


@asynccontextmanager
async def scripted_peer(
    mx: MxPeers, ctx: ssl.SSLContext, after_tls: list[str]
) -> AsyncIterator[ScriptedPeer]:
    """A peer on the block's free ``.6`` address that takes any recipient."""
    peer = ScriptedPeer(ctx, ["SIZE 10000000"], after_tls)
    server = await asyncio.start_server(peer.serve, f"{mx.block}.6", mx.port)
    try:
        yield peer
    finally:
        server.close()
        await server.wait_closed()


async def test_requiretls_message_goes_to_a_dane_peer_that_offers_it(
    mx_peers: MxPeers,
    dnssec_peer: DnssecPeer,
    sqlite_store: Store,
    scripted_cert: tuple[ssl.SSLContext, str],
) -> None:
    ctx, pin = scripted_cert
    domain = dnssec_peer.fresh_domain("rt-ok")
    mx = f"mx.{domain}"
    dnssec_peer.publish(
        [f"{domain}. MX 10 {mx}.", f"{mx}. A {mx_peers.block}.6", f"_25._tcp.{mx}. TLSA {pin}"]
    )
    settings = settings_for(mx_peers, dnssec_peer)
    async with (
        scripted_peer(mx_peers, ctx, ["SIZE 10000000", "REQUIRETLS"]) as peer,
        deliverer_for(settings, sqlite_store) as d,
    ):
        result, _ = await send(d, domain, domain, requiretls=True)
    assert [r.outcome for r in result.results] == [Outcome.TLS]
    assert result.authority == "dane"
    [mail_from] = peer.mail_commands
    assert mail_from.endswith(" REQUIRETLS")


# -- the worker's records ------------------------------------------------------------------


@pytest.fixture
def dnssec_dns(dnssec_peer: DnssecPeer) -> dict[str, dict[str, Any]]:
    return {"dns": {"nameservers": [dnssec_peer.nameserver], "timeout": "3s"}}


async def test_worker_records_the_authorising_layer_and_counts_the_session(
    tmp_path: Path,
    mx_peers: MxPeers,
    dns_peer: DnsmasqPeer,
    dnssec_peer: DnssecPeer,
    scripted_cert: tuple[ssl.SSLContext, str],
    dnssec_dns: dict[str, dict[str, Any]],
) -> None:
    ctx, pin = scripted_cert
    domain = dnssec_peer.fresh_domain("worker")
    mx = f"mx.{domain}"
    dnssec_peer.publish(
        [f"{domain}. MX 10 {mx}.", f"{mx}. A {mx_peers.block}.6", f"_25._tcp.{mx}. TLSA {pin}"]
    )
    async with (
        scripted_peer(mx_peers, ctx, ["SIZE 10000000"]) as peer,
        running_gateway(tmp_path, mx_peers, dns_peer, dnssec_dns) as gateway,
    ):
        rcpt = addr(domain)
        msg_id = await gateway.send(SENDER, [rcpt], mail([rcpt]))
        [job] = await gateway.settle(msg_id)
        [attempt] = await gateway.attempts(job.id)
        async with gateway.store.session() as session:
            rows = (await session.execute(select(TLSReportCount))).scalars().all()
    assert job.state is JobState.DELIVERED
    assert attempt.tls_policy == "dane" and attempt.cert_verified
    assert attempt.verification and attempt.verification.startswith("dane: 3 1 1")
    assert attempt.details is not None
    layers: list[dict[str, Any]] = attempt.details["layers"]  # type: ignore[assignment]
    assert [f["layer"] for f in layers] == [
        "override",
        "dane",
        "mta-sts",
        "default",
    ]
    assert [
        (r.policy_domain, r.policy_type, r.receiving_mx, r.result_type, r.count) for r in rows
    ] == [(domain, "tlsa", mx, "success", 1)]
    assert rows[0].policy_strings == [pin]
    assert len(peer.mail_commands) == 1


async def test_requiretls_dsn_never_carries_the_content(
    tmp_path: Path,
    mx_peers: MxPeers,
    dns_peer: DnsmasqPeer,
    dnssec_peer: DnssecPeer,
    dnssec_dns: dict[str, dict[str, Any]],
) -> None:
    """Even where DSNs attach the whole message, a REQUIRETLS message's DSN holds headers
    only: the report goes out over whatever TLS the sender's server manages."""
    domain = dnssec_peer.fresh_domain("nomail")
    dnssec_peer.publish(f"{domain}. MX 0 .")  # null MX: every copy bounces
    overrides = {**dnssec_dns, "delivery": {"dsn_include_content": True}}
    async with running_gateway(tmp_path, mx_peers, dns_peer, overrides) as gateway:
        for requiretls in (False, True):
            rcpt = addr(domain)
            msg_id = await queue.enqueue(
                gateway.store,
                gateway.keyring,
                gateway.settings.delivery,
                mail_from=SENDER,
                recipients=[queue.Recipient(rcpt, domain)],
                content=mail([rcpt]),
                client_address="127.0.0.1",
                requiretls=requiretls,
            )
            [job] = await gateway.settle(msg_id)
            assert job.state is JobState.BOUNCED
            [dsn] = await gateway.jobs(msg_id, JobKind.DSN)
            await gateway.wait_state(dsn.id, {JobState.DELIVERED})
        ordinary, required = (raw for _, _, raw in gateway.relay.received)
    assert CONTENT.encode() in ordinary
    assert CONTENT.encode() not in required and b"Action: failed" in required


def test_probe_shows_each_layer_and_the_decision(
    tmp_path: Path, mx_peers: MxPeers, dnssec_peer: DnssecPeer, wrongname_pin: str
) -> None:
    pinned, bogus = dnssec_peer.fresh_domain("probe"), dnssec_peer.fresh_domain("probe-bogus")
    dnssec_peer.publish(
        [
            f"{pinned}. MX 10 mx.{pinned}.",
            f"mx.{pinned}. A {mx_peers.wrongname}",
            f"_25._tcp.mx.{pinned}. TLSA {wrongname_pin}",
            f"{bogus}. MX 10 mx.{bogus}.",
            f"mx.{bogus}. A {mx_peers.wrongname}",
        ]
    )
    dnssec_peer.publish(f"_25._tcp.mx.{bogus}. TLSA {wrongname_pin}", bogus=True)
    env = {
        "SIGILLO_DNS__NAMESERVERS": json.dumps([dnssec_peer.nameserver]),
        "SIGILLO_DELIVERY__MX_PORT": str(mx_peers.port),
        "SIGILLO_DELIVERY__CA_FILE": str(mx_peers.ca_file),
        "SIGILLO_STORAGE__DATABASE_URL": f"sqlite:///{tmp_path}/none.db",
    }
    result = sigillo("probe", pinned, "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["decision"], report["authorised_by"]) == ("tls", "dane")
    layers = {f["layer"]: f for f in report["layers"]}
    assert list(layers) == ["override", "dane", "mta-sts", "default"]
    assert layers["dane"]["applies"] and layers["dane"]["finding"][f"mx.{pinned}"]["usable"] == 1
    assert layers["mta-sts"]["applies"] is False
    assert report["tls"]["verified"] and "console policies not read" in report["warning"]
    assert not (tmp_path / "none.db").exists()  # a probe creates nothing

    report = json.loads(sigillo("probe", bogus, "--json", cwd=tmp_path, env=env).stdout)
    assert report["decision"] == "deferred" and report["authorised_by"] is None
    assert "TLSA lookup failed" in report["reason"]
