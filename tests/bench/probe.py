"""How fast sigillo decides a domain's transport security: ``sigillo probe`` over many domains.

What is measured
    The probe logic of ``sigillo probe DOMAIN`` (``Deliverer.probe`` with the DNSSEC resolver and
    the MTA-STS cache, built as the command and the worker build them) for N generated domains,
    C at a time, against a local validating resolver. A probe does everything a delivery does up
    to MAIL FROM: MX lookup, the DANE layer (TLSA lookups when the MX answers validated), the
    MTA-STS layer (TXT discovery, policy fetch over HTTPS or the store's cache), the SMTP
    connection, STARTTLS and the live checks (certificate chain and name, or the TLSA match).

The domains (in the signed zone ``test.`` of `tests.peers.dnssec.DnssecPeer`: nsd serving,
unbound validating; published in one call, so the zone is signed once)
    40% verify: ``MX 10 mx.bench.test`` (shared), a Postfix listener with a certificate from
        the test CA for that name; expected: TLS authorised by ``verify``.
    30% DANE: ``MX 10 mx.<domain>``, its own A record, pointing at a listener with a
        self-signed certificate pinned by ``_25._tcp.mx.<domain> TLSA 3 1 1``; expected: TLS
        authorised by ``dane`` (without DANE these would go to the portal).
    30% MTA-STS: ``MX 10 mx.bench.test``, ``_mta-sts`` TXT and ``mta-sts.<domain>`` served by
        nginx with a certificate from the test CA, policy ``enforce`` with ``mx: mx.bench.test``;
        expected: TLS authorised by ``mta-sts``.

Passes
    cold: empty unbound cache, empty MTA-STS cache, new resolver objects.
    warm: the same objects again (sigillo's own DNS cache, unbound's cache, cached policies).
    warm, new process: new resolver objects over unbound's and the store's caches: what a
        fresh ``sigillo probe`` process meets (its Python start-up not counted).
Each pass prints domains per second and what was decided (decision / authorising layer), so
a fast pass that decided wrongly shows as such.

Run as root (Postfix and nginx) from the repository root:

    .venv/bin/python tests/bench/probe.py --domains 1000 --concurrency 100

A measurement, not a test: nothing is asserted about time. Resolver, mail server, web server
and probes share the machine's CPUs (every probe is a TLS handshake on both ends); the load
average is printed with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make `tests.peers` importable
    sys.path.insert(0, str(REPO))

from sigillo.config import DeliverySettings, DNSSettings  # noqa: E402
from sigillo.gateway.delivery import Deliverer  # noqa: E402
from sigillo.gateway.dnssec import SecureResolver  # noqa: E402
from sigillo.gateway.mtasts import MtaSts  # noqa: E402
from sigillo.gateway.mx import MXResolver  # noqa: E402
from sigillo.store import migrate  # noqa: E402
from sigillo.store.db import Store  # noqa: E402
from tests.peers.ca import make_ca  # noqa: E402
from tests.peers.dnssec import DnssecPeer  # noqa: E402
from tests.peers.net import free_loopback_block, free_port  # noqa: E402
from tests.peers.nginx import NginxPeer  # noqa: E402
from tests.peers.postfix import Listener, PostfixPeer  # noqa: E402

SHARED_MX = "mx.bench.test"
STS_POLICY = f"version: STSv1\nmode: enforce\nmx: {SHARED_MX}\nmax_age: 86400\n"
KINDS = ("verify",) * 4 + ("dane",) * 3 + ("mta-sts",) * 3
"""Kind of the i-th domain: ``KINDS[i % 10]``."""


class BenchDnssec(DnssecPeer):
    """The test peer with caches for thousands of names: its 1 MB ones hold a few test
    domains, and a warm pass whose answers were evicted would measure a cold one."""

    def _unbound_conf(self) -> str:
        text = super()._unbound_conf()
        for cache in ("msg", "rrset", "key", "neg"):
            text = text.replace(f"{cache}-cache-size: 1m", f"{cache}-cache-size: 64m")
        return text


@dataclass(frozen=True)
class Domain:
    name: str
    kind: str

    @property
    def mx(self) -> str:
        return f"mx.{self.name}" if self.kind == "dane" else SHARED_MX


@dataclass(frozen=True)
class Pass:
    label: str
    seconds: float
    outcomes: Counter[str]
    unexpected: list[str]
    load: float
    """The one-minute load average when the pass ended."""


def spki_sha256(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest().upper()


def generate(count: int) -> list[Domain]:
    run = secrets.token_hex(2)
    return [Domain(f"b{i:04d}-{run}.test", KINDS[i % len(KINDS)]) for i in range(count)]


def zone_lines(domains: Sequence[Domain], block: str, nginx: str, tlsa: str) -> list[str]:
    lines = [f"{SHARED_MX}. A {block}.2"]
    for d in domains:
        lines.append(f"{d.name}. MX 10 {d.mx}.")
        if d.kind == "dane":
            lines += [f"{d.mx}. A {block}.4", f"_25._tcp.{d.mx}. TLSA 3 1 1 {tlsa}"]
        elif d.kind == "mta-sts":
            policy_id = secrets.token_hex(4)
            lines += [
                f'_mta-sts.{d.name}. TXT "v=STSv1; id={policy_id}"',
                f"mta-sts.{d.name}. A {nginx}",
            ]
    return lines


def expected(domain: Domain) -> str:
    return f"tls/{domain.kind}"


class Prober:
    """The objects ``sigillo probe`` builds, built once per "process"."""

    def __init__(
        self, dns: DNSSettings, delivery: DeliverySettings, store: Store, port: int
    ) -> None:
        self.secure = SecureResolver(dns)
        self.deliverer = Deliverer(
            delivery,
            MXResolver(dns, secure=self.secure),
            "probe.bench.invalid",
            secure=self.secure,
            mtasts=MtaSts(store, self.secure, delivery, port=port),
        )

    async def probe(self, domain: Domain) -> str:
        result = await self.deliverer.probe(domain.name)
        decision = result.results[0]
        return f"{decision.outcome.value}/{result.authority or '-'}"

    async def close(self) -> None:
        await self.deliverer.close()


async def run_pass(label: str, prober: Prober, domains: Sequence[Domain], concurrency: int) -> Pass:
    gate = asyncio.Semaphore(concurrency)
    outcomes: Counter[str] = Counter()
    unexpected: list[str] = []

    async def one(domain: Domain) -> None:
        async with gate:
            got = await prober.probe(domain)
        outcomes[got] += 1
        if got != expected(domain):
            unexpected.append(f"{domain.name} ({domain.kind}): {got}")

    started = time.perf_counter()
    await asyncio.gather(*(one(d) for d in domains))
    seconds = time.perf_counter() - started
    return Pass(label, seconds, outcomes, unexpected, os.getloadavg()[0])


async def measure(
    domains: Sequence[Domain],
    concurrency: int,
    dns: DNSSettings,
    delivery: DeliverySettings,
    database: str,
    nginx_port: int,
) -> list[Pass]:
    store = Store(database)
    await migrate.upgrade(store)
    passes = []
    try:
        first = Prober(dns, delivery, store, nginx_port)
        passes.append(await run_pass("cold", first, domains, concurrency))
        passes.append(await run_pass("warm", first, domains, concurrency))
        await first.close()
        fresh = Prober(dns, delivery, store, nginx_port)
        passes.append(await run_pass("warm, new process", fresh, domains, concurrency))
        await fresh.close()
    finally:
        await store.close()
    return passes


def report(passes: Sequence[Pass], count: int, concurrency: int) -> None:
    print(f"\n{count} domains, {concurrency} probes at a time, {os.cpu_count()} CPUs")
    for p in passes:
        rate = count / p.seconds if p.seconds else float("inf")
        print(f"  {p.label:<18} {p.seconds:7.2f} s  {rate:8.1f} domains/s  (load {p.load:.2f})")
        print("    decided: " + ", ".join(f"{k} {v}" for k, v in sorted(p.outcomes.items())))
        if p.unexpected:
            print(f"    {len(p.unexpected)} not as expected, e.g. " + "; ".join(p.unexpected[:3]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: Postfix and nginx run as the peers")
    # The probes' own log lines (one per policy fetch, per failed handshake) would drown the
    # figures; warnings and errors still show.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    domains = generate(args.domains)
    with tempfile.TemporaryDirectory(prefix="sigillo-bench-probe-") as tmp:
        work = Path(tmp)
        block = free_loopback_block()
        ca = make_ca(work / "ca")
        postfix = PostfixPeer(
            work / "postfix",
            free_port(f"{block}.2"),
            [Listener(f"{block}.2", "tls", (SHARED_MX,)), Listener(f"{block}.4", "wrongname")],
            ca.ca,
            ["bench.test"],
        )
        dnssec = BenchDnssec(work / "dnssec")
        nginx = NginxPeer(work / "nginx", f"{block}.7", ca.ca)
        try:
            started = time.perf_counter()
            postfix.start()
            tlsa = spki_sha256(postfix.config_dir / "tls" / f"{block}.4.crt")
            # Before start every call only rewrites nginx.conf: one start serves them all.
            for d in domains:
                if d.kind == "mta-sts":
                    nginx.serve(f"mta-sts.{d.name}", "/.well-known/mta-sts.txt", STS_POLICY)
            nginx.start()
            dnssec.start()
            dnssec.publish(zone_lines(domains, block, nginx.address, tlsa))
            print(
                f"peers up and {len(domains)} domains published in "
                f"{time.perf_counter() - started:.1f} s"
            )
            passes = asyncio.run(
                measure(
                    domains,
                    args.concurrency,
                    DNSSettings(nameservers=[dnssec.nameserver]),
                    DeliverySettings(mx_port=postfix.port, ca_file=str(ca.pem_path)),
                    f"sqlite:///{work}/bench.db",
                    nginx.port,
                )
            )
        finally:
            nginx.stop()
            dnssec.stop()
            postfix.stop()
    report(passes, len(domains), args.concurrency)


if __name__ == "__main__":
    main()
