"""MX resolution (RFC 5321 section 5.1, RFC 7505) with dnspython.

Outcomes are typed: hosts to try in order, a permanent failure (the domain cannot receive
mail) or a temporary one (DNS did not answer; try later). Given a ``SecureResolver``, the
result also says which answers DNSSEC vouched for (the MX RRset, each host's addresses), what DANE
(RFC 7672 section 2.2) needs before it looks for TLSA records.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from sigillo.config import DNSSettings

if TYPE_CHECKING:
    import dns.message

    from sigillo.gateway.dnssec import SecureResolver


@dataclass(frozen=True)
class MXHost:
    preference: int
    name: str
    addresses: tuple[str, ...]
    """IPv4 then IPv6; empty when the name did not resolve."""
    secure: bool = False
    """Both address lookups (records or denial) were DNSSEC-validated, and there are addresses."""


@dataclass(frozen=True)
class MXResult:
    status: Literal["ok", "permanent", "temporary"]
    hosts: tuple[MXHost, ...] = ()
    reason: str = ""
    implicit: bool = False
    secure: bool = False
    """The MX RRset (for an implicit MX: its denial) was DNSSEC-validated."""


def nxdomain_responses(exc: dns.resolver.NXDOMAIN) -> list[dns.message.Message]:
    """The responses that said NXDOMAIN (dnspython's accessor is untyped)."""
    return list(exc.kwargs.get("responses", {}).values())


def noanswer_response(exc: dns.resolver.NoAnswer) -> dns.message.Message:
    """The response that had no records of the asked type."""
    response: dns.message.Message = exc.kwargs["response"]
    return response


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
    def __init__(self, settings: DNSSettings, secure: SecureResolver | None = None) -> None:
        # With a SecureResolver its dnspython resolver (DO bit set) answers every lookup, so the
        # AD bit of the very answers used is what the secure flags report.
        self.secure = secure
        self.resolver = secure.resolver if secure is not None else make_resolver(settings)

    def _vouched(self, *responses: dns.message.Message) -> bool:
        return self.secure is not None and all(self.secure.vouches_for(r) for r in responses)

    async def addresses(self, host: str) -> tuple[tuple[str, ...], str | None]:
        """(addresses, temporary-failure reason or None)."""
        found, temporary, _secure = await self._addresses(host)
        return found, temporary

    async def _addresses(self, host: str) -> tuple[tuple[str, ...], str | None, bool]:
        found: list[str] = []
        temporary: str | None = None
        secure = True
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(host, rdtype, search=False)
            except dns.resolver.NXDOMAIN as exc:
                secure = secure and self._vouched(*nxdomain_responses(exc))
                continue
            except dns.resolver.NoAnswer as exc:
                secure = secure and self._vouched(noanswer_response(exc))
                continue
            except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
                temporary = f"{host} {rdtype}: {exc.__class__.__name__}"
                secure = False
                continue
            secure = secure and self._vouched(answer.response)
            found.extend(r.to_text() for r in answer)
        return tuple(found), temporary, secure and bool(found)

    async def lookup(self, domain: str) -> MXResult:
        try:
            answer = await self.resolver.resolve(domain, "MX", search=False)
        except dns.resolver.NXDOMAIN:
            return MXResult("permanent", reason=f"domain {domain} does not exist (NXDOMAIN)")
        except dns.resolver.NoAnswer as exc:
            return await self._implicit(domain, self._vouched(noanswer_response(exc)))
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
            addrs, problem, host_secure = await self._addresses(name)
            if problem:
                temporary.append(problem)
            hosts.append(MXHost(preference, name, addrs, host_secure))
        mx_secure = self._vouched(answer.response)
        if not any(h.addresses for h in hosts):
            status: Literal["temporary", "permanent"] = "temporary" if temporary else "permanent"
            why = "; ".join(temporary) or "no MX host has an address"
            return MXResult(status, tuple(hosts), reason=f"{domain}: {why}", secure=mx_secure)
        return MXResult("ok", tuple(hosts), secure=mx_secure)

    async def _implicit(self, domain: str, denial_secure: bool) -> MXResult:
        # RFC 5321 5.1: without MX records the domain itself is the mail host.
        addrs, problem, host_secure = await self._addresses(domain)
        if addrs:
            host = MXHost(0, domain, addrs, host_secure)
            return MXResult("ok", (host,), implicit=True, secure=denial_secure)
        if problem:
            return MXResult("temporary", reason=problem)
        return MXResult("permanent", reason=f"domain {domain} has no MX and no address")
