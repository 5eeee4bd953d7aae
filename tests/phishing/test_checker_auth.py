"""Authentication: DKIM signatures verified offline against known keys (DNS only when allowed),
and Authentication-Results believed only from trusted servers in the topmost trace block."""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import dkim
import pytest

from sigillo.config import Settings
from sigillo.dkim import DkimSigner
from sigillo.phishing import Checker, CheckPolicy, Report
from tests.peers.dnsmasq import DnsmasqPeer

ORG = "org.example"


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> DkimSigner:
    path = tmp_path_factory.mktemp("dkim") / "dkim.key"
    return DkimSigner.load_or_create(path, "sigillo", ORG)


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> DkimSigner:
    """A key nobody told the checker about, signing for the organisation's domain."""
    path = tmp_path_factory.mktemp("dkim") / "other.key"
    return DkimSigner.load_or_create(path, "rogue", ORG)


def policy(*signers: DkimSigner, **kwargs: object) -> CheckPolicy:
    keys = {s.dns_name: s.txt_value().encode() for s in signers}
    return CheckPolicy(
        org_domains=(ORG,),
        portal_host="portal.org.example",
        dkim_keys=keys,
        **kwargs,  # type: ignore[arg-type]
    )


def notification(sender: str = f"secure@{ORG}") -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender
    msg["To"] = "patient@example.net"
    msg["Subject"] = "You have a secure message"
    msg.set_content(
        "Open it here:\n\n    https://portal.org.example/m/abc\n\n"
        "We will never ask for your password by email.\n"
    )
    return msg.as_bytes()


def codes(report: Report) -> set[str]:
    return {f.code for f in report.findings}


def test_own_signed_mail_is_genuine(signer: DkimSigner) -> None:
    report = Checker(policy(signer)).check(signer.sign(notification()))
    assert report.verdict == "genuine", report.findings
    assert "org-authenticated" in codes(report)
    # Pasted sources arrive with LF line endings: still verifies.
    pasted = signer.sign(notification()).replace(b"\r\n", b"\n")
    assert Checker(policy(signer)).check(pasted).verdict == "genuine"


def test_changed_body_fails(signer: DkimSigner) -> None:
    signed = signer.sign(notification())
    tampered = signed.replace(b"abc", b"abd")
    assert tampered != signed
    report = Checker(policy(signer)).check(tampered)
    assert "dkim-fail" in codes(report)
    assert report.verdict == "phishing"


def test_unknown_key_is_unverifiable_never_passing(signer: DkimSigner) -> None:
    report = Checker(policy()).check(signer.sign(notification()))
    assert "dkim-unverifiable" in codes(report)
    assert "org-authenticated" not in codes(report)
    assert report.verdict == "phishing"  # From is the organisation's, unproven


def test_signature_by_a_key_not_in_the_policy(signer: DkimSigner, stranger: DkimSigner) -> None:
    report = Checker(policy(signer)).check(stranger.sign(notification()))
    assert "dkim-unverifiable" in codes(report)
    assert report.verdict != "genuine"


def test_dns_lookup_used_only_when_configured(signer: DkimSigner) -> None:
    asked: list[str] = []

    def dns(name: str) -> bytes | None:
        asked.append(name)
        return signer.txt_value().encode() if name == signer.dns_name else None

    report = Checker(policy(dkim_dns=dns)).check(signer.sign(notification()))
    assert report.verdict == "genuine"
    assert asked == [signer.dns_name]
    # Known keys are answered locally, without DNS.
    asked.clear()
    Checker(policy(signer, dkim_dns=dns)).check(signer.sign(notification()))
    assert asked == []


def test_partial_body_signature(signer: DkimSigner) -> None:
    message = notification()
    signature = dkim.sign(
        message, b"sigillo", ORG.encode(), signer.private_pem, length=True,
        include_headers=[b"From", b"To", b"Subject"],
    )  # fmt: skip
    extended = signature + message + b"Enter your password at https://evil.example/\r\n"
    report = Checker(policy(signer)).check(extended)
    assert "dkim-partial-body" in codes(report), report.findings
    assert report.verdict != "genuine"
    # The same signature over the body exactly as signed: genuine.
    assert Checker(policy(signer)).check(signature + message).verdict == "genuine"


def test_second_from_added_after_signing(signer: DkimSigner) -> None:
    signed = signer.sign(notification())
    for forged in (
        b"From: Bank <attacker@evil.example>\r\n" + signed,
        signed.replace(b"\r\n\r\n", b"\r\nFrom: attacker@evil.example\r\n\r\n", 1),
    ):
        report = Checker(policy(signer)).check(forged)
        assert report.verdict == "phishing"
        assert "multiple-from" in codes(report)


def test_valid_signature_of_another_domain(tmp_path: Path) -> None:
    other = DkimSigner.load_or_create(tmp_path / "k", "s1", "mailer.example")
    report = Checker(policy(other)).check(other.sign(notification()))
    assert "dkim-other-domain" in codes(report)
    assert report.verdict == "phishing"


def test_org_signature_must_align_with_from(signer: DkimSigner) -> None:
    # Signed by the organisation's key, but From names another domain: not "ours".
    report = Checker(policy(signer)).check(signer.sign(notification("a@elsewhere.example")))
    assert "org-authenticated" not in codes(report)
    assert "dkim-other-domain" in codes(report)
    assert report.verdict == "suspicious"


def test_malformed_signature(signer: DkimSigner) -> None:
    raw = b"DKIM-Signature: v=1; a=rsa-sha256; d=org.example\r\n" + notification()
    report = Checker(policy(signer)).check(raw)
    assert "dkim-fail" in codes(report)
    assert report.verdict == "phishing"


# Authentication-Results

TRUSTED = CheckPolicy(
    org_domains=(ORG,), portal_host="portal.org.example", trusted_authserv_ids=("mx.org.example",)
)


def with_headers(*lines: str, sender: str = f"news@{ORG}") -> bytes:
    return "".join(f"{line}\r\n" for line in lines).encode() + notification(sender)


RECEIVED = (
    "Received: from mail.org.example by mx.org.example; Thu, 26 Nov 2026 10:00:00 +0000",
    "Received: from outside.example by mail.org.example; Thu, 26 Nov 2026 09:59:00 +0000",
)


def test_trusted_dmarc_pass_in_the_top_block_is_genuine() -> None:
    raw = with_headers(
        "Authentication-Results: mx.org.example; dmarc=pass (p=reject) header.from=org.example",
        *RECEIVED,
    )
    report = Checker(TRUSTED).check(raw)
    assert report.verdict == "genuine", report.findings


def test_trusted_dmarc_pass_below_the_top_block_is_ignored() -> None:
    raw = with_headers(
        RECEIVED[0],
        RECEIVED[1],
        "Authentication-Results: mx.org.example; dmarc=pass header.from=org.example",
    )
    report = Checker(TRUSTED).check(raw)
    assert report.verdict == "phishing"
    assert "auth-results-untrusted" in codes(report)


def test_trusted_results_just_below_the_trusted_servers_own_received() -> None:
    raw = with_headers(
        RECEIVED[0],
        "Authentication-Results: mx.org.example; dmarc=pass header.from=org.example",
        RECEIVED[1],
    )
    assert Checker(TRUSTED).check(raw).verdict == "genuine"


def test_trusted_results_below_another_providers_received_are_ignored() -> None:
    # Delivered to the recipient's own provider: the organisation's border never saw it, so
    # a result in its name was written by the sender.
    raw = with_headers(
        "Received: from relay.evil.example by mx.provider.example; Thu, 26 Nov 2026 10:00 +0000",
        "Authentication-Results: mx.org.example; dmarc=pass header.from=org.example",
        RECEIVED[0],
    )
    report = Checker(TRUSTED).check(raw)
    assert report.verdict == "phishing"
    assert "auth-results-untrusted" in codes(report)


def test_authenticated_but_two_senders_is_not_genuine() -> None:
    raw = with_headers(
        "Authentication-Results: mx.org.example; dmarc=pass header.from=org.example",
        RECEIVED[0],
    ).replace(b"From: news@org.example\r\n", b"From: news@org.example\r\nFrom: x@evil.example\r\n")
    report = Checker(TRUSTED).check(raw)
    assert "org-authenticated" in codes(report)
    assert report.verdict == "phishing"


def test_forged_results_from_an_untrusted_id_are_ignored() -> None:
    raw = with_headers(
        "Authentication-Results: mx.evil.example; dmarc=pass header.from=org.example",
        *RECEIVED,
    )
    report = Checker(TRUSTED).check(raw)
    assert report.verdict == "phishing"
    [ignored] = [f for f in report.findings if f.code == "auth-results-untrusted"]
    assert "mx.evil.example" in ignored.evidence


def test_dmarc_pass_for_another_from_domain_is_not_ours() -> None:
    raw = with_headers(
        "Authentication-Results: mx.org.example; dmarc=pass header.from=other.example",
        sender="x@other.example",
    )
    assert Checker(TRUSTED).check(raw).verdict == "suspicious"


@pytest.mark.parametrize(
    ("result", "code"),
    [
        ("spf=fail smtp.mailfrom=x@other.example", "spf-fail"),
        ("spf=softfail smtp.mailfrom=x@other.example", "spf-fail"),
        ("dkim=fail header.d=other.example", "dkim-fail"),
        ("dmarc=fail header.from=other.example", "dmarc-fail"),
    ],
)
def test_trusted_failures(result: str, code: str) -> None:
    raw = with_headers(
        f"Authentication-Results: mx.org.example 1; {result}", sender="x@other.example"
    )
    assert code in codes(Checker(TRUSTED).check(raw))


# Building the policy from the configuration


def test_policy_from_settings(tmp_path: Path) -> None:
    key = tmp_path / "dkim.key"
    settings = Settings(
        portal={"base_url": "https://Portal.Org.Example:8443/x"},
        notify={"from": "secure@notify.org.example", "dkim_key_file": key},
        phishing={
            "org_domains": ["org.example"],
            "org_names": ["Org Bank"],
            "trusted_authserv_ids": ["MX.org.example"],
            "dkim_keys": {"S1._DomainKey.Org.Example": "v=DKIM1; k=rsa; p=AAAA"},
        },
        smtp={"max_message_size": "1MiB"},
    )
    before = CheckPolicy.from_settings(settings)
    assert before.portal_host == "portal.org.example"
    assert before.dkim_keys == {"s1._domainkey.org.example": b"v=DKIM1; k=rsa; p=AAAA"}
    assert before.trusted_authserv_ids == ("mx.org.example",)
    assert before.dkim_dns is None
    assert before.max_size == 1024**2
    assert not key.exists()  # never created here

    signer = DkimSigner.load_or_create(key, "sigillo", "notify.org.example")
    policy_ = CheckPolicy.from_settings(settings)
    assert policy_.dkim_keys[signer.dns_name] == signer.txt_value().encode()
    report = Checker(policy_).check(signer.sign(notification("secure@notify.org.example")))
    assert report.verdict == "genuine"


@pytest.fixture
def dkim_dns(tmp_path: Path, signer: DkimSigner) -> Iterator[DnsmasqPeer]:
    name = "sigillo._domainkey.dns.test"
    value = signer.txt_value()
    chunks = ",".join(f'"{value[i : i + 250]}"' for i in range(0, len(value), 250))
    peer = DnsmasqPeer(tmp_path / "dns", {}, {}, [f"txt-record={name},{chunks}"])
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


def test_dkim_keys_from_dns_when_enabled(
    tmp_path: Path, signer: DkimSigner, dkim_dns: DnsmasqPeer
) -> None:
    dns_signer = DkimSigner(signer.private_pem, "sigillo", "dns.test")
    message = dns_signer.sign(notification("secure@dns.test"))
    base = {
        "dns": {"nameservers": [dkim_dns.nameserver]},
        "phishing": {"org_domains": ["dns.test"]},
        "notify": {"dkim_key_file": tmp_path / "none.key"},
    }
    offline = CheckPolicy.from_settings(Settings(**base))  # type: ignore[arg-type]
    assert "dkim-unverifiable" in codes(Checker(offline).check(message))
    base["phishing"]["dkim_dns"] = True  # type: ignore[index]
    online = CheckPolicy.from_settings(Settings(**base))  # type: ignore[arg-type]
    assert online.dkim_dns is not None
    assert online.dkim_dns("missing._domainkey.dns.test") is None
    assert Checker(online).check(message).verdict == "genuine"
    assert re.search("sigillo._domainkey.dns.test", dkim_dns.log())
