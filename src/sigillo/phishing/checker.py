"""The checker's entry point: ``Checker(policy).check(raw, recipient)`` -> ``Report``."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import dns.exception
import dns.resolver
import structlog

from sigillo.config import DNSSettings, Settings
from sigillo.dkim import DkimKeyError, DkimSigner
from sigillo.phishing import message as mime
from sigillo.phishing.auth import check_auth_results, check_dkim
from sigillo.phishing.content import requests_for_secrets
from sigillo.phishing.domains import (
    Reference,
    claims_org,
    compact_name,
    lookalike,
    org_domain_of,
    registrable,
    unicode_host,
)
from sigillo.phishing.findings import Finding, by_severity, cut
from sigillo.phishing.links import Link, LinkCheck, urls_in_text
from sigillo.phishing.verdict import Report, decide

log = structlog.get_logger("sigillo.phishing")


@dataclass(frozen=True)
class CheckPolicy:
    """What the organisation knows about its own mail."""

    org_domains: tuple[str, ...]
    """Lower-case; their subdomains are the organisation's too."""
    portal_host: str
    """The host of ``[portal] base_url``: where genuine links and sign-in forms lead."""
    org_names: tuple[str, ...] = ()
    trusted_authserv_ids: tuple[str, ...] = ()
    dkim_keys: Mapping[str, bytes] = field(default_factory=dict)
    """``selector._domainkey.domain`` (lower-case) -> TXT value, sigillo's own key included."""
    dkim_dns: Callable[[str], bytes | None] | None = None
    """Fetches a DKIM TXT record when no known key covers a signature; None: offline."""
    max_size: int = 25 * 1024 * 1024
    """Larger input is reported (``errored``), not parsed."""

    @classmethod
    def from_settings(cls, settings: Settings) -> CheckPolicy:
        """The policy ``settings`` describe, sigillo's own DKIM key included when it exists.

        The notification sender's domain counts as an organisation domain: sigillo's own mail
        is the organisation's. Cheap enough to build per request (the key is read once per
        file version)."""
        org_domains = list(settings.phishing.org_domains)
        if settings.notify.domain and settings.notify.domain not in org_domains:
            org_domains.append(settings.notify.domain)
        keys = {
            name.strip().rstrip(".").lower(): value.encode()
            for name, value in settings.phishing.dkim_keys.items()
        }
        own = _own_key(settings.notify.dkim_key_file, settings.notify.dkim_selector,
                       settings.notify.domain)  # fmt: skip
        if own is not None:
            keys[own[0]] = own[1]
        return cls(
            org_domains=tuple(org_domains),
            portal_host=(urlsplit(settings.portal.base_url).hostname or "").lower(),
            org_names=tuple(settings.phishing.org_names),
            trusted_authserv_ids=tuple(t.lower() for t in settings.phishing.trusted_authserv_ids),
            dkim_keys=keys,
            dkim_dns=dns_txt_lookup(settings.dns) if settings.phishing.dkim_dns else None,
            max_size=settings.smtp.max_message_size,
        )


def _own_key(path: Path, selector: str, domain: str) -> tuple[str, bytes] | None:
    try:
        stat = path.stat()
    except OSError:
        return None  # not created yet: sigillo has not signed anything with it
    try:
        return _read_key(str(path), stat.st_mtime_ns, stat.st_size, selector, domain)
    except DkimKeyError as exc:
        # Its own mail will then not verify (suspicious, never genuine): the safe side.
        log.warning("dkim_key_unreadable", error=str(exc))
        return None


@lru_cache(maxsize=8)
def _read_key(path: str, mtime_ns: int, size: int, selector: str, domain: str) -> tuple[str, bytes]:
    signer = DkimSigner.load(Path(path), selector, domain)
    return signer.dns_name.lower(), signer.txt_value().encode()


def dns_txt_lookup(settings: DNSSettings) -> Callable[[str], bytes | None]:
    """A TXT lookup through ``[dns] nameservers`` (the system resolver when empty); the
    resolver is made on first use, so building a policy stays cheap."""
    resolvers: list[dns.resolver.Resolver] = []

    def resolver() -> dns.resolver.Resolver:
        if not resolvers:
            if settings.nameservers:
                made = dns.resolver.Resolver(configure=False)
                servers = settings.servers
                made.nameservers = [host for host, _ in servers]
                made.port = servers[0][1]
            else:
                made = dns.resolver.Resolver()
            made.lifetime = settings.timeout.total_seconds()
            made.timeout = min(made.lifetime, 5.0)
            resolvers.append(made)
        return resolvers[0]

    def lookup(name: str) -> bytes | None:
        try:
            answer = resolver().resolve(name, "TXT", search=False)
        except (dns.exception.DNSException, OSError, ValueError):
            return None
        for record in answer:
            return b"".join(record.strings)
        return None

    return lookup


class Checker:
    def __init__(self, policy: CheckPolicy) -> None:
        self.policy = policy
        refs = [Reference.of(d) for d in policy.org_domains]
        if policy.portal_host:
            refs.append(Reference.of(policy.portal_host))
        self._references = tuple(r for r in dict.fromkeys(refs) if r is not None)
        names = {compact_name(n) for n in policy.org_names}
        self._names = tuple(sorted(n for n in names if n))
        self._links = LinkCheck(policy.org_domains, policy.portal_host, self._references,
                                self._names)  # fmt: skip

    def check(self, raw: bytes, recipient: str | None = None) -> Report:
        """Never raises: a failure inside becomes verdict ``errored``."""
        if len(raw) > self.policy.max_size:
            return _errored(
                f"message is {_size(len(raw))}, larger than the {_size(self.policy.max_size)} "
                "the check reads"
            )
        try:
            findings = by_severity(list(dict.fromkeys(self._findings(raw, recipient))))
            return Report(decide(findings), findings)
        except RecursionError:
            return _errored("message nested too deeply to read")
        except Exception as exc:  # the contract: errored, never an exception
            # The type and where, never the text: an exception's message can quote the mail.
            where = traceback.extract_tb(exc.__traceback__)[-1:]
            log.warning(
                "check_failed",
                error=type(exc).__name__,
                at=f"{where[0].filename}:{where[0].lineno}" if where else None,
            )
            return _errored(f"internal error while checking ({type(exc).__name__})")

    def _findings(self, raw: bytes, recipient: str | None) -> list[Finding]:
        policy = self.policy
        parsed = mime.parse(raw)
        findings: list[Finding] = []
        if parsed.limit:
            findings.append(Finding("mime-too-complex", parsed.limit))

        senders = parsed.addresses("from")
        from_fields = parsed.values("from")
        if not senders:
            shown = mime.decode_words(from_fields[0]) if from_fields else "no From header"
            findings.append(Finding("from-missing", cut(shown)))
        if len(from_fields) > 1 or len(senders) > 1:
            findings.append(
                Finding("multiple-from", cut(", ".join(a.addr for a in senders) or "From"))
            )
        from_domain = unicode_host(senders[0].domain) if senders else None

        # Authentication first: whether the org's From is proven decides how the rest reads.
        signed = bool(parsed.values("dkim-signature"))
        signatures = check_dkim(
            raw, signed, from_domain, policy.org_domains, policy.dkim_keys, policy.dkim_dns
        )
        results = check_auth_results(
            parsed.headers, from_domain, policy.org_domains, policy.trusted_authserv_ids
        )
        authenticated = signatures.org_authenticated or results.org_authenticated

        claims = False
        for sender in senders:
            domain = unicode_host(sender.domain)
            if org_domain_of(domain, policy.org_domains):
                claims = True
                if not authenticated:
                    findings.append(Finding("from-org-unauthenticated", cut(sender.addr)))
                continue
            reason = lookalike(domain, self._references, self._names)
            if reason:
                claims = True
                findings.append(Finding("from-lookalike", cut(f"{sender.addr}: {reason}")))
            named = claims_org(sender.name, policy.org_domains, self._references, self._names)
            if named:
                claims = True
                findings.append(
                    Finding("display-name-claims-org", cut(f'"{sender.name}" <{sender.addr}>'))
                )
        if senders and not claims:
            findings.append(Finding("not-from-org", cut(senders[0].addr)))

        findings.extend(self._return_addresses(parsed, from_domain, claims))
        findings.extend(signatures.findings)
        findings.extend(results.findings)

        links: list[Link] = []
        forms = []
        texts = list(parsed.plain)
        for html in parsed.html:
            links.extend(Link(a.href, a.text) for a in html.anchors)
            forms.extend(html.forms)
            texts.append(html.text)
        for text in texts:
            links.extend(Link(url, None) for url in urls_in_text(text))
        sender_site = registrable(from_domain) if from_domain and not claims else None
        findings.extend(self._links.links(links, sender_site))
        findings.extend(self._links.forms(forms))

        asked: list[str] = []
        for text in texts:
            for phrase in requests_for_secrets(text):
                if phrase.lower() not in (p.lower() for p in asked):
                    asked.append(phrase)
        findings.extend(Finding("asks-for-secrets", cut(f'"{p}"')) for p in asked[:3])

        if recipient is not None:
            findings.extend(_addressed(parsed, recipient))
        return findings

    def _return_addresses(
        self, parsed: mime.Parsed, from_domain: str | None, claims: bool
    ) -> list[Finding]:
        if from_domain is None:
            return []
        found: list[Finding] = []
        org = self.policy.org_domains
        from_org = org_domain_of(from_domain, org)
        for reply in parsed.addresses("reply-to"):
            domain = unicode_host(reply.domain)
            if registrable(domain) == registrable(from_domain):
                continue
            if from_org and org_domain_of(domain, org):
                continue  # from one organisation domain to another
            code = "reply-to-leaves-org" if claims else "reply-to-elsewhere"
            found.append(Finding(code, cut(f"Reply-To {reply.addr}, From domain {from_domain}")))
        for path in parsed.addresses("return-path")[:1]:
            domain = unicode_host(path.domain)
            same = registrable(domain) == registrable(from_domain)
            if not same and not (from_org and org_domain_of(domain, org)):
                found.append(
                    Finding(
                        "return-path-elsewhere",
                        cut(f"Return-Path {path.addr}, From domain {from_domain}"),
                    )
                )
        return found


_RECIPIENT_FIELDS = ("to", "cc", "delivered-to", "x-original-to")


def _addressed(parsed: mime.Parsed, recipient: str) -> list[Finding]:
    wanted = recipient.strip().strip("<>").lower()
    named = [a.addr.lower() for name in _RECIPIENT_FIELDS for a in parsed.addresses(name)]
    if wanted in named:
        return []
    shown = ", ".join(dict.fromkeys(named)) or "no recipient named"
    return [Finding("not-addressed-to-you", cut(f"{recipient} not among: {shown}"))]


def _errored(reason: str) -> Report:
    return Report("errored", (Finding("check-error", reason),))


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024**2:
        return f"{size / 1024:.0f} KiB"
    mib = size / 1024**2
    return f"{mib:.0f} MiB" if mib >= 10 or mib == int(mib) else f"{mib:.1f} MiB"
