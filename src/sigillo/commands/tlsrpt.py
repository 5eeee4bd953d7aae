"""``sigillo tlsrpt``: the daily TLS reports (RFC 8460) sigillo sends to recipient domains.
Never prompts, never sends: ``show`` prints what the worker would send."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any

import typer
from sqlalchemy import select

from sigillo.commands.common import (
    ConfigOption,
    JsonOption,
    emit,
    fail,
    open_store,
    run,
    settings_from,
)
from sigillo.gateway import tlsrpt
from sigillo.gateway.dnssec import SecureResolver
from sigillo.store.models import TLSReportSent

app = typer.Typer(no_args_is_help=True, help="TLS reports (RFC 8460) to recipient domains.")

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}\Z")


def parse_day(value: str) -> date:
    """``YYYY-MM-DD``, a real calendar day; ValueError says what is wrong."""
    try:
        if not _DAY.match(value):
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--date {value!r} is not a day YYYY-MM-DD") from None


@app.command("show")
def show(
    day: Annotated[str, typer.Option("--date", help="The UTC day reported, YYYY-MM-DD")],
    config: ConfigOption = None,
    json_: JsonOption = False,
) -> None:
    """For each domain with sessions counted that day: its report as it would be sent, where
    to (its ``_smtp._tls`` record, looked up now) and what was already done. Sends nothing."""
    try:
        wanted = parse_day(day)
    except ValueError as exc:
        fail(str(exc), 2)
    settings = settings_from(config)

    async def go() -> dict[str, Any]:
        store = await open_store(settings)
        try:
            counted = await tlsrpt.counts_for(store, wanted)
            async with store.session() as session:
                rows = await session.execute(
                    select(TLSReportSent).where(TLSReportSent.day == wanted.isoformat())
                )
                sent = {r.policy_domain: r for r in rows.scalars()}
        finally:
            await store.close()
        resolver = SecureResolver(settings.dns)
        domains: list[dict[str, Any]] = []
        for domain, counts in sorted(counted.items()):
            record = await tlsrpt.discover(resolver, domain)
            done = sent.get(domain)
            report_id = tlsrpt.report_id_for(wanted, domain, settings)
            domains.append(
                {
                    "domain": domain,
                    "rua": list(record.rua) if record else [],
                    "rua_problem": (
                        record.problem if record else "DNS did not answer for _smtp._tls"
                    ),
                    "sent": (
                        {"at": done.sent_at.isoformat(), "outcome": done.outcome} if done else None
                    ),
                    "report": tlsrpt.build_report(wanted, domain, counts, settings, report_id),
                }
            )
        return {"date": wanted.isoformat(), "enabled": settings.tlsrpt.enabled, "domains": domains}

    emit(run(go), json_)
