"""The delivery worker: claims due jobs, runs them, records every attempt.

Network work happens outside any transaction; each result is written in one transaction
together with what it implies (a conversation and a notification job for a portal copy, a
DSN job for a bounce). If the worker dies in between, the lease expires and the job runs again:
delivery is at least once, never at most once.

Mail sigillo writes itself (notifications, DSNs, account mail, automatic answers) is
DKIM-signed here, at send time, by ``own_mail``; mail it carries for someone else (the
organisation's messages, a recipient's portal reply) never is.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from datetime import datetime
from email.headerregistry import Address
from email.parser import BytesHeaderParser
from email.policy import default

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from sigillo.config import Settings
from sigillo.dkim import DkimSigner
from sigillo.gateway import queue, tlsrpt
from sigillo.gateway.delivery import Deliverer, GroupResult, Outcome, RecipientResult
from sigillo.gateway.dsn import FailedRecipient, build_dsn, dsn_bytes
from sigillo.gateway.relay import send_to_relay
from sigillo.gateway.smtpclient import SessionError
from sigillo.notify import (
    Notification,
    SendResult,
    new_token,
    send_opportunistic,
)
from sigillo.policies import DomainPolicies
from sigillo.portal.accounts import phrase_of
from sigillo.portal.handoff import hand_off
from sigillo.portal.outbox import OWN_WORDS
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import (
    Account,
    Attempt,
    ConversationMessage,
    Job,
    JobKind,
    JobState,
    Message,
    PortalToken,
)

log = structlog.get_logger("sigillo.worker")

POLICY_REFRESH = 30.0
"""Seconds between reloads of the console's domain policies: a domain set to ``portal`` in
the console stops receiving content over TLS within this long."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        keyring: Keyring,
        *,
        signer: DkimSigner | None = None,
    ) -> None:
        """``signer``: sigillo's DKIM key; by default the one at ``notify.dkim_key_file``,
        created there on first start. A key file that is not a key raises ``DkimKeyError``."""
        self.settings = settings
        self.store = store
        self.keyring = keyring
        notify = settings.notify
        self.signer = signer or DkimSigner.load_or_create(
            notify.dkim_key_file, notify.dkim_selector, notify.domain
        )
        self.name = worker_name()
        self.deliverer = Deliverer.wired(settings, store)
        self.resolver = self.deliverer.resolver  # notifications resolve MX the same way
        self.wake = asyncio.Event()
        self._policies_loaded = -POLICY_REFRESH
        self._tasks: set[asyncio.Task[None]] = set()
        """Claims being worked on; at most ``delivery.concurrency``."""

    def notify_queued(self) -> None:
        self.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        log.info("worker_started", worker=self.name)
        poll = self.settings.delivery.poll_interval.total_seconds()
        while not stop.is_set():
            self.wake.clear()
            if time.monotonic() - self._policies_loaded >= POLICY_REFRESH:
                await self.refresh_policies()
            claimed = await self.poll_once()
            if claimed:
                continue
            waiters = [asyncio.ensure_future(e.wait()) for e in (self.wake, stop)]
            await asyncio.wait(waiters, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            await self.deliverer.connections.expire()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.deliverer.close()
        log.info("worker_stopped", worker=self.name)

    async def refresh_policies(self) -> None:
        """Load the console's TLS policies into the deliverer. On a database error the last
        snapshot stays in force (the config file's overrides never depend on the database)
        and the load is tried again ``POLICY_REFRESH`` later."""
        self._policies_loaded = time.monotonic()
        try:
            policies = await DomainPolicies.load(self.store)
        except Exception as exc:  # a database outage must not stop deliveries under the file
            log.error("policies_unavailable", error=str(exc).splitlines()[0])
            return
        tls = policies.tls()
        if tls != self.deliverer.console:
            log.info("tls_policies_loaded", domains=len(tls))
        self.deliverer.console = tls

    async def poll_once(self) -> int:
        """Claim as many groups as there are free slots and start them; returns how many."""
        free = self.settings.delivery.concurrency - len(self._tasks)
        if free <= 0:
            return 0  # a finishing task wakes the loop
        try:
            claims = await queue.claim(self.store, self.settings.delivery, self.name, free)
        except Exception as exc:  # a database outage must not kill the worker
            log.error("claim_failed", error=str(exc).splitlines()[0])
            await asyncio.sleep(self.settings.delivery.poll_interval.total_seconds())
            return 0
        started = 0
        for claim in claims:
            for job in claim.held:
                log.error("job_held", job=job.id, reason=job.reason)
            if not claim.jobs:
                continue
            task = asyncio.create_task(self._run(claim))
            self._tasks.add(task)
            task.add_done_callback(self._finished)
            started += 1
        return started

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.wake.set()  # a slot is free, and the result may have queued new jobs

    async def _run(self, claim: queue.Claim) -> None:
        try:
            if claim.kind is JobKind.DELIVER:
                await self.deliver(claim)
            elif claim.kind is JobKind.NOTIFY:
                await self.notify(claim)
            elif claim.kind is JobKind.DSN:
                await self.send_dsn(claim)
            elif claim.kind is JobKind.RELAY:
                await self.relay(claim)
            else:
                await self.send_mail(claim)
        except Exception:
            # The lease will lapse and the job comes back; repeated crashes set it aside.
            log.exception("job_crashed", jobs=[j.id for j in claim.jobs])

    # -- message content ---------------------------------------------------------------

    async def deliver(self, claim: queue.Claim) -> None:
        first = claim.jobs[0]
        message = claim.message
        if message is None:
            raise LookupError(f"message {first.message_id} of job {first.id} not found")
        content = queue.open_content(self.keyring, message)
        recipients = [job.recipient for job in claim.jobs]
        # Finish well inside the lease, or another worker could start a second copy.
        budget = self.settings.delivery.lease.total_seconds() * 0.8
        try:
            async with asyncio.timeout(budget):
                result = await self.deliverer.deliver(
                    first.domain, message.mail_from, recipients, content, message.requiretls
                )
        except TimeoutError:
            result = self.deliverer.timed_out(first.domain, recipients, budget)
        await self.record_delivery(claim, message, content, result)

    async def record_delivery(
        self, claim: queue.Claim, message: Message, content: bytes, result: GroupResult
    ) -> None:
        now = queue.utcnow()
        by_rcpt = {r.recipient: r for r in result.results}
        delivery = self.settings.delivery

        def record(session: Session) -> None:
            if self.settings.tlsrpt.enabled:
                for counted in result.sessions:
                    tlsrpt.count(session, counted, now)
            if all(r.outcome is Outcome.TLS for r in result.results):
                # The common case in one statement; the attempt rows join the group commit.
                reason = result.results[0].reason
                for job_id in queue.mark_delivered(session, claim, now, reason):
                    job = next(j for j in claim.jobs if j.id == job_id)
                    attempt = _attempt(now, by_rcpt[job.recipient], result)
                    attempt.job_id = job_id
                    session.add(attempt)
                return
            for job in queue.owned(session, claim):
                outcome = by_rcpt[job.recipient]
                attempt = _attempt(now, outcome, result)
                if outcome.outcome is Outcome.TLS:
                    queue.finish(session, job, JobState.DELIVERED, now, outcome.reason, attempt)
                elif outcome.outcome is Outcome.PORTAL:
                    hand_off(session, delivery, message.id, job.recipient, job.domain, content, now)
                    queue.finish(session, job, JobState.PORTAL, now, outcome.reason, attempt)
                elif outcome.outcome is Outcome.DEFERRED:
                    if not queue.defer(session, job, delivery, now, outcome.reason, attempt):
                        expired = f"queue lifetime expired; last error: {outcome.reason}"
                        job.state, job.finished_at, job.reason = JobState.BOUNCED, now, expired
                        self._queue_dsn(session, job, message, now)
                else:
                    queue.finish(session, job, JobState.BOUNCED, now, outcome.reason, attempt)
                    self._queue_dsn(session, job, message, now)

        await self.store.write(record)
        log.info(
            "delivered",
            message=message.id,
            domain=claim.jobs[0].domain,
            outcomes={o.recipient: o.outcome.value for o in result.results},
            mx=result.mx_host,
            tls=result.tls.version if result.tls else None,
            tls_policy=result.authority,
        )

    def _queue_dsn(self, session: Session, job: Job, message: Message, now: datetime) -> None:
        dsn = queue.dsn_job(job, message.mail_from, now, self.settings.delivery)
        if dsn is not None:
            session.add(dsn)

    # -- notifications -----------------------------------------------------------------

    async def notify(self, claim: queue.Claim) -> None:
        job = claim.jobs[0]
        if job.conversation_id is None:
            raise LookupError(f"notify job {job.id} has no conversation")
        now = queue.utcnow()
        token, digest = new_token()
        subject = None
        if self.settings.notify.include_subject:
            subject = await self._latest_subject(job.conversation_id)
        conversation_id = job.conversation_id

        def store_token(session: Session) -> None:
            session.add(
                PortalToken(
                    token_hash=digest,
                    conversation_id=conversation_id,
                    recipient=job.recipient,
                    created_at=now,
                )
            )

        await self.store.write(store_token)
        link = f"{self.settings.portal.base_url}/c/{token}"
        phrase = await self._phrase(job.recipient)
        notification = Notification(job.recipient, link, subject, phrase=phrase)
        data = notification.render(self.settings.notify.from_, self.settings.smtp.hostname, now)
        sent = await send_opportunistic(
            job.recipient, self.own_mail(data), self.settings, self.resolver
        )
        await self._record_simple(claim, _sent_attempt(sent, now), sent.outcome, sent.reason)

    async def _phrase(self, recipient: str) -> str | None:
        """The recipient's security phrase, if they chose one. A phrase that does not open
        (its key gone from the key file) fails the job rather than sending without it: mail
        of ours lacking the phrase is exactly what the recipient was told to distrust."""
        async with self.store.session() as session:
            row = await session.execute(select(Account).where(Account.address == recipient))
            account = row.scalars().first()
        return None if account is None else phrase_of(self.keyring, account)

    async def _latest_subject(self, conversation_id: int) -> str | None:
        async with self.store.session() as session:
            row = await session.execute(
                select(Message)
                .join(ConversationMessage, ConversationMessage.message_id == Message.id)
                .where(ConversationMessage.conversation_id == conversation_id)
                .order_by(ConversationMessage.id.desc())
                .limit(1)
            )
            message = row.scalars().first()
        if message is None:
            return None
        headers = BytesHeaderParser(policy=default).parsebytes(
            queue.open_content(self.keyring, message)
        )
        return str(headers.get("Subject", "")) or None

    # -- delivery status notifications -------------------------------------------------

    async def send_dsn(self, claim: queue.Claim) -> None:
        job = claim.jobs[0]
        if job.message_id is None or job.parent_id is None:
            raise LookupError(f"DSN job {job.id} has no message or no parent job")
        async with self.store.session() as session:
            message = await queue.load_message(session, job.message_id)
            parent = await session.get(Job, job.parent_id)
            if parent is None:
                raise LookupError(f"DSN job {job.id}: parent job {job.parent_id} missing")
            last = (
                (
                    await session.execute(
                        select(Attempt)
                        .where(Attempt.job_id == parent.id)
                        .order_by(Attempt.id.desc())
                    )
                )
                .scalars()
                .first()
            )
        original = queue.open_content(self.keyring, message)
        now = queue.utcnow()
        expired = bool(parent.reason and parent.reason.startswith("queue lifetime expired"))
        failed = FailedRecipient(
            address=parent.recipient,
            status="4.4.7" if expired else _dsn_status(last),
            action="failed",
            diagnostic=last.smtp_reply if last and last.smtp_reply else parent.reason,
            remote_mta=last.mx_host if last else None,
            last_attempt=last.at if last else None,
        )
        hostname = self.settings.smtp.hostname
        try:
            dsn = build_dsn(
                original=original,
                envelope_from=message.mail_from,
                reporting_mta=hostname,
                postmaster=f"MAILER-DAEMON@{hostname}",
                recipients=[failed],
                arrival=message.received_at,
                # A REQUIRETLS message's content never rides in a report that travels over
                # whatever TLS the sender's server manages (RFC 8689 section 4.3).
                include_content=self.settings.delivery.dsn_include_content
                and not message.requiretls,
                now=now,
            )
        except ValueError as exc:  # e.g. a sender address no report can be addressed to
            reason = f"cannot build a DSN: {exc}"
            await self._record_simple(
                claim, Attempt(at=now, outcome="failed", reason=reason), "failed", reason
            )
            return
        await self._via_relay(claim, "", self.own_mail(dsn_bytes(dsn)), now)

    # -- portal replies and account mail ------------------------------------------------

    async def relay(self, claim: queue.Claim) -> None:
        """A reply written in the portal goes to the staff member through the relay."""
        if claim.message is None:
            raise LookupError(f"relay job {claim.jobs[0].id} has no message")
        content = queue.open_content(self.keyring, claim.message)
        # Not signed: its From is the recipient's address, not ours, and its words and files
        # are theirs. A signature of the organisation's domain on it would vouch for text an
        # outsider wrote (a checker would call it the organisation's own mail).
        await self._via_relay(claim, self.settings.notify.from_, content, queue.utcnow())

    async def send_mail(self, claim: queue.Claim) -> None:
        job = claim.jobs[0]
        if claim.message is None:
            raise LookupError(f"mail job {job.id} has no message")
        content = queue.open_content(self.keyring, claim.message)
        now = queue.utcnow()
        if signs_queued_mail(content, claim.message.client_address, self.settings.notify.from_):
            content = self.own_mail(content)
        sent = await send_opportunistic(job.recipient, content, self.settings, self.resolver)
        await self._record_simple(claim, _sent_attempt(sent, now), sent.outcome, sent.reason)

    def own_mail(self, data: bytes) -> bytes:
        """``data``, mail sigillo wrote itself, with sigillo's DKIM signature."""
        return self.signer.sign(data)

    async def _via_relay(
        self, claim: queue.Claim, mail_from: str, data: bytes, now: datetime
    ) -> None:
        recipients = [job.recipient for job in claim.jobs]
        try:
            reply = await send_to_relay(self.settings, mail_from, recipients, data)
        except SessionError as exc:
            attempt = Attempt(at=now, outcome="deferred", reason=f"relay: {exc}")
            await self._record_simple(claim, attempt, "deferred", f"relay: {exc}")
            return
        outcome = (
            "sent"
            if 200 <= reply.code < 300
            else ("deferred" if 400 <= reply.code < 500 else "failed")
        )
        host, _ = self.settings.relay.address
        attempt = Attempt(
            at=now,
            outcome=outcome,
            reason=reply.line,
            mx_host=host,
            smtp_code=reply.code,
            smtp_reply=reply.line,
        )
        await self._record_simple(claim, attempt, outcome, reply.line)

    async def _record_simple(
        self, claim: queue.Claim, attempt: Attempt, outcome: str, reason: str
    ) -> None:
        now = attempt.at
        columns = {c.key: getattr(attempt, c.key) for c in Attempt.__table__.columns}

        def record(session: Session) -> None:
            for job in queue.owned(session, claim):
                attempt = Attempt(**columns)  # a fresh row per job (and per retry of the batch)
                if outcome == "sent":
                    queue.finish(session, job, JobState.DELIVERED, now, reason, attempt)
                elif outcome == "failed":
                    queue.finish(session, job, JobState.FAILED, now, reason, attempt)
                elif not queue.defer(session, job, self.settings.delivery, now, reason, attempt):
                    job.state, job.finished_at = JobState.FAILED, now
                    job.reason = f"queue lifetime expired; last error: {reason}"

        await self.store.write(record)


def signs_queued_mail(content: bytes, source: str, own_address: str) -> bool:
    """Whether queued mail (``JobKind.MAIL``) is sigillo's own words, to be signed.

    Account mail and automatic answers are (``source``, the message's client_address, says
    which wrote it). The copy of a portal reply is not, although it comes from our address:
    below our note it holds whatever its author typed and attached. Signed, anyone with a
    portal account could obtain the organisation's valid signature over text of their choosing
    and replay it to others as our mail (a signature survives resending). Unsigned, such a
    copy is judged like any stranger's mail."""
    if source not in OWN_WORDS:
        return False
    headers = BytesHeaderParser(policy=default).parsebytes(content)
    addresses: tuple[Address, ...] = getattr(headers.get("From"), "addresses", ())
    # Never sign mail that does not claim to come from us alone.
    return [a.addr_spec.lower() for a in addresses] == [own_address.lower()]


def _sent_attempt(sent: SendResult, now: datetime) -> Attempt:
    return Attempt(
        at=now,
        outcome=sent.outcome,
        reason=sent.reason,
        mx_host=sent.mx_host,
        mx_ip=sent.mx_ip,
        tls_version=sent.tls_version,
        smtp_code=sent.reply.code if sent.reply else None,
        smtp_reply=sent.reply.line if sent.reply else None,
    )


def _dsn_status(last: Attempt | None) -> str:
    if last and last.details and isinstance(last.details.get("status"), str):
        return str(last.details["status"])
    return "5.0.0"


def _attempt(now: datetime, outcome: RecipientResult, result: GroupResult) -> Attempt:
    tls = result.tls
    return Attempt(
        at=now,
        outcome=outcome.outcome.value,
        reason=outcome.reason,
        mx_host=result.mx_host,
        mx_ip=result.mx_ip,
        tls_version=tls.version if tls else None,
        tls_cipher=tls.cipher if tls else None,
        cert_verified=tls.verified if tls else None,
        verification=tls.verification if tls else None,
        tls_policy=result.authority if tls else None,
        smtp_code=outcome.reply.code if outcome.reply else None,
        smtp_reply=outcome.reply.line if outcome.reply else None,
        details={
            "status": outcome.status,
            "policy": result.policy.level.label,
            "policy_source": result.policy.source,
            "layers": result.layers(),
            "trail": list(result.trail),
        },
    )
