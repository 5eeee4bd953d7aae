"""Which TLS a recipient domain's copy of message content needs, layer by layer.

Levels are ordered like Postfix's ``smtp_tls_security_level``, but the floor is ``encrypt``:
there is no level that lets content travel in plaintext. ``portal`` means "do not try at all".

Precedence, as ordered policy layers (the first that applies to an MX host decides for it):

1. **Local override** (``[delivery.domains]``, then the console's domain policies): ``portal``
   sends the copy to the portal at once; ``encrypt``/``verify`` is the level for every MX, and
   DANE and MTA-STS are not consulted. The override wins even over a DANE record that the peer
   would fail: it is a reviewed, local decision (issue 6: "the portal override still wins").
2. **DANE** (RFC 7672), when ``[delivery] dane`` is on, the resolver's AD bit is trusted and the
   MX RRset validated: for each MX host whose addresses validated, the TLSA RRset of
   ``_25._tcp.<mx>`` decides. A failed or bogus lookup defers that host (never skipped, never a
   weaker level); usable records authorise only a session whose chain ``check_chain`` accepts
   (after STARTTLS, before MAIL FROM); a secure RRset without usable records means TLS without
   authentication (``encrypt``); no TLSA, or no DNSSEC: the next layer decides for that host.
3. **MTA-STS** (RFC 8461), when ``[delivery] mta_sts`` is on, for hosts DANE does not govern:
   ``enforce`` admits only hosts the policy lists, with PKIX validation for the MX name
   (``verify``); ``testing`` leaves the decision to the default and reports what ``enforce``
   would have refused (TLS-RPT); a failed fetch without a valid cached policy is no policy.
   MTA-STS never overrides a failing DANE check: a host DANE governs never reaches this layer.
4. **Default**: ``default_tls``. A default of ``portal`` connects to no host that DANE or
   MTA-STS did not authorise.

Each usable MX host carries a `Requirement`: the handshake level, the live check to run on the
session, the layer that authorised it (recorded as the attempt's ``tls_policy``) and what
TLS-RPT counts for it. A host no layer admits carries a `Refusal` saying whether that is a
policy failure (the copy goes to the portal unless another host takes it) or a deferral.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Literal

from sigillo.config import DeliverySettings, TLSLevel
from sigillo.gateway.dane import TLSA, DaneCheck, check_chain, lookup_tlsa
from sigillo.gateway.tlsrpt import SUCCESS, PolicyType, SessionResult
from sigillo.policies import nearest

if TYPE_CHECKING:
    from sigillo.gateway.dnssec import SecureResolver
    from sigillo.gateway.mtasts import MtaSts, StsPolicy, StsState
    from sigillo.gateway.mx import MXHost, MXResult

DANE_PORT = 25
"""TLSA records are published for the SMTP port (RFC 7672 section 2.2.2), whatever port the
tests' ``mx_port`` points at."""


class Level(IntEnum):
    PORTAL = 0
    """Never connect; the copy goes to the portal."""
    ENCRYPT = 1
    """STARTTLS required, TLS >= minimum version, any certificate."""
    VERIFY = 2
    """STARTTLS required, TLS >= minimum version, chain valid and name matching the MX host."""

    @classmethod
    def parse(cls, name: TLSLevel) -> Level:
        return cls[name.upper()]

    @property
    def label(self) -> TLSLevel:
        name: TLSLevel = self.name.lower()  # type: ignore[assignment]
        return name


@dataclass(frozen=True)
class Policy:
    domain: str
    level: Level
    source: str
    """What decided the level: ``default`` or the matching ``[delivery.domains]`` key."""

    @property
    def is_override(self) -> bool:
        return self.source != "default"


def policy_for(
    domain: str, settings: DeliverySettings, console: Mapping[str, TLSLevel] | None = None
) -> Policy:
    """The config file's ``[delivery.domains]`` first, then the console's domain policies,
    then ``default_tls``; within each, the nearest match (see ``policies.nearest``)."""
    domain = domain.lower().rstrip(".")
    key = nearest(domain, settings.domains)
    if key is not None:
        return Policy(domain, Level.parse(settings.domains[key]), key)
    key = nearest(domain, console or {})
    if console and key is not None:
        return Policy(domain, Level.parse(console[key]), f"console:{key}")
    return Policy(domain, Level.parse(settings.default_tls), "default")


_MIN_VERSION = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def client_context(level: Level, settings: DeliverySettings) -> ssl.SSLContext:
    """A fresh client context for one connection at ``level``.

    ``encrypt`` still refuses anything below the minimum version; it only gives up on
    authenticating the peer, as the domain's policy allows.
    """
    if level is Level.PORTAL:
        raise ValueError("the portal level never opens a connection")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _MIN_VERSION[settings.min_tls_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if level is Level.VERIFY:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
        if settings.ca_file:
            ctx.load_verify_locations(cafile=settings.ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def verification_label(level: Level, settings: DeliverySettings) -> str:
    if level is Level.VERIFY:
        return "ca_file" if settings.ca_file else "system"
    return "none (encrypt)"


# -- layers ------------------------------------------------------------------------------

LayerName = Literal["override", "dane", "mta-sts", "default"]
Authority = Literal["dane", "mta-sts", "verify", "encrypt"]
AUTHENTICATED: frozenset[str] = frozenset({"dane", "mta-sts"})
"""Authorities a REQUIRETLS message may travel under (RFC 8689 section 4.2.1)."""


@dataclass(frozen=True)
class Report:
    """What TLS-RPT counts a session under (RFC 8460 section 4.4)."""

    policy_type: PolicyType = "no-policy-found"
    policy_strings: tuple[str, ...] = ()

    def result(self, domain: str, mx: str, ip: str, result_type: str) -> SessionResult:
        return SessionResult(domain, self.policy_type, self.policy_strings, mx, ip, result_type)


@dataclass(frozen=True)
class Requirement:
    """What a session with one MX host must be, and who says so."""

    level: Level
    """ENCRYPT or VERIFY: what the handshake itself enforces. A DANE session's handshake is
    ENCRYPT-like; ``tlsa`` then authenticates the peer."""
    authority: Authority
    layer: LayerName
    tlsa: tuple[TLSA, ...] = ()
    """Usable TLSA records: the peer's chain must match one, else the host is not used."""
    names: tuple[str, ...] = ()
    """Names a DANE-TA certificate may carry: the MX host and the next-hop domain."""
    report: Report = Report()
    sts_testing: StsPolicy | None = None
    """An MTA-STS policy in ``testing`` mode: reported against, never enforced."""

    @property
    def authenticated(self) -> bool:
        return self.authority in AUTHENTICATED

    @property
    def cache_tag(self) -> str:
        """Part of the connection cache key: a session authorised under one requirement is
        never handed out under another (say a DANE-checked one for a plain ``encrypt``)."""
        pins = ",".join(str(r) for r in self.tlsa)
        return f"{self.layer}/{self.authority}/{self.level.label}/{pins}/{','.join(self.names)}"

    def live_check(self, chain: Sequence[bytes], now: datetime) -> DaneCheck | None:
        """The check of the established session, before MAIL FROM: None when the handshake
        already enforced everything (``encrypt``, or PKIX for ``verify``/``mta-sts``)."""
        if not self.tlsa:
            return None
        return check_chain(chain, self.tlsa, self.names, now)

    def verification(self, check: DaneCheck | None, settings: DeliverySettings) -> str:
        if check is not None and check.matched is not None:
            return f"dane: {check.matched}"[:64]
        if self.tlsa:
            return "dane (not yet checked)"
        if self.layer == "dane":
            return "none (TLSA unusable)"
        return verification_label(self.level, settings)


@dataclass(frozen=True)
class Refusal:
    """An MX host no layer lets content reach now."""

    kind: Literal["policy", "deferred"]
    """``policy``: the host fails the domain's policy (the portal, unless another host takes
    the copy); ``deferred``: its policy could not be learnt now (retry)."""
    layer: LayerName
    reason: str
    report: Report | None = None
    result_type: str = ""
    """What TLS-RPT counts for the refused host (with ``report``), if anything."""


Verdict = Requirement | Refusal


@dataclass(frozen=True)
class Finding:
    layer: LayerName
    applies: bool
    finding: Any
    """Plain data (str, list, dict) for records and ``sigillo probe``."""

    def record(self) -> dict[str, Any]:
        return {"layer": self.layer, "applies": self.applies, "finding": self.finding}


@dataclass
class Plan:
    """The layers' decision for one domain's MX hosts, before any connection."""

    hosts: list[tuple[MXHost, Verdict]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    reports: list[SessionResult] = field(default_factory=list)
    """TLS-RPT results known before any session (a policy fetch failed, TLSA bogus)."""


def overridden(policy: Policy) -> list[Finding]:
    """The findings when a local override decides: the other layers are not consulted."""
    why = f"not consulted: override {policy.source}"
    return [
        Finding("override", True, f"{policy.level.label} ({policy.source})"),
        Finding("dane", False, why),
        Finding("mta-sts", False, why),
        Finding("default", False, why),
    ]


def tls_result_type(kind: str, detail: str) -> str:
    """The RFC 8460 result type of a ``TLSFailure`` (``smtpclient``)."""
    if kind in ("no STARTTLS", "STARTTLS refused"):
        return "starttls-not-supported"
    if kind == "certificate":
        text = detail.lower()
        if "hostname mismatch" in text or "ip address mismatch" in text:
            return "certificate-host-mismatch"
        if "expired" in text or "not yet valid" in text:
            return "certificate-expired"
        if "self-signed" in text or "self signed" in text or "issuer" in text:
            return "certificate-not-trusted"
    return "validation-failure"


def _sts_strings(policy: StsPolicy) -> tuple[str, ...]:
    return tuple(line.strip() for line in policy.text.splitlines() if line.strip())


class Layers:
    """The ordered layers for one delivery: override, DANE, MTA-STS, default."""

    def __init__(
        self,
        settings: DeliverySettings,
        secure: SecureResolver | None = None,
        mtasts: MtaSts | None = None,
    ) -> None:
        self.settings = settings
        self.secure = secure
        self.mtasts = mtasts

    def dane_enabled(self) -> tuple[bool, str]:
        if not self.settings.dane:
            return False, "off ([delivery] dane = false)"
        if self.secure is None:
            return False, "no DNSSEC-aware resolver"
        if not self.secure.trust_ad:
            return False, "the resolver's AD bit is not trusted ([dns] trust_ad)"
        return True, ""

    async def plan(self, domain: str, policy: Policy, mx: MXResult) -> Plan:
        plan = Plan()
        if policy.is_override:
            plan.findings = overridden(policy)
            requirement = Requirement(policy.level, _by_level(policy.level), "override")
            plan.hosts = [(host, requirement) for host in mx.hosts]
            return plan
        plan.findings.append(Finding("override", False, "none"))

        dane = await self._dane(domain, mx, plan)
        sts = await self._sts(domain, plan)
        default = Level.parse(self.settings.default_tls)
        plan.findings.append(Finding("default", True, default.label))
        for host in mx.hosts:
            verdict = dane.get(host.name) or self._sts_verdict(host, sts)
            plan.hosts.append((host, verdict or self._default(default, sts)))
        return plan

    async def _dane(self, domain: str, mx: MXResult, plan: Plan) -> dict[str, Verdict]:
        enabled, why = self.dane_enabled()
        if enabled and not mx.secure:
            enabled, why = False, "the MX RRset is not DNSSEC-validated"
        if not enabled or self.secure is None:
            plan.findings.append(Finding("dane", False, why))
            return {}
        verdicts: dict[str, Verdict] = {}
        per_host: dict[str, Any] = {}
        for host in mx.hosts:
            if not host.secure:
                per_host[host.name] = {"state": "insecure", "why": "addresses not validated"}
                continue
            found = await lookup_tlsa(self.secure, host.name, DANE_PORT)
            strings = tuple(str(r) for r in found.records)
            report = Report("tlsa", strings)
            per_host[host.name] = {
                "state": found.state,
                "tlsa": list(strings),
                "usable": len(found.usable),
                "problems": list(found.problems),
            }
            if found.state == "temporary":
                why = "; ".join(found.problems) or "TLSA lookup failed"
                verdicts[host.name] = Refusal(
                    "deferred", "dane", f"TLSA lookup failed: {why}", report, "dnssec-invalid"
                )
            elif found.state == "secure" and found.usable:
                verdicts[host.name] = Requirement(
                    Level.ENCRYPT,
                    "dane",
                    "dane",
                    tlsa=found.usable,
                    names=(host.name, domain),
                    report=report,
                )
            elif found.state == "secure":
                # Published but none usable: TLS is still mandatory, unauthenticated
                # (RFC 7672 section 2.2).
                verdicts[host.name] = Requirement(Level.ENCRYPT, "encrypt", "dane", report=report)
        plan.findings.append(Finding("dane", bool(verdicts), per_host))
        return verdicts

    async def _sts(self, domain: str, plan: Plan) -> StsState | None:
        if not self.settings.mta_sts or self.mtasts is None:
            why = "off ([delivery] mta_sts = false)" if not self.settings.mta_sts else "no cache"
            plan.findings.append(Finding("mta-sts", False, why))
            return None
        state = await self.mtasts.policy(domain)
        if state.result_type is not None:
            # Counted whether or not a cached policy still applies: the domain learns that
            # its policy host failed.
            plan.reports.append(SessionResult(domain, "sts", (), "", "", state.result_type))
        policy = state.policy
        applies = policy is not None and policy.mode != "none"
        finding: dict[str, Any] = {
            "mode": policy.mode if policy else None,
            "mx": list(policy.mx) if policy else [],
            "max_age": policy.max_age if policy else None,
            "fresh": state.fresh,
            "error": state.error,
        }
        plan.findings.append(Finding("mta-sts", applies, finding))
        return state

    def _sts_verdict(self, host: MXHost, sts: StsState | None) -> Verdict | None:
        policy = sts.policy if sts else None
        if policy is None or policy.mode != "enforce":
            return None
        report = Report("sts", _sts_strings(policy))
        if not policy.matches(host.name):
            why = f"MX {host.name} is not in the MTA-STS policy"
            return Refusal("policy", "mta-sts", why, report, "validation-failure")
        return Requirement(Level.VERIFY, "mta-sts", "mta-sts", report=report)

    def _default(self, default: Level, sts: StsState | None) -> Verdict:
        policy = sts.policy if sts else None
        testing = policy if policy is not None and policy.mode == "testing" else None
        if default is Level.PORTAL:
            return Refusal("policy", "default", "default_tls is portal")
        report = Report("sts", _sts_strings(testing)) if testing else Report()
        return Requirement(
            default, _by_level(default), "default", report=report, sts_testing=testing
        )


def _by_level(level: Level) -> Authority:
    return "verify" if level is Level.VERIFY else "encrypt"


def session_result(
    requirement: Requirement, domain: str, mx_host: str, ip: str, result_type: str
) -> SessionResult:
    """The TLS-RPT count of one session under ``requirement`` (``result_type``: what the
    session itself came to).

    Under an MTA-STS ``testing`` policy the session met the default level; what counts is
    what ``enforce`` would have made of it (RFC 8461 section 5). An MX outside the policy
    would have been refused; at ``verify`` the handshake checked the certificate for the MX
    name as ``enforce`` does; at ``encrypt`` nothing did, so no STS verdict is claimed and the
    session counts as without policy.
    """
    policy = requirement.sts_testing
    if policy is not None and result_type == SUCCESS:
        if not policy.matches(mx_host):
            result_type = "validation-failure"
        elif requirement.level is not Level.VERIFY:
            return Report().result(domain, mx_host, ip, result_type)
    return requirement.report.result(domain, mx_host, ip, result_type)
