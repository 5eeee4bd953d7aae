"""Links, forms and requests for secrets."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP

import pytest

from sigillo.phishing import Checker, CheckPolicy, Report
from sigillo.phishing.content import requests_for_secrets
from sigillo.phishing.links import ip_host, target

POLICY = CheckPolicy(
    org_domains=("bancamica.it",), portal_host="sicuro.bancamica.it", org_names=("Banca Amica",)
)


def html_mail(
    html: str, text: str = "Vedi la versione HTML.", sender: str = "Mario <mario@example.net>"
) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender
    msg["To"] = "cliente@example.net"
    msg["Subject"] = "Avviso"
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def text_mail(text: str) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "Mario <mario@example.net>"
    msg["To"] = "cliente@example.net"
    msg.set_content(text)
    return msg.as_bytes()


def check(raw: bytes) -> Report:
    return Checker(POLICY).check(raw)


def found(raw: bytes, code: str) -> list[str]:
    return [f.evidence for f in check(raw).findings if f.code == code]


def link(href: str, text: str = "clicca qui", sender: str = "Mario <mario@example.net>") -> bytes:
    return html_mail(f'<p>Gentile cliente, <a href="{href}">{text}</a>.</p>', sender=sender)


def test_text_showing_another_host() -> None:
    raw = link("https://evil.example/x", "https://www.bancamica.it/conto")
    [evidence] = found(raw, "link-text-mismatch")
    assert "www.bancamica.it" in evidence and "evil.example" in evidence
    assert check(raw).verdict == "phishing"
    # Text showing the same registrable domain, or no host at all, is fine.
    assert not found(link("https://www.bancamica.it/x", "bancamica.it"), "link-text-mismatch")
    assert not found(link("https://evil.example/x", "report.pdf"), "link-text-mismatch")
    assert not found(link("https://evil.example/x"), "link-text-mismatch")


def test_http_links() -> None:
    assert found(link("http://www.example.net/"), "link-http")
    assert not found(link("https://www.example.net/"), "link-http")
    assert found(text_mail("Vai su http://www.example.net/offerte oggi"), "link-http")


@pytest.mark.parametrize(
    "host",
    ["192.168.10.1", "[2001:db8::1]", "3232235777", "0xc0a80101", "0300.0250.1.1", "10.1"],
)
def test_ip_literal_hosts(host: str) -> None:
    assert found(link(f"https://{host}/login"), "link-ip-host")


def test_names_are_not_ip_literals() -> None:
    assert not ip_host("www.example.net")
    assert not ip_host("1password.com")


@pytest.mark.parametrize("url", ["https://bit.ly/3xYz", "https://www.tinyurl.com/abc"])
def test_shorteners(url: str) -> None:
    assert found(link(url), "link-shortener")


def test_userinfo_hides_the_host() -> None:
    raw = link("https://www.bancamica.it@evil.example/accesso", "www.bancamica.it")
    assert found(raw, "link-userinfo")
    assert target("https://www.bancamica.it@evil.example/").host == "evil.example"  # type: ignore[union-attr]
    # Browsers read a backslash as a slash: the host is "evil.example", not the org's.
    assert target("https://evil.example\\@www.bancamica.it/").host == "evil.example"  # type: ignore[union-attr]


def test_lookalike_link_hosts() -> None:
    assert found(link("https://bancamica-sicurezza.com/"), "link-lookalike")
    assert found(link("https://sicuro.bancamica.it.login-verifica.com/"), "link-lookalike")
    assert not found(link("https://www.bancamica.it/"), "link-lookalike")
    assert not found(link("https://www.example.net/"), "link-lookalike")


@pytest.mark.parametrize(
    "href", ["javascript:alert(1)", "JaVa\tScRiPt:alert(1)", "data:text/html;base64,PGgxPg=="]
)
def test_active_schemes(href: str) -> None:
    assert found(link(href), "link-unsafe-scheme")


def test_mailto_and_tel_are_ignored() -> None:
    report = check(link("mailto:info@evil.example", "info@bancamica.it"))
    assert {f.code for f in report.findings} == {"not-from-org", "dkim-missing"}
    assert not check(link("tel:+390612345")).findings[0].code.startswith("link")


def test_credential_links_outside_the_portal() -> None:
    assert found(link("https://evil.example/x", "Accedi al tuo conto"), "credential-link-elsewhere")
    assert found(link("https://evil.example/account/login.php"), "credential-link-elsewhere")
    assert found(link("https://evil.example/x", "Sblocca la carta"), "credential-link-elsewhere")
    assert found(
        text_mail("Per sbloccarla: https://evil.example/sblocco"), "credential-link-elsewhere"
    )
    assert found(
        text_mail("Verify: https://evil.example/verify-account"), "credential-link-elsewhere"
    )
    assert not found(
        link("https://sicuro.bancamica.it/login", "Accedi"), "credential-link-elsewhere"
    )
    assert not found(link("https://evil.example/news", "Leggi"), "credential-link-elsewhere")


def test_a_sender_may_link_to_its_own_sign_in_page() -> None:
    """A shop's reset mail links to the shop: ordinary, unless the mail claims to be ours."""
    href, text = "https://accounts.shop.example/reset", "Reset your password"
    own = link(href, text, sender="Shop <no-reply@shop.example>")
    assert not found(own, "credential-link-elsewhere")
    assert check(own).verdict == "suspicious"
    claimed = link(href, text, sender="Banca Amica <no-reply@shop.example>")
    assert found(claimed, "credential-link-elsewhere")


def test_forms() -> None:
    password = html_mail('<form action="https://evil.example/p"><input type="password"></form>')
    assert found(password, "form-password") and found(password, "form-action-elsewhere")
    assert check(password).verdict == "phishing"
    elsewhere = html_mail('<form action="https://evil.example/p"><input name="q"></form>')
    assert found(elsewhere, "form-action-elsewhere")
    portal = html_mail('<form action="https://sicuro.bancamica.it/s"><input name="q"></form>')
    assert found(portal, "form-in-message")
    assert not found(portal, "form-action-elsewhere")
    stray = html_mail('<p>Password: <input type="password" name="p"></p>')
    assert found(stray, "form-password")


def test_many_links_are_reported_a_few_times() -> None:
    html = "".join(f'<a href="http://example.net/{i}">x</a>' for i in range(200))
    assert len(found(html_mail(html), "link-http")) == 5


# Requests for secrets


@pytest.mark.parametrize(
    "text",
    [
        "Please enter your password to restore access.",
        "Confirm your PIN within 24 hours.",
        "Reply with your card number and CVV.",
        "Verify your one-time code here",
        "Update your credit card details now",
        "Send us the expiry date of your card",
        "Inserisci il codice OTP ricevuto via SMS.",
        "Conferma i dati della tua carta entro oggi.",
        "Comunica il numero della carta al nostro operatore.",
        "Per sbloccare il conto inserisci l'OTP.",
        "Invia la password all'indirizzo indicato.",
        "Se non confermi il PIN il conto sarà bloccato.",
        "If you do not verify your password, access ends.",
    ],
)
def test_requests_for_secrets(text: str) -> None:
    assert requests_for_secrets(text), text
    report = check(text_mail(text))
    assert "asks-for-secrets" in {f.code for f in report.findings}
    assert report.verdict == "phishing"


@pytest.mark.parametrize(
    "text",
    [
        "We will never ask for your password by email.",
        "We will never ask you to send your password.",
        "Do not share your PIN with anyone.",
        "Non ti chiederemo mai la password per email.",
        "Non comunicare a nessuno il tuo PIN.",
        "Non inviare mai i dati della tua carta via email.",
        "Your password was changed.",
        "La password è stata cambiata.",
        "Please enter the building. Your password is safe with you.",
    ],
)
def test_advice_is_not_a_request(text: str) -> None:
    assert requests_for_secrets(text) == [], text


def test_request_wrapped_across_lines() -> None:
    assert requests_for_secrets("Please enter your\ncard number below")
    assert not requests_for_secrets("Please enter\n\ncard number")


def test_request_in_html_text() -> None:
    raw = html_mail("<p>Gentile cliente,</p><p>inserisci la tua <b>password</b> qui.</p>")
    assert found(raw, "asks-for-secrets")
