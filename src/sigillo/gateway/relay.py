"""Sending to the organisation's own mail server (``[relay] host``): DSNs, portal replies."""

from __future__ import annotations

from sigillo.config import Settings
from sigillo.gateway.smtpclient import (
    Reply,
    Session,
    SessionError,
    TLSFailure,
    opportunistic_context,
)


async def send_to_relay(
    settings: Settings, mail_from: str, recipients: list[str], data: bytes
) -> Reply:
    """Deliver to the relay; STARTTLS when it offers it. Raises ``SessionError`` when it
    cannot be reached, so the caller can retry."""
    host, port = settings.relay.address
    session = Session(host, port, settings.smtp.hostname, settings.delivery)
    await session.open()
    try:
        if session.offers_starttls:
            try:
                await session.starttls(host, opportunistic_context(), "none")
            except TLSFailure as exc:
                raise SessionError(f"relay TLS failed: {exc}") from None
        result = await session.transaction(mail_from, recipients, data)
    finally:
        await session.quit()
    return result.data or next(iter(result.rcpt.values()), None) or result.mail
