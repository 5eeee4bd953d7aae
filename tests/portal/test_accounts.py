"""First visit, sign-in, sessions and passwords, over real HTTP against a running portal."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from sigillo.portal.passwords import PasswordHasher
from sigillo.store.models import Account, JobKind, PasswordReset, PortalSession
from tests.portal.harness import CHEAP, GOOD_PASSWORD, PortalHarness, staff_message

ANNA = "anna@example.net"
BRUNO = "bruno@example.net"


async def test_the_link_alone_shows_no_content(portal: PortalHarness) -> None:
    seeded = await portal.seed(ANNA, staff_message(ANNA, subject="Biopsy", text="benign"))
    client = portal.client()
    page = await client.get(f"/c/{seeded.token}")
    assert page.status_code == 200
    assert 'name="password"' in page.text and 'name="password_confirm"' in page.text
    assert "Biopsy" not in page.text and "benign" not in page.text


async def test_first_visit_creates_the_password_and_opens_the_conversation(
    portal: PortalHarness,
) -> None:
    seeded = await portal.seed(ANNA, staff_message(ANNA, subject="Biopsy", text="benign"))
    client = portal.client()
    response = await client.register(seeded.token)
    assert response.status_code == 303
    assert response.headers["location"] == f"/conversations/{seeded.conversation_id}"
    page = await client.get(response.headers["location"])
    assert page.status_code == 200
    assert "Biopsy" in page.text and "benign" in page.text
    assert [e.actor for e in await portal.audit("portal.register")] == [ANNA]


@pytest.mark.parametrize(
    ("password", "confirm", "says"),
    [
        ("short pass", "short pass", "at least 12 characters"),
        ("x" * 129, "x" * 129, "at most 128 characters"),
        ("password1234", "password1234", "most commonly used"),
        ("my anna@example.net pw", "my anna@example.net pw", "must not contain your email"),
        ("correct horse battery", "correct horse battery!", "not the same"),
    ],
)
async def test_registration_refuses_weak_passwords(
    portal: PortalHarness, password: str, confirm: str, says: str
) -> None:
    seeded = await portal.seed(ANNA)
    client = portal.client()
    response = await client.submit(
        f"/c/{seeded.token}", password=password, password_confirm=confirm
    )
    assert response.status_code == 400
    assert says in response.text
    async with portal.store.session() as session:
        assert (await session.execute(select(Account))).first() is None


async def test_a_second_link_never_resets_an_existing_password(portal: PortalHarness) -> None:
    first = await portal.seed(ANNA)
    second = await portal.seed(ANNA)
    await portal.client().register(first.token)
    intruder = portal.client()
    response = await intruder.get(f"/c/{second.token}")
    assert response.status_code == 303
    assert response.headers["location"] == f"/login?next=/conversations/{second.conversation_id}"
    # Posting a password to the link anyway changes nothing.
    await intruder.get("/login")
    forced = await intruder.http.post(
        f"/c/{second.token}",
        data={
            "csrf_token": intruder.csrf(),
            "password": "another long passphrase",
            "password_confirm": "another long passphrase",
        },
    )
    assert forced.status_code == 303 and forced.headers["location"].startswith("/login")
    assert (await portal.client().login(ANNA, "another long passphrase")).status_code == 401
    assert (await portal.client().login(ANNA)).status_code == 303


async def test_later_visits_sign_in_then_land_in_the_conversation(portal: PortalHarness) -> None:
    seeded = await portal.seed(ANNA)
    await portal.client().register(seeded.token)
    client = portal.client()
    landing = await client.get(f"/c/{seeded.token}")
    assert landing.status_code == 303
    login_page = await client.get(landing.headers["location"])
    assert 'name="email"' in login_page.text and "Your test results" not in login_page.text
    response = await client.login(ANNA, next_page=f"/conversations/{seeded.conversation_id}")
    assert response.headers["location"] == f"/conversations/{seeded.conversation_id}"
    assert (await client.get(response.headers["location"])).status_code == 200


async def test_sign_in_never_redirects_to_another_site(portal: PortalHarness) -> None:
    seeded = await portal.seed(ANNA)
    await portal.client().register(seeded.token)
    for target in ("https://evil.example/", "//evil.example", "/\\evil.example", "/login"):
        response = await portal.client().login(ANNA, next_page=target)
        assert response.headers["location"] == "/conversations", target


async def test_unknown_links_are_not_found(portal: PortalHarness) -> None:
    assert (await portal.client().get("/c/not-a-real-token")).status_code == 404


async def test_session_id_is_regenerated_at_sign_in(portal: PortalHarness) -> None:
    seeded = await portal.seed(ANNA)
    await portal.client().register(seeded.token)
    client = portal.client()
    await client.get("/login")
    before = client.http.cookies["sigillo"]
    # A value planted by an attacker before sign-in never becomes the session.
    attacker = portal.client()
    attacker.http.cookies.set("sigillo", before)
    await client.login(ANNA)
    after = client.http.cookies["sigillo"]
    assert after != before
    assert (await attacker.get(f"/conversations/{seeded.conversation_id}")).status_code == 303
    assert (await client.get(f"/conversations/{seeded.conversation_id}")).status_code == 200


async def test_session_cookie_is_random_httponly_samesite_and_stored_hashed(
    portal: PortalHarness,
) -> None:
    seeded = await portal.seed(ANNA)
    client = portal.client()
    response = await client.register(seeded.token)
    header = response.headers["set-cookie"]
    value = client.http.cookies["sigillo"]
    assert "HttpOnly" in header and "SameSite=lax" in header and "Path=/" in header
    assert len(value) >= 22  # 128 bits, URL-safe base64
    async with portal.store.session() as session:
        stored = (await session.execute(select(PortalSession.id_hash))).scalars().all()
    assert stored == [hashlib.sha256(value.encode()).hexdigest()]


@pytest.mark.parametrize("field", ["last_seen_at", "created_at"])
async def test_sessions_time_out(portal: PortalHarness, field: str) -> None:
    seeded = await portal.seed(ANNA)
    client = portal.client()
    await client.register(seeded.token)
    ago = timedelta(minutes=15) if field == "last_seen_at" else timedelta(hours=12)
    past = datetime.now(UTC) - ago - timedelta(seconds=1)
    await portal.store.write(lambda s: s.execute(update(PortalSession).values({field: past})))
    response = await client.get(f"/conversations/{seeded.conversation_id}")
    assert response.status_code == 303 and response.headers["location"].startswith("/login")
    page = await client.get(response.headers["location"])
    assert "session has ended" in page.text


async def test_an_active_session_stays_signed_in(portal: PortalHarness) -> None:
    seeded = await portal.seed(ANNA)
    client = portal.client()
    await client.register(seeded.token)
    almost = datetime.now(UTC) - timedelta(minutes=14)
    await portal.store.write(lambda s: s.execute(update(PortalSession).values(last_seen_at=almost)))
    assert (await client.get(f"/conversations/{seeded.conversation_id}")).status_code == 200
    async with portal.store.session() as session:
        seen = (await session.execute(select(PortalSession.last_seen_at))).scalar_one()
    assert seen > almost + timedelta(minutes=13)  # the visit renewed it


async def test_sign_out_ends_the_session(portal: PortalHarness) -> None:
    seeded = await portal.seed(ANNA)
    client = portal.client()
    await client.register(seeded.token)
    old = client.http.cookies["sigillo"]
    response = await client.submit(f"/conversations/{seeded.conversation_id}", "/logout")
    assert response.status_code == 303
    replay = portal.client()
    replay.http.cookies.set("sigillo", old)
    assert (await replay.get(f"/conversations/{seeded.conversation_id}")).status_code == 303
    assert [e.action for e in await portal.audit("portal.logout")] == ["portal.logout"]


async def test_https_portal_uses_a_host_prefixed_secure_cookie_and_hsts(
    tmp_path: object, store_url: str
) -> None:
    from pathlib import Path

    from tests.portal.harness import portal_settings, running_portal

    settings = portal_settings(Path(str(tmp_path)), store_url, base_url="https://portal.example")
    async with running_portal(settings) as harness:
        response = await harness.client().get("/login")
    header = response.headers["set-cookie"]
    assert header.startswith("__Host-sigillo=") and "Secure" in header and "Domain" not in header
    assert response.headers["strict-transport-security"].startswith("max-age=")


async def test_http_portal_sends_no_hsts(portal: PortalHarness) -> None:
    assert "strict-transport-security" not in (await portal.client().get("/login")).headers


# -- forgotten and changed passwords -----------------------------------------------------


async def _reset_link(portal: PortalHarness, address: str, nth: int = 1) -> str:
    """The link of the nth reset mail (mailed after the page went out, so waited for)."""
    for _ in range(200):
        mails = [m for m in await portal.mail(JobKind.MAIL, address) if b"/reset/" in m]
        if len(mails) >= nth:
            break
        await asyncio.sleep(0.025)
    text = mails[nth - 1].decode()
    return text.split("/reset/")[1].split()[0]


async def test_forgot_password_answers_the_same_for_unknown_addresses(
    portal: PortalHarness,
) -> None:
    seeded = await portal.seed(ANNA)
    await portal.client().register(seeded.token)
    known = await portal.client().submit("/forgot", email=ANNA)
    unknown = await portal.client().submit("/forgot", email="nobody@example.net")
    assert known.status_code == unknown.status_code == 200
    strip = lambda text: text.replace(known.text.split('csrf_token" value="')[1][:64], "")  # noqa: E731
    assert strip(known.text).split("<main")[1] == strip(unknown.text).split("<main")[1]
    assert len(await portal.wait_for_mail(JobKind.MAIL, ANNA, 1)) == 1
    requests = await portal.wait_for_audit("portal.reset_requested", 2)
    assert [(e.actor, (e.details or {})["account"]) for e in requests] == [
        (ANNA, True),
        ("nobody@example.net", False),
    ]
    assert await portal.mail(JobKind.MAIL, "nobody@example.net") == []


async def test_reset_link_works_once_within_30_minutes_and_ends_every_session(
    portal: PortalHarness,
) -> None:
    seeded = await portal.seed(ANNA)
    signed_in = portal.client()
    await signed_in.register(seeded.token)
    await portal.client().submit("/forgot", email=ANNA)
    token = await _reset_link(portal, ANNA)
    client = portal.client()
    new = "a brand new long passphrase"
    response = await client.submit(f"/reset/{token}", password=new, password_confirm=new)
    assert response.status_code == 303
    assert (await signed_in.get(f"/conversations/{seeded.conversation_id}")).status_code == 303
    assert (await portal.client().login(ANNA, new)).status_code == 303
    assert (await portal.client().login(ANNA)).status_code == 401
    again = await portal.client().get(f"/reset/{token}")
    assert again.status_code == 404 and "no longer valid" in again.text
    confirmations = [m for m in await portal.mail(JobKind.MAIL, ANNA) if b"was changed" in m]
    assert len(confirmations) == 1

    await portal.client().submit("/forgot", email=ANNA)
    late = await _reset_link(portal, ANNA, 2)
    stale = datetime.now(UTC) - timedelta(minutes=31)
    await portal.store.write(
        lambda s: s.execute(
            update(PasswordReset)
            .where(PasswordReset.used.is_(False))
            .values(created_at=stale, expires_at=stale + timedelta(minutes=30))
        )
    )
    assert (await portal.client().get(f"/reset/{late}")).status_code == 404


async def test_password_change_ends_other_sessions_and_is_confirmed(
    portal: PortalHarness,
) -> None:
    seeded = await portal.seed(ANNA)
    phone = portal.client()
    await phone.register(seeded.token)
    laptop = portal.client()
    await laptop.login(ANNA)
    new = "another fine passphrase"
    response = await laptop.submit(
        "/account/password", current_password=GOOD_PASSWORD, password=new, password_confirm=new
    )
    assert response.status_code == 200 and "password was changed" in response.text
    assert (await laptop.get(f"/conversations/{seeded.conversation_id}")).status_code == 200
    assert (await phone.get(f"/conversations/{seeded.conversation_id}")).status_code == 303
    assert any(b"was changed" in m for m in await portal.mail(JobKind.MAIL, ANNA))


async def test_password_change_needs_the_current_password(portal: PortalHarness) -> None:
    seeded = await portal.seed(ANNA)
    client = portal.client()
    await client.register(seeded.token)
    new = "another fine passphrase"
    response = await client.submit(
        "/account/password", current_password="wrong one here", password=new, password_confirm=new
    )
    assert response.status_code == 400
    assert (await portal.client().login(ANNA)).status_code == 303


def test_production_hashing_meets_owasp_minimums() -> None:
    params = PasswordHasher().params
    assert params.memory_cost >= 19 * 1024 and params.time_cost >= 2 and params.parallelism == 1
    assert CHEAP.params.memory_cost < params.memory_cost


async def test_passwords_are_stored_as_argon2id(portal: PortalHarness) -> None:
    seeded = await portal.seed(BRUNO)
    await portal.client().register(seeded.token)
    async with portal.store.session() as session:
        stored = (await session.execute(select(Account.password_hash))).scalar_one()
    assert stored.startswith("$argon2id$") and GOOD_PASSWORD not in stored


async def test_registering_an_existing_address_changes_nothing(portal: PortalHarness) -> None:
    """The last guard when two first visits race: the second creation is a no-op."""
    accounts = portal.app_state().accounts
    now = datetime.now(UTC)
    assert await accounts.register(ANNA, GOOD_PASSWORD, "127.0.0.1", now) is not None
    assert await accounts.register(ANNA, "a different passphrase", "127.0.0.1", now) is None
    assert (await portal.client().login(ANNA)).status_code == 303


async def test_reset_links_are_limited_to_three_an_hour(portal: PortalHarness) -> None:
    """Nobody can mail-bomb an address through the forgotten-password page."""
    seeded = await portal.seed(ANNA)
    await portal.client().register(seeded.token)
    for _ in range(4):
        await portal.client().submit("/forgot", email=ANNA)
    requests = await portal.wait_for_audit("portal.reset_requested", 4)
    assert [(e.details or {})["mailed"] for e in requests] == [True, True, True, False]
    resets = [m for m in await portal.wait_for_mail(JobKind.MAIL, ANNA, 3) if b"/reset/" in m]
    assert len(resets) == 3
