"""The dashboard's figures on seeded data (both backends), and the page that draws them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from sigillo.staff import stats
from sigillo.staff.stats import Method, PortalReason, Window
from sigillo.store import migrate
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import JobState, StaffRole
from tests.staff import seed_pages as seed
from tests.staff.harness import ConsoleHarness

NOW = datetime(2025, 3, 31, 12, 0, tzinfo=UTC)
"""Rome is on summer time from 2025-03-30: the window spans a 23-hour day."""
ZONE = "Europe/Rome"


@pytest.fixture
async def stats_store(store_url: str) -> AsyncIterator[Store]:
    s = Store(store_url)
    await migrate.upgrade(s)
    yield s
    await s.close()


@pytest.fixture
def stats_keyring(tmp_path: Path) -> Keyring:
    return Keyring.load_or_create(tmp_path / "keys" / "sigillo.keys")


async def _seed(store: Store, keyring: Keyring) -> None:
    msg = await seed.message(store, keyring, NOW - timedelta(days=3))
    day1 = datetime(2025, 3, 29, 10, 0, tzinfo=UTC)  # 11:00 in Rome, 29 March
    day2 = datetime(2025, 3, 30, 22, 30, tzinfo=UTC)  # 00:30 in Rome, 31 March
    for i in range(3):
        await seed.copy(
            store,
            msg,
            f"v{i}@verified.example",
            state=JobState.DELIVERED,
            at=day1,
            reason="delivered over TLSv1.3 (verified)",
            verified=True,
            tls_version="TLSv1.3",
            outcome="tls",
        )
    for i in range(2):
        await seed.copy(
            store,
            msg,
            f"e{i}@legacy.example",
            state=JobState.DELIVERED,
            at=day2,
            reason="delivered over TLSv1.2 (encrypted)",
            verified=False,
            tls_version="TLSv1.2",
            outcome="tls",
        )
    for i in range(3):
        await seed.copy(
            store,
            msg,
            f"p{i}@plain.example",
            state=JobState.PORTAL,
            at=day2,
            reason=seed.NO_STARTTLS,
            outcome="portal",
        )
    await seed.copy(
        store,
        msg,
        "q@badcert.example",
        state=JobState.PORTAL,
        at=day1,
        reason=seed.BAD_CERT,
        outcome="portal",
    )
    await seed.copy(
        store,
        msg,
        "b@gone.example",
        state=JobState.BOUNCED,
        at=day1,
        reason="550 5.1.1 no such user",
        outcome="bounced",
    )
    # Outside the window, still waiting, or not a copy: none of these count.
    await seed.copy(
        store,
        msg,
        "old@verified.example",
        state=JobState.DELIVERED,
        at=datetime(2025, 3, 1, 22, 59, tzinfo=UTC),
        verified=True,
        tls_version="TLSv1.3",
        outcome="tls",
    )
    await seed.copy(store, msg, "w@waiting.example", state=JobState.QUEUED, at=day1)
    await seed.activity(store, "portal.register", day1)
    await seed.activity(store, "portal.register", day2)
    await seed.activity(store, "portal.reply", day2)
    await seed.activity(store, "portal.reply", day2 + timedelta(hours=1))
    await seed.activity(store, "portal.login", day2)


async def test_delivery_figures_by_day_and_method(
    stats_store: Store, stats_keyring: Keyring
) -> None:
    await _seed(stats_store, stats_keyring)
    window = Window.ending(NOW, ZONE)
    assert window.first == date(2025, 3, 2) and window.days == 30
    assert window.bounds[-1] - window.bounds[-2] == timedelta(hours=24)
    assert window.bounds[-2] - window.bounds[-3] == timedelta(hours=23)  # 30 March
    result = await stats.delivery_stats(stats_store, window)
    totals = result.totals
    assert (totals.verified, totals.encrypt, totals.portal, totals.bounced) == (3, 2, 4, 1)
    assert totals.total == 10
    assert result.tls_share == pytest.approx(0.5)
    assert totals.share(totals.portal) == pytest.approx(0.4)
    by_day = {d.day: d.counts for d in result.days if d.counts.total}
    assert by_day == {
        date(2025, 3, 29): stats.MethodCounts(verified=3, portal=1, bounced=1),
        date(2025, 3, 31): stats.MethodCounts(encrypt=2, portal=3),
    }
    assert len(result.days) == 30


async def test_the_copy_of_the_day_before_the_window_stays_out(
    stats_store: Store, stats_keyring: Keyring
) -> None:
    await _seed(stats_store, stats_keyring)
    # 2 March 00:00 in Rome is 1 March 23:00 UTC: the copy at 22:59 UTC is a day too early.
    result = await stats.delivery_stats(stats_store, Window.ending(NOW, ZONE))
    assert result.days[0].counts.total == 0
    wider = await stats.delivery_stats(stats_store, Window.ending(NOW, ZONE, days=31))
    assert wider.days[0].counts.verified == 1


async def test_portal_domains_and_reasons(stats_store: Store, stats_keyring: Keyring) -> None:
    await _seed(stats_store, stats_keyring)
    result = await stats.portal_stats(stats_store, Window.ending(NOW, ZONE))
    assert result.total == 4 and result.domain_count == 2
    assert [(d.domain, d.total) for d in result.domains] == [
        ("plain.example", 3),
        ("badcert.example", 1),
    ]
    assert dict(result.domains[0].reasons)[PortalReason.NO_STARTTLS] == 3
    # The first MX's failure names the category.
    assert dict(result.domains[1].reasons)[PortalReason.CERTIFICATE] == 1
    overall = dict(result.reasons)
    assert overall == {
        PortalReason.NO_STARTTLS: 3,
        PortalReason.CERTIFICATE: 1,
        PortalReason.HANDSHAKE: 0,
        PortalReason.POLICY: 0,
        PortalReason.OTHER: 0,
    }


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        (seed.NO_STARTTLS, PortalReason.NO_STARTTLS),
        (seed.BAD_CERT, PortalReason.CERTIFICATE),
        (seed.HANDSHAKE, PortalReason.HANDSHAKE),
        (seed.POLICY, PortalReason.POLICY),
        ("domain policy is portal (console:.example.org)", PortalReason.POLICY),
        ("TLS policy not met: mx[192.0.2.9]: STARTTLS refused: 454 no", PortalReason.NO_STARTTLS),
        ("something new", PortalReason.OTHER),
        (None, PortalReason.OTHER),
        # A remote's words in a detail cannot choose the category of an earlier MX.
        (
            "TLS policy not met: m[192.0.2.1]: handshake failed: x]: certificate: y",
            PortalReason.HANDSHAKE,
        ),
    ],
)
def test_portal_reason_categories(reason: str | None, category: PortalReason) -> None:
    assert stats.portal_reason(reason) is category


async def test_registrations_and_replies_per_day(
    stats_store: Store, stats_keyring: Keyring
) -> None:
    await _seed(stats_store, stats_keyring)
    result = await stats.portal_activity(stats_store, Window.ending(NOW, ZONE))
    assert (result.registrations, result.replies) == (2, 2)
    busy = {
        d.day: (d.registrations, d.replies) for d in result.days if d.registrations or d.replies
    }
    assert busy == {date(2025, 3, 29): (1, 0), date(2025, 3, 31): (1, 2)}


async def test_domain_outcomes_for_the_operator(stats_store: Store, stats_keyring: Keyring) -> None:
    await _seed(stats_store, stats_keyring)
    rows = {r.domain: r for r in await stats.domain_outcomes(stats_store, Window.ending(NOW, ZONE))}
    assert rows["verified.example"].counts == stats.MethodCounts(verified=3)
    assert rows["verified.example"].last_tls_version == "TLSv1.3"
    assert rows["verified.example"].last_failure is None
    assert rows["legacy.example"].counts.get(Method.ENCRYPT) == 2
    assert rows["plain.example"].last_failure == seed.NO_STARTTLS
    assert rows["plain.example"].last_tls_version is None
    assert rows["gone.example"].counts.bounced == 1
    assert "waiting.example" not in rows
    # Busiest first, ties by name.
    assert list(rows) == [
        "plain.example",
        "verified.example",
        "legacy.example",
        "badcert.example",
        "gone.example",
    ]


async def test_empty_store_gives_zeros(stats_store: Store) -> None:
    window = Window.ending(NOW, ZONE, days=7)
    board = await stats.dashboard(stats_store, window)
    assert board.delivery.totals.total == 0 and board.delivery.tls_share is None
    assert board.portal.domains == () and board.portal.total == 0
    assert board.activity.registrations == 0 and len(board.activity.days) == 7


def test_window_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="1 to 366 days"):
        Window.ending(NOW, ZONE, days=0)


# -- the page --------------------------------------------------------------------------------


async def test_dashboard_page_draws_the_figures(console: ConsoleHarness) -> None:
    now = datetime.now(UTC)
    msg = await seed.message(console.store, console.keyring, now)
    outcomes = [
        (JobState.DELIVERED, True, "tls", None),
        (JobState.DELIVERED, True, "tls", None),
        (JobState.DELIVERED, True, "tls", None),
        (JobState.DELIVERED, False, "tls", None),
        (JobState.DELIVERED, False, "tls", None),
        (JobState.PORTAL, None, "portal", seed.NO_STARTTLS),
        (JobState.PORTAL, None, "portal", seed.NO_STARTTLS),
        (JobState.PORTAL, None, "portal", seed.POLICY),
        (JobState.PORTAL, None, "portal", seed.POLICY),
        (JobState.BOUNCED, None, "bounced", "550 no such user"),
    ]
    for i, (state, verified, outcome, reason) in enumerate(outcomes):
        await seed.copy(
            console.store,
            msg,
            f"r{i}@d{i % 3}.example",
            state=state,
            at=now,
            reason=reason,
            verified=verified,
            tls_version="TLSv1.3" if outcome == "tls" else None,
            outcome=outcome,
        )
    for role in (StaffRole.AUDITOR, StaffRole.AGENT, StaffRole.ADMIN, StaffRole.OPERATOR):
        member = await console.member(f"{role.value}@org.example", role)
        client = await console.signed_in(member)
        page = await client.get("/staff/dashboard")
        assert page.status_code == 200, role
    text = page.text
    assert text.count('role="img"') == 4 and text.count("<details>") == 4
    # Exact counts and percentages, in the table under each chart and in the summary.
    for shown in (
        '<td class="num">3</td>',  # TLS verified
        "30.0%",
        "20.0%",
        "40.0%",
        "10.0%",
        "<dd>50.0%</dd>",  # delivered over TLS
        "<dd>10</dd>",  # copies
    ):
        assert shown in text, shown
    assert "Policy says portal: 2" in text and "No STARTTLS: 2" in text
    week = await client.get("/staff/dashboard", params={"days": "7"})
    assert week.status_code == 200 and 'value="7" selected' in week.text
    odd = await client.get("/staff/dashboard", params={"days": "100000"})
    assert odd.status_code == 200  # anything but 7, 30 or 90 shows 30 days


async def test_dashboard_in_italian(console: ConsoleHarness) -> None:
    member = await console.member("ops@org.example", StaffRole.OPERATOR)
    client = await console.signed_in(member)
    await client.post("/staff/lang", lang="it", back="/staff/dashboard")
    page = await client.get("/staff/dashboard")
    assert page.status_code == 200 and 'lang="it"' in page.text
    assert "Nessun dato in questo periodo" in page.text
