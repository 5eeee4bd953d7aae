"""MX resolution (RFC 5321 section 5.1, RFC 7505) with dnspython.

Outcomes are typed: hosts to try in order, a permanent failure (the domain cannot receive
mail) or a temporary one (DNS did not answer; try later).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from sigillo.config import DNSSettings


@dataclass(frozen=True)
class MXHost:
    preference: int
    name: str
    addresses: tuple[str, ...]
    """IPv4 then IPv6; empty when the name did not resolve."""


@dataclass(frozen=True)
class MXResult:
    status: Literal["ok", "permanent", "temporary"]
    hosts: tuple[MXHost, ...] = ()
    reason: str = ""
    implicit: bool = False


def make_resolver(settings: DNSSettings) -> dns.asyncresolver.Resolver:
    if settings.nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        servers = settings.servers
        resolver.nameservers = [host for host, _ in servers]
        # dnspython has one port for all nameservers; mixed ports are a config error we catch.
        ports = {port for _, port in servers}
        if len(ports) > 1:
            raise ValueError("dns.nameservers must all use the same port")
        resolver.port = ports.pop()
    else:
        resolver = dns.asyncresolver.Resolver()
    # Answers are kept for their TTL (a zero TTL is not cached), as a caching resolver would.
    resolver.cache = dns.resolver.LRUCache(4096)
    resolver.lifetime = settings.timeout.total_seconds()
    resolver.timeout = min(resolver.lifetime, 5.0)
    return resolver


class MXResolver:
    def __init__(self, settings: DNSSettings) -> None:
        self.resolver = make_resolver(settings)

    async def addresses(self, host: str) -> tuple[tuple[str, ...], str | None]:
        """(addresses, temporary-failure reason or None)."""
        found: list[str] = []
        temporary: str | None = None
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(host, rdtype, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
                temporary = f"{host} {rdtype}: {exc.__class__.__name__}"
                continue
            found.extend(r.to_text() for r in answer)
        return tuple(found), temporary

    async def lookup(self, domain: str) -> MXResult:
        try:
            answer = await self.resolver.resolve(domain, "MX", search=False)
        except dns.resolver.NXDOMAIN:
            return MXResult("permanent", reason=f"domain {domain} does not exist (NXDOMAIN)")
        except dns.resolver.NoAnswer:
            return await self._implicit(domain)
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            return MXResult("temporary", reason=f"MX lookup for {domain} failed: {exc}")
        except dns.exception.DNSException as exc:
            return MXResult("temporary", reason=f"MX lookup for {domain} failed: {exc}")

        records = [(r.preference, r.exchange) for r in answer]
        # RFC 7505: a single MX with an empty exchange ("." ) says the domain takes no mail.
        if any(exchange == dns.name.root for _, exchange in records):
            return MXResult("permanent", reason=f"domain {domain} accepts no mail (null MX)")
        # Equal preferences are tried in random order (RFC 5321 5.1) to spread load.
        shuffled = random.sample(records, len(records))
        shuffled.sort(key=lambda r: r[0])
        hosts: list[MXHost] = []
        temporary: list[str] = []
        for preference, exchange in shuffled:
            name = exchange.to_text(omit_final_dot=True).lower()
            addrs, problem = await self.addresses(name)
            if problem:
                temporary.append(problem)
            hosts.append(MXHost(preference, name, addrs))
        if not any(h.addresses for h in hosts):
            status: Literal["temporary", "permanent"] = "temporary" if temporary else "permanent"
            why = "; ".join(temporary) or "no MX host has an address"
            return MXResult(status, tuple(hosts), reason=f"{domain}: {why}")
        return MXResult("ok", tuple(hosts))

    async def _implicit(self, domain: str) -> MXResult:
        # RFC 5321 5.1: without MX records the domain itself is the mail host.
        addrs, problem = await self.addresses(domain)
        if addrs:
            return MXResult("ok", (MXHost(0, domain, addrs),), implicit=True)
        if problem:
            return MXResult("temporary", reason=problem)
        return MXResult("permanent", reason=f"domain {domain} has no MX and no address")
