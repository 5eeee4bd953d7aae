"""The operator's pages: the queue, a job's delivery record, per-domain TLS outcomes, and
hold / retry / bounce.

Everything shown comes from the envelope and the delivery bookkeeping (jobs, attempts): the
sender and recipient addresses, MX hosts, TLS parameters, SMTP replies and the worker's
reasons. Message content is never read here, nor the subject, which is content too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route

from sigillo.gateway import queue
from sigillo.gateway.queue import QueueAction, QueueActionRefused
from sigillo.staff import stats
from sigillo.staff.pages.base import N_, Console, NavItem, Page
from sigillo.staff.stats import Window
from sigillo.store.models import Attempt, Job, JobKind, JobState, Message, StaffRole

OPERATOR = frozenset({StaffRole.OPERATOR})
QUEUE = "/staff/queue"
DOMAINS = "/staff/domains"
JOBS = "/staff/jobs"
LISTED = 200
"""Waiting or held jobs listed on the queue page; the counts cover all of them."""
MAX_ID = 2**31 - 1

NAV = (
    NavItem(QUEUE, N_("Queue"), OPERATOR),
    NavItem(DOMAINS, N_("TLS by domain"), OPERATOR),
)

ACTIONS = {"hold": QueueAction.HOLD, "retry": QueueAction.RELEASE, "bounce": QueueAction.BOUNCE}


@dataclass(frozen=True)
class JobRow:
    """A job as the operator sees it: envelope and bookkeeping, no content."""

    id: int
    kind: JobKind
    state: JobState
    recipient: str
    domain: str
    created_at: datetime
    next_attempt_at: datetime
    expires_at: datetime
    attempts: int
    crashes: int
    lease_until: datetime | None
    reason: str | None
    finished_at: datetime | None
    message_id: str | None
    parent_id: int | None
    conversation_id: int | None

    def leased(self, now: datetime) -> bool:
        return self.lease_until is not None and self.lease_until > now


_JOB_COLUMNS = (
    Job.id,
    Job.kind,
    Job.state,
    Job.recipient,
    Job.domain,
    Job.created_at,
    Job.next_attempt_at,
    Job.expires_at,
    Job.attempts,
    Job.crashes,
    Job.lease_until,
    Job.reason,
    Job.finished_at,
    Job.message_id,
    Job.parent_id,
    Job.conversation_id,
)


def _job_row(row: Any) -> JobRow:
    return JobRow(*tuple(row))


@dataclass(frozen=True)
class Envelope:
    """The message's envelope: who sent it, when, how large. Never its headers or body."""

    id: str
    mail_from: str
    received_at: datetime
    size: int
    client_address: str


@dataclass(frozen=True)
class AttemptRow:
    at: datetime
    outcome: str
    reason: str | None
    mx_host: str | None
    mx_ip: str | None
    tls_version: str | None
    tls_cipher: str | None
    cert_verified: bool | None
    verification: str | None
    smtp_code: int | None
    smtp_reply: str | None
    trail: tuple[dict[str, str], ...]
    policy: str | None


def _trail(details: dict[str, object] | None) -> tuple[dict[str, str], ...]:
    raw = details.get("trail") if details else None
    if not isinstance(raw, list):
        return ()
    return tuple(
        {str(k): str(v) for k, v in step.items()} for step in raw if isinstance(step, dict)
    )


def _attempt(row: Attempt) -> AttemptRow:
    policy = row.details.get("policy") if row.details else None
    return AttemptRow(
        row.at,
        row.outcome,
        row.reason,
        row.mx_host,
        row.mx_ip,
        row.tls_version,
        row.tls_cipher,
        row.cert_verified,
        row.verification,
        row.smtp_code,
        row.smtp_reply,
        _trail(row.details),
        str(policy) if policy is not None else None,
    )


def allowed_actions(job: JobRow, now: datetime) -> tuple[str, ...]:
    """The buttons the job page offers (``queue.operate`` decides again on submit)."""
    if job.leased(now):
        return ()
    offered = []
    if job.state is JobState.QUEUED:
        offered.append("hold")
    if job.state in (JobState.QUEUED, JobState.HELD):
        offered.append("retry")
        if job.kind is JobKind.DELIVER:
            offered.append("bounce")
    return tuple(offered)


def routes(console: Console) -> list[Route]:
    store = console.store

    async def queue_page(page: Page) -> Response:
        async with store.session() as session:
            counts = await session.execute(
                select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
            )
            table: dict[JobKind, dict[JobState, int]] = {}
            for kind, state, n in counts:
                table.setdefault(kind, {})[state] = int(n)
            waiting = await session.execute(
                select(*_JOB_COLUMNS)
                .where(Job.state.in_((JobState.QUEUED, JobState.HELD)))
                .order_by(Job.state.desc(), Job.next_attempt_at, Job.id)
                .limit(LISTED)
            )
            rows = [_job_row(row) for row in waiting]
        open_total = sum(
            n
            for by_state in table.values()
            for s, n in by_state.items()
            if s in (JobState.QUEUED, JobState.HELD)
        )
        return page.render(
            "operator_queue.html",
            kinds=[k for k in JobKind if k in table],
            states=list(JobState),
            counts=table,
            jobs=rows,
            open_total=open_total,
            listed=LISTED,
            now=page.now,
        )

    async def load(job_id: int) -> tuple[JobRow, Envelope | None, list[AttemptRow], list[JobRow]]:
        if job_id > MAX_ID:
            raise HTTPException(404)
        async with store.session() as session:
            found = (await session.execute(select(*_JOB_COLUMNS).where(Job.id == job_id))).first()
            if found is None:
                raise HTTPException(404)
            job = _job_row(found)
            envelope = None
            if job.message_id is not None:
                # Named columns only: the content (and its data key) is never loaded here.
                row = (
                    await session.execute(
                        select(
                            Message.id,
                            Message.mail_from,
                            Message.received_at,
                            Message.size,
                            Message.client_address,
                        ).where(Message.id == job.message_id)
                    )
                ).first()
                envelope = Envelope(*row) if row else None
            attempts = (
                await session.execute(
                    select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.id)
                )
            ).scalars()
            related_where = [Job.parent_id == job_id]
            if job.parent_id is not None:
                related_where.append(Job.id == job.parent_id)
            related = await session.execute(
                select(*_JOB_COLUMNS).where(or_(*related_where)).order_by(Job.id)
            )
            return job, envelope, [_attempt(a) for a in attempts], [_job_row(r) for r in related]

    async def render_job(page: Page, job_id: int, *, status: int = 200, **context: Any) -> Response:
        job, envelope, attempts, related = await load(job_id)
        context.setdefault("errors", [])
        context.setdefault("done", page.request.query_params.get("done", ""))
        return page.render(
            "operator_job.html",
            status=status,
            job=job,
            envelope=envelope,
            attempts=attempts,
            related=related,
            actions=allowed_actions(job, page.now),
            now=page.now,
            reason_limit=queue.REASON_LIMIT,
            **context,
        )

    async def job_page(page: Page) -> Response:
        return await render_job(page, page.request.path_params["job"])

    async def act(page: Page) -> Response:
        _ = page.gettext
        job_id: int = page.request.path_params["job"]
        name: str = page.request.path_params["action"]
        action = ACTIONS.get(name)
        if action is None or job_id > MAX_ID:
            raise HTTPException(404)
        reason = page.text("reason", queue.REASON_LIMIT)
        errors: list[str] = []
        if not reason.strip():
            errors.append(_("Give a reason: it goes to the audit log."))
        elif len(reason) > queue.REASON_LIMIT:
            errors.append(
                _("The reason is longer than {limit} characters.").format(limit=queue.REASON_LIMIT)
            )
        if not errors:
            try:
                await queue.operate(
                    store,
                    console.settings.delivery,
                    job_id,
                    action,
                    actor=page.member.email,
                    reason=reason,
                    client=page.member.client,
                    now=page.now,
                )
            except QueueActionRefused as exc:
                errors.append(str(exc))  # a job that does not exist: the page below is a 404
        if errors:
            return await render_job(page, job_id, status=409, errors=errors, reason=reason)
        return page.redirect(f"{JOBS}/{job_id}?done={name}")

    async def domains_page(page: Page) -> Response:
        window = Window.ending(page.now, console.settings.portal.timezone)
        rows = await stats.domain_outcomes(store, window)
        return page.render("operator_domains.html", rows=rows, window=window)

    return [
        console.page(QUEUE, queue_page, roles=OPERATOR),
        console.page(f"{JOBS}/{{job:int}}", job_page, roles=OPERATOR),
        console.page(f"{JOBS}/{{job:int}}/{{action:str}}", act, roles=OPERATOR, methods=("POST",)),
        console.page(DOMAINS, domains_page, roles=OPERATOR),
    ]
