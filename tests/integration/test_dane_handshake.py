"""DANE over real TLS handshakes on loopback: the chain a peer sends comes back leaf first, a
self-signed peer is reachable without PKIX and then pinned by its TLSA record, and the minimum
TLS version holds. The peers are Python TLS servers and aiosmtpd with STARTTLS, on port 0, and
for the TLSA lookup unbound validating nsd's signed zones (the ``dnssec_peer`` fixture)."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sigillo.config import DeliverySettings, DNSSettings
from sigillo.gateway.dane import TLSA, check_chain, dane_context, lookup_tlsa, peer_chain
from sigillo.gateway.dnssec import SecureResolver
from sigillo.gateway.smtpclient import Session as ClientSession
from sigillo.gateway.tlspolicy import Level, client_context
from tests.peers.ca import self_signed_cert
from tests.peers.dnssec import INSECURE_ZONE, DnssecPeer

MX = "mx.dane.test"


def spki_sha256(der: bytes) -> bytes:
    spki = (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return hashlib.sha256(spki).digest()


def pem_to_der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def server_context(chain_pem: Path, key_pem: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(chain_pem), str(key_pem))
    return ctx


@asynccontextmanager
async def tls_server(ctx: ssl.SSLContext) -> AsyncIterator[int]:
    """A TLS server on 127.0.0.1 that completes the handshake and waits for the client to go."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def handshake(port: int, ctx: ssl.SSLContext) -> tuple[list[bytes], str]:
    """Connect, return (peer_chain, TLS version), close."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=MX)
    try:
        sslobj = writer.get_extra_info("ssl_object")
        assert isinstance(sslobj, ssl.SSLObject)
        return peer_chain(sslobj), str(sslobj.version())
    finally:
        writer.close()
        with suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


@pytest.fixture
def intermediate_chain(tmp_path: Path) -> tuple[Path, Path, list[bytes]]:
    """Files for a server sending leaf + intermediate (issued under a test root), and the DER
    of [leaf, intermediate] as it should come back."""
    root = trustme.CA(organization_name="sigillo DANE test root")
    inter = root.create_child_ca()
    leaf = inter.issue_cert(MX)
    chain_pem = tmp_path / "chain.pem"
    chain_pem.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key_pem = tmp_path / "key.pem"
    key_pem.write_bytes(leaf.private_key_pem.bytes())
    ders = [pem_to_der(blob.bytes()) for blob in leaf.cert_chain_pems]
    assert len(ders) == 2
    return chain_pem, key_pem, ders


async def test_peer_chain_is_leaf_first(intermediate_chain: tuple[Path, Path, list[bytes]]) -> None:
    chain_pem, key_pem, expected = intermediate_chain
    async with tls_server(server_context(chain_pem, key_pem)) as port:
        chain, _ = await handshake(port, dane_context("1.2"))
    assert chain == expected
    # The intermediate, as sent, is a DANE-TA anchor for the leaf.
    anchor = TLSA(2, 1, 1, spki_sha256(expected[1]))
    check = check_chain(chain, [anchor], [MX], datetime.now(UTC))
    assert check.ok and check.matched == anchor
    other_name = check_chain(chain, [anchor], ["mx.elsewhere.test"], datetime.now(UTC))
    assert not other_name.ok and other_name.result_type == "certificate-host-mismatch"


async def test_self_signed_peer_without_pkix_then_pinned(tmp_path: Path) -> None:
    files = self_signed_cert(MX, tmp_path, "self")
    leaf_der = pem_to_der(files.cert.read_bytes())
    async with tls_server(server_context(files.cert, files.key)) as port:
        # The same peer fails PKIX: the handshake alone authenticates nothing here.
        with pytest.raises(ssl.SSLCertVerificationError):
            await handshake(port, client_context(Level.VERIFY, DeliverySettings()))
        chain, version = await handshake(port, dane_context("1.2"))
    assert chain == [leaf_der] and version in ("TLSv1.2", "TLSv1.3")
    now = datetime.now(UTC)
    assert check_chain(chain, [TLSA(3, 1, 1, spki_sha256(leaf_der))], [MX], now).ok
    wrong = check_chain(chain, [TLSA(3, 1, 1, b"\x00" * 32)], [MX], now)
    assert not wrong.ok and wrong.result_type == "certificate-not-trusted"


def old_server_context(
    files_cert: Path, files_key: Path, maximum: ssl.TLSVersion
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():  # the old versions are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_cert_chain(str(files_cert), str(files_key))
    return ctx


@pytest.mark.parametrize(
    ("server_max", "client_min"),
    [(ssl.TLSVersion.TLSv1_1, "1.2"), (ssl.TLSVersion.TLSv1_2, "1.3")],
)
async def test_dane_context_refuses_tls_below_minimum(
    tmp_path: Path, server_max: ssl.TLSVersion, client_min: str
) -> None:
    files = self_signed_cert(MX, tmp_path, "old")
    async with tls_server(old_server_context(files.cert, files.key, server_max)) as port:
        # The server, offered nothing it speaks, hangs up: no session either way.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await handshake(port, dane_context(client_min))  # type: ignore[arg-type]
        if server_max == ssl.TLSVersion.TLSv1_2:
            _, version = await handshake(port, dane_context("1.2"))
            assert version == "TLSv1.2"


class Recorder:
    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.contents.append(envelope.original_content or b"")
        return "250 OK"


async def test_starttls_session_checked_before_mail(tmp_path: Path) -> None:
    """The path delivery takes: STARTTLS with the DANE context, the chain from the live
    aiosmtplib session, the check; a non-matching record means no transaction at all."""
    files = self_signed_cert(MX, tmp_path, "smtp")
    leaf_der = pem_to_der(files.cert.read_bytes())
    recorder = Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(recorder, tls_context=server_context(files.cert, files.key), hostname=MX),
        "127.0.0.1",
        0,
    )
    port = server.sockets[0].getsockname()[1]
    settings = DeliverySettings()
    try:
        for record, expect_ok in [
            (TLSA(3, 1, 1, spki_sha256(leaf_der)), True),
            (TLSA(3, 0, 1, hashlib.sha256(b"another certificate").digest()), False),
        ]:
            session = ClientSession("127.0.0.1", port, "gw.test", settings)
            await session.open()
            try:
                await session.starttls(MX, dane_context("1.2"), "dane")
                sslobj = session.smtp.get_transport_info("ssl_object")
                check = check_chain(peer_chain(sslobj), [record], [MX], datetime.now(UTC))
                assert check.ok is expect_ok
                if check.ok:
                    result = await session.transaction("a@org.test", ["b@dane.test"], b"x\r\n")
                    assert result.data is not None and result.data.code == 250
            finally:
                await session.quit()
    finally:
        server.close()
        await server.wait_closed()
    assert len(recorder.contents) == 1


# --- lookup_tlsa against unbound validating nsd's signed zones (tests/peers/dnssec.py) -------


@pytest.mark.peers
async def test_lookup_states_from_a_validating_resolver(
    tmp_path: Path, dnssec_peer: DnssecPeer
) -> None:
    peer = dnssec_peer
    secure = peer.fresh_domain("dane")
    unsigned = peer.fresh_domain("dane", INSECURE_ZONE)
    broken = peer.fresh_domain("dane")
    files = self_signed_cert(f"mx.{secure}", tmp_path, "pinned")
    leaf_der = pem_to_der(files.cert.read_bytes())
    pin = f"3 1 1 {spki_sha256(leaf_der).hex()}"
    peer.publish(
        [
            f"_25._tcp.mx.{secure} TLSA {pin}",
            f"_25._tcp.mx.{secure} TLSA 1 1 1 {'ab' * 32}",
            f"_25._tcp.alias.{secure} CNAME _25._tcp.mx.{secure}.",
            f"_25._tcp.unusable.{secure} TLSA 0 0 1 {'cd' * 32}",
            f"_2525._tcp.mx.{secure} TLSA 3 0 1 {'ef' * 32}",
            f"none.{secure} A 127.0.0.1",
            f"_25._tcp.mx.{unsigned} TLSA {pin}",
        ]
    )
    peer.publish(f"_25._tcp.mx.{broken} TLSA {pin}", bogus=True)
    resolver = SecureResolver(DNSSettings.model_validate({"nameservers": [peer.nameserver]}))
    pinned = TLSA(3, 1, 1, spki_sha256(leaf_der))

    found = await lookup_tlsa(resolver, f"MX.{secure}.")
    assert found.state == "secure" and found.usable == (pinned,)
    assert len(found.records) == 2 and len(found.problems) == 1
    assert (await lookup_tlsa(resolver, f"alias.{secure}")).usable == (pinned,)
    on_port = await lookup_tlsa(resolver, f"mx.{secure}", 2525)
    assert on_port.state == "secure" and on_port.usable == (TLSA(3, 0, 1, b"\xef" * 32),)
    unusable = await lookup_tlsa(resolver, f"unusable.{secure}")
    assert unusable.state == "secure" and unusable.records and not unusable.usable
    assert (await lookup_tlsa(resolver, f"none.{secure}")).state == "none"
    assert (await lookup_tlsa(resolver, f"nothing.{secure}")).state == "none"
    assert (await lookup_tlsa(resolver, f"mx.{unsigned}")).state == "insecure"
    bogus = await lookup_tlsa(resolver, f"mx.{broken}")
    assert bogus.state == "temporary" and bogus.problems
    untrusted = SecureResolver(
        DNSSettings.model_validate({"nameservers": [peer.nameserver], "trust_ad": False})
    )
    assert (await lookup_tlsa(untrusted, f"mx.{secure}")).state == "insecure"

    # The records found decide a live session with the pinned, self-signed peer.
    async with tls_server(server_context(files.cert, files.key)) as port:
        chain, _ = await handshake(port, dane_context("1.2"))
    assert check_chain(chain, found.usable, [f"mx.{secure}"], datetime.now(UTC)).ok
    assert not check_chain(chain, on_port.usable, [f"mx.{secure}"], datetime.now(UTC)).ok
