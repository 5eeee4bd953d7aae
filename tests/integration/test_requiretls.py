"""REQUIRETLS against a real recipient server: Debian's Postfix 3.7.

Postfix 3.7 does not implement RFC 8689: it offers no REQUIRETLS, before or after STARTTLS,
and answers the MAIL parameter with 555. sigillo's client must therefore never send it a
REQUIRETLS message, while the same verified session still carries an ordinary one. The
client's side with a peer that does offer REQUIRETLS is in tests/unit/test_requiretls.py.
"""

from __future__ import annotations

import asyncio
import ssl

import aiosmtplib
import pytest

from sigillo.config import Settings
from sigillo.gateway.smtpclient import Session, TLSFailure
from tests.integration.test_delivery import addr, mail
from tests.peers.fixtures import MxPeers

pytestmark = pytest.mark.peers

DELIVERY = Settings.model_validate({}).delivery


async def test_postfix_offers_no_requiretls_and_gets_no_requiretls_message(
    mx_peers: MxPeers,
) -> None:
    requiretls_rcpt, plain_rcpt = addr("tls.test"), addr("tls.test")
    context = ssl.create_default_context(cafile=str(mx_peers.ca_file))
    session = Session(mx_peers.tls, mx_peers.port, "gw.org.example", DELIVERY)
    try:
        await session.open()
        assert session.offers_starttls and not session.offers_requiretls
        tls = await session.starttls("mx.tls.test", context, "verify")
        assert tls.verified
        assert not session.smtp.supports_extension("requiretls")
        assert not session.offers_requiretls

        with pytest.raises(TLSFailure) as failure:
            await session.transaction(
                "doc@org.example", [requiretls_rcpt], mail([requiretls_rcpt]), requiretls=True
            )
        assert failure.value.kind == "no REQUIRETLS"

        # Postfix's own answer to the parameter, sent by hand: refused, so even a client
        # without sigillo's check could not hand it a REQUIRETLS message.
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await session.smtp.mail("doc@org.example", options=["REQUIRETLS"])
        assert refused.value.code == 555
        assert await session.reset()

        result = await session.transaction("doc@org.example", [plain_rcpt], mail([plain_rcpt]))
        assert result.data is not None and result.data.code == 250
    finally:
        await session.quit()

    [delivered] = await asyncio.to_thread(
        mx_peers.peer.wait_for, 1, match=lambda m: m.recipient == plain_rcpt
    )
    assert delivered.tls in ("TLSv1.2", "TLSv1.3")
    everything = [m.recipient for m in mx_peers.peer.messages()]
    assert requiretls_rcpt not in everything
