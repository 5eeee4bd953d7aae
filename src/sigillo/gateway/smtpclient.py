"""One outbound SMTP session, the TLS facts it established, and per-recipient replies.

Both content delivery and notifications use it; what TLS they demand is decided by the caller
(content: ``gateway.delivery``, never plaintext; notifications: ``sigillo.notify``).

REQUIRETLS (RFC 8689): ``offers_requiretls`` reads the EHLO answer of the TLS session only, and
``transaction(..., requiretls=True)`` refuses to send anything to a peer that does not offer it,
even if the caller forgot to ask first.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib

from sigillo.config import DeliverySettings


@dataclass(frozen=True)
class TLSInfo:
    version: str
    cipher: str
    verified: bool
    verification: str


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def line(self) -> str:
        return f"{self.code} {self.text}".strip()


class TLSFailure(Exception):
    """The peer did not establish TLS as required; ``kind`` says how."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class SessionError(Exception):
    """The peer could not be reached or would not talk (connection, greeting, EHLO)."""


@dataclass(frozen=True)
class TransactionResult:
    mail: Reply
    rcpt: dict[str, Reply]
    data: Reply | None
    """None when no recipient was accepted, or MAIL was refused."""


def opportunistic_context() -> ssl.SSLContext:
    """Encrypt if possible, authenticate nobody: for notifications and the internal relay only,
    never for message content (``tlspolicy.client_context`` serves that)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Session:
    def __init__(self, ip: str, port: int, helo: str, settings: DeliverySettings) -> None:
        # start_tls=False is deliberate, not opportunistic: the caller runs STARTTLS itself so
        # "not offered", "refused" and "failed" are separate, recorded outcomes.
        self.smtp = aiosmtplib.SMTP(
            hostname=ip,
            port=port,
            local_hostname=helo,
            timeout=settings.command_timeout.total_seconds(),
            start_tls=False,
            use_tls=False,
        )
        self.ip = ip
        self.connect_timeout = settings.connect_timeout.total_seconds()
        self.tls: TLSInfo | None = None
        self.opened_at = time.monotonic()

    async def open(self) -> None:
        try:
            await self.smtp.connect(timeout=self.connect_timeout)
            await self.smtp.ehlo()
        except aiosmtplib.SMTPResponseException as exc:
            self.close()
            raise SessionError(f"{exc.code} {exc.message}") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self.close()
            raise SessionError(f"{exc.__class__.__name__}: {exc}") from None

    @property
    def offers_starttls(self) -> bool:
        return self.smtp.supports_extension("starttls")

    @property
    def offers_requiretls(self) -> bool:
        """The peer offered REQUIRETLS in its EHLO answer after STARTTLS.

        An offer in the plaintext EHLO answer proves nothing: anyone on the path can add it
        (RFC 8689 section 4.2.1 requires it after STARTTLS). aiosmtplib forgets the plaintext
        extensions at STARTTLS, and ``self.tls`` is set only once the handshake succeeded.
        """
        return self.tls is not None and self.smtp.supports_extension("requiretls")

    async def starttls(
        self, server_hostname: str, context: ssl.SSLContext, verification: str
    ) -> TLSInfo:
        if not self.offers_starttls:
            raise TLSFailure("no STARTTLS", "the server does not offer STARTTLS")
        try:
            await self.smtp.starttls(server_hostname=server_hostname, tls_context=context)
        except ssl.SSLCertVerificationError as exc:
            raise TLSFailure("certificate", exc.verify_message or str(exc)) from None
        except ssl.SSLError as exc:
            raise TLSFailure("handshake failed", exc.reason or str(exc)) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise TLSFailure("STARTTLS refused", f"{exc.code} {exc.message}") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise TLSFailure("handshake failed", f"{exc.__class__.__name__}: {exc}") from None
        sslobj = self.smtp.get_transport_info("ssl_object")
        if sslobj is None:
            raise TLSFailure("handshake failed", "no TLS session after STARTTLS")
        cipher = sslobj.cipher()
        self.tls = TLSInfo(
            version=str(sslobj.version()),
            cipher=cipher[0] if cipher else "",
            verified=context.verify_mode == ssl.CERT_REQUIRED,
            verification=verification,
        )
        try:
            await self.smtp.ehlo()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise TLSFailure("handshake failed", f"EHLO after STARTTLS: {exc}") from None
        return self.tls

    async def transaction(
        self,
        mail_from: str,
        recipients: Sequence[str],
        content: bytes,
        requiretls: bool = False,
    ) -> TransactionResult:
        """MAIL, RCPT for each recipient, DATA if any was accepted.

        ``requiretls`` sends ``MAIL FROM:<...> REQUIRETLS``. The caller checks
        ``offers_requiretls`` first; should it not, ``TLSFailure`` is raised before anything
        is sent, so a REQUIRETLS message never reaches a peer that did not promise to honour it.
        A lost connection mid-transaction raises ``SessionError``; replies never raise.
        """
        if requiretls and not self.offers_requiretls:
            raise TLSFailure("no REQUIRETLS", "the server does not offer REQUIRETLS over TLS")
        options = [f"SIZE={len(content)}"] if self.smtp.supports_extension("size") else []
        if self.smtp.supports_extension("8bitmime") and any(b > 0x7F for b in content):
            options.append("BODY=8BITMIME")
        if requiretls:
            options.append("REQUIRETLS")
        try:
            try:
                resp = await self.smtp.mail(mail_from, options=options)
            except aiosmtplib.SMTPResponseException as exc:
                return TransactionResult(Reply(exc.code, exc.message), {}, None)
            mail = Reply(resp.code, resp.message)
            rcpt: dict[str, Reply] = {}
            for address in recipients:
                try:
                    resp = await self.smtp.rcpt(address)
                    rcpt[address] = Reply(resp.code, resp.message)
                except aiosmtplib.SMTPResponseException as exc:
                    rcpt[address] = Reply(exc.code, exc.message)
            if not any(200 <= r.code < 300 for r in rcpt.values()):
                await self._rset()
                return TransactionResult(mail, rcpt, None)
            try:
                resp = await self.smtp.data(content)
                data = Reply(resp.code, resp.message)
            except aiosmtplib.SMTPResponseException as exc:
                data = Reply(exc.code, exc.message)
            return TransactionResult(mail, rcpt, data)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise SessionError(f"{exc.__class__.__name__}: {exc}") from None

    @property
    def connected(self) -> bool:
        return bool(self.smtp.is_connected)

    async def reset(self) -> bool:
        """RSET before reusing a session: True when the server still answers 250."""
        try:
            response = await self.smtp.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self.close()
            return False
        return response.code == 250

    async def _rset(self) -> None:
        try:
            await self.smtp.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self.close()

    async def quit(self) -> None:
        try:
            if self.smtp.is_connected:
                await self.smtp.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.smtp.is_connected:
            self.smtp.close()
