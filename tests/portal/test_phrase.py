"""The security phrase: chosen at the first visit or later, checked, stored sealed, shown in
our mail to its owner and to nobody else."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import default

import pytest
from sqlalchemy import select

from sigillo.portal.accounts import check_phrase, phrase_of
from sigillo.store.models import Account, AuditEvent, JobKind
from tests.portal.harness import GOOD_PASSWORD, PortalHarness

ANNA = "anna@example.net"
PHRASE = "Gatto blu sul tetto di Anna"
MOON = "Luna piena sopra il mare"


async def account(portal: PortalHarness, address: str = ANNA) -> Account:
    async with portal.store.session() as session:
        found = (
            (await session.execute(select(Account).where(Account.address == address)))
            .scalars()
            .first()
        )
    assert found is not None
    return found


def never_in_audit(entries: list[AuditEvent], secret: str) -> None:
    for entry in entries:
        assert (
            secret.lower()
            not in repr((entry.actor, entry.action, entry.details, entry.client_address)).lower()
        )


async def test_registration_shows_the_optional_phrase_and_why(portal: PortalHarness) -> None:
    seeded = await portal.seed(ANNA)
    page = await portal.client().get(f"/c/{seeded.token}")
    assert 'name="security_phrase"' in page.text
    assert "Every email from us will show them; an email without them is not ours." in page.text


async def test_a_phrase_chosen_at_the_first_visit_is_stored_sealed(
    portal: PortalHarness,
) -> None:
    seeded = await portal.seed(ANNA)
    client = portal.client()
    response = await client.submit(
        f"/c/{seeded.token}",
        password=GOOD_PASSWORD,
        password_confirm=GOOD_PASSWORD,
        security_phrase=f"  {PHRASE} ",
    )
    assert response.status_code == 303
    stored = await account(portal)
    assert stored.security_phrase is not None and stored.phrase_kek_id is not None
    assert PHRASE.encode() not in stored.security_phrase  # a database copy does not show it
    assert phrase_of(portal.keyring, stored) == PHRASE  # trimmed
    [entry] = await portal.audit("portal.register")
    assert entry.details == {"phrase": True}
    never_in_audit(await portal.audit(), PHRASE)


async def test_a_phrase_is_sealed_to_its_own_account(portal: PortalHarness) -> None:
    # Copying one account's sealed phrase onto another does not open there.
    from sigillo.store.crypto import KeyringError

    for address in (ANNA, "bruno@example.net"):
        seeded = await portal.seed(address)
        await portal.client().submit(
            f"/c/{seeded.token}",
            password=GOOD_PASSWORD,
            password_confirm=GOOD_PASSWORD,
            security_phrase=f"{PHRASE} {address[:4]}",
        )
    anna, bruno = await account(portal), await account(portal, "bruno@example.net")
    bruno.phrase_kek_id = anna.phrase_kek_id
    bruno.phrase_wrapped_key = anna.phrase_wrapped_key
    bruno.security_phrase = anna.security_phrase
    with pytest.raises(KeyringError):
        phrase_of(portal.keyring, bruno)


async def test_no_phrase_is_fine(portal: PortalHarness) -> None:
    seeded = await portal.seed(ANNA)
    assert (await portal.client().register(seeded.token)).status_code == 303
    stored = await account(portal)
    assert stored.security_phrase is None and phrase_of(portal.keyring, stored) is None
    assert (await portal.audit("portal.register"))[0].details == {"phrase": False}


@pytest.mark.parametrize(
    ("phrase", "says"),
    [
        ("abc", "at least 4 characters"),
        ("x" * 81, "at most 80 characters"),
        ("blue\u202ecat", "only letters, digits, spaces and punctuation"),
        ("tab\there", "only letters, digits, spaces and punctuation"),
        ("see https://evil.test", "must not look like a web address"),
        ("go to www.example", "must not look like a web address"),
        ("banca-amica.it is safe", "must not look like a web address"),
        ("portal\u3002example\u3002com", "must not look like a web address"),
        ("write to anna@example", "must not look like a web address"),
        ("javascript:alert(1)", "must not look like a web address"),
        (f"my {GOOD_PASSWORD.upper()} phrase", "must not contain your password"),
        ("horse battery", "must not contain your password"),
    ],
)
async def test_registration_refuses_a_bad_phrase_and_creates_nothing(
    portal: PortalHarness, phrase: str, says: str
) -> None:
    seeded = await portal.seed(ANNA)
    response = await portal.client().submit(
        f"/c/{seeded.token}",
        password=GOOD_PASSWORD,
        password_confirm=GOOD_PASSWORD,
        security_phrase=phrase,
    )
    assert response.status_code == 400
    assert says in response.text
    assert GOOD_PASSWORD not in response.text  # the form returns the phrase, not the password
    async with portal.store.session() as session:
        assert (await session.execute(select(Account))).first() is None


@pytest.mark.parametrize(
    "phrase",
    [
        "Gatto blu, 7 tetti!",
        "e.g. la luna",
        "wait...ok",
        "Ünïcödé ☀ phrase",
        "3.14 pi greco",
        "data: 12 maggio",
    ],
)
def test_ordinary_phrases_are_accepted(phrase: str) -> None:
    assert check_phrase(phrase, GOOD_PASSWORD) == []


async def registered(portal: PortalHarness, phrase: str | None = None) -> None:
    seeded = await portal.seed(ANNA)
    fields = {"password": GOOD_PASSWORD, "password_confirm": GOOD_PASSWORD}
    if phrase:
        fields["security_phrase"] = phrase
    client = portal.client()
    assert (await client.submit(f"/c/{seeded.token}", **fields)).status_code == 303


async def test_the_phrase_page_needs_a_signed_in_visitor(portal: PortalHarness) -> None:
    response = await portal.client().get("/account/phrase")
    assert response.status_code in (303, 401)
    assert "security_phrase" not in response.text


async def test_the_phrase_is_changed_with_the_password_and_audited_without_it(
    portal: PortalHarness,
) -> None:
    await registered(portal, PHRASE)
    client = portal.client()
    await client.login(ANNA)
    page = await client.get("/account/phrase")
    assert page.status_code == 200
    assert PHRASE not in page.text  # a session left open does not show it
    new = "Luna piena sopra il mare"
    response = await client.submit(
        "/account/phrase", security_phrase=new, current_password=GOOD_PASSWORD
    )
    assert response.status_code == 200 and "was saved" in response.text
    assert phrase_of(portal.keyring, await account(portal)) == new
    [entry] = await portal.audit("portal.phrase_changed")
    assert entry.actor == ANNA and entry.details == {"phrase": True}
    never_in_audit(await portal.audit(), new)
    never_in_audit(await portal.audit(), PHRASE)

    removed = await client.submit("/account/phrase", current_password=GOOD_PASSWORD, remove="1")
    assert removed.status_code == 200 and "was removed" in removed.text
    assert phrase_of(portal.keyring, await account(portal)) is None
    assert (await portal.audit("portal.phrase_changed"))[1].details == {"phrase": False}


async def test_a_wrong_password_changes_nothing_and_counts_as_a_failure(
    portal: PortalHarness,
) -> None:
    await registered(portal, PHRASE)
    client = portal.client()
    await client.login(ANNA)
    response = await client.submit(
        "/account/phrase", security_phrase="Another phrase here", current_password="not it at all"
    )
    assert response.status_code == 400
    assert "The current password is not correct." in response.text
    assert phrase_of(portal.keyring, await account(portal)) == PHRASE
    assert [e.actor for e in await portal.audit("portal.phrase_change_failed")] == [ANNA]


async def test_a_bad_new_phrase_is_refused(portal: PortalHarness) -> None:
    await registered(portal, PHRASE)
    client = portal.client()
    await client.login(ANNA)
    response = await client.submit(
        "/account/phrase", security_phrase="visit evil.test", current_password=GOOD_PASSWORD
    )
    assert response.status_code == 400 and "must not look like a web address" in response.text
    assert phrase_of(portal.keyring, await account(portal)) == PHRASE


async def test_the_phrase_form_needs_its_token(portal: PortalHarness) -> None:
    await registered(portal, PHRASE)
    client = portal.client()
    await client.login(ANNA)
    await client.get("/account/phrase")
    forged = await client.http.post(
        "/account/phrase",
        data={"security_phrase": "attacker's choice", "current_password": GOOD_PASSWORD},
    )
    assert forged.status_code == 403
    assert phrase_of(portal.keyring, await account(portal)) == PHRASE


async def test_account_mail_opens_with_the_phrase(portal: PortalHarness) -> None:
    await registered(portal, PHRASE)
    await portal.client().submit("/forgot", email=ANNA)
    [raw] = await portal.wait_for_mail(JobKind.MAIL, ANNA, 1)
    assert raw.isascii()
    text = message_from_bytes(raw, policy=default).get_content()
    assert text.splitlines()[:2] == [
        f"Your security phrase: \u00ab{PHRASE}\u00bb",
        f"La tua frase di sicurezza: \u00ab{PHRASE}\u00bb",
    ]


async def test_a_new_password_may_not_hold_the_phrase(portal: PortalHarness) -> None:
    await registered(portal, MOON)
    client = portal.client()
    await client.login(ANNA)
    clashing = f"{MOON.lower()} and more"
    # Without the current password the answer says nothing about the phrase: a session alone
    # must not be an oracle for it.
    wrong = await client.submit(
        "/account/password",
        current_password="not the password",
        password=clashing,
        password_confirm=clashing,
    )
    assert wrong.status_code == 400
    assert "current password is not correct" in wrong.text and "security phrase" not in wrong.text
    refused = await client.submit(
        "/account/password",
        current_password=GOOD_PASSWORD,
        password=clashing,
        password_confirm=clashing,
    )
    assert refused.status_code == 400
    assert "must not contain your security phrase" in refused.text
    assert await portal.audit("portal.password_changed") == []


async def test_a_reset_password_may_not_hold_the_phrase(portal: PortalHarness) -> None:
    await registered(portal, MOON)
    await portal.client().submit("/forgot", email=ANNA)
    [raw] = await portal.wait_for_mail(JobKind.MAIL, ANNA, 1)
    text = message_from_bytes(raw, policy=default).get_content()
    path = next(w for w in text.split() if "/reset/" in w).split("127.0.0.1:8080", 1)[1]
    clashing = f"x{MOON}x"
    response = await portal.client().submit(path, password=clashing, password_confirm=clashing)
    assert response.status_code == 400
    assert "must not contain your security phrase" in response.text
    assert await portal.audit("portal.password_reset") == []
