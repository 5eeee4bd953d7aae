"""The console's security rules, each with a test that fails without it: two factors at every
sign-in, one answer for every failure, no code replay, throttling, disabled accounts, session
timeouts, sign-out, session renewal, form tokens on every POST, cookie flags and headers."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import update

from sigillo.portal.sessions import session_hash
from sigillo.store.models import LoginThrottle, StaffRole
from tests.staff.harness import (
    GOOD_PASSWORD,
    ConsoleHarness,
    Member,
    StaffClient,
    running_console,
    staff_settings,
)
from tests.staff.test_roles import SAMPLES, console_routes, fill

WRONG = "The email address, the password or the code is not correct."
LOCKED = "paused for 15 minutes"
ENDED = "Your session has ended"


def other_code(member: Member) -> str:
    """A well-formed code that is none of the codes valid now."""
    totp = pyotp.TOTP(member.secret)
    now = datetime.now(UTC)
    valid = {totp.at(now + timedelta(seconds=s)) for s in (-60, -30, 0, 30, 60)}
    return next(c for c in (f"{n:06d}" for n in range(1000)) if c not in valid)


async def admin(console: ConsoleHarness, email: str = "ada@org.example") -> Member:
    return await console.member(email, StaffRole.ADMIN)


async def signed_in_ok(client: StaffClient) -> bool:
    page = await client.get("/staff/admin/staff")
    return page.status_code == 200


# -- two factors, one answer ---------------------------------------------------------------


async def test_sign_in_needs_the_password_and_the_code(console: ConsoleHarness) -> None:
    ada = await admin(console)
    no_code = await console.client().login(ada.email, ada.password, "")
    wrong_code = await console.client().login(ada.email, ada.password, other_code(ada))
    wrong_password = await console.client().login(ada.email, "not the password!!", ada.code())
    for response in (no_code, wrong_code, wrong_password):
        assert response.status_code == 401 and WRONG in response.text
    client = console.client()
    ok = await client.login(ada.email, ada.password, ada.code())
    assert ok.status_code == 303 and ok.headers["location"] == "/staff/"
    assert await signed_in_ok(client)
    assert [e.action for e in await console.audit() if e.action.startswith("staff.login")] == [
        "staff.login_failed",
        "staff.login_failed",
        "staff.login_failed",
        "staff.login",
    ]


def _answer(text: str) -> str:
    """The page without what legitimately differs between two answers: the form token and
    the address typed."""
    text = re.sub(r'name="csrf_token" value="[0-9a-f]+"', "", text)
    return re.sub(r'value="[^"]*@[^"]*"', "", text)


async def test_wrong_password_wrong_code_and_unknown_address_look_alike(
    console: ConsoleHarness,
) -> None:
    ada = await admin(console)
    pending = await console.member("pia@org.example", StaffRole.AGENT, enrolled=False)
    answers = [
        await console.client().login(ada.email, "not the password!!", ada.code()),
        await console.client().login(ada.email, ada.password, other_code(ada)),
        await console.client().login("nobody@org.example", ada.password, ada.code()),
        await console.client().login(pending.email, GOOD_PASSWORD, pending.code()),
    ]
    assert {r.status_code for r in answers} == {401}
    assert len({_answer(r.text) for r in answers}) == 1
    # The auditor, unlike the page, learns which factor failed (a right password with a
    # wrong code means the password is known to someone).
    reasons = [e.details for e in await console.audit("staff.login_failed")]
    assert reasons == [
        {"reason": "password"},
        {"reason": "code"},
        {"reason": "unknown"},
        {"reason": "not_enrolled"},
    ]


async def test_a_code_is_never_accepted_twice(console: ConsoleHarness) -> None:
    ada = await admin(console)
    code = ada.code()
    first = console.client()
    assert (await first.login(ada.email, ada.password, code)).status_code == 303
    replay = await console.client().login(ada.email, ada.password, code)
    assert replay.status_code == 401 and WRONG in replay.text
    assert (await console.audit("staff.login_failed"))[-1].details == {"reason": "code"}


async def test_an_old_code_is_refused(console: ConsoleHarness) -> None:
    ada = await admin(console)
    old = pyotp.TOTP(ada.secret).at(datetime.now(UTC) - timedelta(minutes=2))
    if old == ada.code():  # one chance in a million
        pytest.skip("the old code happens to equal the current one")
    assert (await console.client().login(ada.email, ada.password, old)).status_code == 401


async def test_an_email_is_matched_whatever_its_case(console: ConsoleHarness) -> None:
    ada = await admin(console)
    response = await console.client().login("  ADA@Org.Example ", ada.password, ada.code())
    assert response.status_code == 303


# -- throttling ----------------------------------------------------------------------------


async def test_five_failures_lock_the_account_even_for_the_right_factors(
    console: ConsoleHarness,
) -> None:
    ada = await admin(console)
    bob = await admin(console, "bob@org.example")
    client = console.client()
    for _ in range(5):
        assert WRONG in (await client.login(ada.email, "not the password!!", "123456")).text
    refused = await client.login(ada.email, ada.password, ada.code())
    assert refused.status_code == 401 and LOCKED in refused.text
    # ... from any client,
    elsewhere = await console.client("127.0.0.7").login(ada.email, ada.password, ada.code())
    assert LOCKED in elsewhere.text
    # ... and never another account.
    assert (await client.login(bob.email, bob.password, bob.code())).status_code == 303
    assert [e.actor for e in await console.audit("staff.login_refused")] == [ada.email] * 2
    # The portal's throttle keys are untouched: a recipient with the same address is not locked.
    async with console.store.session() as session:
        keys = set((await session.execute(LoginThrottle.__table__.select())).scalars())
    assert f"staff:{ada.email}" in keys and f"account:{ada.email}" not in keys


async def test_a_lockout_ends_after_15_minutes(console: ConsoleHarness) -> None:
    ada = await admin(console)
    for _ in range(5):
        await console.client().login(ada.email, "not the password!!", "123456")
    past = datetime.now(UTC) - timedelta(seconds=1)
    await console.store.write(lambda s: s.execute(update(LoginThrottle).values(locked_until=past)))
    assert (await console.client().login(ada.email, ada.password, ada.code())).status_code == 303


# -- accounts that may not sign in ----------------------------------------------------------


async def test_a_disabled_account_cannot_sign_in_and_its_sessions_end(
    console: ConsoleHarness,
) -> None:
    ada = await admin(console)
    bob = await admin(console, "bob@org.example")
    bobs_browser = await console.signed_in(bob)
    adas_browser = await console.signed_in(ada)
    disabled = await adas_browser.post(f"/staff/admin/staff/{bob.id}/disable")
    assert disabled.status_code == 303
    assert not await signed_in_ok(bobs_browser)
    assert await console.sessions(bob) == []
    await console.forget_last_code(bob)
    refused = await console.client().login(bob.email, bob.password, bob.code())
    assert refused.status_code == 401 and WRONG in refused.text
    assert (await console.audit("staff.login_failed"))[-1].details == {"reason": "disabled"}


async def test_an_account_not_enrolled_cannot_sign_in(console: ConsoleHarness) -> None:
    pia = await console.member("pia@org.example", StaffRole.ADMIN, enrolled=False)
    for password in (GOOD_PASSWORD, ""):
        response = await console.client().login(pia.email, password, pia.code())
        assert response.status_code == 401


# -- sessions ------------------------------------------------------------------------------


async def test_sessions_end_after_15_idle_minutes(console: ConsoleHarness) -> None:
    ada = await admin(console)
    client = await console.signed_in(ada)
    await console.age_sessions(ada, idle=timedelta(minutes=14), age=timedelta(hours=1))
    assert await signed_in_ok(client)
    await console.age_sessions(ada, idle=timedelta(minutes=15, seconds=1), age=timedelta(hours=1))
    page = await client.get("/staff/admin/staff")
    assert page.status_code == 303
    assert page.headers["location"] == "/staff/login?next=/staff/admin/staff&ended=1"
    login = await client.get(page.headers["location"])
    assert ENDED in login.text
    assert await console.sessions(ada) == []


async def test_sessions_end_after_12_hours_however_active(console: ConsoleHarness) -> None:
    ada = await admin(console)
    client = await console.signed_in(ada)
    await console.age_sessions(ada, idle=timedelta(0), age=timedelta(hours=11, minutes=59))
    assert await signed_in_ok(client)
    await console.age_sessions(ada, idle=timedelta(0), age=timedelta(hours=12, seconds=1))
    page = await client.get("/staff/admin/staff")
    assert page.status_code == 303 and "ended=1" in page.headers["location"]


async def test_sign_out_ends_the_session_for_good(console: ConsoleHarness) -> None:
    ada = await admin(console)
    client = await console.signed_in(ada)
    cookie = client.cookie()
    out = await client.post("/staff/logout")
    assert out.status_code == 303 and out.headers["location"] == "/staff/login?signed_out=1"
    assert not await signed_in_ok(client)
    assert await console.sessions(ada) == []
    # The old cookie value, replayed from elsewhere, is no session either.
    thief = console.client()
    thief.http.cookies.set(console.console.sessions.cookie_name, cookie)
    assert not await signed_in_ok(thief)
    assert [e.actor for e in await console.audit("staff.logout")] == [ada.email]


async def test_signing_in_issues_a_new_session_id(console: ConsoleHarness) -> None:
    ada = await admin(console)
    client = console.client()
    await client.get("/staff/login")
    before = client.cookie()
    assert before
    await client.login(ada.email, ada.password, ada.code())
    after = client.cookie()
    assert after and after != before
    [row] = await console.sessions(ada)
    assert row.id_hash == session_hash(after)  # only the hash is stored
    # A value planted before sign-in (session fixation) never becomes a session.
    planted = console.client()
    planted.http.cookies.set(console.console.sessions.cookie_name, before)
    assert not await signed_in_ok(planted)


async def test_after_sign_in_only_console_pages_are_next(console: ConsoleHarness) -> None:
    ada = await admin(console)
    for target in ("https://evil.example/", "//evil.example/", "/conversations", "/staff\\x"):
        client = console.client()
        await console.forget_last_code(ada)
        response = await client.login(ada.email, ada.password, ada.code(), next_page=target)
        assert response.headers["location"] == "/staff/", target
    client = console.client()
    await console.forget_last_code(ada)
    response = await client.login(
        ada.email, ada.password, ada.code(), next_page="/staff/admin/policies"
    )
    assert response.headers["location"] == "/staff/admin/policies"


# -- form tokens ---------------------------------------------------------------------------


async def test_every_post_route_refuses_a_missing_or_foreign_form_token(
    console: ConsoleHarness,
) -> None:
    everyone = await console.member("all@org.example", *StaffRole)
    client = await console.signed_in(everyone)
    stranger = console.client()
    await stranger.get("/staff/login")
    foreign = stranger.token()  # valid, but for another browser's cookie
    pending = await console.member("pia@org.example", StaffRole.AGENT, enrolled=False)
    assert pending.enrolment_token is not None
    samples = {**SAMPLES, "token": pending.enrolment_token}
    posts = [fill(path, samples) for method, path in console_routes(console) if method == "POST"]
    assert len(posts) >= 10
    for path in posts:
        for form in ({}, {"csrf_token": foreign}, {"csrf_token": ""}):
            response = await client.http.post(path, data=form)
            assert response.status_code == 403, (path, form, response.status_code)
            assert "This form has expired" in response.text
    assert await signed_in_ok(client)
    assert await console.audit("staff.logout") == []


async def test_sign_in_refuses_a_missing_form_token(console: ConsoleHarness) -> None:
    ada = await admin(console)
    client = console.client()
    await client.get("/staff/login")
    response = await client.http.post(
        "/staff/login", data={"email": ada.email, "password": ada.password, "code": ada.code()}
    )
    assert response.status_code == 403
    assert await console.sessions(ada) == []


# -- cookies and headers -------------------------------------------------------------------


async def test_session_cookie_flags_over_http(console: ConsoleHarness) -> None:
    ada = await admin(console)
    client = console.client()
    await client.get("/staff/login")
    await client.post("/staff/login", email=ada.email, password=ada.password, code=ada.code())
    assert client.last is not None
    cookie = client.last.headers["set-cookie"]
    assert cookie.startswith("sigillo-staff=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert "Domain" not in cookie and "Max-Age" not in cookie and "expires" not in cookie


async def test_session_cookie_under_https_is_host_only_and_secure(tmp_path: Path) -> None:
    settings = staff_settings(
        tmp_path, f"sqlite:///{tmp_path}/https.db", base_url="https://portal.org.example"
    )
    async with running_console(settings) as console:
        page = await console.client().get("/staff/login")
        cookie = page.headers["set-cookie"]
        assert cookie.startswith("__Host-sigillo-staff=")
        assert "Secure" in cookie and "HttpOnly" in cookie and "Path=/" in cookie
        assert "Domain" not in cookie
        assert page.headers["strict-transport-security"].startswith("max-age=")


HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'; object-src 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}


async def test_security_headers_on_every_kind_of_console_answer(console: ConsoleHarness) -> None:
    ada = await admin(console)
    olga = await console.member("olga@org.example", StaffRole.OPERATOR)
    client = await console.signed_in(ada)
    operator = await console.signed_in(olga)
    answers = [
        await console.client().get("/staff/login"),
        await console.client().get("/staff/admin/staff"),  # redirect to sign in
        await console.client().get("/staff/enrol/nothing"),  # 404 page
        await client.get("/staff/admin/staff"),
        await client.get("/staff/admin/policies"),
        await operator.get("/staff/admin/staff"),  # 403 page
        await client.get("/staff/static/console.css"),
        await client.get("/staff/no/such/page"),
        await client.http.post("/staff/admin/policies", data={}),  # bad token
    ]
    for response in answers:
        for name, value in HEADERS.items():
            assert response.headers.get(name) == value, (response.url, name)
    assert "<script" not in "".join(r.text for r in answers)
    assert ' style="' not in "".join(r.text for r in answers)


def test_no_console_template_has_script_or_inline_style() -> None:
    from importlib import resources

    templates = resources.files("sigillo.staff").joinpath("templates")
    for template in templates.iterdir():
        text = template.read_text()
        assert "<script" not in text and "<style" not in text, template.name
        assert not re.search(r"\s(style|on[a-z]+)=", text), template.name


async def test_an_oversized_form_is_refused(console: ConsoleHarness) -> None:
    ada = await admin(console)
    client = await console.signed_in(ada)
    response = await client.post("/staff/admin/policies", domain="x" * (70 * 1024))
    assert response.status_code == 413


async def test_the_console_address_without_a_slash_leads_in(console: ConsoleHarness) -> None:
    response = await console.client().get("/staff")
    assert response.status_code == 303 and response.headers["location"] == "/staff/"
    landing = await console.client().get("/staff/")
    assert landing.status_code == 303 and landing.headers["location"] == "/staff/login?next=/staff/"
