"""DNSSEC-aware lookups against a real validating resolver: unbound in front of nsd, which
serves a zone signed by ldns-signzone (trust anchor: its DS), an unsigned delegated zone and
bogus data (tests/peers/dnssec.py). Also checks the nginx peer that serves MTA-STS policies."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest

from sigillo.config import DNSSettings
from sigillo.gateway.dnssec import MAX_REASON, SecureResolver, _failure_detail, _one_line
from sigillo.gateway.mx import MXResolver
from tests.peers.dnssec import BOGUS_ZONE, INSECURE_ZONE, DnssecPeer
from tests.peers.nginx import NginxPeer

pytestmark = pytest.mark.peers

TLSA_DATA = "3 1 1 " + "ab" * 32


@dataclass(frozen=True)
class Names:
    """Domains this module publishes once, each under a fresh label."""

    secure: str  # MX -> mx.<secure> (A, signed), TLSA at _25._tcp.mx.<secure>
    insecure_host: str  # signed MX -> a host in the unsigned zone
    unsigned: str  # MX and host, both in the unsigned zone
    implicit: str  # no MX, an A record, signed
    bogus_tlsa: str  # signed MX and A, but the TLSA RRset's signature is broken
    bogus_zone: str  # MX in a zone whose DS does not match its key
    bogus_host: str  # signed MX -> a host whose A RRset is bogus
    alias: str  # signed CNAME -> mx.<secure>
    alias_out: str  # signed CNAME -> a name in the unsigned zone


@pytest.fixture(scope="module")
def names(dnssec_peer: DnssecPeer) -> Names:
    p = dnssec_peer
    n = Names(
        secure=p.fresh_domain("sec"),
        insecure_host=p.fresh_domain("insh"),
        unsigned=p.fresh_domain("uns", INSECURE_ZONE),
        implicit=p.fresh_domain("impl"),
        bogus_tlsa=p.fresh_domain("btlsa"),
        bogus_zone=p.fresh_domain("bz", BOGUS_ZONE),
        bogus_host=p.fresh_domain("bhost"),
        alias=p.fresh_domain("alias"),
        alias_out=p.fresh_domain("aout"),
    )
    p.publish(
        [
            f"{n.secure} MX 10 mx.{n.secure}.",
            f"mx.{n.secure} A 127.0.0.2",
            f"mx.{n.secure} AAAA ::1",
            f"_25._tcp.mx.{n.secure} TLSA {TLSA_DATA}",
            f"{n.insecure_host} MX 10 mx.{n.unsigned}.",
            f"{n.unsigned} MX 10 mx.{n.unsigned}.",
            f"mx.{n.unsigned} A 127.0.0.3",
            f"{n.implicit} A 127.0.0.4",
            f"{n.bogus_tlsa} MX 10 mx.{n.bogus_tlsa}.",
            f"mx.{n.bogus_tlsa} A 127.0.0.5",
            f"{n.bogus_zone} MX 10 mx.{n.bogus_zone}.",
            f"mx.{n.bogus_zone} A 127.0.0.6",
            f"{n.bogus_host} MX 10 mx.{n.bogus_host}.",
            f"{n.alias} CNAME mx.{n.secure}.",
            f"{n.alias_out} CNAME mx.{n.unsigned}.",
        ]
    )
    p.publish(
        [f"_25._tcp.mx.{n.bogus_tlsa} TLSA {TLSA_DATA}", f"mx.{n.bogus_host} A 127.0.0.7"],
        bogus=True,
    )
    return n


def settings(peer: DnssecPeer, **extra: object) -> DNSSettings:
    return DNSSettings.model_validate({"nameservers": [peer.nameserver], **extra})


@pytest.fixture
def resolver(dnssec_peer: DnssecPeer) -> SecureResolver:
    return SecureResolver(settings(dnssec_peer))


# --- SecureResolver.query ------------------------------------------------------------------


async def test_signed_records_are_secure(resolver: SecureResolver, names: Names) -> None:
    answer = await resolver.query(f"_25._tcp.mx.{names.secure}", "TLSA")
    assert answer.status == "ok"
    assert answer.secure and answer.authenticated
    assert [r.to_text() for r in answer.records] == [TLSA_DATA]
    assert answer.ttl > 0
    assert "DNSSEC-validated" in answer.reason


async def test_unsigned_zone_answers_but_is_not_secure(
    resolver: SecureResolver, names: Names
) -> None:
    answer = await resolver.query(f"mx.{names.unsigned}", "A")
    assert answer.status == "ok"
    assert [r.to_text() for r in answer.records] == ["127.0.0.3"]
    assert not answer.secure and not answer.authenticated
    assert "not DNSSEC-validated" in answer.reason


async def test_bogus_zone_is_temporary(resolver: SecureResolver, names: Names) -> None:
    answer = await resolver.query(names.bogus_zone, "MX")
    assert answer.status == "temporary"
    assert answer.records == () and not answer.secure
    assert "SERVFAIL" in answer.reason


async def test_bogus_rrset_in_a_secure_zone_is_temporary(
    resolver: SecureResolver, names: Names
) -> None:
    mx = await resolver.query(names.bogus_tlsa, "MX")
    assert mx.status == "ok" and mx.secure
    tlsa = await resolver.query(f"_25._tcp.mx.{names.bogus_tlsa}", "TLSA")
    assert tlsa.status == "temporary"
    # unbound's Extended DNS Error says why: a check failed, not an unreachable server.
    assert "validation failure" in tlsa.reason
    assert "\n" not in tlsa.reason


async def test_validated_denials(resolver: SecureResolver, names: Names) -> None:
    nx = await resolver.query(f"nothing.{names.secure}", "A")
    assert (nx.status, nx.secure, nx.authenticated) == ("nxdomain", False, True)
    assert nx.ttl == 60  # the SOA minimum
    nodata = await resolver.query(f"mx.{names.secure}", "TXT")
    assert (nodata.status, nodata.secure, nodata.authenticated) == ("nodata", False, True)
    no_tlsa = await resolver.query(f"_25._tcp.mx.{names.unsigned}", "TLSA")
    assert (no_tlsa.status, no_tlsa.authenticated) == ("nxdomain", False)


async def test_cname_chain_is_secure_only_when_every_link_is(
    resolver: SecureResolver, names: Names
) -> None:
    inside = await resolver.query(names.alias, "A")
    assert inside.status == "ok" and inside.secure
    assert [r.to_text() for r in inside.records] == ["127.0.0.2"]
    assert f"via CNAME mx.{names.secure}" in inside.reason
    leaving = await resolver.query(names.alias_out, "A")
    assert leaving.status == "ok" and not leaving.secure
    assert [r.to_text() for r in leaving.records] == ["127.0.0.3"]


async def test_ad_bit_is_ignored_unless_the_resolver_is_trusted(
    dnssec_peer: DnssecPeer, names: Names
) -> None:
    # The resolver does set AD for this name...
    host, port = dnssec_peer.nameserver.split(":")
    query = dns.message.make_query(f"_25._tcp.mx.{names.secure}", "TLSA", want_dnssec=True)
    raw = dns.query.udp(query, host, port=int(port), timeout=5)
    assert raw.flags & dns.flags.AD
    # ...but a resolver sigillo may not trust (say across a network) could forge it.
    untrusted = SecureResolver(settings(dnssec_peer, trust_ad=False))
    answer = await untrusted.query(f"_25._tcp.mx.{names.secure}", "TLSA")
    assert answer.status == "ok"
    assert not answer.secure and not answer.authenticated
    assert "AD ignored" in answer.reason
    nx = await untrusted.query(f"nothing.{names.secure}", "A")
    assert nx.status == "nxdomain" and not nx.authenticated
    assert await untrusted.addresses(f"mx.{names.secure}") == (("127.0.0.2", "::1"), False, "ok")


async def test_failures_never_raise(dnssec_peer: DnssecPeer, resolver: SecureResolver) -> None:
    refused = await resolver.query("example.com", "A")  # unbound refuses names outside .test
    assert refused.status == "temporary" and "REFUSED" in refused.reason
    bad_name = await resolver.query("a..b.test", "A")
    assert bad_name.status == "temporary" and bad_name.records == ()
    too_long = await resolver.query("x" * 64 + ".test", "MX")
    assert too_long.status == "temporary"
    # Nothing listens on port 9: the lookup times out.
    silent = SecureResolver(DNSSettings.model_validate({"nameservers": ["127.0.0.1:9"]}))
    silent.resolver.lifetime = silent.resolver.timeout = 0.3
    answer = await silent.query("x.test", "A")
    assert (answer.status, answer.secure) == ("temporary", False)


def test_resolver_text_in_reasons_is_one_bounded_printable_line() -> None:
    # EDE text comes from the resolver and ends in delivery records and logs.
    query = dns.message.make_query("x.test", "A")
    response = dns.message.make_response(query)
    response.use_edns(
        0,
        0,
        1232,
        options=[
            dns.edns.EDEOption(dns.edns.EDECode.DNSSEC_BOGUS, "bad\x1b[31m\r\nforged: line" * 40)
        ],
    )
    response.set_rcode(dns.rcode.SERVFAIL)
    exc = dns.resolver.NoNameservers(
        request=query, errors=[("Do53:127.0.0.1@53", False, 53, "SERVFAIL", response)]
    )
    reason = _one_line(_failure_detail(exc))
    assert reason.startswith("Do53:127.0.0.1@53 answered SERVFAIL (bad [31m forged: line")
    assert reason.isprintable() and len(reason) <= MAX_REASON


async def test_new_records_replace_cached_ones(dnssec_peer: DnssecPeer) -> None:
    name = dnssec_peer.fresh_domain("cache")
    dnssec_peer.publish(f"{name} A 127.0.0.8")
    first = await SecureResolver(settings(dnssec_peer)).query(name, "A")
    assert [r.to_text() for r in first.records] == ["127.0.0.8"] and first.secure
    dnssec_peer.withdraw(name)
    gone = await SecureResolver(settings(dnssec_peer)).query(name, "A")
    assert (gone.status, gone.authenticated) == ("nxdomain", True)


# --- SecureResolver.addresses --------------------------------------------------------------


async def test_addresses(resolver: SecureResolver, names: Names) -> None:
    assert await resolver.addresses(f"mx.{names.secure}") == (("127.0.0.2", "::1"), True, "ok")
    assert await resolver.addresses(names.implicit) == (("127.0.0.4",), True, "ok")
    assert await resolver.addresses(f"mx.{names.unsigned}") == (("127.0.0.3",), False, "ok")
    assert await resolver.addresses(f"mx.{names.bogus_host}") == ((), False, "temporary")
    assert await resolver.addresses(f"none.{names.secure}") == ((), False, "nxdomain")
    assert await resolver.addresses(names.secure) == ((), False, "nodata")


# --- MXResolver's secure flags -------------------------------------------------------------


async def test_mx_and_hosts_secure(dnssec_peer: DnssecPeer, names: Names) -> None:
    dns_settings = settings(dnssec_peer)
    mx = MXResolver(dns_settings, SecureResolver(dns_settings))
    result = await mx.lookup(names.secure)
    assert result.status == "ok" and result.secure
    assert [(h.name, h.addresses, h.secure) for h in result.hosts] == [
        (f"mx.{names.secure}", ("127.0.0.2", "::1"), True)
    ]
    half = await mx.lookup(names.insecure_host)
    assert half.status == "ok" and half.secure
    assert [(h.name, h.secure) for h in half.hosts] == [(f"mx.{names.unsigned}", False)]
    unsigned = await mx.lookup(names.unsigned)
    assert unsigned.status == "ok" and not unsigned.secure
    assert not unsigned.hosts[0].secure
    implicit = await mx.lookup(names.implicit)
    assert implicit.implicit and implicit.secure
    assert implicit.hosts[0].secure and implicit.hosts[0].addresses == ("127.0.0.4",)


async def test_mx_bogus_answers_stay_temporary(dnssec_peer: DnssecPeer, names: Names) -> None:
    dns_settings = settings(dnssec_peer)
    mx = MXResolver(dns_settings, SecureResolver(dns_settings))
    zone = await mx.lookup(names.bogus_zone)
    assert zone.status == "temporary" and not zone.secure
    host = await mx.lookup(names.bogus_host)
    assert host.status == "temporary" and host.secure
    assert not host.hosts[0].secure and host.hosts[0].addresses == ()


async def test_mx_flags_stay_false_without_a_trusted_secure_resolver(
    dnssec_peer: DnssecPeer, names: Names
) -> None:
    plain = settings(dnssec_peer)
    untrusted = settings(dnssec_peer, trust_ad=False)
    for resolver in (MXResolver(plain), MXResolver(untrusted, SecureResolver(untrusted))):
        result = await resolver.lookup(names.secure)
        assert result.status == "ok" and not result.secure
        assert result.hosts[0].addresses == ("127.0.0.2", "::1")
        assert not result.hosts[0].secure
        assert await resolver.addresses(f"mx.{names.secure}") == (("127.0.0.2", "::1"), None)


# --- the peers themselves ------------------------------------------------------------------


def test_publish_rejects_what_it_cannot_serve(dnssec_peer: DnssecPeer) -> None:
    with pytest.raises(ValueError, match="not under test"):
        dnssec_peer.publish("mx.example.com. A 127.0.0.1")
    with pytest.raises(ValueError, match="unsigned zone"):
        dnssec_peer.publish(
            f"{dnssec_peer.fresh_domain('x', INSECURE_ZONE)} A 127.0.0.1", bogus=True
        )
    with pytest.raises(ValueError, match="not zone-file records"):
        dnssec_peer.publish("mx.x.test. A not-an-address")


def test_nginx_peer_serves_policies_redirects_and_bad_certificates(
    nginx_peer: NginxPeer,
) -> None:
    host = "mta-sts.nginx-check.test"
    policy = "version: STSv1\nmode: enforce\nmx: mx.nginx-check.test\nmax_age: 86400\n"
    nginx_peer.serve(host, "/.well-known/mta-sts.txt", policy)
    nginx_peer.serve(host, "/html", "<p>no</p>", content_type="text/html; charset=utf-8")
    nginx_peer.serve(host, "/big", b"x" * 100_000, content_type=None)
    nginx_peer.redirect(host, "/moved", "https://elsewhere.test/.well-known/mta-sts.txt")
    nginx_peer.error(host, "/broken", 500)
    got = nginx_peer.get(host, "/.well-known/mta-sts.txt")
    assert (got.status, got.content_type, got.body) == (200, "text/plain", policy.encode())
    html = nginx_peer.get(host, "/html")
    assert html.content_type == "text/html; charset=utf-8"
    big = nginx_peer.get(host, "/big")
    assert (big.content_type, len(big.body)) == (None, 100_000)
    moved = nginx_peer.get(host, "/moved")
    assert (moved.status, moved.location) == (301, "https://elsewhere.test/.well-known/mta-sts.txt")
    assert nginx_peer.get(host, "/broken").status == 500
    assert nginx_peer.get(host, "/unknown").status == 404
    assert nginx_peer.requests(host)[:2] == ["/.well-known/mta-sts.txt", "/html"]

    nginx_peer.certificate("mta-sts.nginx-wrong.test", "wrong-name")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        nginx_peer.get("mta-sts.nginx-wrong.test", "/")
    nginx_peer.certificate("mta-sts.nginx-old.test", "expired")
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        nginx_peer.get("mta-sts.nginx-old.test", "/")
    with pytest.raises(ssl.SSLError):  # an unknown name gets no certificate at all
        nginx_peer.get("mta-sts.nobody.test", "/")
