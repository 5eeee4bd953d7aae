"""The SMTP listener: the organisation's mail server relays outbound mail to it.

It answers 250 to DATA only after the message, its envelope and one queue job per recipient
are committed; everything before that is refused with a code the client understands.

sigillo's own addresses (``[phishing] report_address`` and ``[notify] from``) are final
destinations, handled by ``sigillo.gateway.inbound`` in the same transaction as the rest of
the message. They too are reached only through the organisation's mail server, which routes
them here like any internal mailbox: the listener talks to ``[smtp] trusted_networks`` only, so
the internet can neither relay through it nor fill the store with reports.

REQUIRETLS (RFC 8689): the listener offers it in the EHLO answer of a TLS session only, and a
message sent with ``MAIL FROM:<...> REQUIRETLS`` is stored with ``Message.requiretls``: each of
its copies then goes only to a peer that offers REQUIRETLS over DANE- or MTA-STS-authenticated
TLS, otherwise to the portal. The ``TLS-Required: No`` header field (RFC 8689 section 3) asks
relays to relax TLS; sigillo ignores it for every delivery decision and passes it on untouched:
the recipient domain's policy and ``[delivery]`` alone decide, and sensitive content never
leaves in plaintext or over a weaker TLS than they demand, whatever the header says.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
from collections.abc import Callable, Sequence
from email.utils import format_datetime
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session as DbSession

from sigillo.config import Settings
from sigillo.gateway import queue
from sigillo.gateway.addresses import AddressError, split_mailbox
from sigillo.gateway.inbound import Answered, Arrival, Inbound
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import JobKind

log = structlog.get_logger("sigillo.listener")

_BARE_NEWLINE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
MAX_HOPS = 50
"""More Received headers than this means a loop (Postfix's hopcount_limit is 50 too)."""
REQUIRETLS = "REQUIRETLS"


class GatewayHandler:
    """aiosmtpd hooks. Every hook is async and never blocks the event loop."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        keyring: Keyring,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.on_queued = on_queued
        self.networks = [
            ipaddress.ip_network(n, strict=False) for n in settings.smtp.trusted_networks
        ]
        self.inbound = Inbound(settings, store, keyring)

    def _trusted(self, session: Session) -> bool:
        try:
            address = ipaddress.ip_address(_client(session))
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self.networks)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # this hook's duty in aiosmtpd's 5-argument form
        if session.ssl is not None:
            # RFC 8689 section 2: REQUIRETLS is meaningful on a TLS session only, so it is
            # offered there and nowhere else. The last line stays "250 HELP".
            responses.insert(len(responses) - 1, f"250-{REQUIRETLS}")
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not self._trusted(session):
            log.warning("relay_refused", client=_client(session))
            return "554 5.7.1 Relay access denied: this client is not in smtp.trusted_networks"
        if REQUIRETLS in options and session.ssl is None:
            # RFC 8689 section 2 allows the parameter only on a session that employs TLS and
            # names no reply for a client that sends it elsewhere. Outside TLS the extension
            # is not offered, and RFC 5321 section 4.1.1.11 answers an unoffered MAIL
            # parameter with 555. Permanent: the same command will fail the same way.
            return "555 5.5.4 REQUIRETLS is offered only after STARTTLS"
        # The null reverse-path arrives as "<>" and must stay so: aiosmtpd reads an empty
        # mail_from as "no MAIL yet". It is stored as "".
        if address and address != "<>":
            try:
                split_mailbox(address)
            except AddressError as exc:
                return f"553 5.1.7 Sender address rejected: {exc}"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not self._trusted(session):
            return "554 5.7.1 Relay access denied: this client is not in smtp.trusted_networks"
        own = address in self.inbound.own
        if options:
            return "555 5.5.4 RCPT parameters not supported"
        try:
            split_mailbox(address)
        except AddressError as exc:
            return f"553 5.1.3 Recipient address rejected: {exc}"
        if own and any(address.lower() == r.lower() for r in envelope.rcpt_tos):
            return "250 2.1.5 OK"  # handled once however often it is named
        if len(envelope.rcpt_tos) >= self.settings.smtp.max_recipients:
            return "452 4.5.3 Too many recipients; send the rest in another transaction"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content
        if content is None:
            return "554 5.6.0 No message content"
        # A lone CR or LF is how SMTP smuggling hides a second message behind "\n.\n".
        if _BARE_NEWLINE.search(content):
            return "550 5.6.11 Message refused: bare CR or LF line ending (use CRLF)"
        hops = len(re.findall(rb"(?im)^received:", _header_block(content)))
        if hops > MAX_HOPS:
            return "554 5.4.6 Mail loop: too many Received headers"
        msg_id = queue.new_message_id()
        stamped = self._received_header(session, envelope, msg_id) + content
        now = queue.utcnow()
        mail_from = "" if envelope.mail_from == "<>" else envelope.mail_from or ""
        requiretls = REQUIRETLS in envelope.mail_options  # RFC 8689 4.1: tag the message
        client = _client(session)
        outward, own = [], set()
        for rcpt in envelope.rcpt_tos:
            kind = self.inbound.own.kind(rcpt)
            if kind is not None:
                own.add(kind)
            else:
                outward.append(queue.Recipient(rcpt, split_mailbox(rcpt)[1]))
        delivery = self.settings.delivery
        message = (
            queue.new_message(
                self.keyring,
                mail_from=mail_from,
                content=stamped,
                client_address=client,
                now=now,
                msg_id=msg_id,
                requiretls=requiretls,
            )
            if outward
            else None
        )
        arrival = Arrival(content, stamped, mail_from, client, now)
        try:
            report = await self.inbound.report(arrival) if "report" in own else None
            answer = self.inbound.answer(arrival) if "notify" in own else None
        except Exception as exc:  # a defect must not answer with a traceback
            log.error("inbound_failed", error=type(exc).__name__, client=client)
            return "451 4.3.0 Temporary failure handling the message; try again later"

        def commit(session: DbSession) -> tuple[int | None, Answered | None]:
            if message is not None:
                session.add(message)
                session.add_all(
                    queue.new_job(
                        JobKind.DELIVER, r.address, r.domain, now, delivery, message_id=msg_id
                    )
                    for r in outward
                )
            return (
                report(session) if report is not None else None,
                answer(session) if answer is not None else None,
            )

        try:
            report_id, answered = await self.store.write(commit)
        except (SQLAlchemyError, OSError) as exc:
            first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
            log.error("store_failed", error=first_line, client=client)
            return "451 4.3.0 Temporary failure storing the message; try again later"
        if report_id is not None:
            log.info("report_received", report=report_id, size=len(content))
        if answered is not None:
            # Whether and why; never the sender, the subject or anything else of the mail.
            log.info("auto_answer", sent=answered.sent, reason=answered.reason)
        if outward:
            log.info(
                "accepted",
                message=msg_id,
                recipients=len(outward),
                size=len(content),
                requiretls=requiretls,
            )
        if (outward or (answered is not None and answered.sent)) and self.on_queued is not None:
            self.on_queued()
        return f"250 2.0.0 OK queued as {msg_id}" if outward else "250 2.0.0 OK"

    def _received_header(self, session: Session, envelope: Envelope, msg_id: str) -> bytes:
        helo = re.sub(r"[^\x21-\x7e]", "?", session.host_name or "unknown")[:255]
        proto = "ESMTPS" if session.ssl else "ESMTP"
        stamp = format_datetime(queue.utcnow())
        line = (
            f"Received: from {helo} ([{_client(session)}])\r\n"
            f"\tby {self.settings.smtp.hostname} (sigillo) with {proto} id {msg_id};\r\n"
            f"\t{stamp}\r\n"
        )
        return line.encode("ascii")


def _client(session: Session) -> str:
    peer: Any = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def _header_block(content: bytes) -> bytes:
    end = content.find(b"\r\n\r\n")
    return content if end < 0 else content[:end]


def server_tls_context(settings: Settings) -> ssl.SSLContext | None:
    smtp = settings.smtp
    if smtp.tls_cert_file is None or smtp.tls_key_file is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(smtp.tls_cert_file), str(smtp.tls_key_file))
    return ctx


class GatewaySMTP(SMTP):
    """aiosmtpd's server, letting through the one MAIL parameter sigillo adds: REQUIRETLS."""

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        # aiosmtpd answers 555 to every MAIL parameter it does not know itself before any
        # handler hook runs, and offers no hook for extension parameters; this is where it
        # collects them. REQUIRETLS, valueless as RFC 8689 section 2 defines it, is taken out
        # of that check only: it stays in the options handle_MAIL (and handle_RCPT) receive,
        # which decide. "REQUIRETLS=x" is still refused. Should aiosmtpd stop calling this,
        # REQUIRETLS gets 555 again: the failure is a refusal, never a lost flag.
        found: dict[str, str | bool] | None = super()._getparams(params)
        if found is not None and found.get(REQUIRETLS) is True:
            del found[REQUIRETLS]
        return found


def smtp_factory(settings: Settings, handler: GatewayHandler) -> Callable[[], SMTP]:
    tls = server_tls_context(settings)
    smtp = settings.smtp

    def make() -> SMTP:
        kwargs: dict[str, Any] = {}
        if tls is not None:
            kwargs["tls_context"] = tls
            kwargs["require_starttls"] = smtp.require_starttls
        return GatewaySMTP(
            handler,
            hostname=smtp.hostname,
            ident="sigillo",
            data_size_limit=smtp.max_message_size,
            enable_SMTPUTF8=False,
            decode_data=False,
            **kwargs,
        )

    return make


async def start_listener(
    settings: Settings,
    store: Store,
    keyring: Keyring,
    on_queued: Callable[[], None] | None = None,
) -> asyncio.Server:
    handler = GatewayHandler(settings, store, keyring, on_queued)
    host, port = settings.smtp.listen_address
    loop = asyncio.get_running_loop()
    server = await loop.create_server(smtp_factory(settings, handler), host=host, port=port)
    log.info("smtp_listening", address=f"{host}:{server.sockets[0].getsockname()[1]}")
    return server
