"""Writes the part of the phishing corpus that carries DKIM signatures.

Banca Amica (``bancamica.it``) is the organisation of the corpus. This script produces:

    genuine-sigillo/  notifications, DSNs and account mail rendered by sigillo's own code and
                      signed by sigillo's signer (selector ``sigillo``), then as the recipient's
                      provider hands them over: Received headers (and sometimes the provider's
                      own Authentication-Results) prepended, some re-saved with LF line endings.
    genuine-org/      the bank's own mail to customers, signed by its mail server (``mail2026``),
                      and internal mail stamped by the trusted border MTA ``mx.bancamica.it``.
    phishing/tampered-*  genuine mail of both kinds edited after signing.

Everything else in the corpus is a hand-written .eml file and is left alone. The keys under
``corpus/keys/`` are fixed test keys. Random parts (Message-IDs, MIME boundaries, the DKIM
``t=`` tag) are pinned while rendering, so a run reproduces the committed files byte for byte:

    .venv/bin/python tests/phishing/make_corpus.py           # rewrite the generated files
    .venv/bin/python tests/phishing/make_corpus.py --check   # exit 1 if they are out of date
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import itertools
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import dkim

from sigillo import notify
from sigillo.config import NotifySettings, Settings, SMTPSettings
from sigillo.dkim import DkimSigner
from sigillo.gateway import dsn
from sigillo.notify import Notification
from sigillo.portal import outbox
from sigillo.portal.i18n import load_translations
from sigillo.portal.outbox import Outbox

CORPUS = Path(__file__).resolve().parent / "corpus"
KEYS = CORPUS / "keys"
ORG = "bancamica.it"
PORTAL = "https://secure.bancamica.it"
GATEWAY = "sigillo.bancamica.it"
SIGNED_AT = int(datetime(2026, 11, 20, 8, 0, tzinfo=UTC).timestamp())
"""The DKIM ``t=`` of every generated signature."""

Raw = bytes
Headers = Callable[[str, datetime], list[str]]
"""(recipient, arrival) -> header lines the recipient's provider prepends, topmost first."""


def sigillo_signer() -> DkimSigner:
    return DkimSigner((KEYS / "sigillo.pem").read_bytes(), "sigillo", ORG)


def mail_server_signer() -> DkimSigner:
    return DkimSigner((KEYS / "mail2026.pem").read_bytes(), "mail2026", ORG)


@contextlib.contextmanager
def pinned() -> Iterator[None]:
    """Message-IDs, boundaries and signing time fixed: the output depends on the inputs only."""
    counter = itertools.count(1)

    def hex_of(n: int, size: int) -> str:
        return hashlib.sha256(f"sigillo-corpus-{n}".encode()).hexdigest()[: 2 * size]

    def msgid(idstring: str | None = None, domain: str | None = None) -> str:
        n = next(counter)
        return f"<{SIGNED_AT + n}.{hex_of(n, 8)}@{domain or GATEWAY}>"

    def token_hex(nbytes: int | None = 32) -> str:
        return hex_of(next(counter), nbytes or 32)

    with (
        mock.patch.object(dkim, "time", SimpleNamespace(time=lambda: SIGNED_AT)),
        mock.patch.object(notify, "make_msgid", msgid),
        mock.patch.object(outbox, "make_msgid", msgid),
        mock.patch.object(dsn, "secrets", SimpleNamespace(token_hex=token_hex)),
    ):
        yield


def crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def received(headers: list[str], raw: Raw, *, lf: bool = False) -> Raw:
    block = "".join(line + "\r\n" for line in headers).encode()
    out = block + raw
    return out.replace(b"\r\n", b"\n") if lf else out


def _stamp(when: datetime) -> str:
    return format_datetime(when)


def gmail(sender: str, ip: str, helo: str, selector: str, *, ar: bool = True) -> Headers:
    def headers(recipient: str, when: datetime) -> list[str]:
        out = [
            f"Delivered-To: {recipient}",
            "Received: by 2002:a05:7300:5b21:b0:1a4:6e0f:9c2d with SMTP id "
            f"x33csp{when:%H%M%S}dyb;",
            f"        {_stamp(when + timedelta(seconds=2))}",
        ]
        if ar:
            out += [
                "Authentication-Results: mx.google.com;",
                f"       dkim=pass header.i=@{ORG} header.s={selector} header.b=Qm3x9Lk2;",
                f"       spf=pass (google.com: domain of {sender} designates {ip} as "
                "permitted sender)",
                f" smtp.mailfrom={sender};",
                f"       dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from={ORG}",
            ]
        out += [
            f"Return-Path: <{sender}>",
            f"Received: from {helo} ({helo}. [{ip}])",
            f"        by mx.google.com with ESMTPS id 5b1f17b1804b1-4b7e{when:%M%S}a9si;",
            f"        for <{recipient}>",
            "        (version=TLS1_3 cipher=TLS_AES_256_GCM_SHA384 bits=256/256);",
            f"        {_stamp(when)}",
        ]
        return out

    return headers


def outlook(sender: str, ip: str, helo: str) -> Headers:
    """Microsoft writes its Authentication-Results without an authserv-id."""

    def headers(recipient: str, when: datetime) -> list[str]:
        return [
            "Received: from AM9PR07MB7201.eurprd07.prod.outlook.com (2603:10a6:20b:4d1::9) by",
            " DU0PR07MB9130.eurprd07.prod.outlook.com with HTTPS; "
            f"{_stamp(when + timedelta(seconds=1))}",
            "Authentication-Results: spf=pass (sender IP is "
            f"{ip}) smtp.mailfrom={sender.rpartition('@')[2]}; dkim=pass (signature was",
            f" verified) header.d={ORG};dmarc=pass action=none header.from={ORG};compauth=pass",
            " reason=100",
            f"Received-SPF: Pass ({ORG}: domain of {sender} designates {ip} as permitted sender)",
            f" receiver=protection.outlook.com; client-ip={ip}; helo={helo}; pr=C",
            f"Received: from {helo} ({ip}) by",
            " AM4PEPF00027A6C.mail.protection.outlook.com (10.167.16.90) with Microsoft SMTP",
            " Server (version=TLS1_3, cipher=TLS_AES_256_GCM_SHA384) id 15.20.8207.0 via",
            f" Frontend Transport; {_stamp(when)}",
            f"Return-Path: {sender}",
            f"X-Original-To: {recipient}",
            f"Delivered-To: {recipient}",
        ]

    return headers


def plain_mx(name: str, sender: str, ip: str, helo: str) -> Headers:
    """A small provider that stamps no Authentication-Results."""

    def headers(recipient: str, when: datetime) -> list[str]:
        return [
            f"Return-Path: <{sender}>",
            f"Delivered-To: {recipient}",
            f"Received: from {helo} ({helo} [{ip}])",
            f"\tby {name} (Postfix) with ESMTPS id 4dKq7W3Lz2z1xQ",
            f"\tfor <{recipient}>; {_stamp(when)}",
        ]

    return headers


def border(sender: str, ip: str, helo: str) -> Headers:
    """The bank's own border MTA, for mail its staff receive; its A-R id is the trusted one."""

    def headers(recipient: str, when: datetime) -> list[str]:
        domain = sender.rpartition("@")[2]
        return [
            f"Return-Path: <{sender}>",
            f"Delivered-To: {recipient}",
            "Authentication-Results: mx.bancamica.it;",
            f"\tspf=pass smtp.mailfrom={domain};",
            f"\tdmarc=pass header.from={ORG}",
            f"Received: from {helo} ({helo} [{ip}])",
            "\tby mx.bancamica.it (Postfix) with ESMTPS id 4dKr1B6xYQz9vT",
            f"\tfor <{recipient}>; {_stamp(when)}",
        ]

    return headers


SIGILLO_IP = "203.0.113.25"
MAIL_IP = "203.0.113.10"
NEWS_IP = "198.51.100.44"
INTERNAL_IP = "10.20.0.15"
SECURE = "secure@bancamica.it"


def _sigillo_settings(sender: str) -> Settings:
    return Settings(
        notify=NotifySettings.model_validate({"from": sender}),
        smtp=SMTPSettings(hostname=GATEWAY),
    )


def _notification(
    recipient: str, token: str, subject: str | None, when: datetime, sender: str = SECURE
) -> Raw:
    note = Notification(recipient, f"{PORTAL}/c/{token}", subject)
    return sigillo_signer().sign(note.render(sender, GATEWAY, when))


def _phrase_notification(recipient: str, token: str, phrase: str, when: datetime) -> Raw:
    note = Notification(recipient, f"{PORTAL}/c/{token}", phrase=phrase)
    return sigillo_signer().sign(note.render(SECURE, GATEWAY, when))


# As the portal's account pages (sigillo.portal.pages.account) write them.
_RESET = (
    "Someone, probably you, asked to reset the password of your secure "
    "messages account. To choose a new password, open this link within "
    "30 minutes:\n\n    {link}\n\nIf it was not you, ignore this email: your "
    "password stays as it is. We will never ask for your password by email."
)
_CHANGED = (
    "The password of your secure messages account was just changed, and every other "
    "signed-in session was ended. If you did not do this, reset your password at once "
    "here: {link}"
)


def _account_mail(recipient: str, lang: str, kind: str, when: datetime) -> Raw:
    """What the portal's account pages queue, in the recipient's language."""
    translations = load_translations(lang)

    def gettext(msgid: str) -> str:
        # The texts are account.py's msgids; one that no longer is would go out untranslated.
        text = translations.gettext(msgid)
        if lang != "en" and text == msgid:
            raise SystemExit(f"not in the {lang} catalogue (account.py changed?): {msgid!r}")
        return text

    box = Outbox(_sigillo_settings(SECURE), None, None)  # type: ignore[arg-type]  # compose only
    if kind == "reset":
        token = "q8Rw2nYtV0cJmZ4bXe7LpKs1HdGa9uFo3iTy6NvBzQw"
        subject = gettext("Reset your password")
        body = gettext(_RESET).format(link=f"{PORTAL}/reset/{token}")
    else:
        subject = gettext("Your password was changed")
        body = gettext(_CHANGED).format(link=f"{PORTAL}/forgot")
    return sigillo_signer().sign(box.compose(recipient, subject, body, when))


def _dsn(action: dsn.Action, when: datetime) -> Raw:
    original = crlf(
        "From: Marta Rossi <m.rossi@bancamica.it>\n"
        "To: cliente.pratica@fastwebnet.it\n"
        "Subject: Pratica mutuo 2026/4471: documenti firmati\n"
        f"Date: {_stamp(when - timedelta(days=5 if action == 'failed' else 1))}\n"
        "Message-ID: <a81f3c.4471@mail.bancamica.it>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "\n"
        "Gentile cliente, in allegato i documenti firmati.\n"
    )
    failed = dsn.FailedRecipient(
        address="cliente.pratica@fastwebnet.it",
        status="5.1.1" if action == "failed" else "4.4.1",
        action=action,
        diagnostic=(
            "550 5.1.1 <cliente.pratica@fastwebnet.it>: Recipient address rejected: "
            "User unknown in virtual mailbox table"
            if action == "failed"
            else "421 4.4.1 Connection timed out"
        ),
        remote_mta="mx.fastwebnet.it",
        last_attempt=when - timedelta(minutes=3),
    )
    report = dsn.build_dsn(
        original=original,
        envelope_from="m.rossi@bancamica.it",
        reporting_mta=GATEWAY,
        postmaster="postmaster@bancamica.it",
        recipients=[failed],
        arrival=when - timedelta(days=5 if action == "failed" else 1),
        now=when,
    )
    return sigillo_signer().sign(dsn.dsn_bytes(report))


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def genuine_sigillo() -> dict[str, Raw]:
    g_note = gmail(SECURE, SIGILLO_IP, GATEWAY, "sigillo")
    g_bare = gmail(SECURE, SIGILLO_IP, GATEWAY, "sigillo", ar=False)
    o_note = outlook(SECURE, SIGILLO_IP, GATEWAY)
    libero = plain_mx("smtp-in.libero.it", SECURE, SIGILLO_IP, GATEWAY)
    tiscali = plain_mx("mx.tiscali.it", SECURE, SIGILLO_IP, GATEWAY)
    staff = plain_mx("mail.bancamica.it", "", SIGILLO_IP, GATEWAY)

    def note(
        headers: Headers, recipient: str, token: str, subject: str | None, when: datetime
    ) -> Raw:
        return received(headers(recipient, when), _notification(recipient, token, subject, when))

    return {
        "notification-gmail.eml": note(
            g_note,
            "anna.bianchi@gmail.com",
            "Xq2v9KfT1mZc8RbLw4NyJd0pHs7GaUe3oVi6tBnQyE5",
            None,
            _at(20, 9, 14),
        ),
        "notification-subject-gmail.eml": note(
            g_note,
            "anna.bianchi@gmail.com",
            "pR4tWz8cYb1LmKx6Qv3NfHj0Ds9GaUe2oVi5tBnQyE7",
            "Estratto conto ottobre 2026",
            _at(20, 11, 2),
        ),
        "notification-outlook.eml": note(
            o_note,
            "giulia.conti@outlook.it",
            "Lk9Pz3Wq7Xc2Vb6Nm1Jh5Gf8Ds4Aa0QwErTyUiOpZx",
            None,
            _at(21, 8, 40),
        ),
        "notification-subject-accents-outlook.eml": note(
            o_note,
            "giulia.conti@outlook.it",
            "Mn3Bv7Cx1Zl5Kj9Hg2Fd6Sa0Qw4Er8TyUiOpAsDfGh",
            "Proposta di finanziamento – già firmata",
            _at(21, 15, 5),
        ),
        "notification-libero.eml": note(
            libero,
            "marco.ferri@libero.it",
            "Zx8Cv2Bn6Ml0Kj4Hg9Fd3Sa7Qw1Er5TyUiOpAsDfGh",
            None,
            _at(22, 10, 30),
        ),
        "notification-tiscali-subject.eml": note(
            tiscali,
            "p.esposito@tiscali.it",
            "Qa1Ws2Ed3Rf4Tg5Yh6Uj7Ik8Ol9Pz0XcVbNmLkJhGf",
            "Your mortgage documents",
            _at(23, 16, 45),
        ),
        "notification-gmail-no-ar.eml": note(
            g_bare,
            "luca.moretti@gmail.com",
            "Hy6Gt5Fr4De3Sw2Aq1Zx0Cv9Bn8Mk7Lj6Hg5Fd4SaQw",
            None,
            _at(24, 7, 55),
        ),
        "notification-display-name.eml": received(
            g_note("sara.ricci@gmail.com", _at(24, 12, 0)),
            _notification(
                "sara.ricci@gmail.com",
                "Tr5Ew4Qa3Sd2Fg1Hj0Kl9Zx8Cv7Bn6Mq5Wn4Eb3Rv2T",
                None,
                _at(24, 12, 0),
                sender="Banca Amica <secure@bancamica.it>",
            ),
        ),
        "notification-pasted-lf.eml": received(
            g_note("anna.bianchi@gmail.com", _at(25, 9, 0)),
            _notification(
                "anna.bianchi@gmail.com",
                "Uy7Ti8Or9Pe0Wq1Aw2Sx3Dc4Fv5Gb6Hn7Jm8Ki9LoPq",
                None,
                _at(25, 9, 0),
            ),
            lf=True,
        ),
        "notification-subject-pasted-lf.eml": received(
            o_note("giulia.conti@outlook.it", _at(25, 14, 20)),
            _notification(
                "giulia.conti@outlook.it",
                "Ik8Uj7Yh6Tg5Rf4Ed3Ws2Qa1Zx0Cv9Bn8Mk7Lj6Hg5F",
                "Referto visita del 18/11",
                _at(25, 14, 20),
            ),
            lf=True,
        ),
        "reset-en-gmail.eml": received(
            g_note("luca.moretti@gmail.com", _at(22, 18, 3)),
            _account_mail("luca.moretti@gmail.com", "en", "reset", _at(22, 18, 3)),
        ),
        "reset-it-libero.eml": received(
            libero("marco.ferri@libero.it", _at(23, 7, 12)),
            _account_mail("marco.ferri@libero.it", "it", "reset", _at(23, 7, 12)),
        ),
        "password-changed-it-outlook.eml": received(
            o_note("giulia.conti@outlook.it", _at(23, 7, 20)),
            _account_mail("giulia.conti@outlook.it", "it", "changed", _at(23, 7, 20)),
        ),
        "password-changed-en-pasted-lf.eml": received(
            g_note("sara.ricci@gmail.com", _at(24, 19, 41)),
            _account_mail("sara.ricci@gmail.com", "en", "changed", _at(24, 19, 41)),
            lf=True,
        ),
        "dsn-failed.eml": received(
            staff("m.rossi@bancamica.it", _at(25, 10, 0)), _dsn("failed", _at(25, 10, 0))
        ),
        "dsn-delayed.eml": received(
            staff("m.rossi@bancamica.it", _at(26, 6, 30)), _dsn("delayed", _at(26, 6, 30))
        ),
        "notification-phrase-gmail.eml": received(
            g_note("anna.bianchi@gmail.com", _at(26, 9, 5)),
            _phrase_notification(
                "anna.bianchi@gmail.com",
                "Gh4Jk5Lz6Xc7Vb8Nm9Qw0Er1Ty2Ui3Op4As5Df6GhJk",
                "gatto rosso sul tetto",
                _at(26, 9, 5),
            ),
        ),
        "notification-phrase-libero.eml": received(
            libero("marco.ferri@libero.it", _at(26, 11, 50)),
            _phrase_notification(
                "marco.ferri@libero.it",
                "Bn1Mq2We3Rt4Yu5Io6Pa7Sd8Fg9Hj0Kl1Zx2Cv3Bn4M",
                "the blue heron at dawn",
                _at(26, 11, 50),
            ),
        ),
    }


@dataclasses.dataclass(frozen=True)
class OrgMail:
    """One message of the bank's own staff or systems."""

    sender: str
    recipient: str
    subject: str
    text: str
    when: datetime
    html: str | None = None
    extra: tuple[tuple[str, str], ...] = ()
    attachment: tuple[str, bytes] | None = None

    def render(self, n: int) -> Raw:
        msg = EmailMessage(policy=SMTP)
        msg["From"] = self.sender
        msg["To"] = self.recipient
        msg["Subject"] = self.subject
        msg["Date"] = format_datetime(self.when)
        msg["Message-ID"] = f"<{self.when:%Y%m%d%H%M}.{n:04d}@mail.bancamica.it>"
        for name, value in self.extra:
            msg[name] = value
        msg.set_content(self.text)
        if self.html is not None:
            msg.add_alternative(self.html, subtype="html")
        if self.attachment is not None:
            name, data = self.attachment
            msg.add_attachment(data, maintype="application", subtype="pdf", filename=name)
        # Fixed boundaries: the email package draws them at random.
        for depth, part in enumerate(msg.walk()):
            if part.is_multipart():
                part.set_boundary(f"----=_Part_{n}_{depth}.{self.when:%Y%m%d}")
        return msg.as_bytes()


_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]"
    b"/Count 1>>endobj\n3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 595 842]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)

_SIGN_OFF_IT = (
    "\n\nCordiali saluti,\nBanca Amica S.p.A.\nVia dei Mille 12, 20121 Milano\n"
    "Servizio clienti 800 123 456 - https://www.bancamica.it\n"
)
_SIGN_OFF_EN = (
    "\n\nKind regards,\nBanca Amica S.p.A.\nVia dei Mille 12, 20121 Milan, Italy\n"
    "Customer service +39 02 1234 5678 - https://www.bancamica.it\n"
)


def _newsletter_html(lang: str) -> str:
    track = "https://click.news.bancamica.it/t"
    if lang == "it":
        title, intro, more, unsub = (
            "Le novità di novembre",
            "Nuovo conto giovani a canone zero fino a 30 anni, e l'app si aggiorna.",
            "Scopri di più",
            "Non vuoi più ricevere la newsletter? Cancella l'iscrizione",
        )
    else:
        title, intro, more, unsub = (
            "What's new in November",
            "A fee-free account for under-30s, and a new version of our app.",
            "Find out more",
            "No longer want this newsletter? Unsubscribe",
        )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>'
        f'{title}</title></head>\n<body style="font-family:Arial,sans-serif">\n'
        '<table width="600" align="center"><tr><td>\n'
        f'<a href="{track}/a1b2c3/home"><img src="https://static.bancamica.it/news/'
        'logo.png" alt="Banca Amica" width="160"></a>\n'
        f"<h1>{title}</h1>\n<p>{intro}</p>\n"
        f'<p><a href="{track}/a1b2c3/conto-giovani">{more}</a></p>\n'
        '<p><a href="https://www.bancamica.it/app">https://www.bancamica.it/app</a></p>\n'
        f'<p style="font-size:11px"><a href="{track}/a1b2c3/unsubscribe">{unsub}</a></p>\n'
        '<img src="https://click.news.bancamica.it/o/a1b2c3.gif" width="1" height="1" '
        'alt="">\n</td></tr></table>\n</body></html>\n'
    )


def _statement_html(name: str) -> str:
    return (
        '<html><body style="font-family:Arial,sans-serif">\n'
        f"<p>Gentile {name},</p>\n"
        "<p>l'estratto conto di ottobre 2026 è disponibile nella tua area clienti.</p>\n"
        '<p>Per consultarlo accedi dal sito <a href="https://www.bancamica.it/area-clienti">'
        "www.bancamica.it</a> o dall'app Banca Amica.</p>\n"
        "<p>Ti ricordiamo che Banca Amica non ti chiederà mai password o codici via email.</p>\n"
        "<p>Cordiali saluti,<br>Banca Amica S.p.A.</p>\n</body></html>\n"
    )


def org_mails() -> dict[str, tuple[OrgMail, Headers, str]]:
    """name -> (message, how it was delivered, how it was signed: relaxed, simple or none)."""
    news = "Banca Amica <newsletter@news.bancamica.it>"
    comm = "Banca Amica <comunicazioni@bancamica.it>"
    g_mail = gmail("bounces@bancamica.it", MAIL_IP, "mail.bancamica.it", "mail2026")
    o_mail = outlook("bounces@bancamica.it", MAIL_IP, "mail.bancamica.it")
    libero = plain_mx("smtp-in.libero.it", "bounces@bancamica.it", MAIL_IP, "mail.bancamica.it")
    g_news = gmail("bounce-7731@news.bancamica.it", NEWS_IP, "out2.news.bancamica.it", "mail2026")
    inside = border("noreply@bancamica.it", INTERNAL_IP, "relay1.bancamica.it")
    return {
        "statement-ready-it.eml": (
            OrgMail(
                comm,
                "anna.bianchi@gmail.com",
                "Il tuo estratto conto di ottobre è disponibile",
                "Gentile Anna Bianchi,\n\nl'estratto conto di ottobre 2026 è disponibile nella "
                "tua area clienti.\nPer consultarlo accedi dal sito https://www.bancamica.it/"
                "area-clienti o dall'app Banca Amica.\n\nTi ricordiamo che Banca Amica non ti "
                "chiederà mai password o codici via email." + _SIGN_OFF_IT,
                _at(3, 7, 30),
                html=_statement_html("Anna Bianchi"),
            ),
            g_mail,
            "relaxed",
        ),
        "statement-ready-en.eml": (
            OrgMail(
                comm,
                "john.whitaker@outlook.com",
                "Your October statement is ready",
                "Dear John Whitaker,\n\nyour statement for October 2026 is ready in your online "
                "banking.\nSign in at https://www.bancamica.it/en/online-banking or in the Banca "
                "Amica app to read it." + _SIGN_OFF_EN,
                _at(3, 7, 31),
            ),
            o_mail,
            "simple",
        ),
        "appointment-it.eml": (
            OrgMail(
                "Laura Gallo <l.gallo@bancamica.it>",
                "marco.ferri@libero.it",
                "Conferma appuntamento di giovedì 12 novembre",
                "Buongiorno signor Ferri,\n\nle confermo l'appuntamento di giovedì 12 novembre "
                "alle 10:30 nella filiale di Milano Porta Romana, corso di Porta Romana 88, per "
                "parlare del mutuo.\nPorti con sé un documento d'identità e le ultime due buste "
                "paga.\n\nSe non potesse venire mi chiami pure al 02 5555 0188.\n\nLaura Gallo\n"
                "Consulente privati - Filiale Milano Porta Romana\nBanca Amica S.p.A.\n",
                _at(9, 16, 12),
            ),
            libero,
            "relaxed",
        ),
        "appointment-reminder-en.eml": (
            OrgMail(
                "Banca Amica Appointments <appuntamenti@bancamica.it>",
                "john.whitaker@outlook.com",
                "Reminder: your appointment tomorrow at 15:00",
                "Dear John Whitaker,\n\nthis is a reminder of your appointment tomorrow, 27 "
                "November, at 15:00 at our Milano Centrale branch (Piazza Duca d'Aosta 3).\n"
                "To move or cancel it, call us or use https://www.bancamica.it/en/appointments."
                + _SIGN_OFF_EN,
                _at(26, 8, 0),
            ),
            o_mail,
            "relaxed",
        ),
        "document-request-it.eml": (
            OrgMail(
                "Ufficio Mutui Banca Amica <mutui@bancamica.it>",
                "luca.moretti@gmail.com",
                "Pratica mutuo 2026/5120: documenti mancanti",
                "Gentile Luca Moretti,\n\nper completare la pratica di mutuo 2026/5120 ci "
                "mancano ancora:\n- il modello CU 2026;\n- la visura catastale dell'immobile.\n\n"
                "Può caricarli nel portale dei messaggi sicuri, https://secure.bancamica.it, "
                "entrando con la password che ha scelto alla prima visita. Non li invii per "
                "email ordinaria." + _SIGN_OFF_IT,
                _at(12, 10, 5),
            ),
            g_mail,
            "relaxed",
        ),
        "document-request-en.eml": (
            OrgMail(
                "Banca Amica Mortgages <mutui@bancamica.it>",
                "sara.ricci@gmail.com",
                "Mortgage application 2026/5188: two documents missing",
                "Dear Sara Ricci,\n\nto complete your mortgage application we still need your "
                "2026 tax certificate (CU) and the land registry extract of the property.\n"
                "Please upload them in the secure messages portal, https://secure.bancamica.it, "
                "rather than sending them by ordinary email." + _SIGN_OFF_EN,
                _at(13, 11, 40),
            ),
            g_mail,
            "simple",
        ),
        "newsletter-it.eml": (
            OrgMail(
                news,
                "anna.bianchi@gmail.com",
                "Le novità di novembre da Banca Amica",
                "Le novità di novembre\n\nNuovo conto giovani a canone zero fino a 30 anni: "
                "https://click.news.bancamica.it/t/a1b2c3/conto-giovani\nL'app si aggiorna: "
                "https://www.bancamica.it/app\n\nCancella l'iscrizione: "
                "https://click.news.bancamica.it/t/a1b2c3/unsubscribe\n",
                _at(5, 9, 0),
                html=_newsletter_html("it"),
                extra=(
                    ("List-Unsubscribe", "<https://click.news.bancamica.it/u/a1b2c3>"),
                    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
                ),
            ),
            g_news,
            "relaxed",
        ),
        "newsletter-en.eml": (
            OrgMail(
                news,
                "luca.moretti@gmail.com",
                "What's new at Banca Amica this November",
                "What's new in November\n\nA fee-free account for under-30s: "
                "https://click.news.bancamica.it/t/d4e5f6/conto-giovani\nOur new app: "
                "https://www.bancamica.it/app\n\nUnsubscribe: "
                "https://click.news.bancamica.it/t/d4e5f6/unsubscribe\n",
                _at(5, 9, 1),
                html=_newsletter_html("en"),
                extra=(("List-Unsubscribe", "<https://click.news.bancamica.it/u/d4e5f6>"),),
            ),
            g_news,
            "relaxed",
        ),
        "mortgage-offer-it.eml": (
            OrgMail(
                comm,
                "marco.ferri@libero.it",
                "Mutuo casa: tasso fisso ridotto fino al 31/12",
                "Gentile cliente,\n\nfino al 31 dicembre il mutuo casa a tasso fisso ha uno "
                "spread ridotto. Trova le condizioni e il simulatore su "
                "https://www.bancamica.it/mutui, oppure prenota un appuntamento in filiale."
                + _SIGN_OFF_IT,
                _at(16, 9, 30),
            ),
            libero,
            "relaxed",
        ),
        "card-shipped-it.eml": (
            OrgMail(
                comm,
                "sara.ricci@gmail.com",
                "La tua nuova carta è in spedizione",
                "Gentile Sara Ricci,\n\nla tua nuova carta di debito è stata spedita "
                "all'indirizzo di residenza. Il PIN ti arriverà separatamente per posta.\n\n"
                "Non ti chiederemo mai il PIN, la password o i codici che ricevi via SMS: né "
                "per email, né per telefono. Se qualcuno lo fa a nostro nome, chiama il "
                "numero verde 800 123 456." + _SIGN_OFF_IT,
                _at(17, 14, 0),
            ),
            g_mail,
            "simple",
        ),
        "security-advice-en.eml": (
            OrgMail(
                comm,
                "john.whitaker@outlook.com",
                "How to recognise fake Banca Amica emails",
                "Dear customer,\n\nfraudsters are sending emails that look like ours. Remember:"
                "\n- we will never ask for your password, PIN, card number, CVV or one-time "
                "codes by email, text or phone;\n- our emails come from addresses ending in "
                "@bancamica.it;\n- our secure messages are only at https://secure.bancamica.it."
                "\n\nIf in doubt, forward the email to phish-report@bancamica.it." + _SIGN_OFF_EN,
                _at(18, 10, 0),
            ),
            o_mail,
            "relaxed",
        ),
        "reply-in-thread-it.eml": (
            OrgMail(
                "Laura Gallo <l.gallo@bancamica.it>",
                "marco.ferri@libero.it",
                "Re: informazioni sul conto cointestato",
                "Buongiorno signor Ferri,\n\nsì, il conto può essere cointestato anche a sua "
                "moglie: basta che passiate insieme in filiale con i documenti d'identità.\n\n"
                "Laura Gallo\nFiliale Milano Porta Romana\n\n"
                "Il 14/11/2026 10:02, Marco Ferri ha scritto:\n"
                "> Buongiorno, vorrei sapere se posso aggiungere mia moglie al conto.\n"
                "> Grazie, Marco Ferri\n",
                _at(14, 11, 20),
                extra=(
                    ("In-Reply-To", "<CAF8x1=Zq3@mail.libero.it>"),
                    ("References", "<CAF8x1=Zq3@mail.libero.it>"),
                ),
            ),
            libero,
            "relaxed",
        ),
        "branch-closure-en.eml": (
            OrgMail(
                comm,
                "sara.ricci@gmail.com",
                "Our Via Torino branch moves on 1 December",
                "Dear Sara Ricci,\n\nfrom 1 December our Via Torino branch moves to Via Dante 7, "
                "a few steps away. Your account, cards and IBAN do not change.\nOpening hours: "
                "https://www.bancamica.it/en/branches" + _SIGN_OFF_EN,
                _at(19, 8, 15),
            ),
            g_mail,
            "relaxed",
        ),
        "terms-update-it.eml": (
            OrgMail(
                comm,
                "anna.bianchi@gmail.com",
                "Aggiornamento delle condizioni contrattuali",
                "Gentile Anna Bianchi,\n\nin allegato trova la proposta di modifica unilaterale "
                "delle condizioni del suo conto (art. 118 TUB), in vigore dal 1 febbraio 2027."
                "\nPuò recedere senza spese entro quella data." + _SIGN_OFF_IT,
                _at(10, 9, 0),
                attachment=("Modifica_condizioni_2027.pdf", _PDF),
            ),
            g_mail,
            "relaxed",
        ),
        "welcome-subdomain-sender.eml": (
            OrgMail(
                "Banca Amica <benvenuto@clienti.bancamica.it>",
                "luca.moretti@gmail.com",
                "Benvenuto in Banca Amica",
                "Gentile Luca Moretti,\n\nbenvenuto in Banca Amica. Il tuo conto è attivo.\n"
                "Scarica l'app da https://www.bancamica.it/app e accedi con le credenziali che "
                "hai ricevuto in filiale." + _SIGN_OFF_IT,
                _at(2, 12, 0),
            ),
            g_mail,
            "relaxed",
        ),
        "internal-hr-it.eml": (
            OrgMail(
                "Risorse Umane <hr@bancamica.it>",
                "m.rossi@bancamica.it",
                "Piano ferie 2027: scadenza 15 dicembre",
                "Ciao,\n\nricordiamo che il piano ferie 2027 va inserito nel portale HR "
                "https://hr.bancamica.it entro il 15 dicembre.\n\nRisorse Umane\n",
                _at(20, 9, 0),
            ),
            inside,
            "none",
        ),
        "internal-maintenance-it.eml": (
            OrgMail(
                "Service Desk <servicedesk@bancamica.it>",
                "l.gallo@bancamica.it",
                "Manutenzione programmata sabato 28 novembre",
                "Sabato 28 novembre dalle 22:00 alle 02:00 l'intranet "
                "https://intranet.bancamica.it e la posta saranno in manutenzione.\n\n"
                "Service Desk - interno 4400\n",
                _at(24, 15, 0),
            ),
            inside,
            "none",
        ),
        "internal-training-en.eml": (
            OrgMail(
                "Compliance <compliance@bancamica.it>",
                "m.rossi@bancamica.it",
                "Reminder: anti-money-laundering course due by 30 November",
                "Hello,\n\nyour yearly anti-money-laundering course is due by 30 November. You "
                "will find it at https://learning.bancamica.it/courses/aml-2026.\n\n"
                "Compliance Office\n",
                _at(23, 8, 30),
            ),
            inside,
            "none",
        ),
    }


def _sign_relaxed_simple(raw: Raw) -> Raw:
    """How the bank's own mail server signs: relaxed headers, simple body."""
    signature: bytes = dkim.sign(
        raw,
        b"mail2026",
        ORG.encode(),
        (KEYS / "mail2026.pem").read_bytes(),
        canonicalize=(b"relaxed", b"simple"),
        include_headers=[
            b"From",
            b"To",
            b"Subject",
            b"Date",
            b"Message-ID",
            b"MIME-Version",
            b"Content-Type",
            b"List-Unsubscribe",
        ],
    )
    return signature + raw


def genuine_org() -> dict[str, Raw]:
    out: dict[str, Raw] = {}
    for n, (name, (mail, headers, signing)) in enumerate(sorted(org_mails().items()), 1):
        raw = mail.render(n)
        if signing == "relaxed":
            raw = mail_server_signer().sign(raw)
        elif signing == "simple":
            raw = _sign_relaxed_simple(raw)
        out[name] = received(headers(mail.recipient, mail.when + timedelta(seconds=4)), raw)
    return out


def tampered(sigillo: dict[str, Raw], org: dict[str, Raw]) -> dict[str, Raw]:
    """Genuine signed mail edited after signing: the signature no longer verifies."""
    note = sigillo["notification-gmail.eml"]
    link = b"https://secure.bancamica.it/c/Xq2v9KfT1mZc8RbLw4NyJd0pHs7GaUe3oVi6tBnQyE5"
    assert link in note
    statement = org["statement-ready-en.eml"]
    before = b"to read it."
    assert before in statement
    return {
        "tampered-notification-link.eml": note.replace(
            link, b"https://secure-bancamica.it-messaggi.eu/c/Xq2v9KfT1mZc8RbLw4NyJd0pHs7G"
        ),
        "tampered-statement-iban.eml": statement.replace(
            before,
            before + b"\r\n\r\nIMPORTANT: our bank details have changed. From today, please "
            b"send\r\nyour instalments to IBAN LT61 3250 0674 1234 5678 (Revolut Bank UAB).",
        ),
    }


def build() -> dict[Path, Raw]:
    with pinned():
        sigillo = genuine_sigillo()
        org = genuine_org()
    files: dict[Path, Raw] = {}
    files.update({CORPUS / "genuine-sigillo" / k: v for k, v in sigillo.items()})
    files.update({CORPUS / "genuine-org" / k: v for k, v in org.items()})
    files.update({CORPUS / "phishing" / k: v for k, v in tampered(sigillo, org).items()})
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args()
    files = build()
    stale = [p for p, data in files.items() if not p.exists() or p.read_bytes() != data]
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(CORPUS)}", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[path])
        print(f"wrote {path.relative_to(CORPUS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
