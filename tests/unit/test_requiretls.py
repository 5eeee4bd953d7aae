"""REQUIRETLS (RFC 8689) in the SMTP client and the queue, over real sockets.

The client's peer is a scripted SMTP server that records every command line as it arrived,
so the tests see the exact MAIL command; it offers REQUIRETLS before or after STARTTLS as a
test asks. The last test has sigillo's client deliver into sigillo's own listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme
from sqlalchemy import select

from sigillo.config import Settings
from sigillo.gateway import queue
from sigillo.gateway.listener import start_listener
from sigillo.gateway.smtpclient import Session, TLSFailure
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import Message

MAIL = b"From: doc@org.example\r\nSubject: referral\r\n\r\nPatient has condition X\r\n"
DELIVERY = Settings.model_validate({}).delivery


class ScriptedPeer:
    """Just enough SMTP to take one message: EHLO lines as configured, STARTTLS, MAIL, RCPT,
    DATA, RSET, QUIT. ``commands`` holds every line the client sent, in order."""

    def __init__(
        self, context: ssl.SSLContext, plain: Sequence[str], after_tls: Sequence[str]
    ) -> None:
        self.context = context
        self.plain = [*plain, "STARTTLS"]
        self.after_tls = list(after_tls)
        self.commands: list[str] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = False
        writer.write(b"220 mx.peer.test ESMTP\r\n")
        try:
            while line := await reader.readline():
                command = line.decode("ascii").rstrip("\r\n")
                self.commands.append(command)
                verb = command.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    lines = ["mx.peer.test", *(self.after_tls if tls else self.plain)]
                    reply = "".join(f"250-{x}\r\n" for x in lines[:-1]) + f"250 {lines[-1]}\r\n"
                elif verb == "STARTTLS":
                    writer.write(b"220 2.0.0 Ready to start TLS\r\n")
                    await writer.drain()
                    await writer.start_tls(self.context)
                    tls = True
                    continue
                elif verb == "DATA":
                    writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    await writer.drain()
                    while await reader.readline() not in (b".\r\n", b""):
                        pass
                    reply = "250 2.0.0 queued\r\n"
                elif verb == "QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    break
                else:
                    reply = "250 2.0.0 OK\r\n"
                writer.write(reply.encode("ascii"))
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    @property
    def mail_commands(self) -> list[str]:
        return [c for c in self.commands if c.upper().startswith("MAIL")]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@asynccontextmanager
async def peer_session(
    ca: trustme.CA, plain: Sequence[str] = (), after_tls: Sequence[str] = ()
) -> AsyncIterator[tuple[ScriptedPeer, Session]]:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("mx.peer.test").configure_cert(server_ctx)
    peer = ScriptedPeer(server_ctx, plain, after_tls)
    server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
    session = Session("127.0.0.1", server.sockets[0].getsockname()[1], "gw.org.example", DELIVERY)
    try:
        await session.open()
        yield peer, session
    finally:
        await session.quit()
        server.close()
        await server.wait_closed()


async def test_client_sends_requiretls_to_a_peer_that_offers_it(
    ca: trustme.CA, client_context: ssl.SSLContext
) -> None:
    async with peer_session(ca, after_tls=["SIZE 1000000", "REQUIRETLS"]) as (peer, session):
        assert not session.offers_requiretls
        await session.starttls("mx.peer.test", client_context, "verify")
        assert session.offers_requiretls
        result = await session.transaction(
            "doc@org.example", ["a@x.example"], MAIL, requiretls=True
        )
        assert result.data is not None and result.data.code == 250
        assert peer.mail_commands == [f"MAIL FROM:<doc@org.example> SIZE={len(MAIL)} REQUIRETLS"]


async def test_client_sends_no_requiretls_unless_asked(
    ca: trustme.CA, client_context: ssl.SSLContext
) -> None:
    async with peer_session(ca, after_tls=["REQUIRETLS"]) as (peer, session):
        await session.starttls("mx.peer.test", client_context, "verify")
        result = await session.transaction("doc@org.example", ["a@x.example"], MAIL)
        assert result.data is not None and result.data.code == 250
        assert peer.mail_commands == ["MAIL FROM:<doc@org.example>"]


async def test_an_offer_before_starttls_does_not_count(
    ca: trustme.CA, client_context: ssl.SSLContext
) -> None:
    """Anyone on the path can add REQUIRETLS to a plaintext EHLO answer; only the answer
    inside TLS counts, and without it nothing is sent."""
    async with peer_session(ca, plain=["REQUIRETLS"]) as (peer, session):
        assert session.smtp.supports_extension("requiretls")  # offered, in plaintext
        assert not session.offers_requiretls
        await session.starttls("mx.peer.test", client_context, "verify")
        assert not session.offers_requiretls
        with pytest.raises(TLSFailure) as failure:
            await session.transaction("doc@org.example", ["a@x.example"], MAIL, requiretls=True)
        assert failure.value.kind == "no REQUIRETLS"
        assert peer.mail_commands == []


async def test_no_requiretls_message_over_plaintext(ca: trustme.CA) -> None:
    """A caller that skipped STARTTLS still cannot send a REQUIRETLS message."""
    async with peer_session(ca, plain=["REQUIRETLS"]) as (peer, session):
        with pytest.raises(TLSFailure):
            await session.transaction("doc@org.example", ["a@x.example"], MAIL, requiretls=True)
        assert peer.mail_commands == []
        assert not any(c.upper().startswith("DATA") for c in peer.commands)


async def _flags(store: Store) -> dict[str, bool]:
    async with store.session() as s:
        rows = (await s.execute(select(Message.id, Message.requiretls))).all()
    return {row.id: row.requiretls for row in rows}


async def test_enqueue_records_requiretls(store: Store, keyring: Keyring) -> None:
    rcpt = [queue.Recipient("a@x.example", "x.example")]
    ids: dict[str, str] = {}
    for name, requiretls in (("flagged", True), ("unflagged", False)):
        ids[name] = await queue.enqueue(
            store,
            keyring,
            DELIVERY,
            mail_from="doc@org.example",
            recipients=rcpt,
            content=MAIL,
            client_address="127.0.0.1",
            requiretls=requiretls,
        )
    ids["default"] = await queue.enqueue(
        store,
        keyring,
        DELIVERY,
        mail_from="doc@org.example",
        recipients=rcpt,
        content=MAIL,
        client_address="127.0.0.1",
    )
    flags = await _flags(store)
    assert {name: flags[i] for name, i in ids.items()} == {
        "flagged": True,
        "unflagged": False,
        "default": False,
    }


async def test_sigillo_client_into_sigillo_listener(
    tmp_path: Path, store: Store, keyring: Keyring, ca: trustme.CA, client_context: ssl.SSLContext
) -> None:
    cert = ca.issue_cert("gw.org.example")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    settings = Settings.model_validate(
        {
            "smtp": {
                "listen": "127.0.0.1:0",
                "tls_cert_file": str(tmp_path / "cert.pem"),
                "tls_key_file": str(tmp_path / "key.pem"),
            }
        }
    )
    server = await start_listener(settings, store, keyring)
    session = Session("127.0.0.1", server.sockets[0].getsockname()[1], "mail.org.example", DELIVERY)
    try:
        await session.open()
        assert not session.offers_requiretls
        await session.starttls("gw.org.example", client_context, "verify")
        assert session.offers_requiretls
        result = await session.transaction(
            "doc@org.example", ["a@x.example"], MAIL, requiretls=True
        )
        assert result.data is not None and result.data.code == 250
    finally:
        await session.quit()
        server.close()
        await server.wait_closed()
    assert list((await _flags(store)).values()) == [True]
