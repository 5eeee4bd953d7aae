"""DNS lookups that say whether DNSSEC vouches for the answer (RFC 4035, RFC 6698 section 4).

sigillo validates nothing itself: it asks the configured resolvers with the DO bit set and
believes their AD (authenticated data) bit only when ``[dns] trust_ad`` says the path to them is
trusted (``DNSSettings.ad_trusted``: by default, every resolver on loopback). A validating
resolver answers SERVFAIL for bogus data, so bogus and unreachable look alike here: both are
"temporary", and a caller that needs the answer defers instead of skipping its check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver

from sigillo.config import DNSSettings
from sigillo.gateway.mx import make_resolver, nxdomain_responses

Status = Literal["ok", "nxdomain", "nodata", "temporary"]

#: The EDNS payload size of DNS Flag Day 2020: answers with signatures fit, no fragmentation.
EDNS_PAYLOAD = 1232


@dataclass(frozen=True)
class Answer:
    status: Status
    """``temporary``: timeout, SERVFAIL (what a validating resolver answers for bogus data),
    REFUSED, a network error or a name that cannot be asked."""
    records: tuple[Any, ...]
    """dnspython rdata objects of the asked type, after any CNAME chain ("ok" only)."""
    secure: bool
    """AD bit set and trusted (``DNSSettings.ad_trusted``); False for anything but "ok"."""
    ttl: int = 0
    reason: str = ""
    """One line for delivery records and logs."""
    authenticated: bool = False
    """AD bit set and trusted, whatever the status: for "nxdomain" and "nodata" a validated
    denial of existence (RFC 7672 section 2.1.1), which ``secure`` does not report."""


#: Resolver-supplied text (EDE) goes into delivery records and logs: bounded and printable.
MAX_REASON = 400


def _one_line(text: str) -> str:
    flat = "".join(c if c.isprintable() else " " for c in text)
    flat = " ".join(flat.split())
    return flat if len(flat) <= MAX_REASON else flat[: MAX_REASON - 3] + "..."


def _negative_ttl(response: dns.message.Message) -> int:
    # RFC 2308 section 5: a negative answer lives as long as the smaller of the SOA's TTL and
    # its MINIMUM field.
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return int(min(rrset.ttl, rrset[0].minimum))
    return 0


def _failure_detail(exc: dns.resolver.NoNameservers) -> str:
    """The servers' rcodes, with the Extended DNS Error text a resolver gives (RFC 8914), which
    names the DNSSEC problem behind a SERVFAIL ("signature expired", "DNSKEY missing")."""
    parts = []
    for error in exc.kwargs.get("errors", []):
        server, _tcp, _port, problem, response = error
        part = f"{server} answered {problem}"
        if isinstance(response, dns.message.Message):
            texts = [e.text or f"EDE {int(e.code)}" for e in response.extended_errors()]
            if texts:
                part += f" ({'; '.join(texts)})"
        parts.append(part)
    return "; ".join(parts) or "no nameserver answered"


class SecureResolver:
    """The configured resolvers, asked with DO set so that a validating one returns AD."""

    def __init__(self, settings: DNSSettings) -> None:
        self.settings = settings
        self.trust_ad = settings.ad_trusted
        self.resolver: dns.asyncresolver.Resolver = make_resolver(settings)
        self.resolver.use_edns(0, dns.flags.DO, EDNS_PAYLOAD)

    def vouches_for(self, response: dns.message.Message) -> bool:
        """Whether `response` counts as DNSSEC-validated: AD set and the resolver trusted."""
        return self.trust_ad and bool(response.flags & dns.flags.AD)

    def _note(self, response: dns.message.Message) -> str:
        if self.vouches_for(response):
            return "DNSSEC-validated"
        if response.flags & dns.flags.AD:
            return "AD ignored ([dns] trust_ad is off)"
        return "not DNSSEC-validated"

    async def query(self, name: str, rdtype: str) -> Answer:
        """Look `name` up; every DNS problem becomes an Answer, never an exception."""
        asked = f"{name.rstrip('.')} {rdtype}"
        try:
            result = await self.resolver.resolve(
                name, rdtype, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN as exc:
            responses = nxdomain_responses(exc)
            authenticated = bool(responses) and all(self.vouches_for(r) for r in responses)
            ttl = min((_negative_ttl(r) for r in responses), default=0)
            note = self._note(responses[0]) if responses else "not DNSSEC-validated"
            return Answer("nxdomain", (), False, ttl, f"{asked}: NXDOMAIN, {note}", authenticated)
        except dns.resolver.NoNameservers as exc:
            detail = _one_line(_failure_detail(exc))
            return Answer("temporary", (), False, 0, f"{asked}: {detail}")
        except dns.exception.Timeout:
            return Answer("temporary", (), False, 0, f"{asked}: no answer in time")
        except dns.exception.DNSException as exc:
            # A name that cannot be asked (empty or over-long label), YXDOMAIN, a malformed
            # answer: nothing to decide on, so a check that needs the answer must wait.
            detail = _one_line(str(exc)) or exc.__class__.__name__
            return Answer("temporary", (), False, 0, f"{asked}: {detail}")
        response = result.response
        authenticated = self.vouches_for(response)
        note = self._note(response)
        if result.rrset is None:
            ttl = _negative_ttl(response)
            return Answer("nodata", (), False, ttl, f"{asked}: no records, {note}", authenticated)
        records = tuple(result.rrset)
        via = ""
        if result.canonical_name != result.qname:
            via = f" via CNAME {result.canonical_name.to_text(omit_final_dot=True)}"
        reason = f"{asked}: {len(records)} record(s){via}, {note}"
        return Answer("ok", records, authenticated, result.rrset.ttl, reason, authenticated)

    async def addresses(self, host: str) -> tuple[tuple[str, ...], bool, Status]:
        """A then AAAA records of `host`: (addresses, all_secure, worst status).

        ``all_secure``: there are addresses and both answers, records or denial, were
        validated. Status: "temporary" if either lookup failed (even when the other found
        addresses), else "ok" if there are addresses, else "nxdomain" or "nodata".
        """
        answers = [await self.query(host, rdtype) for rdtype in ("A", "AAAA")]
        found = tuple(r.to_text() for a in answers for r in a.records)
        statuses = {a.status for a in answers}
        status: Status
        if "temporary" in statuses:
            status = "temporary"
        elif found:
            status = "ok"
        elif "nxdomain" in statuses:
            status = "nxdomain"
        else:
            status = "nodata"
        all_secure = status == "ok" and all(a.authenticated for a in answers)
        return found, all_secure, status
