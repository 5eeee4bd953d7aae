"""The auditor's pages: the audit log (newest first, filtered, paged by chain position), its
export as JSON lines, and a check of the hash chain.

The log holds identifiers and stated reasons, never content, so showing it whole is safe;
an export is itself an action on personal data (the log names people) and is audited as
``audit.exported`` before the first line leaves.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.sql.elements import ColumnElement
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from sigillo.staff.pages.base import N_, Console, NavItem, Page
from sigillo.store import audit
from sigillo.store.audit import AuditLogError
from sigillo.store.models import AuditEvent, StaffRole

AUDITOR = frozenset({StaffRole.AUDITOR})
LOG = "/staff/audit"
EXPORT = "/staff/audit/export"
CHAIN = "/staff/audit/chain"
PAGE_SIZE = 50
HASH_SHOWN = 12
"""Hex digits of an entry's hash shown in the list (the export carries it whole)."""
MAX_SEQ = 2**62

NAV = (NavItem(LOG, N_("Audit log"), AUDITOR),)


@dataclass(frozen=True)
class Filters:
    action: str = ""
    actor: str = ""
    since: date | None = None
    """First day included (the portal's time zone)."""
    until: date | None = None
    """Last day included."""

    def query(self, **extra: str) -> str:
        values = {
            "action": self.action,
            "actor": self.actor,
            "since": self.since.isoformat() if self.since else "",
            "until": self.until.isoformat() if self.until else "",
            **extra,
        }
        return urlencode({k: v for k, v in values.items() if v})


def _day(value: str) -> date | None:
    try:
        return date.fromisoformat(value) if len(value) == 10 else None
    except ValueError:
        return None


def _midnight(day: date, zone: str) -> datetime:
    return datetime.combine(day, time(), ZoneInfo(zone)).astimezone(UTC)


def _conditions(filters: Filters, zone: str) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if filters.action:
        where.append(AuditEvent.action == filters.action)
    if filters.actor:
        where.append(AuditEvent.actor == filters.actor)
    if filters.since:
        where.append(AuditEvent.at >= _midnight(filters.since, zone))
    if filters.until:
        where.append(AuditEvent.at < _midnight(filters.until + timedelta(days=1), zone))
    return where


@dataclass(frozen=True)
class LogLine:
    """An audit entry as the auditor's page lists it."""

    seq: int
    at: datetime
    actor: str
    action: str
    client: str | None
    conversation_id: int | None
    message_id: str | None
    details: str
    """Compact JSON, as stored."""
    hash: str


def routes(console: Console) -> list[Route]:
    store = console.store
    zone = console.settings.portal.timezone

    def read_filters(page: Page) -> tuple[Filters, list[str]]:
        _ = page.gettext
        params = page.request.query_params
        errors = []
        since_text, until_text = params.get("since", "").strip(), params.get("until", "").strip()
        since, until = _day(since_text), _day(until_text)
        if since_text and since is None:
            errors.append(_("'From' is not a date (YYYY-MM-DD)."))
        if until_text and until is None:
            errors.append(_("'To' is not a date (YYYY-MM-DD)."))
        if since and until and until < since:
            errors.append(_("'To' is before 'From'."))
        filters = Filters(
            params.get("action", "").strip()[:64],
            params.get("actor", "").strip().lower()[:320],
            since,
            until,
        )
        return filters, errors

    async def log_page(page: Page) -> Response:
        filters, errors = read_filters(page)
        before_text = page.request.query_params.get("before", "")
        before = int(before_text) if before_text.isdigit() and len(before_text) < 19 else None
        where = [] if errors else _conditions(filters, zone)
        if before is not None:
            where.append(AuditEvent.seq < before)
        async with store.session() as session:
            rows = (
                await session.execute(
                    select(
                        AuditEvent.seq,
                        AuditEvent.at,
                        AuditEvent.actor,
                        AuditEvent.action,
                        AuditEvent.client_address,
                        AuditEvent.conversation_id,
                        AuditEvent.message_id,
                        AuditEvent.details,
                        AuditEvent.hash,
                    )
                    .where(*where)
                    .order_by(AuditEvent.seq.desc())
                    .limit(PAGE_SIZE + 1)
                )
            ).all()
            actions = (await session.execute(select(AuditEvent.action).distinct())).scalars().all()
        entries = [
            LogLine(
                seq,
                at,
                actor,
                action,
                client,
                conversation,
                message,
                json.dumps(details, sort_keys=True, ensure_ascii=False) if details else "",
                digest,
            )
            for seq, at, actor, action, client, conversation, message, details, digest in rows[
                :PAGE_SIZE
            ]
        ]
        older = (
            f"{LOG}?{filters.query(before=str(entries[-1].seq))}" if len(rows) > PAGE_SIZE else None
        )
        return page.render(
            "auditor_log.html",
            status=400 if errors else 200,
            entries=entries,
            filters=filters,
            actions=sorted(actions),
            errors=errors,
            older=older,
            newest=f"{LOG}?{filters.query()}" if before is not None else None,
            hash_shown=HASH_SHOWN,
        )

    async def export(page: Page) -> Response:
        _ = page.gettext
        params = page.request.query_params
        since, until = _day(params.get("since", "").strip()), _day(params.get("until", "").strip())
        errors = []
        if since is None:
            errors.append(_("Give the first day to export, 'From' (YYYY-MM-DD)."))
        if params.get("until", "").strip() and until is None:
            errors.append(_("'To' is not a date (YYYY-MM-DD)."))
        if since and until and until < since:
            errors.append(_("'To' is before 'From'."))
        if errors or since is None:
            return await export_form(page, errors=errors, status=400)
        start = _midnight(since, zone)
        end = _midnight(until + timedelta(days=1), zone) if until else None
        entries = audit.export(store, start, end)
        # The first entry is read (which fixes the export's end at the head as it stands)
        # before the export is recorded: the export is a fixed set, its own entry not in it.
        try:
            first = await anext(entries, None)
        except AuditLogError as exc:
            await _close(entries)
            return page.render(
                "auditor_export.html", status=409, errors=[str(exc)], since="", until=""
            )
        await page.log(
            "audit.exported",
            details={
                "since": start.isoformat(),
                "until": end.isoformat() if end else None,
                "to": "download",
            },
        )

        async def lines() -> AsyncIterator[bytes]:
            try:
                if first is not None:
                    yield _line(first)
                async for entry in entries:
                    yield _line(entry)
            finally:
                await _close(entries)

        name = f"sigillo-audit-{since.isoformat()}{'-' + until.isoformat() if until else ''}.jsonl"
        return StreamingResponse(
            lines(),
            media_type="application/x-ndjson",
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "Cache-Control": "no-store",
            },
        )

    async def export_form(page: Page, *, errors: list[str], status: int = 200) -> Response:
        params = page.request.query_params
        return page.render(
            "auditor_export.html",
            status=status,
            errors=errors,
            since=params.get("since", "")[:10],
            until=params.get("until", "")[:10],
        )

    async def chain(page: Page) -> Response:
        report = await audit.verify(store)
        return page.render("auditor_chain.html", report=report)

    async def export_page(page: Page) -> Response:
        if page.request.query_params.get("since") is not None:
            return await export(page)
        return await export_form(page, errors=[])

    return [
        console.page(LOG, log_page, roles=AUDITOR),
        console.page(EXPORT, export_page, roles=AUDITOR),
        console.page(CHAIN, chain, roles=AUDITOR),
    ]


def _line(entry: dict[str, Any]) -> bytes:
    # The CLI's form: one sorted, ASCII-only JSON object per line.
    return (json.dumps(entry, sort_keys=True, ensure_ascii=True) + "\n").encode()


async def _close(entries: AsyncIterator[object]) -> None:
    """Ends an export early (its generator then releases its database session)."""
    if isinstance(entries, AsyncGenerator):
        await entries.aclose()
