"""A stock Postfix relay: the yardstick sigillo's throughput is compared with.

`PostfixRelay` is a `PostfixPeer` with one plaintext listener (where the organisation's mail
server, or a load generator, hands it mail) and no Maildir domains. Mail for each of its
`routes` is relayed over SMTP to a fixed next hop (``transport_maps``: ``DOMAIN
smtp:[IP]:PORT``, so no DNS is involved), with the TLS level given (``encrypt`` or ``verify``;
``verify`` checks the certificate against the instance's CA and the name `verify_match`).

Performance-related settings are Postfix's own defaults: the test peer's shortcuts
(``in_flow_delay = 0``, one-second queue runs and backoff) are dropped. The SMTP client binds
to the listener's address, so the next hop's log tells the relay's connections from others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import trustme

from tests.peers.postfix import Listener, PostfixPeer

__all__ = ["PostfixRelay"]

RelayTLS = Literal["encrypt", "verify"]

#: The test peer's speed-ups that a stock installation does not have.
_PEER_SHORTCUTS = (
    "in_flow_delay",
    "queue_run_delay",
    "minimal_backoff_time",
    "maximal_backoff_time",
)


class PostfixRelay(PostfixPeer):
    """A Postfix instance that relays `routes` (domain -> (IP, port)) over TLS."""

    def __init__(
        self,
        workdir: Path,
        address: str,
        port: int,
        ca: trustme.CA,
        routes: dict[str, tuple[str, int]],
        tls_level: RelayTLS = "verify",
        verify_match: str | None = None,
    ) -> None:
        if not routes:
            raise ValueError("a PostfixRelay needs at least one route")
        table = ", ".join(f"{domain}=smtp:[{ip}]:{hop}" for domain, (ip, hop) in routes.items())
        settings: dict[str, str | None] = dict.fromkeys(_PEER_SHORTCUTS)
        settings |= {
            "relay_domains": ", ".join(routes),
            "transport_maps": f"inline:{{ {table} }}",
            "smtp_bind_address": address,
            "smtp_tls_security_level": tls_level,
            "smtp_tls_CAfile": "$config_directory/tls/ca.pem",
            "smtp_tls_loglevel": "1",
        }
        if verify_match is not None:
            # A literal name: the next hop is an IP address, the certificate names the MX.
            settings["smtp_tls_verify_cert_match"] = verify_match
        super().__init__(
            workdir,
            port,
            [Listener(address, "plain")],
            ca,
            domains=[],
            extra_main_cf=settings,
        )
        self.address = address
        self.routes = dict(routes)
        self.tls_level = tls_level
