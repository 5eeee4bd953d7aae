"""Figures for the staff dashboard and the operator's domain page, read from the queue and
the audit log.

Days are calendar days in ``[portal] timezone``. Each query buckets rows by day in SQL with a
``CASE`` over the day boundaries, computed here with the zone's rules (so a day of 23 or 25
hours is still one day), which runs unchanged on SQLite and PostgreSQL and sends back one row
per day and category instead of one per copy. The grouping happens in an outer query over a
subquery: PostgreSQL cannot match a ``GROUP BY`` to a select expression with bound parameters.

A copy counts on the day it reached its final state. Its method comes from the job's state
and, for a copy delivered over TLS, from its last attempt: ``cert_verified`` says whether the
peer was authenticated (verified) or the connection only encrypted (encrypt-only).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Select, SQLColumnExpression, Subquery, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from sigillo.store.db import Store
from sigillo.store.models import Attempt, AuditEvent, Job, JobKind, JobState

DEFAULT_DAYS = 30
MAX_DAYS = 366
"""A window longer than this would mean a ``CASE`` of thousands of branches."""
TOP_DOMAINS = 10


class Method(enum.StrEnum):
    """How a recipient's copy left the gateway."""

    VERIFIED = "verified"
    """Over TLS to a peer whose certificate (or DANE record) was verified."""
    ENCRYPT = "encrypt"
    """Over TLS without authenticating the peer (the domain's policy allows encrypt-only)."""
    PORTAL = "portal"
    BOUNCED = "bounced"


class PortalReason(enum.StrEnum):
    """Why a copy went to the portal, grouped from the reasons the worker records."""

    NO_STARTTLS = "no_starttls"
    CERTIFICATE = "certificate"
    HANDSHAKE = "handshake"
    POLICY = "policy"
    OTHER = "other"


# The worker writes "domain policy is portal (SOURCE)" or "TLS policy not met: " followed by
# "HOST[IP]: KIND: DETAIL" for each MX tried, joined by "; " (see gateway.delivery and the
# TLSFailure kinds in gateway.smtpclient). The first MX's kind names the category.
_POLICY_PREFIX = "domain policy is portal"
_FAILURE_KIND = re.compile(
    r"^TLS policy not met: .*?\]: (no STARTTLS|STARTTLS refused|certificate|handshake failed):"
)
_KINDS = {
    "no STARTTLS": PortalReason.NO_STARTTLS,
    "STARTTLS refused": PortalReason.NO_STARTTLS,
    "certificate": PortalReason.CERTIFICATE,
    "handshake failed": PortalReason.HANDSHAKE,
}


def portal_reason(reason: str | None) -> PortalReason:
    if not reason:
        return PortalReason.OTHER
    if reason.startswith(_POLICY_PREFIX):
        return PortalReason.POLICY
    found = _FAILURE_KIND.match(reason)
    return _KINDS[found.group(1)] if found else PortalReason.OTHER


@dataclass(frozen=True)
class Window:
    """The last ``days`` calendar days in ``zone``, today included."""

    zone: str
    first: date
    days: int

    @classmethod
    def ending(cls, now: datetime, zone: str, days: int = DEFAULT_DAYS) -> Window:
        if not 1 <= days <= MAX_DAYS:
            raise ValueError(f"a window is 1 to {MAX_DAYS} days, not {days}")
        today = now.astimezone(ZoneInfo(zone)).date()
        return cls(zone, today - timedelta(days=days - 1), days)

    @property
    def dates(self) -> tuple[date, ...]:
        return tuple(self.first + timedelta(days=i) for i in range(self.days))

    @property
    def bounds(self) -> tuple[datetime, ...]:
        """Each day's local midnight in UTC, and the end of the last day: ``days + 1`` values."""
        zone = ZoneInfo(self.zone)
        return tuple(
            datetime.combine(self.first + timedelta(days=i), time(), zone).astimezone(UTC)
            for i in range(self.days + 1)
        )

    @property
    def start(self) -> datetime:
        return self.bounds[0]

    @property
    def end(self) -> datetime:
        return self.bounds[-1]


def _day_of(column: SQLColumnExpression[Any], window: Window) -> ColumnElement[int]:
    """The index (0 = the window's first day) of the day ``column`` falls on; NULL outside."""
    bounds = window.bounds
    return case(
        *((column < bounds[i + 1], i) for i in range(window.days)),
        else_=None,
    )


def _in(column: SQLColumnExpression[Any], window: Window) -> list[ColumnElement[bool]]:
    return [column >= window.start, column < window.end]


@dataclass(frozen=True)
class MethodCounts:
    verified: int = 0
    encrypt: int = 0
    portal: int = 0
    bounced: int = 0

    @property
    def total(self) -> int:
        return self.verified + self.encrypt + self.portal + self.bounced

    @property
    def tls(self) -> int:
        return self.verified + self.encrypt

    def get(self, method: Method) -> int:
        value: int = getattr(self, method.value)
        return value

    def share(self, count: int) -> float | None:
        """``count`` as a fraction of all copies; None when there are none."""
        return count / self.total if self.total else None

    def plus(self, other: MethodCounts) -> MethodCounts:
        return MethodCounts(
            self.verified + other.verified,
            self.encrypt + other.encrypt,
            self.portal + other.portal,
            self.bounced + other.bounced,
        )


@dataclass(frozen=True)
class DayCounts:
    day: date
    counts: MethodCounts


@dataclass(frozen=True)
class DeliveryStats:
    """Recipients' copies that reached a final state in the window, by day and method."""

    window: Window
    days: tuple[DayCounts, ...]
    totals: MethodCounts

    @property
    def tls_share(self) -> float | None:
        """The share of copies delivered over TLS (verified or encrypt-only)."""
        return self.totals.share(self.totals.tls)


@dataclass(frozen=True)
class PortalDomain:
    domain: str
    total: int
    reasons: tuple[tuple[PortalReason, int], ...]
    """Every category with its count, in ``PortalReason`` order (zeros included)."""


@dataclass(frozen=True)
class PortalStats:
    """The domains whose copies went to the portal most often in the window, and why."""

    window: Window
    domains: tuple[PortalDomain, ...]
    reasons: tuple[tuple[PortalReason, int], ...]
    """Every category over all domains (not only the top ones)."""
    total: int
    domain_count: int
    """How many domains had a copy go to the portal (``domains`` holds the top ones)."""


@dataclass(frozen=True)
class ActivityDay:
    day: date
    registrations: int
    replies: int


@dataclass(frozen=True)
class PortalActivity:
    window: Window
    days: tuple[ActivityDay, ...]

    @property
    def registrations(self) -> int:
        return sum(d.registrations for d in self.days)

    @property
    def replies(self) -> int:
        return sum(d.replies for d in self.days)


@dataclass(frozen=True)
class DomainOutcome:
    """What happened to one recipient domain's copies in the window (for the operator)."""

    domain: str
    counts: MethodCounts
    last_tls_version: str | None = None
    """Of the latest attempt that negotiated TLS with the domain's MX, in or before the window."""
    last_failure: str | None = None
    """The reason of the latest attempt that did not deliver over TLS (portal, deferral,
    bounce): the worker's words, naming MX hosts and TLS errors, never content."""
    last_failure_at: datetime | None = None


@dataclass(frozen=True)
class Dashboard:
    delivery: DeliveryStats
    portal: PortalStats
    activity: PortalActivity


_FINAL = (JobState.DELIVERED, JobState.PORTAL, JobState.BOUNCED)


def _copies(window: Window, *columns: SQLColumnExpression[Any]) -> Select[tuple[object, ...]]:
    """The window's final copies with their method and ``columns``, as a subquery source."""
    last = aliased(Attempt)
    newest = select(func.max(Attempt.id)).where(Attempt.job_id == Job.id).scalar_subquery()
    method = case(
        (Job.state == JobState.PORTAL, Method.PORTAL.value),
        (Job.state == JobState.BOUNCED, Method.BOUNCED.value),
        (last.cert_verified.is_(True), Method.VERIFIED.value),
        else_=Method.ENCRYPT.value,
    )
    return (
        select(method.label("method"), *columns)
        .select_from(Job)
        .outerjoin(last, last.id == newest)
        .where(
            Job.kind == JobKind.DELIVER,
            Job.state.in_(_FINAL),
            Job.finished_at.is_not(None),
            *_in(Job.finished_at, window),
        )
    )


def _counts(values: Mapping[str, int]) -> MethodCounts:
    return MethodCounts(**{m.value: values.get(m.value, 0) for m in Method})


async def delivery_stats(store: Store, window: Window) -> DeliveryStats:
    copies = _copies(window, _day_of(Job.finished_at, window).label("day")).subquery()
    query = select(copies.c.day, copies.c.method, func.count()).group_by(
        copies.c.day, copies.c.method
    )
    per_day: list[dict[str, int]] = [{} for _ in range(window.days)]
    async with store.session() as session:
        for day, method, count in await session.execute(query):
            if day is not None:
                per_day[int(day)][str(method)] = int(count)
    days = tuple(
        DayCounts(d, _counts(values)) for d, values in zip(window.dates, per_day, strict=True)
    )
    totals = MethodCounts()
    for day_counts in days:
        totals = totals.plus(day_counts.counts)
    return DeliveryStats(window, days, totals)


def _reason_counts(counts: Mapping[PortalReason, int]) -> tuple[tuple[PortalReason, int], ...]:
    return tuple((reason, counts.get(reason, 0)) for reason in PortalReason)


async def portal_stats(store: Store, window: Window, top: int = TOP_DOMAINS) -> PortalStats:
    # Grouped by the reason text first (few distinct texts per domain: one per MX and error),
    # then folded into categories here, where the text can be read.
    query = (
        select(Job.domain, Job.reason, func.count())
        .where(
            Job.kind == JobKind.DELIVER,
            Job.state == JobState.PORTAL,
            *_in(Job.finished_at, window),
        )
        .group_by(Job.domain, Job.reason)
    )
    by_domain: dict[str, dict[PortalReason, int]] = {}
    async with store.session() as session:
        for domain, reason, count in await session.execute(query):
            counts = by_domain.setdefault(str(domain), {})
            category = portal_reason(reason)
            counts[category] = counts.get(category, 0) + int(count)
    overall: dict[PortalReason, int] = {}
    for counts in by_domain.values():
        for reason, n in counts.items():
            overall[reason] = overall.get(reason, 0) + n
    ranked = sorted(by_domain.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    domains = tuple(
        PortalDomain(domain, sum(counts.values()), _reason_counts(counts))
        for domain, counts in ranked[:top]
    )
    return PortalStats(
        window,
        domains,
        _reason_counts(overall),
        sum(overall.values()),
        len(by_domain),
    )


ACTIVITY_ACTIONS = ("portal.register", "portal.reply")


async def portal_activity(store: Store, window: Window) -> PortalActivity:
    events = (
        select(
            _day_of(AuditEvent.at, window).label("day"),
            AuditEvent.action.label("action"),
        )
        .where(AuditEvent.action.in_(ACTIVITY_ACTIONS), *_in(AuditEvent.at, window))
        .subquery()
    )
    query = select(events.c.day, events.c.action, func.count()).group_by(
        events.c.day, events.c.action
    )
    registrations = [0] * window.days
    replies = [0] * window.days
    async with store.session() as session:
        for day, action, count in await session.execute(query):
            if day is None:
                continue
            target = registrations if action == "portal.register" else replies
            target[int(day)] = int(count)
    return PortalActivity(
        window,
        tuple(
            ActivityDay(d, r, p)
            for d, r, p in zip(window.dates, registrations, replies, strict=True)
        ),
    )


async def dashboard(store: Store, window: Window) -> Dashboard:
    return Dashboard(
        await delivery_stats(store, window),
        await portal_stats(store, window),
        await portal_activity(store, window),
    )


@dataclass(frozen=True)
class _Latest:
    at: datetime
    text: str | None


async def domain_outcomes(
    store: Store, window: Window, *, limit: int = 200
) -> tuple[DomainOutcome, ...]:
    """Per recipient domain, busiest first: copies by method in the window, the TLS version
    last negotiated and the last reason a copy was not delivered over TLS."""
    copies = _copies(window, Job.domain.label("domain")).subquery()
    query = select(copies.c.domain, copies.c.method, func.count()).group_by(
        copies.c.domain, copies.c.method
    )
    rows: dict[str, dict[str, int]] = {}
    async with store.session() as session:
        for domain, method, count in await session.execute(query):
            rows.setdefault(str(domain), {})[str(method)] = int(count)
        ranked = sorted(rows.items(), key=lambda item: (-sum(item[1].values()), item[0]))
        ranked = ranked[:limit]
        names = [domain for domain, _ in ranked]
        tls = await _latest_per_domain(
            session, names, Attempt.tls_version, Attempt.tls_version.is_not(None)
        )
        failures = await _latest_per_domain(
            session,
            names,
            Attempt.reason,
            Attempt.outcome.in_(("portal", "deferred", "bounced")),
            *_in(Attempt.at, window),
        )
    return tuple(
        DomainOutcome(
            domain,
            _counts(values),
            tls[domain].text if domain in tls else None,
            failures[domain].text if domain in failures else None,
            failures[domain].at if domain in failures else None,
        )
        for domain, values in ranked
    )


def newest_attempts(domains: Sequence[str], *where: ColumnElement[bool]) -> Subquery:
    """(domain, attempt): the id of each domain's newest delivery attempt meeting ``where``."""
    return (
        select(Job.domain.label("domain"), func.max(Attempt.id).label("attempt"))
        .join(Attempt, Attempt.job_id == Job.id)
        .where(Job.kind == JobKind.DELIVER, Job.domain.in_(domains), *where)
        .group_by(Job.domain)
        .subquery()
    )


async def _latest_per_domain(
    session: AsyncSession,
    domains: Sequence[str],
    column: SQLColumnExpression[Any],
    *where: ColumnElement[bool],
) -> dict[str, _Latest]:
    if not domains:
        return {}
    newest = newest_attempts(domains, *where)
    query = select(newest.c.domain, Attempt.at, column).join(
        Attempt, Attempt.id == newest.c.attempt
    )
    return {str(domain): _Latest(at, text) for domain, at, text in await session.execute(query)}
