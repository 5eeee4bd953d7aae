"""Deliver one message's copies for one recipient domain: authorised TLS, or the portal.

This module is the only path that sends message content to the outside world. The policy
layers (``tlspolicy``: override > DANE > MTA-STS > default) give each MX host a requirement;
content is written to a socket only after STARTTLS succeeded with TLS >= the minimum version
and the session passed its requirement's checks (certificate, DANE match, REQUIRETLS offer),
which all run before MAIL FROM. A host that fails them is left (QUIT) for the next; when no
host took the copy, a policy failure anywhere sends it to the portal, and only lookups that
could not be made (DANE) or hosts that could not be reached defer it. No failure ever leads
to a weaker session.
"""

from __future__ import annotations

import enum
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import structlog

from sigillo.config import DeliverySettings, Settings, TLSLevel
from sigillo.gateway.connections import ConnectionCache
from sigillo.gateway.dane import dane_context, peer_chain
from sigillo.gateway.dnssec import SecureResolver
from sigillo.gateway.mtasts import MtaSts
from sigillo.gateway.mx import MXResolver
from sigillo.gateway.queue import utcnow
from sigillo.gateway.smtpclient import (
    Reply,
    Session,
    SessionError,
    TLSFailure,
    TLSInfo,
    TransactionResult,
)
from sigillo.gateway.tlspolicy import (
    Finding,
    Layers,
    Level,
    Policy,
    Refusal,
    Requirement,
    client_context,
    overridden,
    policy_for,
    session_result,
    tls_result_type,
)
from sigillo.gateway.tlsrpt import SUCCESS, SessionResult
from sigillo.store.db import Store

log = structlog.get_logger("sigillo.delivery")


class Outcome(enum.StrEnum):
    TLS = "tls"
    PORTAL = "portal"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


@dataclass(frozen=True)
class RecipientResult:
    recipient: str
    outcome: Outcome
    reason: str
    status: str
    """Enhanced status code for DSNs (``2.0.0``, ``5.1.1``, ``4.4.1`` ...)."""
    reply: Reply | None = None


@dataclass
class GroupResult:
    policy: Policy
    results: list[RecipientResult]
    mx_host: str | None = None
    mx_ip: str | None = None
    tls: TLSInfo | None = None
    trail: list[dict[str, str]] = field(default_factory=list)
    """Each MX address tried and what happened there, in order."""
    authority: str | None = None
    """The layer that authorised the session used (``dane``, ``mta-sts``, ``verify``,
    ``encrypt``): the attempt's ``tls_policy``."""
    findings: list[Finding] = field(default_factory=list)
    """Each policy layer's finding for the domain, in precedence order."""
    sessions: list[SessionResult] = field(default_factory=list)
    """What TLS-RPT counts for this attempt: each new session, each policy failure."""

    def layers(self) -> list[dict[str, Any]]:
        return [f.record() for f in self.findings]


class PolicyFailure(TLSFailure):
    """The session is up but fails its requirement's live check (DANE, REQUIRETLS)."""

    def __init__(self, kind: str, detail: str, result_type: str) -> None:
        super().__init__(kind, detail)
        self.result_type = result_type


def _all(
    recipients: Sequence[str],
    outcome: Outcome,
    reason: str,
    status: str,
    reply: Reply | None = None,
) -> list[RecipientResult]:
    return [RecipientResult(r, outcome, reason, status, reply) for r in recipients]


def _status(reply: Reply, default: str) -> str:
    first = reply.text.split(" ", 1)[0]
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] in "245":
        return first
    return default


def _from_reply(recipient: str, reply: Reply, tls_reason: str) -> RecipientResult:
    if 200 <= reply.code < 300:
        return RecipientResult(recipient, Outcome.TLS, tls_reason, "2.0.0", reply)
    # 503 "bad sequence of commands" blames our side of the dialogue, not the recipient:
    # retry rather than return the message to its sender.
    if 400 <= reply.code < 500 or reply.code == 503:
        return RecipientResult(
            recipient,
            Outcome.DEFERRED,
            f"temporary failure: {reply.line}",
            _status(reply, "4.0.0"),
            reply,
        )
    return RecipientResult(
        recipient, Outcome.BOUNCED, f"rejected: {reply.line}", _status(reply, "5.0.0"), reply
    )


def interpret(
    transaction: TransactionResult, recipients: Sequence[str], tls: TLSInfo
) -> list[RecipientResult]:
    """Map MAIL/RCPT/DATA replies to per-recipient outcomes."""
    tls_reason = f"delivered over {tls.version} ({'verified' if tls.verified else 'encrypted'})"
    if not 200 <= transaction.mail.code < 300:
        return [_from_reply(r, transaction.mail, tls_reason) for r in recipients]
    results = []
    for rcpt in recipients:
        reply = transaction.rcpt.get(rcpt)
        if reply is None:
            results.append(RecipientResult(rcpt, Outcome.DEFERRED, "no RCPT reply", "4.4.2"))
        elif not 200 <= reply.code < 300 or transaction.data is None:
            results.append(_from_reply(rcpt, reply, tls_reason))
        else:
            results.append(_from_reply(rcpt, transaction.data, tls_reason))
    return results


class Deliverer:
    def __init__(
        self,
        settings: DeliverySettings,
        resolver: MXResolver,
        helo: str,
        *,
        secure: SecureResolver | None = None,
        mtasts: MtaSts | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """``secure`` (the resolver ``resolver`` asks through) enables DANE, ``mtasts``
        MTA-STS; without them those layers report that they were not consulted."""
        self.settings = settings
        self.resolver = resolver
        self.helo = helo
        self.layers = Layers(settings, secure, mtasts)
        self.clock = clock
        self.connections = ConnectionCache()
        self._contexts: dict[tuple[Level, bool], ssl.SSLContext] = {}
        self.console: Mapping[str, TLSLevel] = {}
        """The staff console's TLS levels per domain (``DomainPolicies.tls()``); the config
        file's ``[delivery.domains]`` still wins. Replaced whole by the worker's refresh."""

    @classmethod
    def wired(cls, settings: Settings, store: Store) -> Deliverer:
        """The deliverer as the worker (and ``sigillo probe``) runs it: one DNSSEC-aware
        resolver for MX, TLSA and MTA-STS alike (the AD bit of the very answers used is what
        DANE relies on), MTA-STS policies cached in ``store``."""
        secure = SecureResolver(settings.dns)
        return cls(
            settings.delivery,
            MXResolver(settings.dns, secure=secure),
            settings.smtp.hostname,
            secure=secure,
            mtasts=MtaSts(store, secure, settings.delivery),
        )

    def policy(self, domain: str) -> Policy:
        return policy_for(domain, self.settings, self.console)

    def timed_out(self, domain: str, recipients: Sequence[str], seconds: float) -> GroupResult:
        reason = f"delivery attempt exceeded {seconds:.0f}s; will retry"
        return GroupResult(self.policy(domain), _all(recipients, Outcome.DEFERRED, reason, "4.4.7"))

    async def _connect(
        self, mx_name: str, ip: str, requirement: Requirement
    ) -> tuple[Session, TLSInfo]:
        """A new session that meets ``requirement``; raises SessionError or TLSFailure (a
        ``PolicyFailure`` when the live check refused an established session)."""
        session = Session(ip, self.settings.mx_port, self.helo, self.settings)
        await session.open()
        try:
            context = self._context(requirement)
            label = requirement.verification(None, self.settings)
            tls = await session.starttls(mx_name, context, label)
            if requirement.tlsa:
                chain = peer_chain(session.smtp.get_transport_info("ssl_object"))
                check = requirement.live_check(chain, self.clock())
                if check is None or not check.ok:
                    why = check.reason if check else "no check"
                    kind = check.result_type if check else "validation-failure"
                    raise PolicyFailure("dane", why, kind)
                # A DANE match authenticates the peer as PKIX would: verified TLS.
                verification = requirement.verification(check, self.settings)
                tls = replace(tls, verified=True, verification=verification)
                session.tls = tls
        except TLSFailure:
            await session.quit()
            raise
        return session, tls

    def _context(self, requirement: Requirement) -> ssl.SSLContext:
        # One context per kind: loading the trust store per connection is expensive.
        dane = bool(requirement.tlsa)
        key = (requirement.level, dane)
        if key not in self._contexts:
            self._contexts[key] = (
                dane_context(self.settings.min_tls_version)
                if dane
                else client_context(requirement.level, self.settings)
            )
        return self._contexts[key]

    async def close(self) -> None:
        await self.connections.close()
        if self.layers.mtasts is not None:
            await self.layers.mtasts.close()

    async def probe(self, domain: str) -> GroupResult:
        """What a delivery to ``domain`` would do now, stopping before MAIL FROM."""
        return await self.deliver(domain, "", ["(probe)"], None)

    async def deliver(
        self,
        domain: str,
        mail_from: str,
        recipients: Sequence[str],
        content: bytes | None,
        requiretls: bool = False,
    ) -> GroupResult:
        """Deliver ``content`` to ``recipients`` at ``domain`` (``None``: probe only).

        ``requiretls``: the message came with REQUIRETLS (RFC 8689); it goes only through a
        session DANE or MTA-STS authorised, to a peer that offers REQUIRETLS after STARTTLS.
        """
        policy = self.policy(domain)
        if policy.is_override and policy.level is Level.PORTAL:
            reason = f"domain policy is portal ({policy.source})"
            results = _all(recipients, Outcome.PORTAL, reason, "2.0.0")
            return GroupResult(policy, results, findings=overridden(policy))

        mx = await self.resolver.lookup(domain)
        if mx.status == "permanent":
            return GroupResult(policy, _all(recipients, Outcome.BOUNCED, mx.reason, "5.1.2"))
        if mx.status == "temporary":
            return GroupResult(policy, _all(recipients, Outcome.DEFERRED, mx.reason, "4.4.3"))

        plan = await self.layers.plan(domain, policy, mx)
        result = GroupResult(policy, [], findings=plan.findings, sessions=list(plan.reports))
        refused: list[str] = []
        deferred: list[str] = []
        unreachable: list[str] = []
        for host, verdict in plan.hosts:
            if isinstance(verdict, Refusal):
                where = {"host": host.name, "layer": verdict.layer}
                result.trail.append({**where, "result": verdict.kind, "detail": verdict.reason})
                (refused if verdict.kind == "policy" else deferred).append(
                    f"{host.name}: {verdict.layer}: {verdict.reason}"
                )
                if verdict.report is not None:
                    result.sessions.append(
                        verdict.report.result(domain, host.name, "", verdict.result_type)
                    )
                continue
            requirement = verdict
            if requiretls and not requirement.authenticated:
                why = f"REQUIRETLS needs DANE or MTA-STS, {host.name} has {requirement.authority}"
                where = {"host": host.name, "layer": "requiretls"}
                result.trail.append({**where, "result": "policy", "detail": why})
                refused.append(f"{host.name}: requiretls: {why}")
                continue
            for ip in host.addresses:
                where = {"host": host.name, "ip": ip, "layer": requirement.layer}
                key = (
                    ip,
                    self.settings.mx_port,
                    host.name,
                    requirement.level,
                    requirement.cache_tag,
                )
                session = await self.connections.take(key) if content is not None else None
                if session is not None and session.tls is not None:
                    tls, where["reused"] = session.tls, "yes"
                else:
                    try:
                        session, tls = await self._connect(host.name, ip, requirement)
                    except SessionError as exc:
                        unreachable.append(f"{host.name}[{ip}]: {exc}")
                        result.trail.append({**where, "result": "unreachable", "detail": str(exc)})
                        continue
                    except TLSFailure as exc:
                        refused.append(f"{host.name}[{ip}]: {requirement.layer}: {exc}")
                        result.trail.append({**where, "result": exc.kind, "detail": exc.detail})
                        kind = getattr(exc, "result_type", None) or tls_result_type(
                            exc.kind, exc.detail
                        )
                        result.sessions.append(
                            session_result(requirement, domain, host.name, ip, kind)
                        )
                        log.info("tls_failed", domain=domain, mx=host.name, ip=ip, why=str(exc))
                        continue
                    result.sessions.append(
                        session_result(requirement, domain, host.name, ip, SUCCESS)
                    )
                if requiretls and not session.offers_requiretls:
                    await session.quit()
                    why = "the server does not offer REQUIRETLS over TLS"
                    refused.append(f"{host.name}[{ip}]: requiretls: {why}")
                    result.trail.append({**where, "result": "no REQUIRETLS", "detail": why})
                    continue
                result.mx_host, result.mx_ip, result.tls = host.name, ip, tls
                result.authority = requirement.authority
                if content is None:
                    await session.quit()
                    result.trail.append({**where, "result": "tls", "detail": tls.version})
                    result.results = _all(recipients, Outcome.TLS, "TLS policy met", "2.0.0")
                    return result
                try:
                    transaction = await session.transaction(
                        mail_from, recipients, content, requiretls=requiretls
                    )
                except TLSFailure as exc:
                    # The session refused to carry a REQUIRETLS message: nothing was sent.
                    await session.quit()
                    refused.append(f"{host.name}[{ip}]: requiretls: {exc}")
                    result.trail.append({**where, "result": exc.kind, "detail": exc.detail})
                    result.mx_host = result.mx_ip = result.tls = result.authority = None
                    continue
                except SessionError as exc:
                    # The connection broke after TLS was up; whether the peer took the message
                    # is unknown, so try again later rather than send a second copy elsewhere.
                    session.close()
                    result.trail.append({**where, "result": "lost", "detail": str(exc)})
                    result.results = _all(
                        recipients, Outcome.DEFERRED, f"connection lost: {exc}", "4.4.2"
                    )
                    return result
                await self.connections.give(key, session)
                result.trail.append({**where, "result": "transaction", "detail": tls.version})
                result.results = interpret(transaction, recipients, tls)
                return result

        if refused:
            reason = "TLS policy not met: " + "; ".join(refused)
            result.results = _all(recipients, Outcome.PORTAL, reason, "2.0.0")
        elif deferred:
            reason = "TLS policy not known yet: " + "; ".join(deferred)
            result.results = _all(recipients, Outcome.DEFERRED, reason, "4.7.5")
        else:
            reason = "no MX reachable: " + "; ".join(unreachable)
            result.results = _all(recipients, Outcome.DEFERRED, reason, "4.4.1")
        return result
