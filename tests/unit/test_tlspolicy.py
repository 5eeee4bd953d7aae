from __future__ import annotations

import ssl

import pytest

from sigillo.config import DeliverySettings
from sigillo.gateway.tlspolicy import Level, client_context, policy_for


def settings(**kw: object) -> DeliverySettings:
    return DeliverySettings.model_validate(kw)


def test_override_order_like_postfix() -> None:
    s = settings(
        domains={
            "yahoo.co.jp": "portal",
            ".legacy.example": "encrypt",
            "legacy.example": "verify",
            ".example": "portal",
        }
    )
    assert policy_for("Yahoo.co.jp.", s).level is Level.PORTAL
    assert policy_for("mx.yahoo.co.jp", s).level is Level.VERIFY  # exact entry only
    assert policy_for("a.b.legacy.example", s).level is Level.ENCRYPT
    assert policy_for("a.b.legacy.example", s).source == ".legacy.example"
    assert policy_for("legacy.example", s).level is Level.VERIFY
    assert policy_for("other.example", s).level is Level.PORTAL
    assert policy_for("example.org", s).source == "default"


def test_no_level_permits_plaintext() -> None:
    assert [lvl.name for lvl in Level] == ["PORTAL", "ENCRYPT", "VERIFY"]
    with pytest.raises(ValueError):
        client_context(Level.PORTAL, settings())


def test_contexts_enforce_version_and_verification() -> None:
    verify = client_context(Level.VERIFY, settings())
    assert verify.verify_mode == ssl.CERT_REQUIRED and verify.check_hostname
    assert verify.minimum_version == ssl.TLSVersion.TLSv1_2
    encrypt = client_context(Level.ENCRYPT, settings(min_tls_version="1.3"))
    assert encrypt.verify_mode == ssl.CERT_NONE
    assert encrypt.minimum_version == ssl.TLSVersion.TLSv1_3


async def test_console_portal_policy_sends_content_to_the_portal_without_connecting() -> None:
    from sigillo.config import DNSSettings
    from sigillo.gateway.delivery import Deliverer, Outcome
    from sigillo.gateway.mx import MXResolver

    # No nameserver answers on port 9: a lookup would fail, so PORTAL proves none was made.
    resolver = MXResolver(DNSSettings.model_validate({"nameservers": ["127.0.0.1:9"]}))
    deliverer = Deliverer(settings(domains={"file.test": "verify"}), resolver, "gw.test")
    deliverer.console = {"console.test": "portal", "file.test": "portal"}
    try:
        result = await deliverer.deliver("console.test", "a@org.example", ["p@console.test"], b"x")
        assert [r.outcome for r in result.results] == [Outcome.PORTAL]
        assert result.policy.source == "console:console.test" and not result.trail
        # The reviewed config file wins over a click in the console.
        assert deliverer.policy("file.test").level is Level.VERIFY
        assert deliverer.policy("file.test").source == "file.test"
    finally:
        await deliverer.close()
