"""The test peers behave as the rest of the suite assumes they do."""

from __future__ import annotations

import os
import smtplib
import socket
import ssl
import uuid
from email.message import EmailMessage

import asyncpg
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest
from cryptography import x509

from tests.peers.dnsmasq import DnsmasqPeer
from tests.peers.fixtures import MxPeers

pytestmark = pytest.mark.peers


class _SMTP(smtplib.SMTP):
    """smtplib.SMTP connected to an address, but checking the certificate for `server_name`.

    smtplib verifies STARTTLS certificates against the host it connected to; an MX is reached
    by address and verified by name.
    """

    def __init__(self, address: str, port: int, server_name: str) -> None:
        super().__init__(address, port, local_hostname="client.test", timeout=10)
        self._host = server_name


def _verifying_context(mx_peers: MxPeers) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(mx_peers.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _unverified_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _message(recipient: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "sender@org.example"
    message["To"] = recipient
    message["Subject"] = "peer test"
    message.set_content("hello\n")
    return message


def _recipient(domain: str) -> str:
    return f"peer-{uuid.uuid4().hex[:12]}@{domain}"


# -- Postfix listeners --------------------------------------------------------------------------


def test_tls_listener_verifies_for_its_names(mx_peers: MxPeers) -> None:
    for name in ("mx.tls.test", "implicit.test"):
        with _SMTP(mx_peers.tls, mx_peers.port, name) as smtp:
            smtp.ehlo()
            assert smtp.has_extn("starttls")
            code, _ = smtp.starttls(context=_verifying_context(mx_peers))
            assert code == 220
            assert isinstance(smtp.sock, ssl.SSLSocket)
            assert smtp.sock.version() in {"TLSv1.2", "TLSv1.3"}
            assert smtp.ehlo()[0] == 250


def test_tls_listener_fails_verification_for_another_name(mx_peers: MxPeers) -> None:
    with _SMTP(mx_peers.tls, mx_peers.port, "mx.plain.test") as smtp:
        smtp.ehlo()
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            smtp.starttls(context=_verifying_context(mx_peers))


def test_plain_listener_offers_no_starttls(mx_peers: MxPeers) -> None:
    with _SMTP(mx_peers.plain, mx_peers.port, "mx.plain.test") as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        assert smtp.docmd("STARTTLS")[0] == 502


def test_wrongname_listener_presents_a_self_signed_certificate(mx_peers: MxPeers) -> None:
    with _SMTP(mx_peers.wrongname, mx_peers.port, "mx.wrongname.test") as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        with pytest.raises(ssl.SSLCertVerificationError, match=r"self.signed"):
            smtp.starttls(context=_verifying_context(mx_peers))
    with _SMTP(mx_peers.wrongname, mx_peers.port, "mx.wrongname.test") as smtp:
        smtp.ehlo()
        smtp.starttls(context=_unverified_context())
        assert isinstance(smtp.sock, ssl.SSLSocket)
        der = smtp.sock.getpeercert(binary_form=True)
        assert der is not None
        cert = x509.load_der_x509_certificate(der)
        assert cert.issuer == cert.subject
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == ["wrong.invalid"]


def test_broken_listener_advertises_starttls_and_refuses_it(mx_peers: MxPeers) -> None:
    with _SMTP(mx_peers.broken, mx_peers.port, "mx.broken.test") as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        code, text = smtp.docmd("STARTTLS")
        assert code == 454, text


def test_nothing_listens_on_the_dead_address(mx_peers: MxPeers) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((mx_peers.dead, mx_peers.port), timeout=5).close()


def test_mail_over_tls_records_the_protocol(mx_peers: MxPeers) -> None:
    recipient = _recipient("tls.test")
    with _SMTP(mx_peers.tls, mx_peers.port, "mx.tls.test") as smtp:
        smtp.starttls(context=_verifying_context(mx_peers))
        smtp.send_message(_message(recipient))
    [mail] = mx_peers.peer.wait_for(1, match=lambda m: m.recipient == recipient)
    assert mail.listener == mx_peers.tls
    assert mail.tls in {"TLSv1.2", "TLSv1.3"}
    assert mail.message["Subject"] == "peer test"
    assert mail.message.get_content() == "hello\n"


def test_mail_over_plaintext_records_no_tls(mx_peers: MxPeers) -> None:
    recipient = _recipient("plain.test")
    with _SMTP(mx_peers.plain, mx_peers.port, "mx.plain.test") as smtp:
        smtp.send_message(_message(recipient))
    [mail] = mx_peers.peer.wait_for(1, match=lambda m: m.recipient == recipient)
    assert mail.listener == mx_peers.plain
    assert mail.tls is None


def test_every_listener_accepts_every_domain(mx_peers: MxPeers) -> None:
    recipients = {address: _recipient("org.example") for address in mx_peers.peer.addresses}
    for address, recipient in recipients.items():
        with _SMTP(address, mx_peers.port, "unused.test") as smtp:
            smtp.send_message(_message(recipient))
    wanted = set(recipients.values())
    delivered = mx_peers.peer.wait_for(len(wanted), match=lambda m: m.recipient in wanted)
    assert {mail.recipient: mail.listener for mail in delivered} == {
        recipient: address for address, recipient in recipients.items()
    }


def test_sink_domain_accepts_and_discards(mx_peers: MxPeers) -> None:
    discarded, kept = _recipient("sink.test"), _recipient("tls.test")
    with _SMTP(mx_peers.tls, mx_peers.port, "mx.tls.test") as smtp:
        smtp.starttls(context=_verifying_context(mx_peers))
        assert smtp.send_message(_message(discarded)) == {}
        smtp.send_message(_message(kept))
    mx_peers.peer.wait_for(1, match=lambda m: m.recipient == kept)
    assert all(mail.recipient != discarded for mail in mx_peers.peer.messages())
    assert f"to=<{discarded}>, relay=none" in mx_peers.peer.log()


def test_other_domains_are_refused(mx_peers: MxPeers) -> None:
    with _SMTP(mx_peers.tls, mx_peers.port, "mx.tls.test") as smtp:
        smtp.ehlo()
        assert smtp.mail("sender@org.example")[0] == 250
        code, text = smtp.rcpt("someone@elsewhere.example")
        assert code == 554, text
        assert b"Relay access denied" in text


# -- dnsmasq --------------------------------------------------------------------------------------


def _resolver(dns_peer: DnsmasqPeer) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns_peer.address]
    resolver.port = dns_peer.port
    resolver.lifetime = 5
    return resolver


def test_nameserver_string(dns_peer: DnsmasqPeer) -> None:
    assert dns_peer.nameserver == f"127.0.0.1:{dns_peer.port}"


@pytest.mark.parametrize("kind", ["tls", "plain", "wrongname", "broken"])
def test_mx_records(dns_peer: DnsmasqPeer, mx_peers: MxPeers, kind: str) -> None:
    resolver = _resolver(dns_peer)
    answer = resolver.resolve(f"{kind}.test", "MX")
    assert [(r.preference, r.exchange.to_text()) for r in answer] == [(10, f"mx.{kind}.test.")]
    addresses = [r.address for r in resolver.resolve(f"mx.{kind}.test", "A")]
    assert addresses == [mx_peers.addresses[kind]]


def test_two_mx_records_in_preference_order(dns_peer: DnsmasqPeer, mx_peers: MxPeers) -> None:
    resolver = _resolver(dns_peer)
    records = sorted(
        (r.preference, r.exchange.to_text()) for r in resolver.resolve("twomx.test", "MX")
    )
    assert records == [(10, "mx-dead.twomx.test."), (20, "mx.tls.test.")]
    assert [r.address for r in resolver.resolve("mx-dead.twomx.test", "A")] == [mx_peers.dead]


def test_null_mx(dns_peer: DnsmasqPeer) -> None:
    answer = _resolver(dns_peer).resolve("nullmx.test", "MX")
    assert [(r.preference, r.exchange) for r in answer] == [(0, dns.name.root)]


def test_implicit_mx_has_an_address_and_no_mx(dns_peer: DnsmasqPeer, mx_peers: MxPeers) -> None:
    resolver = _resolver(dns_peer)
    with pytest.raises(dns.resolver.NoAnswer):
        resolver.resolve("implicit.test", "MX")
    assert [r.address for r in resolver.resolve("implicit.test", "A")] == [mx_peers.tls]


def test_unknown_names_are_nxdomain(dns_peer: DnsmasqPeer) -> None:
    resolver = _resolver(dns_peer)
    for name in ("unknown.test", "mx.unknown.test"):
        with pytest.raises(dns.resolver.NXDOMAIN):
            resolver.resolve(name, "MX")


def test_dns_over_tcp(dns_peer: DnsmasqPeer) -> None:
    query = dns.message.make_query("tls.test", dns.rdatatype.MX)
    response = dns.query.tcp(query, dns_peer.address, port=dns_peer.port, timeout=5)
    assert response.rcode() == dns.rcode.NOERROR
    assert [rrset.to_text() for rrset in response.answer] == ["tls.test. 0 IN MX 10 mx.tls.test."]


# -- PostgreSQL -----------------------------------------------------------------------------------


async def test_pg_url_is_a_database_of_this_session(pg_url: str) -> None:
    # Its schema is whatever the last store test left (store_url resets it per test), so
    # only its identity is checked: a database made for this run, never a shared one.
    connection = await asyncpg.connect(pg_url, timeout=5)
    try:
        name = await connection.fetchval("select current_database()")
    finally:
        await connection.close()
    assert name == pg_url.rsplit("/", 1)[1]
    assert name.startswith(f"sigillo_test_{os.getpid()}_")
