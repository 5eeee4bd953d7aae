"""The page "Is this email really from us?": public, behind a form token, bounded in size and
in checks per client, and never echoing the message's text unescaped. Each rule's test fails
when the rule is taken out."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sigillo.config import Settings
from sigillo.phishing import Checker, Report
from sigillo.portal.pages.check import BURST, CheckGate, ClientAllowance
from tests.integration.test_check_cli import ORG, ORG_NAME, SELECTOR, imitation, org_mail
from tests.portal.harness import PortalClient, PortalHarness, running_portal

ANNA = "anna@example.net"
HEADING = "Is this email really from us?"
GENUINE = "This email really comes from us"
PHISHING = "This email is not from us: it is an imitation"


def check_settings(tmp_path: Path, database_url: str, **smtp: Any) -> Settings:
    return Settings.model_validate(
        {
            "smtp": {"hostname": "gw.org.example", **smtp},
            # http: the test client sends no Secure cookies to 127.0.0.1.
            "portal": {"base_url": "http://127.0.0.1:8080"},
            "relay": {"host": "127.0.0.1:9", "internal_domains": [ORG]},
            "notify": {
                "from": f"secure@{ORG}",
                "dkim_selector": SELECTOR,
                "dkim_key_file": str(tmp_path / "dkim.key"),
            },
            "phishing": {
                "org_domains": [ORG],
                "org_names": [ORG_NAME],
                "report_address": f"phish-report@{ORG}",
            },
            "storage": {"database_url": database_url, "key_file": str(tmp_path / "keys")},
        }
    )


@pytest.fixture
async def portal(tmp_path: Path, store_url: str) -> AsyncIterator[PortalHarness]:
    async with running_portal(check_settings(tmp_path, store_url)) as harness:
        yield harness


@pytest.fixture
async def small_portal(tmp_path: Path) -> AsyncIterator[PortalHarness]:
    """A portal that takes messages of up to 16 KiB (SQLite: the store plays no part)."""
    settings = check_settings(tmp_path, f"sqlite:///{tmp_path}/p.db", max_message_size="16KiB")
    async with running_portal(settings) as harness:
        yield harness


async def check(
    client: PortalClient, raw: bytes, *, as_file: bool = False, **fields: str
) -> httpx.Response:
    if as_file:
        files = {"eml": ("message.eml", raw, "message/rfc822")}
        return await client.submit("/check", files=files, **fields)
    return await client.submit("/check", source=raw.decode(), **fields)


async def test_the_page_is_public_in_both_languages(portal: PortalHarness) -> None:
    client = portal.client()
    page = await client.get("/check")
    assert page.status_code == 200
    assert f"<h1>{HEADING}</h1>" in page.text
    for name in ('name="source"', 'name="eml"', 'name="recipient"', 'name="csrf_token"'):
        assert name in page.text
    assert "Show original" in page.text
    italian = await client.get("/check", headers={"Accept-Language": "it"})
    assert "<h1>Questa email viene davvero da noi?</h1>" in italian.text
    assert "Mostra originale" in italian.text
    # The sign-in page and every page's footer lead here.
    assert 'href="/check"' in (await client.get("/login")).text


async def test_pasted_and_uploaded_messages_get_their_verdicts(
    portal: PortalHarness, tmp_path: Path
) -> None:
    client = portal.client()
    genuine = await check(client, org_mail(tmp_path / "dkim.key"), recipient=ANNA)
    assert genuine.status_code == 200, genuine.text[:500]
    assert GENUINE in genuine.text
    phishing = await check(client, imitation(), as_file=True, recipient=ANNA)
    assert phishing.status_code == 200, phishing.text[:500]
    assert PHISHING in phishing.text
    assert "A link shows one address but leads to another." in phishing.text
    assert f"phish-report@{ORG}" in phishing.text


async def test_findings_in_the_page_language(portal: PortalHarness) -> None:
    client = portal.client()
    client.http.cookies.set("sigillo_lang", "it")
    page = await check(client, imitation(), as_file=True)
    assert "Questa email non viene da noi: è un'imitazione" in page.text
    assert "Un link mostra un indirizzo ma porta a un altro." in page.text


async def test_the_form_token_is_required(portal: PortalHarness) -> None:
    client = portal.client()
    await client.get("/check")
    refused = await client.http.post("/check", data={"source": imitation().decode()})
    assert refused.status_code == 403
    assert PHISHING not in refused.text


XSS = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
ESCAPED = "&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;"


async def test_the_message_is_never_echoed_unescaped(portal: PortalHarness) -> None:
    """The payload reaches the page through the evidence (a From field with no address in
    it is shown as it is; the To addresses, beside the one typed in the form): as text."""
    raw = (
        f'From: {XSS}\r\nTo: "<script>alert(4)</script>"@example.net\r\n'
        f"Subject: Verify {XSS}\r\n\r\n"
        f'<a href="http://192.0.2.1/{XSS}">{XSS}</a>\r\n'
    ).encode()
    typed = '"<script>alert(3)</script>"@example.net'
    for as_file in (True, False):
        page = await check(portal.client(), raw, as_file=as_file, recipient=typed)
        assert page.status_code == 200
        assert "What we found" in page.text
        assert "<script>" not in page.text and "<img" not in page.text
        assert ESCAPED in page.text
        for n in (3, 4):
            assert f"&#34;&lt;script&gt;alert({n})&lt;/script&gt;&#34;@example.net" in page.text
        # Nothing of the source comes back in the form.
        assert "Verify" not in page.text
        assert "></textarea>" in page.text


async def test_a_message_too_large_gets_the_page_again(small_portal: PortalHarness) -> None:
    client = small_portal.client()
    big = imitation() + b"\r\n" + b"x" * 20_000 + b"\r\n"
    over = await check(client, big, as_file=True)
    assert over.status_code == 413
    assert f"<h1>{HEADING}</h1>" in over.text
    assert "The email is larger than we can check (16 KB)." in over.text
    # Far past the form's limit: refused while reading, with the same page.
    huge = await check(client, big * 20, as_file=True)
    assert huge.status_code == 413
    assert "The email is larger than we can check (16 KB)." in huge.text
    pasted = await check(client, big)
    assert pasted.status_code == 413
    assert "The email is larger than we can check" in pasted.text


async def test_checks_are_limited_per_client(portal: PortalHarness) -> None:
    busy = portal.client("127.0.0.2")
    for _ in range(BURST):
        assert (await check(busy, imitation())).status_code == 200
    refused = await check(busy, imitation())
    assert refused.status_code == 429
    assert "You have checked many emails in a short time." in refused.text
    assert PHISHING not in refused.text
    # Another client is not held back by the first.
    assert (await check(portal.client("127.0.0.3"), imitation())).status_code == 200


async def test_signed_in_the_recipient_is_the_signed_in_address(
    portal: PortalHarness, tmp_path: Path
) -> None:
    seeded = await portal.seed(ANNA)
    client = portal.client()
    await client.register(seeded.token)
    page = await client.get("/check")
    assert 'name="recipient"' not in page.text
    assert f"We check it as an email to {ANNA}" in page.text
    elsewhere = org_mail(tmp_path / "dkim.key", to="bruno@example.net")
    # A recipient field sent anyway does not replace the signed-in address.
    found = await check(client, elsewhere, recipient="bruno@example.net")
    assert "The message was not addressed to your address." in found.text
    mine = await check(client, org_mail(tmp_path / "dkim.key", to=ANNA))
    assert GENUINE in mine.text
    assert "The message was not addressed to your address." not in mine.text


async def test_what_is_missing_or_wrong_in_the_form(portal: PortalHarness) -> None:
    client = portal.client()
    empty = await client.submit("/check", source="  ")
    assert empty.status_code == 400
    assert "Paste the email&#39;s source or choose its .eml file." in empty.text
    files = {"eml": ("message.eml", imitation(), "message/rfc822")}
    both = await client.submit("/check", files=files, source=imitation().decode())
    assert both.status_code == 400 and "not both" in both.text
    bad = await check(client, imitation(), recipient="<b>not an address</b>")
    assert bad.status_code == 400
    assert "does not look like an email address" in bad.text
    assert "&lt;b&gt;not an address&lt;/b&gt;" in bad.text


async def test_nothing_is_stored_or_audited(portal: PortalHarness) -> None:
    await check(portal.client(), imitation(), as_file=True)
    assert await portal.audit() == []


# -- the allowance and the slots, on their own -------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_allowance_refills_one_check_at_a_time() -> None:
    clock = Clock()
    allowance = ClientAllowance(burst=3, every=30.0, clock=clock)
    assert [allowance.take("192.0.2.1") for _ in range(4)] == [True, True, True, False]
    clock.now += 29
    assert not allowance.take("192.0.2.1")
    clock.now += 31  # a refused attempt costs nothing: 60 s after the last check, 2 more
    assert [allowance.take("192.0.2.1") for _ in range(3)] == [True, True, False]
    assert allowance.take("192.0.2.2")


def test_an_ipv6_client_counts_per_64() -> None:
    allowance = ClientAllowance(burst=2, clock=Clock())
    assert allowance.take("2001:db8:1:2::1") and allowance.take("2001:db8:1:2::ffff:9")
    assert not allowance.take("2001:db8:1:2:abcd::7")
    assert allowance.take("2001:db8:1:3::1")
    # The same IPv4 client, however it is written.
    allowance.take("192.0.2.7")
    allowance.take("::ffff:192.0.2.7")
    assert not allowance.take("192.0.2.7")


def test_allowance_memory_is_bounded() -> None:
    clock = Clock()
    allowance = ClientAllowance(burst=2, every=10.0, max_clients=100, clock=clock)
    for n in range(1000):
        allowance.take(f"10.0.{n // 256}.{n % 256}")
    assert len(allowance._levels) <= 100
    # The most recent clients are the ones remembered.
    assert allowance.take("10.0.3.231") and not allowance.take("10.0.3.231")


class SlowChecker(Checker):
    """Holds each check until released, counting how many run at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.release = threading.Event()
        self.lock = threading.Lock()

    def check(self, raw: bytes, recipient: str | None = None) -> Report:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.release.wait(30)
        with self.lock:
            self.running -= 1
        return Report("suspicious", ())


async def test_only_a_few_checks_run_at_once() -> None:
    from anyio import CapacityLimiter

    checker = SlowChecker()
    gate = CheckGate(lambda: checker, slots=CapacityLimiter(2))
    tasks = [asyncio.create_task(gate.check(b"x", None)) for _ in range(6)]
    while checker.running < 2:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert checker.running == 2
    checker.release.set()
    await asyncio.gather(*tasks)
    assert checker.most == 2


async def test_a_checker_that_cannot_be_built_gives_errored_not_clean() -> None:
    def broken() -> Checker:
        raise OSError("cannot read the config")

    report = await CheckGate(broken).check(b"From: a@b.example\r\n\r\nhi\r\n", None)
    assert report.verdict == "errored"
    assert [f.code for f in report.findings] == ["check-error"]
