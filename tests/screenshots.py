"""Screenshots of every portal page, at desktop and phone width, in English and Italian.

    scripts/screenshots.sh [OUTDIR]        # default var/screenshots

Runs the portal alone on a temporary SQLite database (no mail leaves: nothing delivers the
queued mail), seeds a conversation with a bilingual staff message, an attachment and a reply,
and drives Debian's Chromium over loopback only. Writes PAGE-LANG-VIEW.png files and prints
their paths, flagging a page wider than its viewport (how overflow on a phone shows) and
any axe-core WCAG 2.1 AA violation.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from playwright.async_api import Browser, Page, ViewportSize

from tests.peers.browser import (
    DESKTOP,
    PHONE,
    axe_violations,
    chromium,
    new_page,
    screenshot,
)
from tests.portal.harness import (
    GOOD_PASSWORD,
    PortalHarness,
    portal_settings,
    running_portal,
    staff_message,
)

RECIPIENT = "giulia.bianchi@example.net"
LANGUAGES = {"en": "en-GB", "it": "it-IT"}
VIEWS: dict[str, ViewportSize] = {"desktop": DESKTOP, "phone": PHONE}

STAFF_TEXT = """\
Gentile Sig.ra Bianchi,

in allegato trova il referto degli esami del sangue del 12 marzo. I valori di emoglobina e
ferritina sono nella norma; il colesterolo LDL (162 mg/dL) è leggermente alto. Le consiglio
di ripetere il controllo tra tre mesi, a digiuno.

Dear Ms Bianchi,

please find attached the report of your blood tests of 12 March. Haemoglobin and ferritin
are within range; LDL cholesterol (162 mg/dL) is slightly high. Please repeat the test in
three months, fasting.

Cordiali saluti / Kind regards
Dr. Marco Rossi
Laboratorio Analisi — Ospedale San Giovanni
"""

STAFF_HTML = """\
<p>Gentile Sig.ra Bianchi / Dear Ms Bianchi,</p>
<p>in allegato il referto del 12 marzo. / Please find attached the report of 12 March.</p>
<table>
  <tr><th>Esame / Test</th><th>Valore / Value</th><th>Intervallo / Range</th></tr>
  <tr><td>Emoglobina / Haemoglobin</td><td>13,4 g/dL</td><td>12,0–15,5</td></tr>
  <tr><td>Ferritina / Ferritin</td><td>48 ng/mL</td><td>15–150</td></tr>
  <tr><td>Colesterolo LDL / LDL cholesterol</td><td><strong>162 mg/dL</strong></td>
      <td>&lt; 130</td></tr>
</table>
<p>Cordiali saluti / Kind regards<br>Dr. Marco Rossi<br>
Laboratorio Analisi — Ospedale San Giovanni</p>
"""

REPLY_TEXT = """\
Buongiorno dottore, grazie. Devo sospendere la statina prima del prossimo prelievo?
Allego la foto della tessera sanitaria come richiesto.

Giulia Bianchi"""

PDF = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n"
    b"%%EOF\n" + bytes(180_000)
)


@dataclass(frozen=True)
class Scene:
    conversation_id: int
    expired_id: int
    link_token: str
    reset_token: str


@dataclass(frozen=True)
class Shot:
    path: Path
    overflow: int
    """Pixels the page is wider than its viewport (0: none)."""
    violations: list[str]
    """axe-core WCAG 2.1 AA rules the page breaks."""


class Camera:
    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        self.shots: list[Shot] = []

    async def take(self, page: Page, name: str, lang: str, view: str) -> None:
        path = self.outdir / f"{name}-{lang}-{view}.png"
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        violations = [str(v["id"]) for v in await axe_violations(page)]
        await screenshot(page, path)
        self.shots.append(Shot(path, int(overflow), violations))


async def seed(harness: PortalHarness) -> tuple[int, int, str]:
    """The conversation to show (account not yet created) and an expired one."""
    content = staff_message(
        RECIPIENT,
        subject="Esito esami del sangue / Blood test results",
        text=STAFF_TEXT,
        html=STAFF_HTML,
        attachments=(
            ("Referto_laboratorio_analisi_2025-03-12_Bianchi_Giulia.pdf", "application/pdf", PDF),
        ),
        sender="laboratorio@org.example",
    )
    current = await harness.seed(RECIPIENT, content)
    old = await harness.seed(
        RECIPIENT,
        staff_message(RECIPIENT, subject="Prenotazione visita / Appointment"),
    )
    await harness.age(old.conversation_id, harness.settings.portal.message_ttl_days + 10)
    return current.conversation_id, old.conversation_id, current.token


async def sign_up_and_reply(harness: PortalHarness, conversation_id: int, token: str) -> str:
    """Create the account, reply with an attachment; return a reset token for the reset page."""
    client = harness.client()
    response = await client.register(token)
    assert response.status_code == 303, response.status_code
    page = f"/conversations/{conversation_id}"
    photo = ("tessera_sanitaria.jpg", b"\xff\xd8\xff\xe0" + bytes(2048) + b"\xff\xd9", "image/jpeg")
    response = await client.submit(
        page, f"{page}/reply", files={"attachments": photo}, body=REPLY_TEXT
    )
    assert response.status_code == 303, response.text[:500]
    issued = await harness.portal.accounts.request_reset(RECIPIENT, "127.0.0.1", datetime.now(UTC))
    assert issued is not None
    return issued[1]


async def sign_in(page: Page, conversation: str) -> None:
    await page.goto(f"/login?next={conversation}")
    await page.locator("input[name=email]").fill(RECIPIENT)
    await page.locator("input[name=password]").fill(GOOD_PASSWORD)
    async with page.expect_navigation():
        await page.locator("main button[type=submit]").click()
    if not page.url.endswith(conversation):
        raise RuntimeError(f"signing in led to {page.url}")


IMITATION = (
    "From: Org Bank <secure@org-example.com>\r\nTo: giulia.bianchi@example.net\r\n"
    "Subject: Your account is blocked\r\n\r\n"
    "Enter your password and card number here: http://192.0.2.7/login\r\n"
)
"""An imitation for the check page's result: a look-alike sender, a request for secrets."""


async def shoot(harness: PortalHarness, browser: Browser, camera: Camera) -> None:
    current, expired, link = await seed(harness)
    conversation = f"/conversations/{current}"
    combos = [(lang, locale, view) for lang, locale in LANGUAGES.items() for view in VIEWS]

    # The registration page shows only while the address has no account.
    for lang, locale, view in combos:
        context, page = await new_page(
            browser, viewport=VIEWS[view], locale=locale, base_url=harness.url
        )
        try:
            await page.goto(f"/c/{link}")
            await camera.take(page, "register", lang, view)
        finally:
            await context.close()

    reset = await sign_up_and_reply(harness, current, link)

    for lang, locale, view in combos:
        context, page = await new_page(
            browser, viewport=VIEWS[view], locale=locale, base_url=harness.url
        )
        try:
            await page.goto("/login")
            await camera.take(page, "login", lang, view)
            # A mistyped address: the per-address lockout of the real account stays untouched.
            await page.locator("input[name=email]").fill("giulia.bianchi@example.ne")
            await page.locator("input[name=password]").fill("not the password")
            async with page.expect_navigation():
                await page.locator("main button[type=submit]").click()
            await camera.take(page, "login-error", lang, view)
            await page.goto("/forgot")
            await camera.take(page, "forgot", lang, view)
            await page.goto(f"/reset/{reset}")
            await camera.take(page, "reset", lang, view)
            await sign_in(page, conversation)
            await camera.take(page, "conversation", lang, view)
            await page.goto("/account/password")
            await camera.take(page, "password", lang, view)
            await page.goto("/account/phrase")
            await camera.take(page, "phrase", lang, view)
            await page.goto("/check")
            await camera.take(page, "check", lang, view)
            await page.locator("textarea[name=source]").fill(IMITATION)
            async with page.expect_navigation():
                await page.locator("main button[type=submit]").click()
            await camera.take(page, "check-result", lang, view)
            await page.goto(f"/conversations/{expired}")
            await camera.take(page, "expired", lang, view)
            await page.goto("/no-such-page")
            await camera.take(page, "404", lang, view)
        finally:
            await context.close()


async def run(outdir: Path) -> list[Shot]:
    camera = Camera(outdir)
    with tempfile.TemporaryDirectory(prefix="sigillo-screenshots-") as tmp:
        settings = portal_settings(Path(tmp), f"sqlite:///{tmp}/portal.db")
        async with running_portal(settings) as harness, chromium() as browser:
            await shoot(harness, browser, camera)
    return camera.shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    outdir: Path = args.outdir.resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    shots = asyncio.run(run(outdir))
    for shot in shots:
        flags = []
        if shot.overflow > 0:
            flags.append(f"wider than the viewport by {shot.overflow}px")
        if shot.violations:
            flags.append(f"axe: {', '.join(shot.violations)}")
        print(f"{shot.path}  ({'; '.join(flags)})" if flags else shot.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
