"""The sender: From, display name, look-alike domains, Reply-To, Return-Path, recipient."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP

import pytest

from sigillo.phishing import Checker, CheckPolicy, Report
from sigillo.phishing.domains import Reference, lookalike, osa_distance

POLICY = CheckPolicy(
    org_domains=("bancamica.it",),
    portal_host="sicuro.bancamica.it",
    org_names=("Banca Amica",),
)


def mail(sender: str, body: str = "Buongiorno, a presto.", **headers: str) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender
    msg["To"] = headers.pop("to", "cliente@example.net")
    msg["Subject"] = "Comunicazione"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes()


def check(raw: bytes, recipient: str | None = None, policy: CheckPolicy = POLICY) -> Report:
    return Checker(policy).check(raw, recipient)


def codes(report: Report) -> set[str]:
    return {f.code for f in report.findings}


def test_third_party_mail_is_suspicious_not_phishing() -> None:
    report = check(mail("Mario Rossi <mario@example.net>"))
    assert report.verdict == "suspicious"
    assert "not-from-org" in codes(report)
    assert all(f.severity != "high" for f in report.findings)


def test_from_the_org_without_authentication_is_the_spoof() -> None:
    report = check(mail("Banca Amica <avvisi@bancamica.it>"))
    assert report.verdict == "phishing"
    assert "from-org-unauthenticated" in codes(report)
    # A subdomain is the organisation's too.
    assert "from-org-unauthenticated" in codes(check(mail("x@news.bancamica.it")))


def test_missing_from() -> None:
    msg = b"To: cliente@example.net\r\nSubject: hi\r\n\r\nbody\r\n"
    report = check(msg)
    assert "from-missing" in codes(report)
    assert report.verdict != "genuine"
    assert "from-missing" in codes(check(b"From: undisclosed\r\n\r\nbody\r\n"))


@pytest.mark.parametrize(
    "raw",
    [
        b"From: a@example.net\r\nFrom: b@example.net\r\nTo: c@example.net\r\n\r\nx\r\n",
        b"From: a@example.net, b@example.net\r\nTo: c@example.net\r\n\r\nx\r\n",
    ],
)
def test_multiple_from(raw: bytes) -> None:
    report = check(raw)
    assert "multiple-from" in codes(report)
    assert report.verdict == "phishing"


@pytest.mark.parametrize(
    ("domain", "why"),
    [
        ("bancamica.com", "under another suffix"),
        ("bancarnica.it", "look-alike characters"),  # rn for m
        ("banc4mica.it", "look-alike characters"),
        ("bancamcia.it", "1 character(s) away"),  # transposition
        ("b4ncam1ca.it", "1 character(s) away"),  # 4 for a, 1 for l, then l for i
        ("bancamica-sicurezza.it", "words added"),
        ("securebancamica.com", "words added"),
        ("bancamica.it.verify-login.com", "as a subdomain"),
        ("xn--bncamica-2ya.it", "2 character(s) away"),  # punycode: bncaàmica
        ("xn--bncamica-zya.it", "look-alike characters"),  # punycode: bàncamica
        ("bаncamica.it", "look-alike characters"),  # Cyrillic a
        ("banca-amica.net", "1 character(s) away"),  # hyphens aside
        ("bancaamicaonline.com", "organisation's name"),
    ],
)
def test_lookalike_sender_domains(domain: str, why: str) -> None:
    report = check(mail(f"Assistenza <info@{domain}>"))
    [finding] = [f for f in report.findings if f.code == "from-lookalike"]
    assert why in finding.evidence
    assert report.verdict == "phishing"


@pytest.mark.parametrize(
    "domain",
    # bancaetica.it: another real bank, two edits from bancamica.it, claims nothing of ours.
    ["example.net", "poste.it", "banca.it", "amicizia.org", "bancaetica.it"],
)
def test_unrelated_domains_are_not_lookalikes(domain: str) -> None:
    report = check(mail(f"Info <info@{domain}>"))
    assert "from-lookalike" not in codes(report)
    assert report.verdict == "suspicious"


def test_lookalike_of_the_portal_host() -> None:
    policy = CheckPolicy(org_domains=("org.example",), portal_host="portale-sicuro.it")
    refs = (Reference.of("org.example"), Reference.of("portale-sicuro.it"))
    assert lookalike("portale-sicur0.it", tuple(r for r in refs if r)) is not None
    assert "from-lookalike" in codes(check(mail("x@portale-sicuro.com"), policy=policy))


def test_short_org_labels_are_not_searched_by_edit_distance() -> None:
    ref = Reference.of("org.example")
    assert ref is not None
    assert lookalike("ore.example", (ref,)) is None
    assert lookalike("org.com", (ref,)) is not None


def test_damerau_distance() -> None:
    assert osa_distance("bancamica", "bancmaica", 2) == 1
    assert osa_distance("bancamica", "bancamica", 2) == 0
    assert osa_distance("abc", "abcdefgh", 2) == 3


@pytest.mark.parametrize(
    "display",
    [
        "Banca Amica",
        "BANCA  AMICÀ - Sicurezza",
        "Servizio clienti bancamica",
        "bancamica.it",
        "avvisi@bancamica.it",
        "Bаnca Аmica",  # Cyrillic a
    ],
)
def test_display_name_claiming_the_org(display: str) -> None:
    report = check(mail(f'"{display}" <noreply@mailer.example.net>'))
    assert "display-name-claims-org" in codes(report), report.findings
    assert "not-from-org" not in codes(report)
    assert report.verdict == "phishing"


def test_utf8_header_lookalike() -> None:
    raw = "From: Avvisi <avvisi@bаncamica.it>\r\nTo: a@b.example\r\n\r\nx\r\n".encode()
    assert "from-lookalike" in codes(check(raw))


def test_encoded_display_name_claiming_the_org() -> None:
    raw = b"From: =?utf-8?q?Banca_Amica?= <x@example.net>\r\nTo: a@b.example\r\n\r\nx\r\n"
    assert "display-name-claims-org" in codes(check(raw))


def test_display_name_of_a_person_is_not_a_claim() -> None:
    assert "display-name-claims-org" not in codes(check(mail("Bianca Amici <b@example.net>")))


def test_reply_to_elsewhere() -> None:
    third = check(mail("Mario <mario@example.net>", Reply_To="m@other.example"))
    assert "reply-to-elsewhere" in codes(third)
    assert third.verdict == "suspicious"
    claimed = check(mail("Banca Amica <x@bancamica.it>", Reply_To="ufficio@gmail.com"))
    assert "reply-to-leaves-org" in codes(claimed)
    same = check(mail("Mario <mario@example.net>", Reply_To="mario@mail.example.net"))
    assert {"reply-to-elsewhere", "reply-to-leaves-org"}.isdisjoint(codes(same))


def test_return_path_elsewhere() -> None:
    report = check(mail("Mario <mario@example.net>", Return_Path="<bounce@sender.example>"))
    assert "return-path-elsewhere" in codes(report)
    null = check(mail("Mario <mario@example.net>", Return_Path="<>"))
    assert "return-path-elsewhere" not in codes(null)


def test_not_addressed_to_the_recipient() -> None:
    raw = mail("Mario <mario@example.net>", to="altro@example.net")
    assert "not-addressed-to-you" in codes(check(raw, "cliente@example.net"))
    assert "not-addressed-to-you" not in codes(check(raw, "ALTRO@example.net"))
    assert "not-addressed-to-you" not in codes(check(raw))
    delivered = mail(
        "Mario <mario@example.net>", to="lista@example.net", Delivered_To="me@x.example"
    )
    assert "not-addressed-to-you" not in codes(check(delivered, "me@x.example"))


def test_findings_most_severe_first_and_json() -> None:
    report = check(mail("Banca Amica <x@bancamica.it>", Reply_To="ufficio@gmail.com"))
    ranks = ["high", "medium", "low", "info"]
    order = [ranks.index(f.severity) for f in report.findings]
    assert order == sorted(order)
    data = report.to_json()
    assert data["verdict"] == "phishing"
    first = data["findings"][0]  # type: ignore[index]
    assert set(first) == {"code", "severity", "explanation", "evidence"}
    assert set(first["explanation"]) == {"en", "it"}
