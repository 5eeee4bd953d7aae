"""The dashboard (every role): how mail left the gateway over the last days, which domains
sent it to the portal and why, and how recipients used the portal. Figures only: nothing
here names a person or shows content."""

from __future__ import annotations

from collections.abc import Callable

from babel.dates import format_date
from babel.numbers import format_decimal, format_percent
from starlette.responses import Response
from starlette.routing import Route

from sigillo.staff import charts, stats
from sigillo.staff.charts import Series
from sigillo.staff.pages.base import N_, Console, NavItem, Page
from sigillo.staff.roles import ORDER
from sigillo.staff.stats import Method, PortalReason, Window

PATH = "/staff/dashboard"
EVERYONE = frozenset(ORDER)
PERIODS = (7, 30, 90)
"""Windows offered, in days; 30 unless the page is asked for another."""

NAV = (NavItem(PATH, N_("Dashboard"), EVERYONE),)

METHOD_COLOURS = {
    Method.VERIFIED: charts.BLUE,
    Method.ENCRYPT: charts.GREEN,
    Method.PORTAL: charts.VERMILLION,
    Method.BOUNCED: charts.GREY,
}
REASON_COLOURS = {
    PortalReason.NO_STARTTLS: charts.VERMILLION,
    PortalReason.CERTIFICATE: charts.BLUE,
    PortalReason.HANDSHAKE: charts.PURPLE,
    PortalReason.POLICY: charts.GREEN,
    PortalReason.OTHER: charts.GREY,
}


def method_labels(_: Callable[[str], str]) -> dict[Method, str]:
    return {
        Method.VERIFIED: _("TLS verified"),
        Method.ENCRYPT: _("TLS encrypt-only"),
        Method.PORTAL: _("Portal"),
        Method.BOUNCED: _("Bounced"),
    }


def reason_labels(_: Callable[[str], str]) -> dict[PortalReason, str]:
    return {
        PortalReason.NO_STARTTLS: _("No STARTTLS"),
        PortalReason.CERTIFICATE: _("Certificate failed"),
        PortalReason.HANDSHAKE: _("Handshake failed"),
        PortalReason.POLICY: _("Policy says portal"),
        PortalReason.OTHER: _("Other"),
    }


def routes(console: Console) -> list[Route]:
    async def dashboard(page: Page) -> Response:
        _ = page.gettext
        asked = page.request.query_params.get("days", "")
        days = int(asked) if asked.isdigit() and int(asked) in PERIODS else 30
        window = Window.ending(page.now, console.settings.portal.timezone, days)
        board = await stats.dashboard(console.store, window)
        lang = page.member.language

        def number(value: float) -> str:
            return format_decimal(value, locale=lang)

        def percent(value: float) -> str:
            return format_percent(value, format="#,##0.0%", locale=lang)

        day_labels = [format_date(d, "d MMM", locale=lang) for d in window.dates]
        methods = method_labels(_)
        reasons = reason_labels(_)
        method_series = [Series(methods[m], METHOD_COLOURS[m]) for m in Method]
        reason_series = [Series(reasons[r], REASON_COLOURS[r]) for r in PortalReason]
        delivery, portal, activity = board.delivery, board.portal, board.activity
        totals = delivery.totals
        no_data = _("Nothing in this period")
        period = _("{first} to {last}").format(first=day_labels[0], last=day_labels[-1])

        per_day = charts.stacked_columns(
            "per-day",
            title=_("Copies per day by delivery method"),
            desc=_(
                "{total} copies from {period}: {verified} TLS verified, {encrypt} TLS "
                "encrypt-only, {portal} portal, {bounced} bounced."
            ).format(
                total=number(totals.total),
                period=period,
                verified=number(totals.verified),
                encrypt=number(totals.encrypt),
                portal=number(totals.portal),
                bounced=number(totals.bounced),
            ),
            categories=day_labels,
            series=method_series,
            values=[[d.counts.get(m) for m in Method] for d in delivery.days],
            category_header=_("Day"),
            total_header=_("Total"),
            no_data=no_data,
            number=number,
        )
        share = charts.share_bar(
            "tls-share",
            title=_("Share of copies by delivery method"),
            desc=(
                _("{share} of copies were delivered over TLS.").format(
                    share=percent(delivery.tls_share)
                )
                if delivery.tls_share is not None
                else no_data
            ),
            series=method_series,
            values=[totals.get(m) for m in Method],
            label_header=_("Delivery method"),
            count_header=_("Copies"),
            share_header=_("Share"),
            no_data=no_data,
            number=number,
            percent=percent,
        )
        top = charts.stacked_bars(
            "portal-domains",
            title=_("Domains most often sent to the portal, and why"),
            desc=_(
                "{total} copies to {domains} domains went to the portal; the {shown} "
                "domains with the most are shown."
            ).format(
                total=number(portal.total),
                domains=number(portal.domain_count),
                shown=number(len(portal.domains)),
            ),
            categories=[d.domain for d in portal.domains],
            series=reason_series,
            values=[[n for _, n in d.reasons] for d in portal.domains],
            category_header=_("Domain"),
            total_header=_("Total"),
            no_data=no_data,
            number=number,
        )
        usage = charts.lines(
            "portal-activity",
            title=_("Portal registrations and replies per day"),
            desc=_("{registrations} registrations and {replies} replies from {period}.").format(
                registrations=number(activity.registrations),
                replies=number(activity.replies),
                period=period,
            ),
            categories=day_labels,
            series=[
                Series(_("Registrations"), charts.BLUE),
                Series(_("Replies"), charts.VERMILLION, dashed=True),
            ],
            values=[[d.registrations, d.replies] for d in activity.days],
            category_header=_("Day"),
            no_data=no_data,
            number=number,
        )
        return page.render(
            "dashboard.html",
            days=days,
            periods=PERIODS,
            period=period,
            totals=totals,
            tls_share=percent(delivery.tls_share) if delivery.tls_share is not None else "–",
            portal_total=number(portal.total),
            registrations=number(activity.registrations),
            replies=number(activity.replies),
            number=number,
            figures=[per_day, share, top, usage],
            reasons=[(reasons[r], number(n)) for r, n in portal.reasons],
        )

    return [console.page(PATH, dashboard, roles=EVERYONE)]
