"""DANE (RFC 7672, RFC 7671): TLSA parsing, the lookup's states, and chain checks with real
certificates built here."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import dns.rdata
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from sigillo.gateway.dane import (
    TLSA,
    check_chain,
    lookup_tlsa,
    name_matches,
    parse_tlsa,
    spki_der,
    usable,
)
from sigillo.gateway.dnssec import Answer

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
MX = "mx.example.com"

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass
class Made:
    cert: x509.Certificate
    key: Key
    der: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.der = self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def spki(self) -> bytes:
        return self.cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def make(
    cn: str,
    *,
    issuer: Made | None = None,
    sans: Sequence[str] = (),
    ca: bool = False,
    path_length: int | None = None,
    valid: tuple[int, int] = (-30, 365),
    key: Key | None = None,
    sign_with: Key | None = None,
    key_cert_sign: bool | None = None,
    eku: Sequence[x509.ObjectIdentifier] | None = None,
    basic_constraints: bool = True,
) -> Made:
    """A certificate valid from NOW+valid[0] to NOW+valid[1] days, signed by `issuer` (or
    self-signed), optionally signed by a different key than the issuer's (a forgery)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    name = issuer.cert.subject if issuer else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + timedelta(days=valid[0]))
        .not_valid_after(NOW + timedelta(days=valid[1]))
    )
    if basic_constraints:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length), critical=True
        )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False
        )
    if key_cert_sign is not None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=key_cert_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    signer = sign_with or (issuer.key if issuer else key)
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return Made(builder.sign(signer, algorithm), key)


def rec(usage: int, selector: int, mtype: int, made: Made) -> TLSA:
    selected = made.der if selector == 0 else made.spki
    if mtype == 1:
        selected = hashlib.sha256(selected).digest()
    elif mtype == 2:
        selected = hashlib.sha512(selected).digest()
    return TLSA(usage, selector, mtype, selected)


@pytest.fixture(scope="module")
def pki() -> SimpleNamespace:
    root = make("sigillo test root", ca=True)
    inter = make("sigillo test intermediate", issuer=root, ca=True)
    leaf = make(MX, issuer=inter, sans=[MX])
    direct = make(MX, issuer=root, sans=[MX, "mx2.example.com"])
    return SimpleNamespace(root=root, inter=inter, leaf=leaf, direct=direct)


# --- TLSA records -------------------------------------------------------------------------


def test_presentation_form() -> None:
    assert str(TLSA(3, 1, 1, bytes.fromhex("abcd01"))) == "3 1 1 ABCD01"


def rdata(usage: int, selector: int, mtype: int, data: bytes) -> SimpleNamespace:
    # Shaped like dnspython's TLSA rdata, but without its checks, as data off the wire might be.
    return SimpleNamespace(usage=usage, selector=selector, mtype=mtype, cert=data)


def test_parse_real_dnspython_rdata(pki: SimpleNamespace) -> None:
    digest = hashlib.sha256(pki.leaf.spki).hexdigest()
    records, problems = parse_tlsa([dns.rdata.from_text("IN", "TLSA", f"3 1 1 {digest}")])
    assert records == [TLSA(3, 1, 1, bytes.fromhex(digest))] and problems == []
    assert usable(records) == records


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ((3, 1, 1, b"\x01" * 20), "matching type 1 needs 32 bytes of data, has 20"),
        ((2, 0, 2, b"\x01" * 32), "matching type 2 needs 64 bytes of data, has 32"),
        ((3, 1, 1, b"\x01" * 64), "matching type 1 needs 32 bytes of data, has 64"),
        ((0, 0, 1, b"\x01" * 32), "usage 0 (PKIX-TA) does not apply to SMTP"),
        ((1, 1, 1, b"\x01" * 32), "usage 1 (PKIX-EE) does not apply to SMTP"),
        ((4, 1, 1, b"\x01" * 32), "usage 4 is not defined"),
        ((3, 2, 1, b"\x01" * 32), "selector 2 is not defined"),
        ((3, 1, 3, b"\x01" * 32), "matching type 3 is not defined"),
        ((3, 1, 0, b""), "no certificate association data"),
        ((3, 0, 0, b"\x30\x03\x02\x01\x01"), "data is not a DER certificate"),
        ((2, 1, 0, b"not a key"), "data is not a DER SubjectPublicKeyInfo"),
    ],
)
def test_unusable_records_are_problems_not_errors(
    fields: tuple[int, int, int, bytes], problem: str
) -> None:
    records, problems = parse_tlsa([rdata(*fields)])
    assert records == [TLSA(*fields)]  # kept: TLS-RPT lists what was published
    assert len(problems) == 1 and problem in problems[0]
    assert usable(records) == []


def test_full_data_records_are_usable(pki: SimpleNamespace) -> None:
    records, problems = parse_tlsa(
        [rdata(3, 0, 0, pki.leaf.der), rdata(2, 1, 0, pki.root.spki), rdata(3, 1, 2, b"\x00" * 64)]
    )
    assert problems == [] and usable(records) == records


def test_non_tlsa_objects_are_problems() -> None:
    a = dns.rdata.from_text("IN", "A", "192.0.2.1")
    records, problems = parse_tlsa([a, rdata(3, 1, 1, "text"), rdata(256, 1, 1, b"\x00" * 32)])  # type: ignore[arg-type]
    assert records == [] and len(problems) == 3
    assert all(p.startswith("not a TLSA record") for p in problems)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.binary(max_size=80)
        ),
        max_size=6,
    )
)
def test_parse_never_raises(fields: list[tuple[int, int, int, bytes]]) -> None:
    records, problems = parse_tlsa(rdata(*f) for f in fields)
    good = usable(records)
    assert len(records) == len(fields) and len(good) + len(problems) == len(records)
    for r in good:
        assert r.usage in (2, 3) and r.selector in (0, 1) and r.mtype in (0, 1, 2)


# --- lookup -------------------------------------------------------------------------------


class FakeResolver:
    """Answers one prepared Answer and remembers what it was asked (unit tests only; the
    lookup against a real signed zone and validating resolver is in the integration tests)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str]] = []

    async def query(self, name: str, rdtype: str) -> Answer:
        self.asked.append((name, rdtype))
        return self.answer


async def lookup(answer: Answer, host: str = MX, port: int = 25) -> tuple[Any, FakeResolver]:
    resolver = FakeResolver(answer)
    return await lookup_tlsa(resolver, host, port), resolver  # type: ignore[arg-type]


async def test_lookup_name_and_secure_records() -> None:
    good = dns.rdata.from_text("IN", "TLSA", "3 1 1 " + "ab" * 32)
    bad = dns.rdata.from_text("IN", "TLSA", "1 1 1 " + "ab" * 32)
    result, resolver = await lookup(Answer("ok", (good, bad), True), "MX.Example.COM.", 2525)
    assert resolver.asked == [("_2525._tcp.mx.example.com", "TLSA")]
    assert result.state == "secure"
    assert len(result.records) == 2 and result.usable == (TLSA(3, 1, 1, b"\xab" * 32),)
    assert len(result.problems) == 1


async def test_lookup_secure_but_all_unusable_stays_secure() -> None:
    bad = dns.rdata.from_text("IN", "TLSA", "0 1 1 " + "ab" * 32)
    result, _ = await lookup(Answer("ok", (bad,), True))
    # Mandatory TLS without authentication (RFC 7672 section 2.2), not "DANE does not apply".
    assert result.state == "secure" and result.usable == () and result.records


async def test_lookup_without_ad_does_not_apply() -> None:
    good = dns.rdata.from_text("IN", "TLSA", "3 1 1 " + "ab" * 32)
    result, _ = await lookup(Answer("ok", (good,), False))
    assert result.state == "insecure" and result.usable == ()


@pytest.mark.parametrize("status", ["nxdomain", "nodata"])
async def test_lookup_denial(status: Any) -> None:
    proven, _ = await lookup(Answer(status, (), False, authenticated=True))
    assert proven.state == "none"
    unproven, _ = await lookup(Answer(status, (), False, authenticated=False))
    assert unproven.state == "insecure"


async def test_lookup_failure_or_bogus_is_temporary() -> None:
    answer = Answer("temporary", (), False, reason="127.0.0.1 answered SERVFAIL")
    result, _ = await lookup(answer)
    assert result.state == "temporary" and result.problems == ("127.0.0.1 answered SERVFAIL",)


# --- DANE-EE ------------------------------------------------------------------------------


@pytest.mark.parametrize(("selector", "mtype"), [(1, 1), (0, 1), (1, 2), (0, 2), (0, 0), (1, 0)])
def test_dane_ee_pins_a_self_signed_leaf(selector: int, mtype: int) -> None:
    leaf = make("whatever.invalid", sans=["whatever.invalid"])
    record = rec(3, selector, mtype, leaf)
    check = check_chain([leaf.der], [record], [MX], NOW)
    assert check.ok and check.matched == record and check.result_type == ""


def test_dane_ee_ignores_expiry_and_names() -> None:
    leaf = make("old.invalid", valid=(-400, -10))
    check = check_chain([leaf.der], [rec(3, 1, 1, leaf)], [MX], NOW)
    assert check.ok


@pytest.mark.parametrize(
    "key", [rsa.generate_private_key(65537, 2048), ed25519.Ed25519PrivateKey.generate()]
)
def test_dane_ee_other_key_types(key: Key) -> None:
    leaf = make("k.invalid", key=key)
    assert spki_der(leaf.der) == leaf.spki
    assert check_chain([leaf.der], [rec(3, 1, 1, leaf)], [MX], NOW).ok


def test_dane_ee_other_certificate_is_refused(pki: SimpleNamespace) -> None:
    other = make(MX, sans=[MX])
    check = check_chain([pki.leaf.der], [rec(3, 1, 1, other)], [MX], NOW)
    assert not check.ok and check.result_type == "certificate-not-trusted" and not check.matched


def test_dane_ee_only_matches_the_leaf(pki: SimpleNamespace) -> None:
    # A 3 x x record for the intermediate must not let any leaf under it through.
    chain = [pki.leaf.der, pki.inter.der]
    assert not check_chain(chain, [rec(3, 1, 1, pki.inter)], [MX], NOW).ok


def test_spki_der_is_the_encoded_key(pki: SimpleNamespace) -> None:
    assert spki_der(pki.leaf.der) == pki.leaf.spki
    assert spki_der(pki.root.der) == pki.root.spki
    for broken in (b"", b"\x30", b"\x30\x82\xff\xff", pki.leaf.der[:100]):
        with pytest.raises(ValueError):
            spki_der(broken)
    assert not check_chain([pki.leaf.der[:100]], [rec(3, 1, 1, pki.leaf)], [MX], NOW).ok


# --- DANE-TA ------------------------------------------------------------------------------


@pytest.mark.parametrize(("selector", "mtype"), [(1, 1), (0, 1), (0, 2), (1, 0), (0, 0)])
def test_dane_ta_on_the_issuer(pki: SimpleNamespace, selector: int, mtype: int) -> None:
    record = rec(2, selector, mtype, pki.root)
    check = check_chain([pki.direct.der, pki.root.der], [record], [MX], NOW)
    assert check.ok and check.matched == record


def test_dane_ta_through_an_intermediate(pki: SimpleNamespace) -> None:
    chain = [pki.leaf.der, pki.inter.der, pki.root.der]
    assert check_chain(chain, [rec(2, 0, 1, pki.root)], [MX], NOW).ok
    assert check_chain(chain, [rec(2, 1, 1, pki.inter)], [MX], NOW).ok


def test_dane_ta_chain_out_of_order_with_extras(pki: SimpleNamespace) -> None:
    stranger = make("unrelated CA", ca=True)
    chain = [pki.leaf.der, stranger.der, pki.root.der, b"garbage", pki.inter.der]
    check = check_chain(chain, [rec(2, 1, 1, pki.root)], [MX], NOW)
    assert check.ok, check.reason


def test_dane_ta_leaf_must_come_first(pki: SimpleNamespace) -> None:
    chain = [pki.inter.der, pki.leaf.der, pki.root.der]
    assert not check_chain(chain, [rec(2, 1, 1, pki.root)], [MX], NOW).ok


def test_dane_ta_by_key_must_be_in_the_chain(pki: SimpleNamespace) -> None:
    check = check_chain([pki.direct.der], [rec(2, 1, 1, pki.root)], [MX], NOW)
    assert not check.ok and check.result_type == "certificate-not-trusted"
    # A full certificate published in DNS ("2 0 0") is itself the anchor.
    assert check_chain([pki.direct.der], [rec(2, 0, 0, pki.root)], [MX], NOW).ok


def test_dane_ta_name_must_match_mx_or_next_hop(pki: SimpleNamespace) -> None:
    record = rec(2, 1, 1, pki.root)
    chain = [pki.direct.der, pki.root.der]
    check = check_chain(chain, [record], ["mx.other.example", "other.example"], NOW)
    assert not check.ok and check.result_type == "certificate-host-mismatch"
    assert "mx.example.com" in check.reason
    assert check_chain(chain, [record], ["mx.other.example", "mx2.example.com"], NOW).ok
    assert check_chain(chain, [record], ["MX.Example.com."], NOW).ok


def test_dane_ta_common_name_alone_does_not_count(pki: SimpleNamespace) -> None:
    leaf = make(MX, issuer=pki.root)  # CN only, no subjectAltName
    check = check_chain([leaf.der, pki.root.der], [rec(2, 1, 1, pki.root)], [MX], NOW)
    assert not check.ok and check.result_type == "certificate-host-mismatch"


@pytest.mark.parametrize(
    ("pattern", "name", "ok"),
    [
        ("*.example.com", "mx.example.com", True),
        ("*.example.com", "a.mx.example.com", False),
        ("*.example.com", "example.com", False),
        ("m*.example.com", "mx.example.com", False),
        ("*x.example.com", "mx.example.com", False),
        ("mx.*.com", "mx.example.com", False),
        ("*.com", "example.com", False),
        ("*", "com", False),
        ("mx.example.com", "mx.example.com", True),
        ("MX.example.COM.", "mx.EXAMPLE.com", True),
        ("mx.example.com", "*.example.com", False),
        ("", "", False),
    ],
)
def test_name_matching(pattern: str, name: str, ok: bool) -> None:
    assert name_matches(pattern, name) is ok


def test_dane_ta_wildcard_certificate(pki: SimpleNamespace) -> None:
    leaf = make("wild", issuer=pki.root, sans=["*.example.com"])
    chain, record = [leaf.der, pki.root.der], [rec(2, 1, 1, pki.root)]
    assert check_chain(chain, record, [MX], NOW).ok
    assert not check_chain(chain, record, ["a.mx.example.com"], NOW).ok
    partial = make("partial", issuer=pki.root, sans=["m*.example.com"])
    assert not check_chain([partial.der, pki.root.der], record, [MX], NOW).ok


@pytest.mark.parametrize("which", ["leaf", "inter", "root", "not yet"])
def test_dane_ta_refuses_certificates_outside_validity(which: str) -> None:
    root = make("root", ca=True, valid=(-400, -1) if which == "root" else (-30, 365))
    inter = make(
        "inter", issuer=root, ca=True, valid=(-400, -1) if which == "inter" else (-30, 365)
    )
    leaf_valid = {"leaf": (-400, -1), "not yet": (1, 365)}.get(which, (-30, 365))
    leaf = make(MX, issuer=inter, sans=[MX], valid=leaf_valid)
    check = check_chain([leaf.der, inter.der, root.der], [rec(2, 1, 1, root)], [MX], NOW)
    assert not check.ok and check.result_type == "certificate-expired"


def test_dane_ta_refuses_a_forged_signature(pki: SimpleNamespace) -> None:
    forger = ec.generate_private_key(ec.SECP256R1())
    forged = make(MX, issuer=pki.root, sans=[MX], sign_with=forger)
    check = check_chain([forged.der, pki.root.der], [rec(2, 1, 1, pki.root)], [MX], NOW)
    assert not check.ok and check.result_type == "certificate-not-trusted"


def test_dane_ta_refuses_a_leaf_that_signs_another_leaf(pki: SimpleNamespace) -> None:
    # Whoever holds a certificate under the anchor must not mint one for another name.
    other = make("www.example.com", issuer=pki.root, sans=["www.example.com"])
    minted = make(MX, issuer=other, sans=[MX])
    check = check_chain([minted.der, other.der, pki.root.der], [rec(2, 1, 1, pki.root)], [MX], NOW)
    assert not check.ok and check.result_type == "certificate-not-trusted"
    assert "is not a CA" in check.reason


def test_dane_ta_intermediate_without_basic_constraints_is_no_ca(pki: SimpleNamespace) -> None:
    plain = make("plain", issuer=pki.root, basic_constraints=False)
    minted = make(MX, issuer=plain, sans=[MX])
    check = check_chain([minted.der, plain.der, pki.root.der], [rec(2, 1, 1, pki.root)], [MX], NOW)
    assert not check.ok and "no basicConstraints" in check.reason


def test_dane_ta_path_length_constraint() -> None:
    root = make("root", ca=True)
    limited = make("limited", issuer=root, ca=True, path_length=0)
    sub = make("sub", issuer=limited, ca=True)
    leaf = make(MX, issuer=sub, sans=[MX])
    chain = [leaf.der, sub.der, limited.der, root.der]
    check = check_chain(chain, [rec(2, 1, 1, root)], [MX], NOW)
    assert not check.ok and "allows 0 intermediates" in check.reason
    # The anchor's own constraints are not applied: the domain chose it.
    assert check_chain(chain, [rec(2, 1, 1, limited)], [MX], NOW).ok
    assert check_chain(chain[:3], [rec(2, 1, 1, sub)], [MX], NOW).ok


def test_dane_ta_intermediate_must_be_allowed_to_sign_certificates() -> None:
    root = make("root", ca=True)
    inter = make("inter", issuer=root, ca=True, key_cert_sign=False)
    leaf = make(MX, issuer=inter, sans=[MX])
    check = check_chain([leaf.der, inter.der, root.der], [rec(2, 1, 1, root)], [MX], NOW)
    assert not check.ok and "keyUsage" in check.reason
    signing = make("inter", issuer=root, ca=True, key_cert_sign=True)
    leaf2 = make(MX, issuer=signing, sans=[MX])
    assert check_chain([leaf2.der, signing.der, root.der], [rec(2, 1, 1, root)], [MX], NOW).ok


def test_dane_ta_leaf_must_be_for_servers(pki: SimpleNamespace) -> None:
    client = make(MX, issuer=pki.root, sans=[MX], eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    check = check_chain([client.der, pki.root.der], [rec(2, 1, 1, pki.root)], [MX], NOW)
    assert not check.ok and "extendedKeyUsage" in check.reason
    server = make(MX, issuer=pki.root, sans=[MX], eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    assert check_chain([server.der, pki.root.der], [rec(2, 1, 1, pki.root)], [MX], NOW).ok


def test_most_specific_failure_is_reported(pki: SimpleNamespace) -> None:
    # One anchor matches nothing, the other gets as far as the name check.
    records = [rec(2, 1, 1, make("stranger", ca=True)), rec(2, 1, 1, pki.root)]
    check = check_chain([pki.direct.der, pki.root.der], records, ["elsewhere.example"], NOW)
    assert check.result_type == "certificate-host-mismatch"


def test_no_usable_records_and_no_certificate(pki: SimpleNamespace) -> None:
    unusable = [TLSA(1, 1, 1, hashlib.sha256(pki.leaf.spki).digest())]
    assert check_chain([pki.leaf.der], unusable, [MX], NOW).result_type == "tlsa-invalid"
    assert check_chain([], [rec(3, 1, 1, pki.leaf)], [MX], NOW).result_type == "validation-failure"
    garbage = check_chain([b"\x30\x00"], [rec(2, 1, 1, pki.root)], [MX], NOW)
    assert not garbage.ok and garbage.result_type == "validation-failure"


def test_naive_now_is_utc(pki: SimpleNamespace) -> None:
    naive = NOW.replace(tzinfo=None)
    assert check_chain([pki.direct.der, pki.root.der], [rec(2, 1, 1, pki.root)], [MX], naive).ok


def test_a_hostile_chain_is_bounded(pki: SimpleNamespace) -> None:
    # Many CAs with the same name that cross-sign each other: the search stays bounded.
    key = ec.generate_private_key(ec.SECP256R1())
    same = [make("loop", ca=True, key=key) for _ in range(40)]
    leaf = make(MX, issuer=same[0], sans=[MX])
    check = check_chain([leaf.der, *(c.der for c in same)], [rec(2, 1, 1, pki.root)], [MX], NOW)
    assert not check.ok and check.result_type == "certificate-not-trusted"
