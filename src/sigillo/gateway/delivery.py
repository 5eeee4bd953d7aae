"""Deliver one message's copies for one recipient domain: verified TLS, or the portal.

This module is the only path that sends message content to the outside world. Content is
written to a socket only after STARTTLS succeeded at the domain's level (``encrypt`` or
``verify``) and TLS >= the minimum version; every TLS failure at every MX ends in ``portal``.
"""

from __future__ import annotations

import enum
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from sigillo.config import DeliverySettings, TLSLevel
from sigillo.gateway.connections import ConnectionCache
from sigillo.gateway.mx import MXResolver
from sigillo.gateway.smtpclient import (
    Reply,
    Session,
    SessionError,
    TLSFailure,
    TLSInfo,
    TransactionResult,
)
from sigillo.gateway.tlspolicy import Level, Policy, client_context, policy_for, verification_label

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
    def __init__(self, settings: DeliverySettings, resolver: MXResolver, helo: str) -> None:
        self.settings = settings
        self.resolver = resolver
        self.helo = helo
        self.connections = ConnectionCache()
        self._contexts: dict[Level, ssl.SSLContext] = {}
        self.console: Mapping[str, TLSLevel] = {}
        """The staff console's TLS levels per domain (``DomainPolicies.tls()``); the config
        file's ``[delivery.domains]`` still wins. Replaced whole by the worker's refresh."""

    def policy(self, domain: str) -> Policy:
        return policy_for(domain, self.settings, self.console)

    def timed_out(self, domain: str, recipients: Sequence[str], seconds: float) -> GroupResult:
        reason = f"delivery attempt exceeded {seconds:.0f}s; will retry"
        return GroupResult(self.policy(domain), _all(recipients, Outcome.DEFERRED, reason, "4.4.7"))

    async def _connect(self, mx_name: str, ip: str, level: Level) -> tuple[Session, TLSInfo]:
        """A new session with TLS at ``level``; raises SessionError or TLSFailure."""
        session = Session(ip, self.settings.mx_port, self.helo, self.settings)
        await session.open()
        try:
            tls = await session.starttls(
                mx_name, self._context(level), verification_label(level, self.settings)
            )
        except TLSFailure:
            await session.quit()
            raise
        return session, tls

    def _context(self, level: Level) -> ssl.SSLContext:
        # One context per level: loading the trust store per connection is expensive.
        if level not in self._contexts:
            self._contexts[level] = client_context(level, self.settings)
        return self._contexts[level]

    async def close(self) -> None:
        await self.connections.close()

    async def probe(self, domain: str) -> GroupResult:
        """What a delivery to ``domain`` would do now, stopping before MAIL FROM."""
        return await self.deliver(domain, "", ["(probe)"], None)

    async def deliver(
        self, domain: str, mail_from: str, recipients: Sequence[str], content: bytes | None
    ) -> GroupResult:
        """Deliver ``content`` to ``recipients`` at ``domain`` (``None``: probe only)."""
        policy = self.policy(domain)
        if policy.level is Level.PORTAL:
            reason = f"domain policy is portal ({policy.source})"
            return GroupResult(policy, _all(recipients, Outcome.PORTAL, reason, "2.0.0"))

        mx = await self.resolver.lookup(domain)
        if mx.status == "permanent":
            return GroupResult(policy, _all(recipients, Outcome.BOUNCED, mx.reason, "5.1.2"))
        if mx.status == "temporary":
            return GroupResult(policy, _all(recipients, Outcome.DEFERRED, mx.reason, "4.4.3"))

        result = GroupResult(policy, [])
        tls_failures: list[str] = []
        unreachable: list[str] = []
        for host in mx.hosts:
            for ip in host.addresses:
                where = {"host": host.name, "ip": ip}
                key = (ip, self.settings.mx_port, host.name, policy.level)
                session = await self.connections.take(key) if content is not None else None
                if session is not None and session.tls is not None:
                    tls, where["reused"] = session.tls, "yes"
                else:
                    try:
                        session, tls = await self._connect(host.name, ip, policy.level)
                    except SessionError as exc:
                        unreachable.append(f"{host.name}[{ip}]: {exc}")
                        result.trail.append({**where, "result": "unreachable", "detail": str(exc)})
                        continue
                    except TLSFailure as exc:
                        tls_failures.append(f"{host.name}[{ip}]: {exc}")
                        result.trail.append({**where, "result": exc.kind, "detail": exc.detail})
                        log.info("tls_failed", domain=domain, mx=host.name, ip=ip, why=str(exc))
                        continue
                result.mx_host, result.mx_ip, result.tls = host.name, ip, tls
                if content is None:
                    await session.quit()
                    result.trail.append({**where, "result": "tls", "detail": tls.version})
                    result.results = _all(recipients, Outcome.TLS, "TLS policy met", "2.0.0")
                    return result
                try:
                    transaction = await session.transaction(mail_from, recipients, content)
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

        if tls_failures:
            reason = "TLS policy not met: " + "; ".join(tls_failures)
            result.results = _all(recipients, Outcome.PORTAL, reason, "2.0.0")
        else:
            reason = "no MX reachable: " + "; ".join(unreachable)
            result.results = _all(recipients, Outcome.DEFERRED, reason, "4.4.1")
        return result
