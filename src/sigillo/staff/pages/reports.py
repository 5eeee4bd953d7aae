"""Security operations' review of phishing reports: mail forwarded to ``[phishing]
report_address``, checked on arrival (``sigillo.gateway.inbound``).

The list and a report's page show what the check found (verdict, codes, severities) and
whether someone reviewed it: neither the reporter nor any of the mail. The reporter, the
findings with their evidence and the reported mail's headers and text are shown only in the
answer to the POST that states a purpose (a reason and a case reference, as for an agent
opening a conversation), audited as ``staff.report_opened`` before the page is sent and never
stored (``Cache-Control: no-store``). The mail is shown as text only: headers one line each,
the text part (or the HTML part's source, sanitised) escaped, nothing that loads or runs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from sqlalchemy import func, select, update
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route

from sigillo.gateway.inbound import ReportChecker
from sigillo.phishing.findings import explained
from sigillo.portal.mailview import MessageView, one_line, parse_message
from sigillo.staff.pages.agent import REASON_MAX, REASON_MIN, read_purpose
from sigillo.staff.pages.base import N_, Console, NavItem, Page
from sigillo.store.models import Message, PhishingReport, StaffRole

SECURITY = frozenset({StaffRole.ADMIN, StaffRole.OPERATOR})
REPORTS = "/staff/reports"
PAGE_SIZE = 50
MAX_ID = 2**31 - 1
OPENED = "staff.report_opened"
REVIEWED = "staff.report_reviewed"
SHOWN_HEADERS = 200
"""Header fields of the reported mail shown; a crafted mail may carry thousands."""
HEADER_CHARS = 2000
TEXT_CHARS = 200_000
"""Characters of the reported mail's text shown."""

NAV = (NavItem(REPORTS, N_("Phishing reports"), SECURITY),)


@dataclass(frozen=True)
class Listed:
    """A report as the list and its page show it: the check's result, no mail, no reporter."""

    id: int
    received_at: datetime
    verdict: str
    findings: tuple[tuple[str, str], ...]
    """(code, severity) pairs."""
    reviewed_at: datetime | None
    reviewed_by: str | None
    has_mail: bool


_COLUMNS = (
    PhishingReport.id,
    PhishingReport.received_at,
    PhishingReport.verdict,
    PhishingReport.findings,
    PhishingReport.reviewed_at,
    PhishingReport.reviewed_by,
    PhishingReport.message_id,
)


def _listed(row: Any) -> Listed:
    rid, received_at, verdict, findings, reviewed_at, reviewed_by, message_id = row
    pairs = tuple(
        (str(f.get("code", "")), str(f.get("severity", "")))
        for f in (findings if isinstance(findings, list) else [])
        if isinstance(f, dict)
    )
    return Listed(
        rid, received_at, str(verdict), pairs, reviewed_at, reviewed_by, message_id is not None
    )


@dataclass(frozen=True)
class Shown:
    """What the opened page shows of the reported mail."""

    view: MessageView
    headers: tuple[tuple[str, str], ...]
    text: str
    """The text part, else the HTML part's sanitised source: shown escaped, as text."""
    forwarded: bool
    """The report carried the mail as an attachment (else the report is the mail)."""


def shown(raw: bytes, mail: bytes) -> Shown:
    """The reported mail as text. ``mail`` is what the check looked at (the forwarded
    original or the report itself). Never raises."""
    view = parse_message(mail)
    try:
        parsed = BytesHeaderParser(policy=compat32).parsebytes(mail)
        items = parsed.raw_items()
        headers = tuple(
            (one_line(str(name), 100), one_line(str(value), HEADER_CHARS))
            for _, (name, value) in zip(range(SHOWN_HEADERS), items, strict=False)
        )
    except Exception:  # a crafted header block: the summary from the view still shows
        headers = ()
    if view.text is not None:
        text = view.text
    elif view.html is not None:
        text = f"{view.html}"  # plain str: the template escapes it, so it shows as source
    else:
        text = ""
    return Shown(view, headers, text[:TEXT_CHARS], mail is not raw)


def routes(console: Console) -> list[Route]:
    store = console.store
    checker = ReportChecker(console.settings)

    def report_id(page: Page) -> int:
        value: int = page.request.path_params["report"]
        if value > MAX_ID:
            raise HTTPException(404)
        return value

    async def load(rid: int) -> Listed:
        async with store.session() as session:
            row = (await session.execute(select(*_COLUMNS).where(PhishingReport.id == rid))).first()
        if row is None:
            raise HTTPException(404)
        return _listed(row)

    async def listing(page: Page) -> Response:
        before_text = page.request.query_params.get("before", "")
        before = int(before_text) if before_text.isdigit() and len(before_text) < 11 else None
        query = select(*_COLUMNS).order_by(PhishingReport.id.desc()).limit(PAGE_SIZE + 1)
        if before is not None:
            query = query.where(PhishingReport.id < before)
        async with store.session() as session:
            rows = [_listed(r) for r in await session.execute(query)]
            total = (
                await session.execute(select(func.count()).select_from(PhishingReport))
            ).scalar_one()
            unreviewed = (
                await session.execute(
                    select(func.count())
                    .select_from(PhishingReport)
                    .where(PhishingReport.reviewed_at.is_(None))
                )
            ).scalar_one()
        listed = rows[:PAGE_SIZE]
        older = f"{REPORTS}?before={listed[-1].id}" if len(rows) > PAGE_SIZE else None
        return page.render(
            "reports.html",
            reports=listed,
            total=int(total),
            unreviewed=int(unreviewed),
            older=older,
            newest=REPORTS if before is not None else None,
        )

    async def report_page(page: Page, rid: int, *, status: int = 200, **context: Any) -> Response:
        found = await load(rid)
        context.setdefault("errors", [])
        context.setdefault("reason", "")
        context.setdefault("case_ref", "")
        return page.render(
            "reports_report.html",
            status=status,
            r=found,
            done=page.request.query_params.get("done", ""),
            reason_min=REASON_MIN,
            reason_max=REASON_MAX,
            **context,
        )

    async def show(page: Page) -> Response:
        return await report_page(page, report_id(page))

    async def open_report(page: Page) -> Response:
        _ = page.gettext
        rid = report_id(page)
        purpose, errors = read_purpose(page.form, _)
        found = await load(rid)  # 404 before anything else
        if purpose is None:
            return await report_page(
                page,
                rid,
                status=400,
                errors=errors,
                reason=page.text("reason", REASON_MAX),
                case_ref=page.text("case_ref", 64),
            )
        async with store.session() as session:
            row = (
                await session.execute(
                    select(
                        PhishingReport.reporter,
                        Message.id,
                        Message.kek_id,
                        Message.wrapped_key,
                        Message.content,
                    )
                    .join(Message, Message.id == PhishingReport.message_id)
                    .where(PhishingReport.id == rid)
                )
            ).first()
        if row is None:
            return await report_page(
                page, rid, status=409, errors=[_("The reported mail is no longer kept.")]
            )
        reporter, mid, kek, wrapped, content = row
        raw = console.keyring.open(mid, kek, wrapped, content)
        # Checked again for the evidence: the report row keeps only the codes.
        result, mail = await asyncio.to_thread(checker.check, raw)
        await page.log(
            OPENED,
            message_id=mid,
            details={"report": rid, "reason": purpose.reason, "case_ref": purpose.case_ref},
        )
        response = page.render(
            "reports_open.html",
            r=found,
            reporter=reporter,
            purpose=purpose,
            opened_at=page.now,
            verdict=result.verdict,
            findings=explained(result.findings, page.member.language),
            mail=shown(raw, mail),
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    async def review(page: Page) -> Response:
        _ = page.gettext
        rid = report_id(page)
        await load(rid)
        at, by = page.now, page.member.email

        def mark(session: Any) -> bool:
            changed = session.execute(
                update(PhishingReport)
                .where(PhishingReport.id == rid, PhishingReport.reviewed_at.is_(None))
                .values(reviewed_at=at, reviewed_by=by)
                .returning(PhishingReport.id)
                .execution_options(synchronize_session=False)
            ).scalar_one_or_none()
            if changed is None:
                return False
            page.audit(session, REVIEWED, details={"report": rid})
            return True

        if not await store.write(mark):
            return await report_page(
                page, rid, status=409, errors=[_("This report is already marked reviewed.")]
            )
        return page.redirect(f"{REPORTS}/{rid}?done=reviewed")

    one = f"{REPORTS}/{{report:int}}"
    post = ("POST",)
    return [
        console.page(REPORTS, listing, roles=SECURITY),
        console.page(one, show, roles=SECURITY),
        console.page(f"{one}/open", open_report, roles=SECURITY, methods=post),
        console.page(f"{one}/review", review, roles=SECURITY, methods=post),
    ]
