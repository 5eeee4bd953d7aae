"""pytest fixtures for the test peers (registered as a plugin by tests/conftest.py).

All peers are session-scoped: Postfix takes about two seconds to start, so one instance serves
the whole run. Tests that send mail must therefore use their own recipient addresses and filter
with ``peer.wait_for(n, match=...)``.

Loopback layout (one random 127.X.Y block per test session, `peer_block`):

    .2  tls        STARTTLS, certificate for mx.tls.test and implicit.test from `test_ca`
    .3  plain      no STARTTLS
    .4  wrongname  STARTTLS, self-signed certificate for wrong.invalid
    .5  broken     advertises STARTTLS, answers 454 to it
    .6  (free for a test's own server, e.g. one capped below TLS 1.2: mx.oldtls.test)
    .7  nginx      HTTPS for any host name a test gives it (`nginx_peer`: MTA-STS policy hosts)
    .9  (nothing listens: connections are refused)
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.peers.ca import PeerCA, make_ca
from tests.peers.dnsmasq import DnsmasqPeer
from tests.peers.dnssec import DnssecPeer
from tests.peers.net import free_loopback_block, free_port
from tests.peers.nginx import NginxPeer
from tests.peers.postfix import Listener, PostfixPeer

#: Domains delivered into the peer's Maildir.
MX_DOMAINS = [
    "tls.test",
    "plain.test",
    "wrongname.test",
    "broken.test",
    "implicit.test",
    "twomx.test",
    "org.example",
]
#: Domains the peer accepts (over any listener) and throws away: a benchmark sink.
DISCARD_DOMAINS = ["sink.test"]


@dataclass(frozen=True)
class MxPeers:
    """The recipients' mail servers: one Postfix instance, one listener per TLS behaviour."""

    peer: PostfixPeer
    port: int
    block: str
    ca: PeerCA

    @property
    def ca_file(self) -> Path:
        """PEM file of the CA that issued the tls listener's certificate (``ca_file``)."""
        return self.ca.pem_path

    @property
    def tls(self) -> str:
        return f"{self.block}.2"

    @property
    def plain(self) -> str:
        return f"{self.block}.3"

    @property
    def wrongname(self) -> str:
        return f"{self.block}.4"

    @property
    def broken(self) -> str:
        return f"{self.block}.5"

    @property
    def dead(self) -> str:
        """An address in the block where nothing listens."""
        return f"{self.block}.9"

    @property
    def addresses(self) -> dict[str, str]:
        """Listener mode -> address (plus "dead")."""
        return {
            "tls": self.tls,
            "plain": self.plain,
            "wrongname": self.wrongname,
            "broken": self.broken,
            "dead": self.dead,
        }


def is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


@pytest.fixture(scope="session")
def peer_block() -> str:
    """The random 127.X.Y prefix this test session's peers listen on."""
    return free_loopback_block()


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> PeerCA:
    """A trustme CA (``.ca``) and the path of its PEM certificate (``.pem_path``)."""
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def mx_peers(
    tmp_path_factory: pytest.TempPathFactory, peer_block: str, test_ca: PeerCA
) -> Iterator[MxPeers]:
    """A running Postfix with the tls/plain/wrongname/broken listeners (see module docstring)."""
    port = free_port(f"{peer_block}.2")
    listeners = [
        Listener(f"{peer_block}.2", "tls", ("mx.tls.test", "implicit.test")),
        Listener(f"{peer_block}.3", "plain"),
        Listener(f"{peer_block}.4", "wrongname"),
        Listener(f"{peer_block}.5", "broken", ("mx.broken.test",)),
    ]
    peer = PostfixPeer(
        tmp_path_factory.mktemp("postfix"),
        port,
        listeners,
        test_ca.ca,
        MX_DOMAINS,
        DISCARD_DOMAINS,
    )
    try:
        peer.start()
        yield MxPeers(peer=peer, port=port, block=peer_block, ca=test_ca)
    finally:
        peer.stop()


def dns_records(block: str) -> tuple[dict[str, list[tuple[int, str]]], dict[str, str]]:
    """The MX and address records of `dns_peer` for a loopback block."""
    mx = {
        "tls.test": [(10, "mx.tls.test")],
        "plain.test": [(10, "mx.plain.test")],
        "wrongname.test": [(10, "mx.wrongname.test")],
        "broken.test": [(10, "mx.broken.test")],
        "nullmx.test": [(0, ".")],
        "twomx.test": [(10, "mx-dead.twomx.test"), (20, "mx.tls.test")],
        "sink.test": [(10, "mx.tls.test")],
        "dead.test": [(10, "mx-dead.twomx.test")],
        "oldtls.test": [(10, "mx.oldtls.test")],
    }
    hosts = {
        "mx.tls.test": f"{block}.2",
        "mx.plain.test": f"{block}.3",
        "mx.wrongname.test": f"{block}.4",
        "mx.broken.test": f"{block}.5",
        "mx-dead.twomx.test": f"{block}.9",
        "implicit.test": f"{block}.2",
        "mx.oldtls.test": f"{block}.6",
    }
    return mx, hosts


@pytest.fixture(scope="session")
def dns_peer(tmp_path_factory: pytest.TempPathFactory, peer_block: str) -> Iterator[DnsmasqPeer]:
    """A running dnsmasq with the recipients' records; ``.nameserver`` is "127.0.0.1:PORT".

    MX: tls/plain/wrongname/broken.test -> mx.<domain> (.2/.3/.4/.5); nullmx.test -> "." (null
    MX); twomx.test -> 10 mx-dead.twomx.test (.9, refuses), 20 mx.tls.test; sink.test ->
    mx.tls.test; dead.test -> only mx-dead.twomx.test. implicit.test has only an A record
    (.2). oldtls.test -> mx.oldtls.test (.6, where a test runs its own server). Queries for
    anything under dnstimeout.test are never answered. Every other name
    under .test is NXDOMAIN.
    """
    mx, hosts = dns_records(peer_block)
    peer = DnsmasqPeer(
        tmp_path_factory.mktemp("dnsmasq"),
        mx,
        hosts,
        ["server=/dnstimeout.test/127.0.0.1#9"],
    )
    try:
        peer.start()
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="session")
def dnssec_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnssecPeer]:
    """unbound validating zones that nsd serves signed; ``.nameserver`` is "127.0.0.1:PORT".

    ``test.`` is signed (the trust anchor), ``insecure.test.`` unsigned, ``bogus.test.`` fails
    validation (SERVFAIL). Tests add their own records with ``.publish([...])`` under names from
    ``.fresh_domain("label")``; see tests/peers/dnssec.py.
    """
    peer = DnssecPeer(tmp_path_factory.mktemp("dnssec"))
    try:
        peer.start()
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="session")
def nginx_peer(
    tmp_path_factory: pytest.TempPathFactory, peer_block: str, test_ca: PeerCA
) -> Iterator[NginxPeer]:
    """nginx serving HTTPS on ``<peer_block>.7`` (``.address``, ``.port``) for any host name,
    with certificates from `test_ca`: ``.serve(host, path, body, content_type)``,
    ``.redirect(...)``, ``.error(...)``, ``.certificate(host, kind)``; see tests/peers/nginx.py.
    """
    peer = NginxPeer(tmp_path_factory.mktemp("nginx"), f"{peer_block}.7", test_ca.ca)
    try:
        peer.start()
        yield peer
    finally:
        peer.stop()


PG_ADMIN_URLS = (
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgresql://root@127.0.0.1:5432/postgres",
)


async def _pg_execute(admin_url: str, statement: str) -> None:
    connection = await asyncpg.connect(admin_url, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _pg_create(name: str) -> str:
    """Create database `name` through the first admin URL that works; return that URL."""
    configured = os.environ.get("SIGILLO_TEST_PG_ADMIN_URL")
    candidates = (configured,) if configured else PG_ADMIN_URLS
    errors = []
    for admin_url in candidates:
        try:
            asyncio.run(_pg_execute(admin_url, f'CREATE DATABASE "{name}"'))
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            errors.append(f"{admin_url}: {exc!r}")
            continue
        return admin_url
    raise ConnectionError("; ".join(errors))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this session, dropped afterwards.

    ``postgresql://USER@127.0.0.1:5432/sigillo_test_<pid>_<random>``, created as the first of
    postgres/root that can log in (trust authentication), or through
    ``SIGILLO_TEST_PG_ADMIN_URL``. Skips when PostgreSQL is unreachable, unless CI is set.
    """
    name = f"sigillo_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        admin_url = _pg_create(name)
    except ConnectionError as exc:
        message = f"PostgreSQL is not reachable ({exc})"
        if is_ci():
            pytest.fail(message)
        pytest.skip(message + "; scripts/test.sh installs and starts it")
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_pg_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
