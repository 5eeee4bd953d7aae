"""``sigillo domains``: per recipient domain, what the delivery worker last saw there.

Reads the store only (no DNS, no connections): the copies of the window by how they left
(the same figures as the console's "TLS by domain" page, `staff.stats.domain_outcomes`), the
last attempt, the last TLS session and the policy layer that authorised it, the DANE and
MTA-STS evidence the worker kept: the layer findings of the last attempt, the MTA-STS policy
cache, and the TLS-RPT session counts (kept only while ``[tlsrpt] enabled``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

import typer
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from sigillo.commands.common import (
    ConfigOption,
    JsonOption,
    emit,
    fail,
    open_store,
    run,
    settings_from,
)
from sigillo.config import Settings, parse_duration
from sigillo.gateway.queue import utcnow
from sigillo.staff import stats
from sigillo.store.db import Store, database_exists
from sigillo.store.models import (
    Attempt,
    Job,
    JobKind,
    JobState,
    MtaStsPolicy,
    TLSReportCount,
)

DEFAULT_LIMIT = 200
MAX_LIMIT = 10_000
"""Domains are looked up by name in batches of one query each: bounded like the console's."""

_WAITING = (JobState.QUEUED, JobState.HELD)


def window_for(since: str, now: datetime, zone: str) -> stats.Window:
    """``--since`` as the console's window: whole calendar days in ``[portal] timezone``, today
    included (``36h`` is two days). ValueError says what is wrong."""
    length = parse_duration(since)
    if length <= timedelta(0):
        raise ValueError(f"--since {since!r} must be longer than nothing")
    days = math.ceil(length / timedelta(days=1))
    if days > stats.MAX_DAYS:
        raise ValueError(f"--since {since!r} is more than {stats.MAX_DAYS} days")
    return stats.Window.ending(now, zone, days)


def certificate_status(attempt: Attempt) -> str | None:
    """How the peer of a TLS session was authenticated: ``dane`` (a TLSA record matched),
    ``verified`` (PKIX chain and name), ``encrypt`` (not authenticated); None without TLS."""
    if attempt.tls_version is None:
        return None
    if attempt.tls_policy == "dane":
        return "dane"
    return "verified" if attempt.cert_verified else "encrypt"


def _layer_findings(details: dict[str, object] | None) -> dict[str, Any]:
    """The per-layer findings a delivery attempt recorded (``details["layers"]``: a list of
    ``{"layer": ..., "applies": ..., "finding": ...}``, as ``sigillo probe`` prints them)."""
    layers = (details or {}).get("layers")
    found: dict[str, Any] = {}
    if isinstance(layers, list):
        for entry in layers:
            if isinstance(entry, dict) and isinstance(entry.get("layer"), str):
                found[entry["layer"]] = {k: v for k, v in entry.items() if k != "layer"}
    return found


@dataclass
class _Reports:
    """TLS-RPT session counts of one domain and policy type over the window."""

    results: dict[str, int] = field(default_factory=dict)
    last_day: str = ""
    policy_strings: list[str] = field(default_factory=list)
    """Of the newest counted row: the TLSA records or the MTA-STS policy lines."""


async def _latest_attempts(
    session: AsyncSession, domains: Sequence[str], *where: ColumnElement[bool]
) -> dict[str, Attempt]:
    """The newest deliver attempt per domain that meets ``where``."""
    if not domains:
        return {}
    newest = stats.newest_attempts(domains, *where)
    query = select(newest.c.domain, Attempt).join(Attempt, Attempt.id == newest.c.attempt)
    return {str(domain): attempt for domain, attempt in await session.execute(query)}


async def _attempted_domains(session: AsyncSession, window: stats.Window) -> dict[str, int]:
    """Domains with a deliver attempt in the window (copies still waiting included), with
    their number of attempts."""
    query = (
        select(Job.domain, func.count())
        .join(Attempt, Attempt.job_id == Job.id)
        .where(Job.kind == JobKind.DELIVER, Attempt.at >= window.start)
        .group_by(Job.domain)
    )
    return {str(domain): int(n) for domain, n in await session.execute(query)}


async def _waiting(session: AsyncSession, domains: Sequence[str]) -> dict[str, int]:
    if not domains:
        return {}
    query = (
        select(Job.domain, func.count())
        .where(Job.kind == JobKind.DELIVER, Job.state.in_(_WAITING), Job.domain.in_(domains))
        .group_by(Job.domain)
    )
    return {str(domain): int(n) for domain, n in await session.execute(query)}


async def _reports(
    session: AsyncSession, domains: Sequence[str], first_day: str
) -> dict[tuple[str, str], _Reports]:
    """(domain, policy type) -> the window's TLS-RPT counts (days are UTC dates)."""
    if not domains:
        return {}
    found: dict[tuple[str, str], _Reports] = {}
    where = (TLSReportCount.day >= first_day, TLSReportCount.policy_domain.in_(domains))
    sums = (
        select(
            TLSReportCount.policy_domain,
            TLSReportCount.policy_type,
            TLSReportCount.result_type,
            func.sum(TLSReportCount.count),
            func.max(TLSReportCount.day),
        )
        .where(*where)
        .group_by(
            TLSReportCount.policy_domain, TLSReportCount.policy_type, TLSReportCount.result_type
        )
    )
    for domain, policy_type, result_type, n, day in await session.execute(sums):
        entry = found.setdefault((str(domain), str(policy_type)), _Reports())
        entry.results[str(result_type)] = int(n)
        entry.last_day = max(entry.last_day, str(day))
    newest = (
        select(func.max(TLSReportCount.id))
        .where(*where)
        .group_by(TLSReportCount.policy_domain, TLSReportCount.policy_type)
    )
    rows = await session.execute(select(TLSReportCount).where(TLSReportCount.id.in_(newest)))
    for row in rows.scalars():
        key = (row.policy_domain, row.policy_type)
        if key in found:
            found[key].policy_strings = list(row.policy_strings)
    return found


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _tls_record(attempt: Attempt | None) -> dict[str, Any] | None:
    if attempt is None:
        return None
    return {
        "at": attempt.at.isoformat(),
        "version": attempt.tls_version,
        "cipher": attempt.tls_cipher,
        "certificate": certificate_status(attempt),
        "verification": attempt.verification,
        "policy": attempt.tls_policy,
        "mx_host": attempt.mx_host,
        "mx_ip": attempt.mx_ip,
    }


def _dane(
    reports: _Reports | None, last_tls: Attempt | None, finding: Any
) -> dict[str, Any] | None:
    authorised = last_tls is not None and last_tls.tls_policy == "dane"
    if reports is None and not authorised and finding is None:
        return None
    return {
        "last_session_authorised": authorised,
        "tlsa": reports.policy_strings if reports else [],
        "sessions": reports.results if reports else {},
        "last_counted": (reports.last_day or None) if reports else None,
        "last_finding": finding,
    }


def _mta_sts(
    row: MtaStsPolicy | None, reports: _Reports | None, now: datetime, finding: Any
) -> dict[str, Any] | None:
    if row is None and reports is None and finding is None:
        return None
    valid = bool(row and row.mode and row.expires_at and row.expires_at > now)
    return {
        "mode": row.mode if row else None,
        "id": row.policy_id if row else None,
        "mx": list(row.mx or []) if row else [],
        "max_age": row.max_age if row else None,
        "fetched_at": _iso(row.fetched_at) if row else None,
        "expires_at": _iso(row.expires_at) if row else None,
        "valid": valid,
        "last_attempt_at": _iso(row.last_attempt_at) if row else None,
        "last_error": row.last_error if row else None,
        "sessions": reports.results if reports else {},
        "last_counted": (reports.last_day or None) if reports else None,
        "last_finding": finding,
    }


async def domain_report(store: Store, window: stats.Window, now: datetime, limit: int) -> Any:
    """Busiest domains first (copies that reached a final state in the window), then the
    domains with attempts but no final copy yet (say, deferred by a failing TLSA lookup)."""
    outcomes = await stats.domain_outcomes(store, window, limit=limit)
    async with store.session() as session:
        attempted = await _attempted_domains(session, window)
        counted = {o.domain: o for o in outcomes}
        rest = sorted((d for d in attempted if d not in counted), key=lambda d: (-attempted[d], d))
        names = [o.domain for o in outcomes] + rest[: max(0, limit - len(outcomes))]
        in_window = Attempt.at >= window.start
        last = await _latest_attempts(session, names, in_window)
        last_tls = await _latest_attempts(session, names, Attempt.tls_version.is_not(None))
        last_policy = await _latest_attempts(session, names, Attempt.tls_policy.is_not(None))
        waiting = await _waiting(session, names)
        reports = await _reports(session, names, window.start.date().isoformat())
        policies = {
            row.domain: row
            for row in (
                await session.execute(select(MtaStsPolicy).where(MtaStsPolicy.domain.in_(names)))
            ).scalars()
        }
    domains = []
    for name in names:
        counts = counted[name].counts if name in counted else stats.MethodCounts()
        attempt = last.get(name)
        findings = _layer_findings(attempt.details if attempt else None)
        authorised = last_policy.get(name)
        domains.append(
            {
                "domain": name,
                "copies": {
                    "verified": counts.verified,
                    "encrypt": counts.encrypt,
                    "portal": counts.portal,
                    "bounced": counts.bounced,
                    "total": counts.total,
                    "waiting": waiting.get(name, 0),
                },
                "share": {
                    "tls": _share(counts.tls, counts.total),
                    "portal": _share(counts.portal, counts.total),
                },
                "last_attempt": {
                    "at": attempt.at.isoformat(),
                    "outcome": attempt.outcome,
                    "reason": attempt.reason,
                    "mx_host": attempt.mx_host,
                }
                if attempt
                else None,
                "last_tls": _tls_record(last_tls.get(name)),
                "authorised_by": {"policy": authorised.tls_policy, "at": authorised.at.isoformat()}
                if authorised
                else None,
                "dane": _dane(
                    reports.get((name, "tlsa")), last_tls.get(name), findings.get("dane")
                ),
                "mta_sts": _mta_sts(
                    policies.get(name), reports.get((name, "sts")), now, findings.get("mta-sts")
                ),
            }
        )
    return {
        "since": window.start.isoformat(),
        "days": window.days,
        "timezone": window.zone,
        "domains": domains,
    }


def _describe(d: dict[str, Any]) -> list[str]:
    """One domain for a person: a heading line and one line per finding."""
    copies, share = d["copies"], d["share"]
    noun = "copy" if copies["total"] == 1 else "copies"
    head = f"{d['domain']}: {copies['total']} {noun}"
    if copies["total"]:
        head += f", {_percent(share['tls'])} over TLS, {_percent(share['portal'])} to the portal"
    if copies["waiting"]:
        head += f", {copies['waiting']} waiting"
    lines = [head]
    tls = d["last_tls"]
    if tls:
        lines.append(
            f"  last TLS      {tls['version']}, certificate {tls['certificate']}, "
            f"policy {tls['policy'] or '-'}, {tls['mx_host']} at {tls['at']}"
        )
    dane = d["dane"]
    if dane:
        results = ", ".join(f"{k} {v}" for k, v in sorted(dane["sessions"].items()))
        state = _dane_summary(dane) + (f" ({results})" if results else "")
        lines.append(f"  DANE          {state}{_finding(dane)}")
    sts = d["mta_sts"]
    if sts:
        state = sts["mode"] or "no valid policy"
        if sts["mode"] and not sts["valid"]:
            state += " (expired)"
        if sts["last_error"]:
            state += f"; last error: {sts['last_error']}"
        lines.append(f"  MTA-STS       {state}{_finding(sts)}")
    last = d["last_attempt"]
    if last:
        lines.append(f"  last attempt  {last['at']} {last['outcome']}: {last['reason'] or '-'}")
    return lines


def _finding(layer: dict[str, Any]) -> str:
    found = layer["last_finding"]
    text = found.get("finding") if isinstance(found, dict) else None
    return f"; last attempt: {text}" if isinstance(text, str) and text else ""


def _dane_summary(dane: dict[str, Any] | None) -> str:
    if dane is None:
        return "-"
    if dane["last_session_authorised"]:
        return "authorised"
    if any(result != "success" for result in dane["sessions"]):
        return "failures"
    return "published" if dane["tlsa"] else "not seen"


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.0f}%"


def domains(
    config: ConfigOption = None,
    json_: JsonOption = False,
    since: Annotated[
        str, typer.Option(help="How far back: whole days in [portal] timezone, today included")
    ] = "30d",
    limit: Annotated[int, typer.Option(help="At most this many domains, busiest first")] = (
        DEFAULT_LIMIT
    ),
) -> None:
    """Per recipient domain: copies by TLS and by portal, the last TLS session and the policy
    that authorised it, DANE and MTA-STS as last seen. Reads the database only."""
    settings: Settings = settings_from(config)
    now = utcnow()
    try:
        window = window_for(since, now, settings.portal.timezone)
    except ValueError as exc:
        fail(str(exc), 2)
        return
    if not 1 <= limit <= MAX_LIMIT:
        fail(f"--limit must be 1 to {MAX_LIMIT}, not {limit}", 2)
    url = settings.storage.database_url
    if not database_exists(url):
        fail(f"no database at {url}: run 'sigillo db upgrade' (and deliver some mail) first")

    async def go() -> Any:
        store = await open_store(settings)
        try:
            return await domain_report(store, window, now, limit)
        finally:
            await store.close()

    report = run(go)
    if json_:
        emit(report, True)
        return
    typer.echo(f"Recipient domains since {report['since']} ({report['days']} days)")
    for entry in report["domains"]:
        typer.echo("\n".join(_describe(entry)))
