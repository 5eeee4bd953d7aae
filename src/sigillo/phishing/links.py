"""Links and forms: where they really lead, compared with what they show and with the portal.

URLs are read as a browser reads them (WHATWG): tabs and newlines dropped, a backslash is a
slash in http(s), a host whose last label is a number is an IPv4 address in any of its
integer spellings (3232235777, 0xc0a80101, 0300.0250.1.1).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from sigillo.phishing.domains import (
    Reference,
    is_ip,
    lookalike,
    org_domain_of,
    public_suffix,
    registrable,
    under,
    unicode_host,
)
from sigillo.phishing.findings import Finding, cut
from sigillo.phishing.htmltext import Form

SHORTENERS = frozenset(
    {
        "bit.ly", "bitly.com", "tinyurl.com", "t.co", "goo.gl", "ow.ly", "is.gd", "v.gd",
        "buff.ly", "rebrand.ly", "cutt.ly", "shorturl.at", "rb.gy", "t.ly", "tiny.cc",
        "bit.do", "s.id", "lnkd.in", "soo.gd", "clck.ru", "shorte.st", "adf.ly", "bl.ink",
        "qrco.de", "tr.im", "x.co", "tiny.one", "u.to", "shorturl.com", "urlz.fr", "chilp.it",
        "2.gy", "surl.li", "t2m.io", "short.gy", "gg.gg", "trib.al", "dlvr.it", "ift.tt",
    }
)  # fmt: skip
"""Well-known public shorteners: the link's text cannot tell where they lead."""

_WEB = ("http", "https", "ftp")
_ACTIVE = ("javascript", "data", "vbscript")
_IGNORED_CONTROL = re.compile(r"[\t\n\r]")
_NUMBER = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_URL_IN_TEXT = re.compile(r"\b(?:https?|ftp)://[^\s<>\"'`]+", re.IGNORECASE)
_HOST_IN_TEXT = re.compile(
    r"(?<![@\w.-])(?:(?:https?|ftp)://)?((?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,63})(?![\w@-])"
)
_CREDENTIAL = re.compile(
    r"(?<![^\W_])(?:log[ _-]?in|log[ _-]?on|sign[ _-]?in|acced\w*|accesso|verific\w*"
    r"|verify|verification|validate|convalid\w*|password|passwd|pwd|reset|unlock|sblocc\w*"
    r"|riattiv\w*|reactivate|credenziali|credentials|authenticate|autentica\w*|authentication"
    r"|webscr)(?![^\W_])",
    re.IGNORECASE,
)
"""Words inviting to sign in or prove an identity, in a link's text or path."""


@dataclass(frozen=True)
class Link:
    href: str
    text: str | None
    """The anchor's visible text; None for a URL written in plain text."""


@dataclass(frozen=True)
class _HostFacts:
    ip: bool = False
    lookalike: str | None = None
    shortener: bool = False


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    """Lower-case, percent-decoded, punycode decoded; may be an IP literal."""
    path: str
    userinfo: bool


def target(href: str) -> Target | None:
    """Where ``href`` leads, for web and active schemes; None for the rest (mailto, tel, #...)."""
    url = _IGNORED_CONTROL.sub("", href).strip(" \x00\x0b\x0c")
    scheme, colon, rest = url.partition(":")
    scheme = scheme.lower()
    if not colon or not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
        return None
    if scheme in _ACTIVE:
        return Target(scheme, "", rest[:80], False)
    if scheme not in _WEB:
        return None
    rest = rest.replace("\\", "/")
    # Browsers skip any number of slashes after the scheme of a special URL.
    rest = "//" + rest.lstrip("/")
    try:
        parts = urlsplit(f"{scheme}:{rest}")
        netloc = parts.netloc
        host = parts.hostname or ""
    except ValueError:
        netloc = rest[2:].split("/", 1)[0]
        host = netloc.rpartition("@")[2].lower()
        parts = None
    host = unicode_host(unquote(host))
    path = unquote(f"{parts.path}?{parts.query}") if parts else ""
    return Target(scheme, host, path, "@" in netloc)


def ip_host(host: str) -> bool:
    if is_ip(host):
        return True
    labels = host.rstrip(".").split(".")
    return bool(labels) and _NUMBER.fullmatch(labels[-1]) is not None


def urls_in_text(text: str) -> Iterator[str]:
    for match in _URL_IN_TEXT.finditer(text):
        yield match.group(0).rstrip(".,;:!?)]}")


def hosts_in_text(text: str, known: tuple[str, ...]) -> list[str]:
    """Hosts a link's text shows: under a public suffix (so not "report.pdf"), or a known one."""
    found = []
    for match in _HOST_IN_TEXT.finditer(text.lower()):
        host = unicode_host(match.group(1))
        if public_suffix(host) or any(under(host, domain) for domain in known):
            found.append(host)
    return found


class LinkCheck:
    """Findings for the links and forms of one message."""

    MAX_PER_CODE = 5

    def __init__(
        self,
        org_domains: tuple[str, ...],
        portal_host: str,
        references: tuple[Reference, ...],
        names: tuple[str, ...],
    ) -> None:
        self.org_domains = org_domains
        self.portal_host = portal_host
        self.references = references
        self.names = names
        self.known = (*org_domains, portal_host) if portal_host else org_domains

    def ours(self, host: str) -> bool:
        return bool(self.portal_host and host == self.portal_host) or (
            org_domain_of(host, self.org_domains) is not None
        )

    def links(self, links: list[Link], sender_site: str | None = None) -> list[Finding]:
        """``sender_site``: the registrable domain of a sender that does not claim to be the
        organisation; its own sign-in pages are where its password links belong."""
        found: list[Finding] = []
        hosts: dict[str, _HostFacts] = {}
        for link in dict.fromkeys(links):
            found.extend(self._link(link, hosts, sender_site))
        return _capped(found, self.MAX_PER_CODE)

    def _host(self, host: str) -> _HostFacts:
        if ip_host(host):
            return _HostFacts(ip=True)
        if self.ours(host):
            return _HostFacts()
        return _HostFacts(
            lookalike=lookalike(host, self.references, self.names),
            shortener=host in SHORTENERS or registrable(host) in SHORTENERS,
        )

    def _link(
        self, link: Link, hosts: dict[str, _HostFacts], sender_site: str | None
    ) -> Iterator[Finding]:
        where = target(link.href)
        if where is None:
            return
        shown = cut(link.href)
        if where.scheme in _ACTIVE:
            yield Finding("link-unsafe-scheme", shown)
            return
        host = where.host
        if where.userinfo:
            yield Finding("link-userinfo", shown)
        if where.scheme in ("http", "ftp"):
            yield Finding("link-http", shown)
        if not host:
            return
        facts = hosts.get(host)
        if facts is None:
            facts = hosts[host] = self._host(host)
        if facts.ip:
            yield Finding("link-ip-host", shown)
        if facts.lookalike:
            yield Finding("link-lookalike", cut(f"{host}: {facts.lookalike}"))
        if facts.shortener:
            yield Finding("link-shortener", shown)
        if link.text and "." in link.text:
            for text_host in hosts_in_text(link.text, self.known):
                if registrable(text_host) != registrable(host):
                    yield Finding(
                        "link-text-mismatch", cut(f'shows "{text_host}", leads to {host}')
                    )
                    break
        if host != self.portal_host and not (sender_site and registrable(host) == sender_site):
            words = _CREDENTIAL.search(link.text or "") or _CREDENTIAL.search(where.path)
            if words:
                yield Finding("credential-link-elsewhere", cut(f'"{words.group(0)}" -> {shown}'))

    def forms(self, forms: list[Form]) -> list[Finding]:
        found: list[Finding] = []
        for form in forms:
            action = (form.action or "").strip()
            where = target(action) if action else None
            shown = cut(action) if action else "(no action)"
            if form.has_password:
                found.append(Finding("form-password", shown))
            if where is not None and (where.scheme in _ACTIVE or where.host != self.portal_host):
                found.append(Finding("form-action-elsewhere", shown))
            elif not form.has_password:
                found.append(Finding("form-in-message", shown))
        return _capped(found, self.MAX_PER_CODE)


def _capped(findings: list[Finding], limit: int) -> list[Finding]:
    """At most ``limit`` findings per code: a newsletter's hundred http links say it once."""
    counts: dict[str, int] = {}
    kept: list[Finding] = []
    for finding in dict.fromkeys(findings):
        counts[finding.code] = counts.get(finding.code, 0) + 1
        if counts[finding.code] <= limit:
            kept.append(finding)
    return kept
