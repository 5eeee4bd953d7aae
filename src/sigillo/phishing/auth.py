"""Who vouches for the message: its DKIM signatures, and Authentication-Results written by the
organisation's own border servers.

A DKIM key comes from the policy's known keys first (sigillo's own and the organisation's, so
its mail verifies offline), then from DNS only when the policy allows it. A signature whose key
is not known is "unverifiable", never passing.

Authentication-Results are believed only when their authserv-id is trusted and they sit in the
topmost trace block: above the first Received field, or above the second when the first is
the trusted server's own. A border server removes forged copies bearing its id on arrival
(RFC 8601 section 5), so any copy further down was there before the message reached us and
may have been written by anyone.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import dkim
from dkim.canonicalization import (
    CanonicalizationPolicy,
)

from sigillo.phishing.domains import org_domain_of, registrable
from sigillo.phishing.findings import Finding, cut

MAX_SIGNATURES = 8
"""DKIM signatures verified per message; more are ignored (each may cost a DNS query)."""

_QUIET = logging.getLogger("sigillo.phishing.dkim")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


@dataclass
class AuthResult:
    findings: list[Finding] = field(default_factory=list)
    org_authenticated: bool = False


def crlf(raw: bytes) -> bytes:
    """Line endings as sent over SMTP: pasted sources arrive with bare LF."""
    return re.sub(rb"\r?\n", b"\r\n", raw)


def check_dkim(
    raw: bytes,
    signed: bool,
    from_domain: str | None,
    org_domains: tuple[str, ...],
    keys: Mapping[str, bytes],
    dns: Callable[[str], bytes | None] | None,
) -> AuthResult:
    """``signed``: whether the message has a DKIM-Signature field at all (as parsed)."""
    result = AuthResult()
    if not signed:
        result.findings.append(Finding("dkim-missing", "no DKIM-Signature header"))
        return result
    try:
        verifier = dkim.DKIM(crlf(raw), logger=_QUIET)
    except dkim.DKIMException as exc:
        result.findings.append(Finding("dkim-fail", cut(f"message unreadable for DKIM: {exc}")))
        return result
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    if count == 0:
        result.findings.append(Finding("dkim-missing", "no DKIM-Signature header"))
        return result
    from_org = org_domain_of(from_domain, org_domains) if from_domain else None
    lookup = _KeyLookup(keys, dns)
    for idx in range(min(count, MAX_SIGNATURES)):
        lookup.found = None
        verifier.signature_fields = {}
        error = ""
        try:
            valid = bool(verifier.verify(idx=idx, dnsfunc=lookup))
        except dkim.DKIMException as exc:
            valid, error = False, str(exc)
        sig: dict[bytes, bytes] = verifier.signature_fields or {}
        domain = sig.get(b"d", b"").decode("ascii", "replace").lower().rstrip(".")
        selector = sig.get(b"s", b"").decode("ascii", "replace")
        shown = cut(f"d={domain} s={selector}", 120)  # both from the (hostile) signature
        if lookup.found is False:
            result.findings.append(Finding("dkim-unverifiable", f"{shown}: key not known"))
            continue
        if not valid:
            reason = error or "signature does not match the message"
            result.findings.append(Finding("dkim-fail", cut(f"{shown}: {reason}")))
            continue
        if b"from" not in getattr(verifier, "include_headers", ()):
            result.findings.append(Finding("dkim-other-domain", f"{shown}: From is not signed"))
            continue
        if b"l" in sig:
            body = _canonical_body_length(verifier.body, sig)
            if int(sig[b"l"]) < body:
                result.findings.append(
                    Finding("dkim-partial-body", f"{shown}: signs {int(sig[b'l'])} of {body} bytes")
                )
                continue
        signer_org = org_domain_of(domain, org_domains)
        if from_org is not None and signer_org == from_org:
            result.org_authenticated = True
            result.findings.append(Finding("org-authenticated", f"DKIM {shown}"))
        elif from_domain is None or registrable(domain) != registrable(from_domain):
            result.findings.append(
                Finding("dkim-other-domain", f"{shown}, sender domain {from_domain or '-'}")
            )
    return result


class _KeyLookup:
    """dkimpy's ``dnsfunc``: known keys first, DNS when allowed; remembers whether it found one."""

    def __init__(self, keys: Mapping[str, bytes], dns: Callable[[str], bytes | None] | None):
        self.keys = keys
        self.dns = dns
        self.found: bool | None = None
        """None until asked (a malformed signature fails before its key is looked up)."""

    def __call__(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        text = text.rstrip(".").lower()
        key = self.keys.get(text)
        if key is None and self.dns is not None:
            key = self.dns(text)
        self.found = key is not None
        return key


def _canonical_body_length(body: bytes, sig: Mapping[bytes, bytes]) -> int:
    policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
    return len(policy.canonicalize_body(body))


@dataclass(frozen=True)
class AuthResults:
    authserv_id: str
    results: tuple[tuple[str, str, Mapping[str, str]], ...]
    """(method, result, properties such as ``header.from``), all lower-case but the values."""


def parse_auth_results(value: str) -> AuthResults:
    """An Authentication-Results value (RFC 8601), comments removed; tolerant of odd input."""
    segments = _strip_comments(value).split(";")
    head = segments[0].split()
    authserv_id = head[0].lower() if head else ""
    results = []
    for segment in segments[1:]:
        pairs = re.findall(r'([^\s=]+)\s*=\s*("[^"]*"|[^\s"]+)', segment)
        if not pairs:
            continue
        (method, outcome), *props = pairs
        results.append(
            (
                method.split("/")[0].lower(),
                outcome.strip('"').lower(),
                {k.lower(): v.strip('"') for k, v in props},
            )
        )
    return AuthResults(authserv_id, tuple(results))


def _strip_comments(value: str) -> str:
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for char in value:
        if escaped:
            escaped = False
            if not depth:
                out.append(char)
            continue
        if char == "\\":
            escaped = True
            if not depth:
                out.append(char)
        elif char == '"' and not depth:
            quoted = not quoted
            out.append(char)
        elif char == "(" and not quoted:
            depth += 1
        elif char == ")" and not quoted and depth:
            depth -= 1
        elif not depth:
            out.append(char)
    return "".join(out)


_RECEIVED_BY = re.compile(r"(?<![^\W_])by\s+([^\s;()\[\]]+)", re.IGNORECASE)


def _top_block_end(headers: list[tuple[str, str]], trusted_ids: set[str]) -> int:
    """Where the topmost trace block ends: at the first Received field, or at the second when
    the first was added by a trusted server itself (some MTAs put their milters' results just
    below their own Received). Results further down passed through servers we do not trust:
    mail to a recipient's own provider never crossed the organisation's border, so a result
    in the organisation's name there was written by the sender."""
    received = [i for i, (name, _) in enumerate(headers) if name == "received"]
    if not received:
        return len(headers)
    by = _RECEIVED_BY.search(_strip_comments(headers[received[0]][1]))
    host = by.group(1).lower().rstrip(".") if by else ""
    if host and any(host == t or host.endswith("." + t) for t in trusted_ids):
        return received[1] if len(received) > 1 else len(headers)
    return received[0]


def check_auth_results(
    headers: list[tuple[str, str]],
    from_domain: str | None,
    org_domains: tuple[str, ...],
    trusted: tuple[str, ...],
) -> AuthResult:
    result = AuthResult()
    trusted_ids = {t.lower() for t in trusted}
    top_end = _top_block_end(headers, trusted_ids)
    from_org = org_domain_of(from_domain, org_domains) if from_domain else None
    for index, (name, value) in enumerate(headers):
        if name != "authentication-results":
            continue
        parsed = parse_auth_results(value)
        shown = parsed.authserv_id or "(no authserv-id)"
        if parsed.authserv_id not in trusted_ids:
            result.findings.append(Finding("auth-results-untrusted", cut(shown)))
            continue
        if index >= top_end:
            result.findings.append(
                Finding("auth-results-untrusted", cut(f"{shown}, below the newest trace block"))
            )
            continue
        for method, outcome, props in parsed.results:
            detail = " ".join(f"{k}={v}" for k, v in props.items())
            evidence = cut(f"{shown}: {method}={outcome} {detail}".strip())
            if method == "spf" and outcome in ("fail", "softfail"):
                result.findings.append(Finding("spf-fail", evidence))
            elif method == "dkim" and outcome == "fail":
                result.findings.append(Finding("dkim-fail", evidence))
            elif method == "dmarc" and outcome == "fail":
                result.findings.append(Finding("dmarc-fail", evidence))
            elif method == "dmarc" and outcome == "pass":
                claimed = props.get("header.from", "").lower().rstrip(".")
                if from_org is not None and claimed == from_domain:
                    result.org_authenticated = True
                    result.findings.append(Finding("org-authenticated", evidence))
    return result
