"""The rules a reviewer tests: throttling, form tokens, headers, authorisation, auditing.
Each test fails when its rule is taken out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from sigillo.portal.passwords import HashParams, PasswordHasher
from sigillo.store.models import LoginThrottle
from tests.portal.harness import GOOD_PASSWORD, PortalHarness, staff_message

ANNA = "anna@example.net"
BRUNO = "bruno@example.net"
LOCKED = "paused for 15 minutes"
WRONG = "is not correct"


async def _account(portal: PortalHarness, address: str) -> int:
    seeded = await portal.seed(address)
    await portal.client().register(seeded.token)
    return seeded.conversation_id


# -- sign-in throttling ------------------------------------------------------------------


async def test_five_failures_lock_the_address_even_for_the_right_password(
    portal: PortalHarness,
) -> None:
    await _account(portal, ANNA)
    client = portal.client()
    for _ in range(5):
        response = await client.login(ANNA, "wrong password!!")
        assert WRONG in response.text
    refused = await client.login(ANNA)
    assert refused.status_code == 401 and LOCKED in refused.text
    # ... from any client.
    assert LOCKED in (await portal.client("127.0.0.5").login(ANNA)).text
    assert [e.actor for e in await portal.audit("portal.login_refused")] == [ANNA, ANNA]


async def test_a_lockout_ends_after_15_minutes(portal: PortalHarness) -> None:
    await _account(portal, ANNA)
    for _ in range(5):
        await portal.client().login(ANNA, "wrong password!!")
    past = datetime.now(UTC) - timedelta(seconds=1)
    await portal.store.write(lambda s: s.execute(update(LoginThrottle).values(locked_until=past)))
    assert (await portal.client().login(ANNA)).status_code == 303


async def test_failures_for_one_address_never_lock_out_another(portal: PortalHarness) -> None:
    await _account(portal, ANNA)
    await _account(portal, BRUNO)
    client = portal.client()
    for _ in range(6):
        await client.login(ANNA, "wrong password!!")
    assert (await client.login(BRUNO)).status_code == 303


async def test_a_success_starts_the_count_again(portal: PortalHarness) -> None:
    await _account(portal, ANNA)
    for _ in range(4):
        await portal.client().login(ANNA, "wrong password!!")
    assert (await portal.client().login(ANNA)).status_code == 303
    for _ in range(4):
        await portal.client().login(ANNA, "wrong password!!")
    assert (await portal.client().login(ANNA)).status_code == 303


async def test_one_client_guessing_across_addresses_is_slowed(portal: PortalHarness) -> None:
    await _account(portal, ANNA)
    guesser = portal.client("127.0.0.2")
    for n in range(20):
        await guesser.login(f"user{n}@example.net", "wrong password!!")
    assert LOCKED in (await guesser.login(ANNA)).text
    assert (await portal.client("127.0.0.3").login(ANNA)).status_code == 303


async def test_a_lockout_reveals_nothing_about_who_has_an_account(portal: PortalHarness) -> None:
    await _account(portal, ANNA)
    ghost = "ghost@example.net"
    pages = {}
    for address in (ANNA, ghost):
        for _ in range(5):
            wrong = await portal.client().login(address, "wrong password!!")
        locked = await portal.client().login(address, "wrong password!!")
        pages[address] = (
            wrong.status_code,
            _main(wrong.text, address),
            _main(locked.text, address),
        )
    assert pages[ANNA] == pages[ghost]


def _main(page: str, address: str) -> str:
    main = page.split("<main")[1].split("</main>")[0].replace(address, "ADDRESS")
    return main.split('name="csrf_token"')[0] + main.split('name="csrf_token"')[1][80:]


class CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__(HashParams(time_cost=1, memory_cost=8, parallelism=1))
        self.work: list[str] = []

    def verify(self, encoded: str, password: str) -> bool:
        self.work.append("verify")
        return super().verify(encoded, password)


async def test_unknown_addresses_cost_the_same_hashing_work(portal: PortalHarness) -> None:
    await _account(portal, ANNA)
    hasher = CountingHasher()
    accounts = portal.app_state().accounts
    accounts.hasher = hasher
    await portal.client().login(ANNA, "wrong password!!")
    assert len(hasher.work) == 1
    # An unknown address runs one argon2 verification too (against a decoy hash).
    await portal.client().login("ghost@example.net", "wrong password!!")
    assert len(hasher.work) == 2


# -- form tokens ---------------------------------------------------------------------------


FORMS = [
    ("/login", {"email": ANNA, "password": GOOD_PASSWORD}),
    ("/forgot", {"email": ANNA}),
    ("/lang", {"lang": "it"}),
    ("/logout", {}),
]


@pytest.mark.parametrize(("path", "fields"), FORMS)
async def test_a_form_without_a_valid_token_is_refused(
    portal: PortalHarness, path: str, fields: dict[str, str]
) -> None:
    await _account(portal, ANNA)
    client = portal.client()
    await client.get("/login")
    assert (await client.http.post(path, data=fields)).status_code == 403
    other = portal.client()
    await other.get("/login")
    stolen = {"csrf_token": other.csrf(), **fields}
    assert (await client.http.post(path, data=stolen)).status_code == 403


async def test_signed_in_forms_need_the_token_too(portal: PortalHarness) -> None:
    seeded = await portal.seed(ANNA)
    client = portal.client()
    await client.register(seeded.token)
    conversation = f"/conversations/{seeded.conversation_id}"
    for path, fields in [
        (f"{conversation}/reply", {"body": "hello"}),
        (
            "/account/password",
            {"current_password": GOOD_PASSWORD, "password": "x" * 20, "password_confirm": "x" * 20},
        ),
    ]:
        assert (await client.http.post(path, data=fields)).status_code == 403, path
    assert await portal.audit("portal.reply") == []
    assert (await portal.client().login(ANNA)).status_code == 303  # password unchanged


async def test_registration_needs_the_token(portal: PortalHarness) -> None:
    seeded = await portal.seed(ANNA)
    client = portal.client()
    await client.get(f"/c/{seeded.token}")
    response = await client.http.post(
        f"/c/{seeded.token}", data={"password": GOOD_PASSWORD, "password_confirm": GOOD_PASSWORD}
    )
    assert response.status_code == 403
    assert (await portal.client().get(f"/c/{seeded.token}")).status_code == 200  # no account


async def test_no_state_changes_on_get(portal: PortalHarness) -> None:
    for path in ("/logout", "/lang"):
        assert (await portal.client().get(path)).status_code == 405


# -- headers -------------------------------------------------------------------------------


async def test_every_page_carries_the_security_headers(portal: PortalHarness) -> None:
    seeded = await portal.seed(
        ANNA, staff_message(ANNA, attachments=(("a.pdf", "application/pdf", b"%PDF"),))
    )
    client = portal.client()
    pages = [
        await client.get(p)
        for p in ("/login", "/forgot", f"/c/{seeded.token}", "/nope", "/static/portal.css")
    ]
    await client.register(seeded.token)
    conversation = f"/conversations/{seeded.conversation_id}"
    pages.append(await client.get(conversation))
    pages.append(await client.get(f"{conversation}/messages/{seeded.message_id}/attachments/0"))
    for page in pages:
        csp = page.headers["content-security-policy"]
        for directive in (
            "default-src 'none'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ):
            assert directive in csp, (page.url, csp)
        assert "script-src" not in csp and "unsafe-inline" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-store"


# -- authorisation -------------------------------------------------------------------------


async def test_an_account_reaches_only_its_own_conversations(portal: PortalHarness) -> None:
    attachment = (("scan.pdf", "application/pdf", b"%PDF-1.4 private"),)
    theirs = await portal.seed(
        BRUNO, staff_message(BRUNO, text="Bruno's diagnosis", attachments=attachment)
    )
    mine = await portal.seed(ANNA)
    client = portal.client()
    await client.register(mine.token)
    base = f"/conversations/{theirs.conversation_id}"
    probes = [
        base,
        f"{base}/messages/{theirs.message_id}/attachments/0",
        f"/conversations/{mine.conversation_id}/messages/{theirs.message_id}/attachments/0",
        f"/conversations/{mine.conversation_id + 1000}",
        "/conversations/99999999999999999",
        f"/conversations/{mine.conversation_id}/messages/{mine.message_id}/attachments/7",
    ]
    for path in probes:
        response = await client.get(path)
        assert response.status_code == 404, path
        assert "diagnosis" not in response.text and "private" not in response.text
    reply = await client.submit(
        f"/conversations/{mine.conversation_id}", f"{base}/reply", body="hi"
    )
    assert reply.status_code == 404
    assert await portal.audit("portal.reply") == []


async def test_expired_conversations_show_nothing_and_name_whom_to_contact(
    portal: PortalHarness,
) -> None:
    seeded = await portal.seed(
        ANNA,
        staff_message(ANNA, text="old results", attachments=(("a.txt", "text/plain", b"secret"),)),
    )
    client = portal.client()
    await client.register(seeded.token)
    await portal.age(seeded.conversation_id, portal.settings.portal.message_ttl_days)
    base = f"/conversations/{seeded.conversation_id}"
    page = await client.get(base)
    assert page.status_code == 404
    assert "has expired" in page.text and "doctor@org.example" in page.text
    assert "old results" not in page.text
    download = await client.get(f"{base}/messages/{seeded.message_id}/attachments/0")
    assert download.status_code == 404 and "secret" not in download.text
    await client.get("/login")
    reply = await client.http.post(f"{base}/reply", data={"csrf_token": client.csrf(), "body": "x"})
    assert reply.status_code == 404


async def test_views_downloads_and_sign_ins_are_audited_with_the_client(
    portal: PortalHarness,
) -> None:
    seeded = await portal.seed(
        ANNA, staff_message(ANNA, attachments=(("a.txt", "text/plain", b"data"),))
    )
    client = portal.client("127.0.0.4")
    await client.register(seeded.token)
    await client.get(f"/conversations/{seeded.conversation_id}")
    await client.get(
        f"/conversations/{seeded.conversation_id}/messages/{seeded.message_id}/attachments/0"
    )
    await portal.client("127.0.0.4").login(ANNA, "wrong password!!")
    events = await portal.audit()
    summary = [(e.action, e.actor, e.client_address) for e in events]
    for action in (
        "portal.register",
        "portal.login",
        "portal.view",
        "portal.download",
        "portal.login_failed",
    ):
        assert (action, ANNA, "127.0.0.4") in summary, action
    view = next(e for e in events if e.action == "portal.view")
    assert view.conversation_id == seeded.conversation_id


async def test_the_link_of_an_expired_conversation_says_so_without_an_account(
    portal: PortalHarness,
) -> None:
    seeded = await portal.seed(ANNA, staff_message(ANNA, text="old results"))
    await portal.age(seeded.conversation_id, portal.settings.portal.message_ttl_days)
    page = await portal.client().get(f"/c/{seeded.token}")
    assert page.status_code == 404 and "has expired" in page.text
    assert 'name="password"' not in page.text and "old results" not in page.text


async def test_a_database_outage_gets_a_plain_try_again_page(tmp_path: Path) -> None:
    from sigillo.portal.app import create_app
    from sigillo.store.crypto import Keyring
    from sigillo.store.db import Store
    from tests.portal.harness import CHEAP, PortalClient, portal_settings, serving

    settings = portal_settings(tmp_path, "postgresql://root@127.0.0.1:1/nowhere")
    store = Store(settings.storage.database_url)
    app = create_app(
        settings, store, Keyring.load_or_create(settings.storage.key_file), hasher=CHEAP
    )
    async with serving(app) as url:
        client = PortalClient(url, "127.0.0.1")
        try:
            response = await client.login(ANNA)
            assert response.status_code == 503
            assert "Nothing was lost" in response.text and "Traceback" not in response.text
            cookie_page = await client.get("/conversations/1")
            assert cookie_page.status_code in (303, 503)
        finally:
            await client.close()
    await store.close()
