"""The enrolment link: single use, limited in time, the secret shown until it is used and
never after, a password by the portal's rules and one good code to finish."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pyotp
from sqlalchemy import update

from sigillo.staff import totp
from sigillo.store.models import StaffAccount, StaffEnrolment, StaffRole
from tests.staff.harness import GOOD_PASSWORD, ConsoleHarness, Member

_SECRET = re.compile(r'<code id="totp-secret">([A-Z2-7 ]+)</code>')
GONE = "no longer valid"


def secret_on(page: str) -> str:
    match = _SECRET.search(page)
    assert match, page[:2000]
    return match[1].replace(" ", "")


async def new_member(console: ConsoleHarness) -> Member:
    return await console.member("nina@org.example", StaffRole.AGENT, enrolled=False)


async def test_the_link_shows_the_secret_as_text_link_and_qr_code(console: ConsoleHarness) -> None:
    nina = await new_member(console)
    page = await console.client().get(f"/staff/enrol/{nina.enrolment_token}")
    assert page.status_code == 200
    assert secret_on(page.text) == nina.secret
    assert "otpauth://totp/sigillo%20127.0.0.1:nina%40org.example?secret=" in page.text
    assert "issuer=sigillo%20127.0.0.1" in page.text
    svg = page.text[page.text.index("<svg") : page.text.index("</svg>")]
    # Under the CSP (style-src 'self') an inline style would be blocked: there is none.
    assert "style" not in svg
    assert 'role="img"' in svg and "<title>QR code for an authenticator app" in svg


async def test_enrolment_sets_password_and_code_then_signs_in(console: ConsoleHarness) -> None:
    nina = await new_member(console)
    client = console.client()
    link = f"/staff/enrol/{nina.enrolment_token}"
    secret = secret_on((await client.get(link)).text)
    done = await client.post(
        link,
        password=GOOD_PASSWORD,
        password_confirm=GOOD_PASSWORD,
        code=pyotp.TOTP(secret).now(),
    )
    assert done.status_code == 303 and done.headers["location"] == "/staff/"
    home = await client.get("/staff/", follow_redirects=True)
    assert home.status_code == 200 and "Signed in as nina@org.example" in home.text
    account = await console.account(nina.email)
    assert account.enrolled_at is not None and account.password_hash is not None
    assert account.password_hash.startswith("$argon2id$")
    # The code used to enrol is spent: it cannot sign in a second time.
    assert account.totp_last_step is not None
    assert abs(account.totp_last_step - totp.step_of(datetime.now(UTC))) <= 1
    assert [e.actor for e in await console.audit("staff.enrolled")] == [nina.email]
    # Used: the link is gone and the secret is never shown again.
    again = await console.client().get(link)
    assert again.status_code == 404 and GONE in again.text
    assert secret not in again.text


async def test_a_wrong_code_or_a_weak_password_keeps_the_link(console: ConsoleHarness) -> None:
    nina = await new_member(console)
    client = console.client()
    link = f"/staff/enrol/{nina.enrolment_token}"
    await client.get(link)
    wrong = "000000" if nina.code() != "000000" else "111111"
    refused = await client.post(
        link, password=GOOD_PASSWORD, password_confirm=GOOD_PASSWORD, code=wrong
    )
    assert refused.status_code == 400 and "code is not correct" in refused.text
    weak = await client.post(link, password="password", password_confirm="password", code="1")
    assert weak.status_code == 400 and "at least 12 characters" in weak.text
    assert (await console.account(nina.email)).enrolled_at is None
    assert (await client.get(link)).status_code == 200


async def test_an_expired_link_is_refused(console: ConsoleHarness) -> None:
    nina = await new_member(console)
    past = datetime.now(UTC) - timedelta(seconds=1)
    await console.store.write(lambda s: s.execute(update(StaffEnrolment).values(expires_at=past)))
    link = f"/staff/enrol/{nina.enrolment_token}"
    client = console.client()
    page = await client.get(link)
    assert page.status_code == 404 and GONE in page.text and nina.secret not in page.text
    posted = await client.post(
        link, password=GOOD_PASSWORD, password_confirm=GOOD_PASSWORD, code=nina.code()
    )
    assert posted.status_code == 404
    assert (await console.account(nina.email)).enrolled_at is None


async def test_an_unknown_link_is_refused(console: ConsoleHarness) -> None:
    page = await console.client().get("/staff/enrol/not-a-token-at-all")
    assert page.status_code == 404 and GONE in page.text


async def test_a_link_works_once(console: ConsoleHarness) -> None:
    nina = await new_member(console)
    link = f"/staff/enrol/{nina.enrolment_token}"
    first, second = console.client(), console.client()
    await first.get(link)
    await second.get(link)  # both tabs opened before either finished
    ok = await first.post(
        link, password=GOOD_PASSWORD, password_confirm=GOOD_PASSWORD, code=nina.code()
    )
    assert ok.status_code == 303
    other = "another horse battery staple"
    late = await second.post(link, password=other, password_confirm=other, code=nina.code())
    assert late.status_code == 404 and GONE in late.text
    assert len(await console.audit("staff.enrolled")) == 1


async def test_a_disabled_account_cannot_enrol(console: ConsoleHarness) -> None:
    nina = await new_member(console)
    now = datetime.now(UTC)
    await console.store.write(lambda s: s.execute(update(StaffAccount).values(disabled_at=now)))
    page = await console.client().get(f"/staff/enrol/{nina.enrolment_token}")
    assert page.status_code == 404


async def test_the_secret_is_sealed_in_the_database(console: ConsoleHarness) -> None:
    nina = await new_member(console)
    account = await console.account(nina.email)
    assert account.totp_secret is not None
    assert nina.secret.encode() not in account.totp_secret
    assert account.totp_kek_id == console.keyring.active
