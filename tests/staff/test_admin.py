"""Administration pages: staff accounts and domain policies, every change audited with the
admin as actor, never the last enabled admin removed, never any content on these pages."""

from __future__ import annotations

import re
from pathlib import Path

from sigillo.policies import DomainPolicies
from sigillo.store.models import StaffRole
from tests.portal.harness import staff_message
from tests.staff.harness import (
    ConsoleHarness,
    Member,
    StaffClient,
    running_console,
    staff_settings,
)

_LINK = re.compile(r'<code id="enrolment-link">(http://[^<]+/staff/enrol/([A-Za-z0-9_-]+))</code>')


async def admin_browser(console: ConsoleHarness) -> tuple[Member, StaffClient]:
    ada = await console.member("ada@org.example", StaffRole.ADMIN)
    return ada, await console.signed_in(ada)


def link_on(page: str) -> str:
    match = _LINK.search(page)
    assert match, page[:3000]
    return match[2]


async def test_adding_a_member_shows_the_enrolment_link_once(console: ConsoleHarness) -> None:
    ada, client = await admin_browser(console)
    added = await client.post(
        "/staff/admin/staff",
        data=[("roles", "operator"), ("roles", "auditor")],
        email="Olga@Org.Example",
    )
    assert added.status_code == 200
    token = link_on(added.text)
    assert f"{console.settings.portal.base_url}/staff/enrol/{token}" in added.text
    olga = await console.account("olga@org.example")
    assert olga.roles == "operator,auditor" and olga.enrolled_at is None
    [entry] = [e for e in await console.audit("staff.added") if e.actor != "test"]
    assert entry.actor == ada.email and entry.client_address == "127.0.0.1"
    assert entry.details == {"staff": "olga@org.example", "roles": ["operator", "auditor"]}
    assert token not in str(entry.details)
    # The list shows the member, never the link again.
    listing = await client.get("/staff/admin/staff")
    assert "olga@org.example" in listing.text and token not in listing.text
    assert "operator, auditor" in listing.text and "not yet" in listing.text
    assert (await console.client().get(f"/staff/enrol/{token}")).status_code == 200


async def test_adding_refuses_a_known_address_or_no_role(console: ConsoleHarness) -> None:
    ada, client = await admin_browser(console)
    again = await client.post("/staff/admin/staff", data=[("roles", "agent")], email=ada.email)
    assert again.status_code == 400 and "already has a staff account" in again.text
    no_role = await client.post("/staff/admin/staff", email="x@org.example")
    assert no_role.status_code == 400 and "at least one role" in no_role.text
    bad = await client.post("/staff/admin/staff", data=[("roles", "agent")], email="not-an-address")
    assert bad.status_code == 400 and "not an email address" in bad.text
    assert len(await console.audit("staff.added")) == 1  # ada's own, from the harness


async def test_changing_roles_is_audited(console: ConsoleHarness) -> None:
    ada, client = await admin_browser(console)
    olga = await console.member("olga@org.example", StaffRole.OPERATOR)
    changed = await client.post(
        f"/staff/admin/staff/{olga.id}/roles", data=[("roles", "agent"), ("roles", "operator")]
    )
    assert changed.status_code == 303
    assert (await console.account(olga.email)).roles == "operator,agent"
    [entry] = await console.audit("staff.roles_changed")
    assert entry.actor == ada.email
    assert entry.details == {
        "staff": olga.email,
        "before": ["operator"],
        "after": ["operator", "agent"],
    }
    # The new role opens its pages at once, in the session already open.
    olgas = await console.signed_in(olga)
    await client.post(f"/staff/admin/staff/{olga.id}/roles", data=[("roles", "admin")])
    assert (await olgas.get("/staff/admin/policies")).status_code == 200


async def test_reset_gives_a_new_link_and_ends_every_session(console: ConsoleHarness) -> None:
    ada, client = await admin_browser(console)
    olga = await console.member("olga@org.example", StaffRole.OPERATOR)
    olgas = await console.signed_in(olga)
    reset = await client.post(f"/staff/admin/staff/{olga.id}/reset")
    assert reset.status_code == 200
    token = link_on(reset.text)
    account = await console.account(olga.email)
    assert account.password_hash is None and account.enrolled_at is None
    assert await console.sessions(olga) == []
    assert (await olgas.get("/staff/dashboard")).status_code == 303
    enrol = await console.client().get(f"/staff/enrol/{token}")
    assert enrol.status_code == 200 and olga.secret.replace(" ", "") not in enrol.text
    [entry] = await console.audit("staff.reset")
    assert entry.actor == ada.email and entry.details == {"staff": olga.email}


async def test_disable_is_audited_and_ends_sessions(console: ConsoleHarness) -> None:
    ada, client = await admin_browser(console)
    olga = await console.member("olga@org.example", StaffRole.OPERATOR)
    olgas = await console.signed_in(olga)
    assert (await client.post(f"/staff/admin/staff/{olga.id}/disable")).status_code == 303
    assert (await olgas.get("/staff/dashboard")).status_code == 303
    [entry] = await console.audit("staff.disabled")
    assert entry.actor == ada.email and entry.details == {"staff": olga.email}
    listing = await client.get("/staff/admin/staff")
    assert "disabled" in listing.text


async def test_the_last_enabled_admin_stays(console: ConsoleHarness) -> None:
    ada, client = await admin_browser(console)
    refused = await client.post(f"/staff/admin/staff/{ada.id}/disable")
    assert refused.status_code == 400 and "last enabled administrator" in refused.text
    demoted = await client.post(f"/staff/admin/staff/{ada.id}/roles", data=[("roles", "agent")])
    assert demoted.status_code == 400 and "last enabled administrator" in demoted.text
    assert (await console.account(ada.email)).roles == "admin"
    assert await console.audit("staff.disabled") == []
    # A disabled admin does not count.
    bob = await console.member("bob@org.example", StaffRole.ADMIN)
    await client.post(f"/staff/admin/staff/{bob.id}/disable")
    refused = await client.post(f"/staff/admin/staff/{ada.id}/disable")
    assert refused.status_code == 400
    # With another enabled admin, it is allowed (here: ada on herself, which signs her out).
    cleo = await console.member("cleo@org.example", StaffRole.ADMIN, StaffRole.AGENT)
    out = await client.post(f"/staff/admin/staff/{ada.id}/roles", data=[("roles", "auditor")])
    assert out.status_code == 303
    assert (await client.get("/staff/admin/staff")).status_code == 403
    cleos = await console.signed_in(cleo)
    assert (await cleos.post(f"/staff/admin/staff/{cleo.id}/disable")).status_code == 400


async def test_domain_policies_are_set_and_audited(tmp_path: Path, store_url: str) -> None:
    settings = staff_settings(tmp_path, store_url)
    settings.delivery.domains = {"yahoo.co.jp": "portal", ".legacy.example": "encrypt"}
    async with running_console(settings) as console:
        ada, client = await admin_browser(console)
        page = await client.get("/staff/admin/policies")
        # The file's entries and the defaults are shown, read-only.
        assert "yahoo.co.jp" in page.text and ".legacy.example" in page.text
        assert "wins over a TLS level set here" in page.text
        assert "90 days after the last message" in page.text
        assert 'name="domain"' in page.text and 'name="yahoo.co.jp"' not in page.text
        saved = await client.post(
            "/staff/admin/policies", domain="Clinic.Example", tls="encrypt", retention_days="30"
        )
        assert saved.status_code == 303
        policies = await DomainPolicies.load(console.store)
        rule = policies.rules["clinic.example"]
        assert (rule.tls, rule.retention_days, rule.updated_by) == ("encrypt", 30, ada.email)
        # TLS "none" keeps the default; retention alone is a policy too.
        await client.post(
            "/staff/admin/policies", domain=".clinic.example", tls="none", retention_days="7"
        )
        # Neither: the policy goes.
        await client.post("/staff/admin/policies", domain="clinic.example", tls="none")
        policies = await DomainPolicies.load(console.store)
        assert set(policies.rules) == {".clinic.example"}
        assert policies.rules[".clinic.example"].tls is None
        entries = await console.audit("policy.changed")
        assert [e.actor for e in entries] == [ada.email] * 3
        assert entries[0].details == {
            "domain": "clinic.example",
            "before": None,
            "after": {"tls": "encrypt", "retention_days": 30},
        }
        assert entries[2].details is not None and entries[2].details["after"] is None
        listing = await client.get("/staff/admin/policies")
        assert ".clinic.example" in listing.text


async def test_bad_policy_input_is_refused_and_changes_nothing(console: ConsoleHarness) -> None:
    _, client = await admin_browser(console)
    for fields in (
        {"domain": "not a domain", "tls": "portal"},
        {"domain": "example.com", "tls": "plaintext"},
        {"domain": "example.com", "tls": "portal", "retention_days": "0"},
        {"domain": "example.com", "tls": "portal", "retention_days": "ten"},
        {"domain": "example.com", "tls": "portal", "retention_days": "99999"},
    ):
        response = await client.post("/staff/admin/policies", **fields)
        assert response.status_code == 400, fields
    assert (await DomainPolicies.load(console.store)).rules == {}
    assert await console.audit("policy.changed") == []


async def test_no_admin_page_shows_content(console: ConsoleHarness) -> None:
    marker = "Quokka-Ledger 5512"
    await console.seed(
        "pat@patients.example",
        staff_message("pat@patients.example", subject=f"Results {marker}", text=f"Body {marker}"),
    )
    ada, client = await admin_browser(console)
    olga = await console.member("olga@org.example", StaffRole.AGENT)
    await client.post("/staff/admin/policies", domain="patients.example", tls="portal")
    pages = [
        "/staff/admin/staff",
        f"/staff/admin/staff/{olga.id}",
        f"/staff/admin/staff/{ada.id}",
        "/staff/admin/policies",
        "/staff/admin/policies?domain=patients.example",
    ]
    for path in pages:
        page = await client.get(path)
        assert page.status_code == 200, path
        assert marker not in page.text and "pat@patients.example" not in page.text, path
    reset = await client.post(f"/staff/admin/staff/{olga.id}/reset")
    assert marker not in reset.text


async def test_the_console_speaks_italian(console: ConsoleHarness) -> None:
    _, client = await admin_browser(console)
    switched = await client.post("/staff/lang", lang="it", back="/staff/admin/staff")
    assert switched.status_code == 303 and switched.headers["location"] == "/staff/admin/staff"
    page = await client.get("/staff/admin/staff")
    assert '<html lang="it">' in page.text and "Account del personale" in page.text
    assert "Esci" in page.text
    login = await console.client().get("/staff/login", headers={"accept-language": "it"})
    assert "Accesso del personale" in login.text
    # Off-site "back" targets are ignored.
    away = await client.post("/staff/lang", lang="en", back="https://evil.example/")
    assert away.headers["location"] == "/staff/"
