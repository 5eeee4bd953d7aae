"""The ``sigillo`` command. Operations never prompt: scripts run them."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from typing import Annotated, Any

import typer
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, OperationalError

from sigillo import logs
from sigillo.commands import audit, check, dkim, domains, keys, staff, subject, tlsrpt
from sigillo.commands.common import (
    ConfigOption,
    JsonOption,
    emit,
    fail,
    open_store,
    run,
    settings_from,
)
from sigillo.gateway.records import attempt_record
from sigillo.store.db import Store, StoreUnavailable, database_exists
from sigillo.store.models import Attempt, Job, JobState, Message

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
message_app = typer.Typer(no_args_is_help=True, help="Accepted messages.")
app.add_typer(db_app, name="db")
app.add_typer(message_app, name="message")
app.add_typer(audit.app, name="audit")
app.add_typer(dkim.app, name="dkim")
app.add_typer(keys.app, name="keys")
app.add_typer(staff.app, name="staff")
app.add_typer(subject.app, name="subject")
app.add_typer(tlsrpt.app, name="tlsrpt")
app.command("check")(check.check)
app.command("domains")(domains.domains)


@app.command()
def serve(
    config: ConfigOption = None,
    role: Annotated[
        str, typer.Option(help="Comma-separated roles: smtp, worker, portal")
    ] = "smtp,worker,portal",
) -> None:
    """Run sigillo: SMTP listener, delivery worker and portal (all by default)."""
    from sigillo.server import ROLES
    from sigillo.server import serve as run_serve

    settings = settings_from(config)
    roles = [r.strip() for r in role.split(",") if r.strip()]
    unknown = set(roles) - set(ROLES)
    if unknown or not roles:
        fail(f"unknown role(s) {sorted(unknown)}; choose from {', '.join(ROLES)}", 2)
    run(lambda: run_serve(settings, roles))


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Bring the database schema to the version this sigillo needs."""
    from sigillo.store import migrate

    settings = settings_from(config)

    async def go() -> tuple[str | None, str | None]:
        store = Store(settings.storage.database_url)
        try:
            await migrate.upgrade(store)
            return await migrate.revision(store)
        finally:
            await store.close()

    current, _ = run(go)
    typer.echo(f"database at revision {current}")


def _job_dict(job: Job, attempts: list[Attempt]) -> dict[str, Any]:
    return {
        "job": job.id,
        "kind": job.kind.value,
        "recipient": job.recipient,
        "state": job.state.value,
        "reason": job.reason,
        "attempts": job.attempts,
        "created_at": job.created_at.isoformat(),
        "next_attempt_at": job.next_attempt_at.isoformat()
        if job.state is JobState.QUEUED
        else None,
        "expires_at": job.expires_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "message": job.message_id,
        "conversation": job.conversation_id,
        "history": [attempt_record(a) for a in attempts],
    }


async def _jobs_with_attempts(store: Store, *where: Any) -> list[dict[str, Any]]:
    async with store.session() as session:
        jobs = (await session.execute(select(Job).where(*where).order_by(Job.id))).scalars().all()
        ids = [j.id for j in jobs]
        attempts: dict[int, list[Attempt]] = {i: [] for i in ids}
        if ids:
            rows = await session.execute(
                select(Attempt).where(Attempt.job_id.in_(ids)).order_by(Attempt.id)
            )
            for a in rows.scalars():
                attempts[a.job_id].append(a)
    return [_job_dict(j, attempts[j.id]) for j in jobs]


@message_app.command("show")
def message_show(message_id: str, config: ConfigOption = None, json_: JsonOption = False) -> None:
    """Envelope and per-recipient delivery records of one message (never its content)."""
    settings = settings_from(config)

    async def go() -> dict[str, Any] | None:
        store = await open_store(settings)
        try:
            async with store.session() as session:
                msg = await session.get(Message, message_id)
            if msg is None:
                return None
            jobs = await _jobs_with_attempts(store, Job.message_id == message_id)
            return {
                "id": msg.id,
                "received_at": msg.received_at.isoformat(),
                "mail_from": msg.mail_from,
                "client": msg.client_address,
                "size": msg.size,
                "recipients": [j for j in jobs if j["kind"] == "deliver"],
                "notifications_and_dsns": [j for j in jobs if j["kind"] != "deliver"],
            }
        finally:
            await store.close()

    data = run(go)
    if data is None:
        fail(f"no message {message_id}")
    emit(data, json_)


@app.command("queue")
def queue_cmd(
    config: ConfigOption = None,
    json_: JsonOption = False,
    all_: Annotated[bool, typer.Option("--all", help="Include finished jobs")] = False,
) -> None:
    """Jobs waiting or held, with counts of every state."""
    settings = settings_from(config)

    async def go() -> dict[str, Any]:
        store = await open_store(settings)
        try:
            async with store.session() as session:
                counts = await session.execute(
                    select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
                )
                summary: dict[str, dict[str, int]] = {}
                for kind, state, n in counts:
                    summary.setdefault(kind.value, {})[state.value] = n
            where = [] if all_ else [Job.state.in_([JobState.QUEUED, JobState.HELD])]
            return {"counts": summary, "jobs": await _jobs_with_attempts(store, *where)}
        finally:
            await store.close()

    emit(run(go), json_)


@app.command()
def probe(domain: str, config: ConfigOption = None, json_: JsonOption = False) -> None:
    """What the delivery worker would decide for DOMAIN right now (no mail is sent): each
    policy layer's finding (override, DANE, MTA-STS, default) and the decision."""
    import tempfile

    from sigillo.gateway.delivery import Deliverer
    from sigillo.policies import DomainPolicies
    from sigillo.store import migrate

    settings = settings_from(config)

    async def go() -> dict[str, Any]:
        # The console's domain policies and the MTA-STS cache count as they would for the
        # worker; without a database the answer rests on the config file and a throw-away
        # cache, and says so.
        notes = []
        scratch: tempfile.TemporaryDirectory[str] | None = None
        store: Store | None = None
        try:
            if not database_exists(settings.storage.database_url):
                raise StoreUnavailable("no database yet")
            store = await open_store(settings)
            console = (await DomainPolicies.load(store)).tls()
        except (StoreUnavailable, OSError, OperationalError, DBAPIError) as exc:
            if store is not None:
                await store.close()
            notes.append(f"console policies not read: {str(exc).splitlines()[0]}")
            console = {}
            scratch = tempfile.TemporaryDirectory(prefix="sigillo-probe-")
            store = Store(f"sqlite:///{scratch.name}/probe.db")
            await migrate.upgrade(store)
        deliverer = Deliverer.wired(settings, store)
        deliverer.console = console
        try:
            result = await deliverer.probe(domain.lower().rstrip("."))
        finally:
            await deliverer.close()
            await store.close()
            if scratch is not None:
                scratch.cleanup()
        decision = result.results[0]
        return {
            "domain": domain,
            "policy": result.policy.level.label,
            "policy_source": result.policy.source,
            "layers": result.layers(),
            "decision": decision.outcome.value,
            "authorised_by": result.authority,
            "reason": decision.reason,
            "mx_host": result.mx_host,
            "mx_ip": result.mx_ip,
            "tls": asdict(result.tls) if result.tls else None,
            "trail": result.trail,
            **({"warning": "; ".join(notes)} if notes else {}),
        }

    emit(run(go), json_)


def main() -> None:
    # Everything sigillo writes (database, WAL, keys) holds personal data: private by default.
    os.umask(0o077)
    logs.configure()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
