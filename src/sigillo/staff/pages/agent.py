"""The agent's pages: find a recipient's conversations, see their metadata, open their content
for a stated purpose, withdraw a conversation or change its expiry.

Content is shown only in the answer to the POST that states the purpose (a reason and a case
reference): there is no GET that shows it, so a bookmark, the history or a reload cannot open
it again without a purpose, and the answer is never stored (``Cache-Control: no-store``). The
opening is audited (``staff.content_opened``, with the purpose) in its own transaction before
the page is sent, and the page names who opened it, when and why, with the earlier openings.

Attachments: each download is a POST that states the purpose again (the form carries it from
the opening) and names the opening it follows, which must be this member's, of this
conversation, for the same purpose and at most ``GRANT_MINUTES`` old; each download is audited
as ``staff.download``. The audit log is the record of the grant, so no token table is needed
and a download can never be more than the opening it follows allowed.

Messages are rendered with the portal's parser and sanitiser: no remote content, no script.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route

from sigillo import lifecycle
from sigillo.lifecycle import LifecycleError
from sigillo.policies import DomainPolicies
from sigillo.portal.mailview import MessageView, content_disposition, open_attachment, parse_message
from sigillo.staff.pages.base import N_, Console, NavItem, Page
from sigillo.store.crypto import Keyring
from sigillo.store.models import (
    AuditEvent,
    Conversation,
    ConversationMessage,
    DomainPolicy,
    Message,
    StaffRole,
)

AGENT = frozenset({StaffRole.AGENT})
SEARCH = "/staff/conversations"
REASON_MIN, REASON_MAX = 10, 500
CASE_REF = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""A case reference: letters, digits, ``-``, ``_`` and ``.``, at most 64 characters."""
GRANT_MINUTES = 15
"""How long after an opening its attachments can be downloaded with its purpose."""
MAX_EXPIRY_DAYS = 3650
"""The latest expiry an agent may set, in days from today."""
LISTED = 100
SHOWN_OPENINGS = 50
MAX_ID = 2**31 - 1
OPENED = "staff.content_opened"

NAV = (NavItem(SEARCH, N_("Conversations"), AGENT),)


@dataclass(frozen=True)
class Purpose:
    reason: str
    case_ref: str


def read_purpose(form: Mapping[str, Any], _: Any) -> tuple[Purpose | None, list[str]]:
    """The stated purpose, or the reasons it is not acceptable."""
    raw_reason = form.get("reason")
    raw_case = form.get("case_ref")
    reason = " ".join(raw_reason.split()) if isinstance(raw_reason, str) else ""
    case_ref = raw_case.strip() if isinstance(raw_case, str) else ""
    errors = []
    if not REASON_MIN <= len(reason) <= REASON_MAX:
        errors.append(
            _("State the reason in {low} to {high} characters.").format(
                low=REASON_MIN, high=REASON_MAX
            )
        )
    if not CASE_REF.fullmatch(case_ref):
        errors.append(
            _("Give the case reference: 1 to 64 letters, digits, dashes, underscores or dots.")
        )
    return (Purpose(reason, case_ref) if not errors else None), errors


@dataclass(frozen=True)
class Summary:
    """A conversation's metadata: dates, state and counts, never content or subject."""

    id: int
    recipient: str
    created_at: datetime
    last_message_at: datetime
    expires_at: datetime
    expiry_set: bool
    """The date was set by staff (not the domain's retention)."""
    withdrawn_at: datetime | None
    withdrawn_by: str | None
    shredded_at: datetime | None
    sent: int
    """Messages from the organisation."""
    replies: int
    """Replies written by the recipient in the portal."""

    @property
    def messages(self) -> int:
        return self.sent + self.replies

    def state(self, now: datetime) -> str:
        if self.withdrawn_at is not None:
            return "withdrawn"
        if self.shredded_at is not None:
            return "shredded"
        return "expired" if self.expires_at <= now else "open"


@dataclass(frozen=True)
class Opening:
    seq: int
    at: datetime
    actor: str
    reason: str
    case_ref: str


@dataclass(frozen=True)
class Shown:
    message_id: str
    direction: str
    view: MessageView


async def _summaries(
    session: AsyncSession, conversations: list[Conversation], ttl: int
) -> list[Summary]:
    if not conversations:
        return []
    rows = await session.execute(
        select(Conversation.id, ConversationMessage.direction, func.count())
        .join(ConversationMessage, ConversationMessage.conversation_id == Conversation.id)
        .where(Conversation.id.in_([c.id for c in conversations]))
        .group_by(Conversation.id, ConversationMessage.direction)
    )
    counts: dict[tuple[int, str], int] = {(cid, d): int(n) for cid, d, n in rows}
    policies = DomainPolicies(
        {p.domain: p for p in (await session.execute(select(DomainPolicy))).scalars()}
    )
    return [
        Summary(
            c.id,
            c.recipient,
            c.created_at,
            c.last_message_at,
            policies.expires_at(c, ttl),
            c.expires_at is not None,
            c.withdrawn_at,
            c.withdrawn_by,
            c.shredded_at,
            counts.get((c.id, "out"), 0),
            counts.get((c.id, "in"), 0),
        )
        for c in conversations
    ]


def _opening(row: AuditEvent) -> Opening:
    details = row.details or {}
    return Opening(
        row.seq,
        row.at,
        row.actor,
        str(details.get("reason", "")),
        str(details.get("case_ref", "")),
    )


def _open_messages(keyring: Keyring, rows: list[Any]) -> list[Shown]:
    return [
        Shown(mid, direction, parse_message(keyring.open(mid, kek, wrapped, content)))
        for mid, direction, kek, wrapped, content in rows
    ]


def routes(console: Console) -> list[Route]:
    store = console.store
    settings = console.settings
    ttl = settings.portal.message_ttl_days
    zone = ZoneInfo(settings.portal.timezone)

    def conversation_id(page: Page) -> int:
        value: int = page.request.path_params["conversation"]
        if value > MAX_ID:
            raise HTTPException(404)
        return value

    async def summary(cid: int) -> Summary:
        async with store.session() as session:
            found = await session.get(Conversation, cid)
            if found is None:
                raise HTTPException(404)
            [result] = await _summaries(session, [found], ttl)
        return result

    async def openings(cid: int) -> list[Opening]:
        async with store.session() as session:
            rows = await session.execute(
                select(AuditEvent)
                .where(AuditEvent.action == OPENED, AuditEvent.conversation_id == cid)
                .order_by(AuditEvent.seq.desc())
                .limit(SHOWN_OPENINGS)
            )
            return [_opening(row) for row in rows.scalars()]

    # -- search ----------------------------------------------------------------------

    async def search(page: Page) -> Response:
        _ = page.gettext
        raw = page.request.query_params.get("address")
        if raw is None:
            return page.render("agent_search.html", address="", results=None, errors=[])
        address = raw.strip().lower()
        if not (3 <= len(address) <= 320 and "@" in address and " " not in address):
            return page.render(
                "agent_search.html",
                status=400,
                address=raw[:320],
                results=None,
                errors=[_("Enter the recipient's full email address.")],
            )
        async with store.session() as session:
            rows = await session.execute(
                select(Conversation)
                .where(Conversation.recipient == address)
                .order_by(Conversation.last_message_at.desc())
                .limit(LISTED)
            )
            results = await _summaries(session, list(rows.scalars()), ttl)
        await page.log("staff.search", details={"address": address, "results": len(results)})
        return page.render(
            "agent_search.html", address=address, results=results, errors=[], now=page.now
        )

    # -- metadata --------------------------------------------------------------------

    async def metadata_page(page: Page, cid: int, *, status: int = 200, **context: Any) -> Response:
        found = await summary(cid)
        context.setdefault("errors", [])
        context.setdefault("reason", "")
        context.setdefault("case_ref", "")
        context.setdefault("errors_for", "")
        today = page.now.astimezone(zone).date()
        response = page.render(
            "agent_conversation.html",
            status=status,
            c=found,
            state=found.state(page.now),
            openings=await openings(cid),
            now=page.now,
            done=page.request.query_params.get("done", ""),
            reason_min=REASON_MIN,
            reason_max=REASON_MAX,
            earliest=(today + timedelta(days=1)).isoformat(),
            latest=(today + timedelta(days=MAX_EXPIRY_DAYS)).isoformat(),
            keep_until=_keep_until(found.expires_at, zone),
            **context,
        )
        return response

    async def show(page: Page) -> Response:
        cid = conversation_id(page)
        await summary(cid)  # 404 before anything is recorded
        await page.log("staff.conversation_viewed", conversation_id=cid)
        return await metadata_page(page, cid)

    # -- content ---------------------------------------------------------------------

    async def open_content(page: Page) -> Response:
        _ = page.gettext
        cid = conversation_id(page)
        purpose, errors = read_purpose(page.form, _)
        found = await summary(cid)
        if purpose is None:
            return await metadata_page(
                page,
                cid,
                status=400,
                errors=errors,
                errors_for="open",
                reason=page.text("reason", REASON_MAX),
                case_ref=page.text("case_ref", 64),
            )
        if found.state(page.now) != "open":
            return await metadata_page(
                page,
                cid,
                status=409,
                errors=[_("This conversation has no content to open any more.")],
                errors_for="open",
            )
        async with store.session() as session:
            rows = (
                await session.execute(
                    select(
                        Message.id,
                        ConversationMessage.direction,
                        Message.kek_id,
                        Message.wrapped_key,
                        Message.content,
                    )
                    .join(Message, Message.id == ConversationMessage.message_id)
                    .where(ConversationMessage.conversation_id == cid)
                    .order_by(ConversationMessage.id)
                )
            ).all()
        shown = _open_messages(console.keyring, list(rows))
        earlier = await openings(cid)

        def record(session: Session) -> int:
            return page.audit(
                session,
                OPENED,
                conversation_id=cid,
                details={
                    "reason": purpose.reason,
                    "case_ref": purpose.case_ref,
                    "messages": len(shown),
                },
            )

        opening = await store.write(record)
        response = page.render(
            "agent_content.html",
            c=found,
            messages=shown,
            purpose=purpose,
            opened_at=page.now,
            opening=opening,
            earlier=earlier,
            grant_minutes=GRANT_MINUTES,
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    async def download(page: Page) -> Response:
        _ = page.gettext
        cid = conversation_id(page)
        message_id: str = page.request.path_params["message"]
        index: int = page.request.path_params["index"]
        purpose, _errors = read_purpose(page.form, _)
        opening_text = page.text("opening", 20)
        if purpose is None or not opening_text.isdigit() or len(opening_text) > 18:
            return page.error(400)
        found = await summary(cid)
        if found.state(page.now) != "open":
            raise HTTPException(404)
        async with store.session() as session:
            granted = (
                await session.execute(
                    select(AuditEvent).where(
                        AuditEvent.seq == int(opening_text),
                        AuditEvent.action == OPENED,
                        AuditEvent.actor == page.member.email,
                        AuditEvent.conversation_id == cid,
                        AuditEvent.at >= page.now - timedelta(minutes=GRANT_MINUTES),
                    )
                )
            ).scalar_one_or_none()
            row = (
                await session.execute(
                    select(Message.id, Message.kek_id, Message.wrapped_key, Message.content)
                    .join(ConversationMessage, ConversationMessage.message_id == Message.id)
                    .where(
                        ConversationMessage.conversation_id == cid,
                        Message.id == message_id[:32],
                    )
                )
            ).first()
        stated = _opening(granted) if granted is not None else None
        if stated is None or (stated.reason, stated.case_ref) != (
            purpose.reason,
            purpose.case_ref,
        ):
            # No opening of this conversation by this member for this purpose, or too long
            # ago: open the conversation again.
            return page.render(
                "notice.html",
                status=403,
                title=_("Open the conversation again"),
                text=_(
                    "Attachments can be downloaded for {minutes} minutes after the conversation "
                    "was opened, for the purpose stated then."
                ).format(minutes=GRANT_MINUTES),
            )
        if row is None:
            raise HTTPException(404)
        mid, kek, wrapped, content = row
        try:
            info, data = open_attachment(console.keyring.open(mid, kek, wrapped, content), index)
        except LookupError:
            raise HTTPException(404) from None

        def record(session: Session) -> None:
            page.audit(
                session,
                "staff.download",
                conversation_id=cid,
                message_id=mid,
                details={
                    "opening": stated.seq,
                    "reason": purpose.reason,
                    "case_ref": purpose.case_ref,
                    "attachment": index,
                    "size": len(data),
                },
            )

        await store.write(record)
        response = Response(data, media_type="application/octet-stream")
        response.headers["Content-Disposition"] = content_disposition(info.name)
        response.headers["Cache-Control"] = "no-store"
        return response

    # -- sender actions ----------------------------------------------------------------

    async def withdraw(page: Page) -> Response:
        _ = page.gettext
        cid = conversation_id(page)
        await summary(cid)
        reason = " ".join(page.text("reason", lifecycle.MAX_REASON).split())
        if not reason:
            return await metadata_page(
                page,
                cid,
                status=400,
                errors=[_("Give the reason for withdrawing: it goes to the audit log.")],
                errors_for="withdraw",
            )
        if len(reason) > lifecycle.MAX_REASON:
            return await metadata_page(
                page,
                cid,
                status=400,
                errors=[
                    _("The reason is longer than {limit} characters.").format(
                        limit=lifecycle.MAX_REASON
                    )
                ],
                errors_for="withdraw",
            )
        try:
            await store.write(
                lambda session: lifecycle.withdraw(
                    session,
                    cid,
                    actor=page.member.email,
                    reason=reason,
                    at=page.now,
                    client=page.member.client,
                )
            )
        except LifecycleError as exc:
            return await metadata_page(
                page, cid, status=409, errors=[str(exc)], errors_for="withdraw"
            )
        # The destroyed keys' old page images leave the SQLite WAL now, not at the next
        # retention run.
        await lifecycle.checkpoint(store)
        return page.redirect(f"{SEARCH}/{cid}?done=withdrawn")

    async def expiry(page: Page) -> Response:
        _ = page.gettext
        cid = conversation_id(page)
        await summary(cid)
        reason = " ".join(page.text("reason", lifecycle.MAX_REASON).split())
        day_text = page.text("keep_until", 10).strip()
        today = page.now.astimezone(zone).date()
        errors = []
        try:
            day: date | None = date.fromisoformat(day_text) if len(day_text) == 10 else None
        except ValueError:
            day = None
        if day is None:
            errors.append(_("Give the last day to keep the conversation (YYYY-MM-DD)."))
        elif day <= today:
            errors.append(_("The date must be in the future."))
        elif day > today + timedelta(days=MAX_EXPIRY_DAYS):
            errors.append(
                _("The date can be at most {days} days from today.").format(days=MAX_EXPIRY_DAYS)
            )
        if not reason:
            errors.append(_("Give the reason for the change: it goes to the audit log."))
        elif len(reason) > lifecycle.MAX_REASON:
            errors.append(
                _("The reason is longer than {limit} characters.").format(
                    limit=lifecycle.MAX_REASON
                )
            )
        if errors or day is None:
            return await metadata_page(page, cid, status=400, errors=errors, errors_for="expiry")
        # Kept through the whole of the chosen day: it expires at the next local midnight.
        expires_at = datetime.combine(day + timedelta(days=1), time(), zone).astimezone(UTC)
        try:
            await store.write(
                lambda session: lifecycle.set_expiry(
                    session,
                    cid,
                    expires_at=expires_at,
                    actor=page.member.email,
                    at=page.now,
                    client=page.member.client,
                    reason=reason,
                )
            )
        except LifecycleError as exc:
            return await metadata_page(
                page, cid, status=409, errors=[str(exc)], errors_for="expiry"
            )
        return page.redirect(f"{SEARCH}/{cid}?done=expiry")

    one = f"{SEARCH}/{{conversation:int}}"
    post = ("POST",)
    return [
        console.page(SEARCH, search, roles=AGENT),
        console.page(one, show, roles=AGENT),
        console.page(f"{one}/open", open_content, roles=AGENT, methods=post),
        console.page(
            f"{one}/messages/{{message:str}}/attachments/{{index:int}}",
            download,
            roles=AGENT,
            methods=post,
        ),
        console.page(f"{one}/withdraw", withdraw, roles=AGENT, methods=post),
        console.page(f"{one}/expiry", expiry, roles=AGENT, methods=post),
    ]


def _keep_until(expires_at: datetime, zone: ZoneInfo) -> str:
    """The last whole day a conversation is kept, as the expiry form shows it."""
    local = expires_at.astimezone(zone)
    last = local.date() - timedelta(days=1) if local.time() == time() else local.date()
    return last.isoformat()
