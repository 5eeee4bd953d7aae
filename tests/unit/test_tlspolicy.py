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


def test_failures_map_to_tls_rpt_result_types() -> None:
    from sigillo.gateway.tlspolicy import tls_result_type

    assert tls_result_type("no STARTTLS", "") == "starttls-not-supported"
    assert tls_result_type("STARTTLS refused", "454 4.7.0") == "starttls-not-supported"
    cases = {
        "Hostname mismatch, certificate is not valid for 'mx.a.test'.": "certificate-host-mismatch",
        "certificate has expired": "certificate-expired",
        "self-signed certificate": "certificate-not-trusted",
        "unable to get local issuer certificate": "certificate-not-trusted",
        "something else": "validation-failure",
    }
    for detail, expected in cases.items():
        assert tls_result_type("certificate", detail) == expected
    assert tls_result_type("handshake failed", "wrong version number") == "validation-failure"


def test_requirements_never_share_a_cached_session() -> None:
    from sigillo.gateway.dane import TLSA
    from sigillo.gateway.tlspolicy import Requirement

    pin = (TLSA(3, 1, 1, b"\x01" * 32),)
    kinds = [
        Requirement(Level.ENCRYPT, "encrypt", "override"),
        Requirement(Level.ENCRYPT, "encrypt", "dane"),
        Requirement(Level.ENCRYPT, "dane", "dane", tlsa=pin, names=("mx.a.test", "a.test")),
        Requirement(Level.ENCRYPT, "dane", "dane", tlsa=pin, names=("mx.a.test", "b.test")),
        Requirement(Level.VERIFY, "verify", "default"),
        Requirement(Level.VERIFY, "mta-sts", "mta-sts"),
    ]
    assert len({(r.level, r.cache_tag) for r in kinds}) == len(kinds)
    assert [r.authenticated for r in kinds] == [False, False, True, True, False, True]


def test_sts_testing_reports_what_enforce_would_have_done() -> None:
    from sigillo.gateway.mtasts import parse_policy
    from sigillo.gateway.tlspolicy import Report, Requirement, session_result

    policy = parse_policy("version: STSv1\nmode: testing\nmx: *.a.test\nmax_age: 86400\n")
    report = Report("sts", ("version: STSv1",))

    def counted(level: Level, mx: str, result: str) -> tuple[str, str]:
        requirement = Requirement(level, "verify", "default", report=report, sts_testing=policy)
        got = session_result(requirement, "a.test", mx, "192.0.2.1", result)
        return got.policy_type, got.result_type

    assert counted(Level.VERIFY, "mx.a.test", "success") == ("sts", "success")
    assert counted(Level.VERIFY, "mx.b.test", "success") == ("sts", "validation-failure")
    assert counted(Level.VERIFY, "mx.a.test", "certificate-expired") == (
        "sts",
        "certificate-expired",
    )
    # At encrypt nothing checked the certificate: no STS verdict is claimed.
    assert counted(Level.ENCRYPT, "mx.a.test", "success") == ("no-policy-found", "success")


async def test_an_override_consults_no_other_layer() -> None:
    from sigillo.gateway.mx import MXHost, MXResult
    from sigillo.gateway.tlspolicy import Layers, Requirement

    s = settings(domains={"a.test": "encrypt"})
    # No resolver and no MTA-STS cache: consulting either would fail loudly.
    layers = Layers(s)
    mx = MXResult("ok", (MXHost(10, "mx.a.test", ("192.0.2.1",), secure=True),), secure=True)
    plan = await layers.plan("a.test", policy_for("a.test", s), mx)
    [(_, verdict)] = plan.hosts
    assert isinstance(verdict, Requirement)
    assert (verdict.level, verdict.authority, verdict.layer) == (
        Level.ENCRYPT,
        "encrypt",
        "override",
    )
    assert [(f.layer, f.applies) for f in plan.findings] == [
        ("override", True),
        ("dane", False),
        ("mta-sts", False),
        ("default", False),
    ]
    assert plan.reports == []


async def test_default_portal_refuses_hosts_no_standard_authorised() -> None:
    from sigillo.gateway.mx import MXHost, MXResult
    from sigillo.gateway.tlspolicy import Layers, Refusal

    s = settings(default_tls="portal", dane=False, mta_sts=False)
    mx = MXResult("ok", (MXHost(10, "mx.a.test", ("192.0.2.1",)),))
    plan = await Layers(s).plan("a.test", policy_for("a.test", s), mx)
    [(_, verdict)] = plan.hosts
    assert isinstance(verdict, Refusal) and verdict.kind == "policy"
