"""The SMTP listener over a real socket, with a real store behind it."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import func, select

from sigillo.config import Settings
from sigillo.gateway import queue
from sigillo.gateway.inbound import REPORT_RECEIVED
from sigillo.gateway.listener import start_listener
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import (
    Account,
    AuditEvent,
    AutoAnswer,
    Job,
    JobKind,
    Message,
    PhishingReport,
)

MAIL = b"From: doc@org.example\r\nSubject: referral\r\n\r\nPatient has condition X\r\n"


def make_settings(**smtp: object) -> Settings:
    return Settings.model_validate(
        {"smtp": {"listen": "127.0.0.1:0", "max_message_size": 1024 * 1024, **smtp}}
    )


class Gateway:
    def __init__(self, port: int, store: Store) -> None:
        self.port = port
        self.store = store

    def client(self) -> smtplib.SMTP:
        c = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
        c.ehlo("mail.org.example")
        return c

    async def send(self, mail_from: str, rcpts: list[str], data: bytes) -> tuple[int, bytes]:
        def go() -> tuple[int, bytes]:
            with self.client() as c:
                code, text = c.mail(mail_from)
                if code != 250:
                    return code, text
                for r in rcpts:
                    code, text = c.rcpt(r)
                    if code != 250:
                        return code, text
                return c.data(data)

        return await asyncio.to_thread(go)

    async def counts(self) -> tuple[int, int]:
        async with self.store.session() as s:
            m = (await s.execute(select(func.count()).select_from(Message))).scalar_one()
            j = (await s.execute(select(func.count()).select_from(Job))).scalar_one()
        return m, j


async def _gateway(store: Store, keyring: Keyring, settings: Settings) -> AsyncIterator[Gateway]:
    server = await start_listener(settings, store, keyring)
    try:
        yield Gateway(server.sockets[0].getsockname()[1], store)
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def gateway(store: Store, keyring: Keyring) -> AsyncIterator[Gateway]:
    async for g in _gateway(store, keyring, make_settings()):
        yield g


async def test_accepts_and_commits_before_250(gateway: Gateway) -> None:
    code, text = await gateway.send("doc@org.example", ["a@x.example", "b@y.example"], MAIL)
    assert code == 250 and b"queued as" in text
    assert await gateway.counts() == (1, 2)


async def test_null_sender_accepted(gateway: Gateway) -> None:
    code, _ = await gateway.send("", ["a@x.example"], MAIL)  # smtplib sends MAIL FROM:<>
    assert code == 250
    async with gateway.store.session() as s:
        assert (await s.execute(select(Message.mail_from))).scalar_one() == ""


async def test_untrusted_client_refused(store: Store, keyring: Keyring) -> None:
    settings = make_settings(trusted_networks=["192.0.2.0/24"])
    async for g in _gateway(store, keyring, settings):
        code, text = await g.send("doc@org.example", ["a@x.example"], MAIL)
        assert code == 554 and b"Relay access denied" in text
        assert await g.counts() == (0, 0)


async def test_size_limit(gateway: Gateway) -> None:
    big = MAIL + (b"x" * 76 + b"\r\n") * 15000
    code, _ = await gateway.send("doc@org.example", ["a@x.example"], big)
    assert code == 552
    assert await gateway.counts() == (0, 0)


@pytest.mark.parametrize(
    ("rcpt", "code"),
    [
        ("bad@@x.example", 553),
        ("user@localhost", 553),
        ("user@[127.0.0.1]", 553),
        ("a..b@x.example", 553),
    ],
)
async def test_recipient_syntax(gateway: Gateway, rcpt: str, code: int) -> None:
    got, _ = await gateway.send("doc@org.example", [rcpt], MAIL)
    assert got == code


async def test_sender_syntax(gateway: Gateway) -> None:
    got, _ = await gateway.send("doc@@org", ["a@x.example"], MAIL)
    assert got in (501, 553)


@pytest.mark.parametrize(
    "body",
    [
        b"Subject: x\r\n\r\nline\nsmuggled\r\n",
        b"Subject: x\r\n\r\nline\rsmuggled\r\n",
        b"Subject: x\r\n\r\nbody\n.\r\nMAIL FROM:<evil@x.example>\r\n",
    ],
)
async def test_bare_line_endings_refused(gateway: Gateway, body: bytes) -> None:
    def raw() -> tuple[int, bytes]:
        with gateway.client() as c:
            c.mail("doc@org.example")
            c.rcpt("a@x.example")
            c.putcmd("data")
            c.getreply()
            c.send(body + b".\r\n")
            return c.getreply()

    code, text = await asyncio.to_thread(raw)
    assert code == 550 and b"bare" in text
    assert await gateway.counts() == (0, 0)


async def test_thousand_recipients_and_one_more(store: Store, keyring: Keyring) -> None:
    async for g in _gateway(store, keyring, make_settings(max_recipients=1000)):

        def go(g: Gateway = g) -> tuple[list[int], tuple[int, bytes]]:
            with g.client() as c:
                c.mail("doc@org.example")
                codes = [c.rcpt(f"r{i}@d{i % 7}.example")[0] for i in range(1001)]
                return codes, c.data(MAIL)

        codes, (code, _) = await asyncio.to_thread(go)
        assert codes[:1000] == [250] * 1000 and codes[1000] == 452
        assert code == 250
        assert await g.counts() == (1, 1000)


async def test_store_failure_is_a_temporary_error(tmp_path: Path, keyring: Keyring) -> None:
    store = Store(f"sqlite:///{tmp_path}/never-migrated.db")  # no tables: every insert fails
    async for g in _gateway(store, keyring, make_settings()):
        code, text = await g.send("doc@org.example", ["a@x.example"], MAIL)
        assert code == 451 and b"try again" in text
    await store.close()


@hsettings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=3000))
async def test_arbitrary_data_gets_a_clear_reply(gateway: Gateway, data: bytes) -> None:
    def go() -> tuple[int, bytes]:
        with gateway.client() as c:
            c.mail("doc@org.example")
            c.rcpt("a@x.example")
            c.putcmd("data")
            c.getreply()
            # Dot-stuff so the fuzzed bytes cannot end DATA early, then terminate properly.
            stuffed = data.replace(b"\r\n.", b"\r\n..")
            if stuffed.startswith(b"."):
                stuffed = b"." + stuffed
            c.send(stuffed + b"\r\n.\r\n")
            return c.getreply()

    code, _ = await asyncio.to_thread(go)
    assert code in (250, 550, 500, 554)


async def test_database_files_hold_no_subject_or_body(tmp_path: Path, keyring: Keyring) -> None:
    from sigillo.store import migrate

    store = Store(f"sqlite:///{tmp_path}/at-rest.db")
    await migrate.upgrade(store)
    subject, body = "Biopsy result for Maria Rossi", "Malignant cells were found"
    mail = f"Subject: {subject}\r\n\r\n{body}\r\n".encode()
    async for g in _gateway(store, keyring, make_settings()):
        code, _ = await g.send("doc@org.example", ["maria@x.example"], mail)
        assert code == 250
    await store.close()
    files = list(tmp_path.glob("at-rest.db*"))  # the database and its WAL
    raw = b"".join(f.read_bytes() for f in files)
    assert b"maria@x.example" in raw  # the grep itself works: the envelope is there
    for needle in (subject, body, "Biopsy", "Malignant"):
        assert needle.encode() not in raw
        assert needle.encode("utf-16-le") not in raw


async def test_sixty_megabytes_refused_with_552_and_nothing_stored(
    store: Store, keyring: Keyring
) -> None:
    settings = Settings.model_validate({"smtp": {"listen": "127.0.0.1:0"}})  # default 25 MiB
    huge = MAIL + (b"y" * 998 + b"\r\n") * (60 * 1024)  # ~60 MB in legal-length lines
    async for g in _gateway(store, keyring, settings):
        code, text = await g.send("doc@org.example", ["a@x.example"], huge)
        assert code == 552 and b"Too much mail data" in text
        assert await g.counts() == (0, 0)
        code, _ = await g.send("doc@org.example", ["a@x.example"], MAIL)  # still serving
        assert code == 250


async def test_starttls_on_the_listener(tmp_path: Path, store: Store, keyring: Keyring) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("gw.org.example")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    settings = make_settings(
        tls_cert_file=str(tmp_path / "cert.pem"),
        tls_key_file=str(tmp_path / "key.pem"),
        require_starttls=True,
    )
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async for g in _gateway(store, keyring, settings):

        def go(g: Gateway = g) -> tuple[int, int, str | None]:
            with smtplib.SMTP("127.0.0.1", g.port, timeout=10) as c:
                c.ehlo("mail.org.example")
                refused, _ = c.mail("doc@org.example")  # before STARTTLS: refused
                c.rset()
                c._host = "gw.org.example"  # smtplib verifies the name it connected to
                c.starttls(context=client_ctx)
                c.ehlo("mail.org.example")
                sock = c.sock
                version = sock.version() if isinstance(sock, ssl.SSLSocket) else None
                c.sendmail("doc@org.example", ["a@x.example"], MAIL)
                return refused, 250, version

        refused, ok, version = await asyncio.to_thread(go)
        assert refused == 530 and ok == 250 and version in ("TLSv1.2", "TLSv1.3")
        assert await g.counts() == (1, 1)


# -- sigillo's own addresses -------------------------------------------------------------------

REPORT = "phish-report@org.example"
NOTIFY = "secure@org.example"
OUTSIDE = ["192.0.2.0/24"]
"""trusted_networks that leave the loopback test client gateway."""
SUSPECT = (
    b"From: Banca <alerts@banca-secure.example>\r\nTo: anna@x.example\r\n"
    b"Subject: verify your account\r\nMessage-ID: <s1@banca-secure.example>\r\n\r\n"
    b"Send us your password today.\r\n"
)
REPLY = (
    b"From: Anna <anna@x.example>\r\nTo: secure@org.example\r\nSubject: Re: Kiwi-Umbrella 55\r\n"
    b"Message-ID: <r1@x.example>\r\n\r\nKiwi-Umbrella 55: my card number is 4111\r\n"
)


async def _rows(store: Store, model: type[Any]) -> list[Any]:
    async with store.session() as s:
        return list((await s.execute(select(model))).scalars().all())


async def test_own_addresses_are_not_open_to_untrusted_clients(
    store: Store, keyring: Keyring
) -> None:
    """Reports and replies arrive through the organisation's mail server, never directly."""
    async for g in _gateway(store, keyring, make_settings(trusted_networks=OUTSIDE)):
        for rcpts in ([REPORT], [NOTIFY], [REPORT, "b@y.example"]):
            code, text = await g.send("anna@x.example", rcpts, SUSPECT)
            assert code == 554 and b"Relay access denied" in text
        assert await g.counts() == (0, 0)
        assert await _rows(store, PhishingReport) == []
        assert await _rows(store, AutoAnswer) == []


async def test_trusted_client_mixes_outward_and_own_recipients(gateway: Gateway) -> None:
    code, text = await gateway.send("doc@org.example", ["a@x.example", REPORT], MAIL)
    assert code == 250 and b"queued as" in text
    jobs = await _rows(gateway.store, Job)
    assert [(j.kind, j.recipient) for j in jobs] == [(JobKind.DELIVER, "a@x.example")]
    [report] = await _rows(gateway.store, PhishingReport)
    # Two messages: the outward copy and the report's sealed mail, which no job delivers.
    messages = {m.id: m for m in await _rows(gateway.store, Message)}
    assert len(messages) == 2 and report.message_id in messages
    assert jobs[0].message_id != report.message_id


async def test_own_address_named_twice_is_handled_once(gateway: Gateway) -> None:
    code, _ = await gateway.send("doc@org.example", [REPORT, "PHISH-REPORT@org.example"], MAIL)
    assert code == 250
    assert len(await _rows(gateway.store, PhishingReport)) == 1


async def test_report_is_sealed_checked_and_audited(gateway: Gateway, keyring: Keyring) -> None:
    code, text = await gateway.send("anna@x.example", [REPORT], SUSPECT)
    assert code == 250 and b"queued" not in text
    [report] = await _rows(gateway.store, PhishingReport)
    assert report.reporter == "anna@x.example" and report.reviewed_at is None
    assert report.verdict in ("genuine", "suspicious", "phishing", "errored")
    assert all(set(f) == {"code", "severity"} for f in report.findings)
    [message] = await _rows(gateway.store, Message)
    assert message.id == report.message_id and message.message_id_hash is None
    assert b"Send us your password" not in message.content  # sealed
    opened = keyring.open(message.id, message.kek_id, message.wrapped_key, message.content)
    assert opened.startswith(b"Received: from mail.org.example") and opened.endswith(SUSPECT)
    assert await _rows(gateway.store, Job) == []
    [event] = [e for e in await _rows(gateway.store, AuditEvent) if e.action == REPORT_RECEIVED]
    assert event.actor == "anna@x.example" and event.message_id == message.id
    assert event.details == {
        "report": report.id,
        "verdict": report.verdict,
        "findings": len(report.findings),
    }


async def test_reply_to_notification_address_is_answered_and_not_kept(
    gateway: Gateway, keyring: Keyring
) -> None:
    code, _ = await gateway.send("anna@x.example", [NOTIFY], REPLY)
    assert code == 250
    [job] = await _rows(gateway.store, Job)
    assert (job.kind, job.recipient, job.domain) == (JobKind.MAIL, "anna@x.example", "x.example")
    [message] = await _rows(gateway.store, Message)
    answer = keyring.open(message.id, message.kek_id, message.wrapped_key, message.content)
    assert b"Kiwi-Umbrella" not in answer and b"4111" not in answer
    # Nothing of the original anywhere: no message row, no audit entry, no report.
    assert await _rows(gateway.store, PhishingReport) == []
    for event in await _rows(gateway.store, AuditEvent):
        assert "Kiwi" not in repr(event.details)
    [slot] = await _rows(gateway.store, AutoAnswer)
    assert "anna" not in slot.sender_hash and len(slot.sender_hash) == 64


async def test_second_reply_the_same_day_gets_no_answer(gateway: Gateway) -> None:
    for sender in ("anna@x.example", "ANNA@x.example", "bob@x.example"):
        code, _ = await gateway.send(sender, [NOTIFY], REPLY)
        assert code == 250
    jobs = await _rows(gateway.store, Job)
    assert sorted(j.recipient for j in jobs) == ["anna@x.example", "bob@x.example"]


async def test_auto_answer_off_accepts_and_drops(store: Store, keyring: Keyring) -> None:
    settings = Settings.model_validate(
        {
            "smtp": {"listen": "127.0.0.1:0"},
            "notify": {"auto_answer": False},
        }
    )
    async for g in _gateway(store, keyring, settings):
        code, _ = await g.send("anna@x.example", [NOTIFY], REPLY)
        assert code == 250
        assert await g.counts() == (0, 0)
        assert await _rows(store, AutoAnswer) == []


async def test_own_addresses_and_a_store_failure(tmp_path: Path, keyring: Keyring) -> None:
    store = Store(f"sqlite:///{tmp_path}/never-migrated.db")
    async for g in _gateway(store, keyring, make_settings()):
        for rcpts in ([REPORT], [NOTIFY], [REPORT, "a@x.example"]):
            code, text = await g.send("anna@x.example", rcpts, SUSPECT)
            assert code == 451 and b"try again" in text
    await store.close()


async def test_the_answer_shows_the_senders_security_phrase(
    gateway: Gateway, keyring: Keyring
) -> None:
    """Like every mail of ours; it goes to that address only, so it reveals the phrase to
    nobody else (a forged envelope sender sends the phrase to its owner, not the forger)."""
    from sigillo.portal.accounts import seal_phrase

    now = queue.utcnow()

    def account(session: Any) -> None:
        row = Account(
            address="anna@x.example", password_hash="x", created_at=now, password_changed_at=now
        )
        session.add(row)
        session.flush()
        seal_phrase(session, keyring, row.id, "Purple-Heron at dawn")

    await gateway.store.write(account)
    code, _ = await gateway.send("anna@x.example", [NOTIFY], REPLY)
    assert code == 250
    [message] = await _rows(gateway.store, Message)
    answer = keyring.open(message.id, message.kek_id, message.wrapped_key, message.content)
    parsed = BytesParser(EmailMessage, policy=default).parsebytes(answer)
    assert "«Purple-Heron at dawn»" in parsed.get_content()


# -- REQUIRETLS (RFC 8689) ---------------------------------------------------------------------


def _tls_settings(tmp_path: Path, **smtp: object) -> tuple[Settings, ssl.SSLContext]:
    """Listener settings with a STARTTLS certificate, and a client context that trusts it."""
    ca = trustme.CA()
    cert = ca.issue_cert("gw.org.example")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    settings = make_settings(
        tls_cert_file=str(tmp_path / "cert.pem"), tls_key_file=str(tmp_path / "key.pem"), **smtp
    )
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return settings, client_ctx


def _starttls(c: smtplib.SMTP, ctx: ssl.SSLContext) -> None:
    c._host = "gw.org.example"  # type: ignore[attr-defined]  # smtplib checks the name it dialled
    c.starttls(context=ctx)
    c.ehlo("mail.org.example")


async def _flags(store: Store) -> list[bool]:
    return [m.requiretls for m in await _rows(store, Message)]


async def test_requiretls_offered_only_on_a_tls_session(
    tmp_path: Path, store: Store, keyring: Keyring
) -> None:
    settings, ctx = _tls_settings(tmp_path)
    async for g in _gateway(store, keyring, settings):

        def go(g: Gateway = g) -> tuple[bool, bool, bool]:
            with g.client() as c:
                before = c.has_extn("requiretls")
                offers_starttls = c.has_extn("starttls")
                _starttls(c, ctx)
                return before, offers_starttls, c.has_extn("requiretls")

        before, offers_starttls, after = await asyncio.to_thread(go)
        assert offers_starttls and not before and after


async def test_requiretls_never_offered_without_tls(gateway: Gateway) -> None:
    def go() -> tuple[bool, int, bytes]:
        with gateway.client() as c:
            code, text = c.mail("doc@org.example", ["REQUIRETLS"])
            return c.has_extn("requiretls"), code, text

    offered, code, text = await asyncio.to_thread(go)
    assert not offered and code == 555 and b"STARTTLS" in text
    assert await gateway.counts() == (0, 0)


async def test_requiretls_before_starttls_refused(
    tmp_path: Path, store: Store, keyring: Keyring
) -> None:
    """TLS offered but not yet started: the parameter is refused, and accepted after STARTTLS."""
    settings, ctx = _tls_settings(tmp_path)
    async for g in _gateway(store, keyring, settings):

        def go(g: Gateway = g) -> tuple[int, bytes, int]:
            with g.client() as c:
                code, text = c.mail("doc@org.example", ["REQUIRETLS"])
                c.rset()
                _starttls(c, ctx)
                return code, text, c.mail("doc@org.example", ["REQUIRETLS"])[0]

        refused, text, accepted = await asyncio.to_thread(go)
        assert refused == 555 and b"REQUIRETLS" in text and accepted == 250
        assert await g.counts() == (0, 0)


async def test_requiretls_message_stored_flagged(
    tmp_path: Path, store: Store, keyring: Keyring
) -> None:
    """Alongside SIZE and BODY; the next message of the same session is not flagged, and a
    TLS-Required: No header neither clears the flag nor is removed from the content."""
    settings, ctx = _tls_settings(tmp_path)
    flagged = b"TLS-Required: No\r\n" + MAIL
    async for g in _gateway(store, keyring, settings):

        def go(g: Gateway = g) -> list[tuple[int, bytes]]:
            with g.client() as c:
                _starttls(c, ctx)
                options = [f"SIZE={len(flagged)}", "BODY=8BITMIME", "REQUIRETLS"]
                first = c.sendmail("doc@org.example", ["a@x.example"], flagged, options)
                second = c.sendmail("doc@org.example", ["b@x.example"], MAIL)
                return [*first.values(), *second.values()]

        assert await asyncio.to_thread(go) == []  # no recipient refused
        messages = sorted(await _rows(store, Message), key=lambda m: m.received_at)
        assert [m.requiretls for m in messages] == [True, False]
        opened = keyring.open(
            messages[0].id, messages[0].kek_id, messages[0].wrapped_key, messages[0].content
        )
        assert opened.endswith(flagged)


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("MAIL FROM:<doc@org.example> REQUIRETLS=YES", 555),  # RFC 8689: it has no value
        ("MAIL FROM:<doc@org.example> REQUIRETLS XFOO", 555),  # others: as before
        ("MAIL FROM:<doc@org.example> SIZE=99999999 REQUIRETLS", 552),  # SIZE still checked
        ("MAIL FROM:<doc@org.example> BODY=BINARYMIME REQUIRETLS", 501),  # BODY still checked
    ],
)
async def test_requiretls_leaves_other_parameters_checked(
    tmp_path: Path, store: Store, keyring: Keyring, command: str, code: int
) -> None:
    settings, ctx = _tls_settings(tmp_path)
    async for g in _gateway(store, keyring, settings):

        def go(g: Gateway = g) -> tuple[int, int]:
            with g.client() as c:
                _starttls(c, ctx)
                got = c.docmd(command)[0]
                c.rset()
                c.mail("doc@org.example", ["REQUIRETLS"])
                return got, c.docmd("RCPT TO:<a@x.example> REQUIRETLS")[0]

        got, rcpt = await asyncio.to_thread(go)
        assert got == code
        assert rcpt == 555  # a MAIL parameter only
        assert await _flags(store) == []
