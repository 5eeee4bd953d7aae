"""DANE for SMTP (RFC 7672, RFC 7671): TLSA records, their lookup, and the check of a peer's chain.

The caller looks TLSA up only for an MX host whose MX RRset and address records were secure
(RFC 7672 section 2.2), opens the session with ``dane_context`` (no PKIX in the handshake: the
TLSA records are the trust), and calls ``check_chain`` on ``peer_chain`` after the handshake and
before MAIL FROM. Every way this can go wrong is a value, never an exception: a malformed
record is a recorded problem, a failed lookup is ``temporary`` (defer, never skip the check), a
chain that matches nothing is a ``DaneCheck`` that is not ok.
"""

from __future__ import annotations

import _ssl
import hashlib
import ssl
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

if TYPE_CHECKING:
    from sigillo.gateway.dnssec import SecureResolver

USAGE_DANE_TA = 2
USAGE_DANE_EE = 3
_USAGE_NAMES = {0: "PKIX-TA", 1: "PKIX-EE", 2: "DANE-TA", 3: "DANE-EE"}
_DIGEST_SIZES = {1: 32, 2: 64}  # SHA2-256, SHA2-512 (RFC 6698 section 2.1.3)

# A peer decides how many certificates it sends; building paths over them is bounded so a
# hostile chain costs little. Real chains are two to four certificates long.
MAX_CHAIN = 10
_MAX_PATH_STEPS = 200


@dataclass(frozen=True)
class TLSA:
    usage: int
    selector: int
    mtype: int
    data: bytes

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex().upper()}".rstrip()


def _short(record: TLSA) -> str:
    text = str(record)
    return text if len(text) <= 40 else text[:37] + "..."


def _defect(record: TLSA) -> str | None:
    """Why ``record`` cannot be used for SMTP, or None.

    Unusable records are skipped (RFC 7672 section 2.2); when a secure RRset has none left the
    session still needs TLS, without authentication. Malformed data counts as unusable, as in
    OpenSSL's and Postfix's DANE: it could never match anyway.
    """
    if record.usage in (0, 1):
        name = _USAGE_NAMES[record.usage]
        return f"usage {record.usage} ({name}) does not apply to SMTP (RFC 7672 section 3.1.3)"
    if record.usage not in (USAGE_DANE_TA, USAGE_DANE_EE):
        return f"usage {record.usage} is not defined"
    if record.selector not in (0, 1):
        return f"selector {record.selector} is not defined"
    if record.mtype not in (0, 1, 2):
        return f"matching type {record.mtype} is not defined"
    if not record.data:
        return "no certificate association data"
    if record.mtype in _DIGEST_SIZES:
        size = _DIGEST_SIZES[record.mtype]
        if len(record.data) != size:
            return (
                f"matching type {record.mtype} needs {size} bytes of data, has {len(record.data)}"
            )
        return None
    try:
        if record.selector == 0:
            x509.load_der_x509_certificate(record.data)
        else:
            serialization.load_der_public_key(record.data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        what = "a DER certificate" if record.selector == 0 else "a DER SubjectPublicKeyInfo"
        return f"data is not {what}"
    return None


def parse_tlsa(rdatas: Iterable[Any]) -> tuple[list[TLSA], list[str]]:
    """TLSA records from dnspython rdata objects, and a line for each that is unusable.

    Every well-formed record stays in the list, usable or not (TLS-RPT reports them as
    published); ``usable`` picks the ones that take part in the check.
    """
    records: list[TLSA] = []
    problems: list[str] = []
    for rdata in rdatas:
        usage, selector, mtype = (getattr(rdata, n, None) for n in ("usage", "selector", "mtype"))
        data = getattr(rdata, "cert", None)
        if not (
            isinstance(usage, int)
            and isinstance(selector, int)
            and isinstance(mtype, int)
            and all(0 <= v <= 255 for v in (usage, selector, mtype))
            and isinstance(data, bytes)
        ):
            problems.append(f"not a TLSA record: {str(rdata)[:40]!r}")
            continue
        record = TLSA(usage, selector, mtype, data)
        records.append(record)
        defect = _defect(record)
        if defect is not None:
            problems.append(f"TLSA {_short(record)}: {defect}")
    return records, problems


def usable(records: Iterable[TLSA]) -> list[TLSA]:
    """The records that take part in the check: DANE-TA or DANE-EE, defined selector and
    matching type, well-formed data."""
    return [r for r in records if _defect(r) is None]


@dataclass(frozen=True)
class TLSALookup:
    state: Literal["secure", "insecure", "none", "temporary"]
    """``secure``: the RRset validated; an empty ``usable`` then means TLS is mandatory but
    unauthenticated. ``insecure`` and ``none``: DANE does not apply to this MX host.
    ``temporary``: the lookup failed or the answer was bogus; defer, never skip the check."""
    records: tuple[TLSA, ...] = ()
    usable: tuple[TLSA, ...] = ()
    problems: tuple[str, ...] = ()
    """Unusable records; for ``temporary`` why the lookup failed."""


async def lookup_tlsa(resolver: SecureResolver, mx_host: str, port: int = 25) -> TLSALookup:
    """TLSA records of ``_<port>._tcp.<mx_host>`` (RFC 7672 section 2.2.2).

    The validating resolver follows a CNAME, and its AD bit covers the whole chain of it.
    A validating resolver answers SERVFAIL for bogus data, which is ``temporary`` here.
    """
    host = mx_host.strip().rstrip(".").lower()
    answer = await resolver.query(f"_{port}._tcp.{host}", "TLSA")
    if answer.status == "temporary":
        return TLSALookup("temporary", problems=(answer.reason or "TLSA lookup failed",))
    # No TLSA records: DANE does not apply (RFC 7672 section 2.2), whether the denial was
    # validated ("none") or not ("insecure"). A bogus denial reaches us as "temporary".
    if answer.status in ("nxdomain", "nodata") or not answer.records:
        return TLSALookup("none" if answer.authenticated else "insecure")
    if not answer.secure:
        return TLSALookup("insecure")
    records, problems = parse_tlsa(answer.records)
    return TLSALookup("secure", tuple(records), tuple(usable(records)), tuple(problems))


_MIN_VERSION = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def dane_context(min_version: Literal["1.2", "1.3"]) -> ssl.SSLContext:
    """A client context for a session whose peer ``check_chain`` authenticates after the
    handshake: no PKIX verification and no name check in the handshake itself (a DANE-EE peer
    may present a self-signed or expired certificate), the minimum version enforced.

    The caller must pass the MX host name as ``server_hostname`` (SNI, RFC 7672 section 8.1)
    and must not send MAIL FROM before ``check_chain`` said ok.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _MIN_VERSION[min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    """The DER certificates the peer sent, leaf first, in the order it sent them.

    CPython 3.11 has no public API for this: the private ``get_unverified_chain`` (public from
    3.13) gives it. Without it, the leaf alone (enough for DANE-EE).
    """
    public = getattr(ssl_object, "get_unverified_chain", None)  # Python 3.13+: DER bytes
    if public is not None:
        ders = [bytes(d) for d in public() or []]
    else:
        inner = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
        chain = (inner() if inner is not None else None) or []
        ders = [bytes(cert.public_bytes(_ssl.ENCODING_DER)) for cert in chain]
    if ders:
        return ders
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


@dataclass(frozen=True)
class DaneCheck:
    ok: bool
    matched: TLSA | None
    result_type: str
    """Empty when ok; otherwise the RFC 8460 result type, for TLS-RPT."""
    reason: str


def _der_element(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end) of the DER element at ``pos``; ValueError if malformed."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tag")  # never used in a certificate's outer layers
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or pos + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def spki_der(cert_der: bytes) -> bytes:
    """The certificate's SubjectPublicKeyInfo exactly as encoded in it.

    Taken from the bytes rather than re-encoded from the parsed key, so an unusual but valid
    encoding (a compressed EC point, say) hashes as the publisher hashed it.
    """
    _, cert_start, _ = _der_element(cert_der, 0)
    tag, pos, tbs_end = _der_element(cert_der, cert_start)
    if tag != 0x30:
        raise ValueError("not a certificate")
    if pos < tbs_end and cert_der[pos] == 0xA0:  # [0] version, absent for v1
        pos = _der_element(cert_der, pos)[2]
    for _ in range(5):  # serialNumber, signature, issuer, validity, subject
        pos = _der_element(cert_der, pos)[2]
    start = pos
    tag, _, end = _der_element(cert_der, pos)
    if tag != 0x30 or end > tbs_end:
        raise ValueError("no SubjectPublicKeyInfo")
    return cert_der[start:end]


def _association(cert_der: bytes, selector: int, mtype: int) -> bytes:
    selected = cert_der if selector == 0 else spki_der(cert_der)
    if mtype == 1:
        return hashlib.sha256(selected).digest()
    if mtype == 2:
        return hashlib.sha512(selected).digest()
    return selected


def _matches(cert_der: bytes, record: TLSA) -> bool:
    try:
        return _association(cert_der, record.selector, record.mtype) == record.data
    except ValueError:
        return False


def name_matches(pattern: str, name: str) -> bool:
    """RFC 6125 as RFC 7672 section 3.2.3 narrows it: a wildcard only as the whole left-most
    label, standing for exactly one label, and not directly under a top-level domain."""
    pattern = pattern.strip().rstrip(".").lower()
    name = name.strip().rstrip(".").lower()
    if not pattern or not name or "*" in name:
        return False
    if pattern.startswith("*."):
        rest = pattern[2:]
        if "*" in rest or "." not in rest:
            return False
        head, _, tail = name.partition(".")
        return bool(head) and tail == rest
    return "*" not in pattern and pattern == name


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.value.get_values_for_type(x509.DNSName)]


def _within_validity(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _issuer_problem(cert: x509.Certificate, below: int) -> str | None:
    """Why ``cert`` may not issue the ``below`` intermediates plus leaf under it (RFC 5280
    section 6.1.4): it must be a CA, may sign certificates, and its path length allows."""
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "is not a CA (no basicConstraints)"
    if not basic.ca:
        return "is not a CA"
    if basic.path_length is not None and below > basic.path_length:
        return f"allows {basic.path_length} intermediates below it, has {below}"
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    return None if usage.key_cert_sign else "may not sign certificates (keyUsage)"


def _leaf_usage_problem(cert: x509.Certificate) -> str | None:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    allowed = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
    return None if allowed & set(eku) else "is not for TLS servers (extendedKeyUsage)"


@dataclass(frozen=True)
class _Cert:
    der: bytes
    cert: x509.Certificate
    label: str


def _load(ders: Iterable[tuple[bytes, str]]) -> list[_Cert]:
    loaded = []
    for der, label in ders:
        try:
            cert = x509.load_der_x509_certificate(der)
            # Parsed now, so a malformed part cannot raise in the middle of the check.
            _ = (cert.issuer, cert.subject, cert.extensions)
            _ = (cert.not_valid_before_utc, cert.not_valid_after_utc)
        except ValueError:
            continue
        loaded.append(_Cert(der, cert, label))
    return loaded


def _paths(
    leaf: _Cert, pool: Sequence[_Cert], anchors: Sequence[TLSA]
) -> Iterator[tuple[list[_Cert], TLSA]]:
    """Every path leaf -> ... -> certificate matching a DANE-TA record, each step a verified
    signature, in whatever order the peer sent its certificates."""
    steps = 0
    signed: dict[tuple[int, int], bool] = {}

    def walk(path: list[_Cert]) -> Iterator[tuple[list[_Cert], TLSA]]:
        nonlocal steps
        top = path[-1]
        for record in anchors:
            if _matches(top.der, record):
                yield path, record
                break
        if len(path) > MAX_CHAIN:
            return
        for candidate in pool:
            steps += 1
            if steps > _MAX_PATH_STEPS:
                return
            if any(candidate.der == seen.der for seen in path):
                continue
            key = (id(top), id(candidate))
            if key not in signed:
                signed[key] = _signed_by(top.cert, candidate.cert)
            if signed[key]:
                yield from walk([*path, candidate])

    yield from walk([leaf])


# How far a DANE-TA path got before it failed: the furthest one names the failure.
_STAGES = {"certificate-not-trusted": 1, "certificate-expired": 2, "certificate-host-mismatch": 3}


def _check_path(
    path: Sequence[_Cert], names: Sequence[str], now: datetime
) -> tuple[str, str] | None:
    """(result type, reason) for a path that fails PKIX-with-this-anchor, or None."""
    leaf = path[0]
    # Everything strictly between the leaf and the anchor issues a certificate; the anchor is
    # trusted as published, like a PKIX trust anchor.
    for below, issuer in enumerate(path[1:-1]):
        problem = _issuer_problem(issuer.cert, below)
        if problem:
            return "certificate-not-trusted", f"{issuer.label} {problem}"
    problem = _leaf_usage_problem(leaf.cert)
    if problem:
        return "certificate-not-trusted", f"{leaf.label} {problem}"
    for item in path:
        if not _within_validity(item.cert, now):
            c = item.cert
            span = f"{c.not_valid_before_utc:%Y-%m-%d} to {c.not_valid_after_utc:%Y-%m-%d}"
            return "certificate-expired", f"{item.label} is not valid now (valid {span})"
    dns_names = _dns_names(leaf.cert)
    if not any(name_matches(p, n) for p in dns_names for n in names):
        shown = ", ".join(dns_names[:5]) or "none"
        wanted = ", ".join(names) or "none"
        return "certificate-host-mismatch", f"certificate names {shown}; expected {wanted}"
    return None


def check_chain(
    chain: Sequence[bytes], tlsa: Sequence[TLSA], names: Sequence[str], now: datetime
) -> DaneCheck:
    """Does the peer's chain (leaf first) satisfy one usable TLSA record (RFC 7672 section 3)?

    DANE-EE (3): the leaf matches; its names and dates do not matter. DANE-TA (2): a path from
    the leaf to a certificate matching the record, signature by signature, through CAs, every
    certificate on it within validity, and a subjectAltName dNSName of the leaf matching one of
    ``names`` (the MX host name or the next-hop domain). A "2 0 0" record's certificate serves
    as the anchor even when the peer leaves it out; an anchor given by its key (selector 1)
    must be in the peer's chain.
    """
    records = usable(tlsa)
    if not records:
        return DaneCheck(False, None, "tlsa-invalid", "no usable TLSA record")
    if not chain:
        return DaneCheck(False, None, "validation-failure", "the peer sent no certificate")
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    leaf_der = chain[0]
    for record in records:
        if record.usage == USAGE_DANE_EE and _matches(leaf_der, record):
            return DaneCheck(True, record, "", f"DANE-EE {_short(record)} matches the leaf")

    anchors = [r for r in records if r.usage == USAGE_DANE_TA]
    # A path that fails a check says more than no path at all; the furthest stage wins.
    reason = "no chain from the certificate to a DANE-TA trust anchor"
    failure = ("certificate-not-trusted", reason if anchors else "no TLSA record matches")
    stage = 0
    if anchors:
        loaded = _load([(leaf_der, "server certificate")])
        if not loaded:
            return DaneCheck(False, None, "validation-failure", "unreadable server certificate")
        sent = [
            (der, f"certificate {i} of the chain") for i, der in enumerate(chain[1:MAX_CHAIN], 1)
        ]
        published = [
            (r.data, f"TLSA {_short(r)}") for r in anchors if (r.selector, r.mtype) == (0, 0)
        ]
        pool = _load(sent + published)
        for path, record in _paths(loaded[0], pool, anchors):
            problem = _check_path(path, names, now)
            if problem is None:
                depth = len(path) - 1
                return DaneCheck(True, record, "", f"DANE-TA {_short(record)} at depth {depth}")
            if _STAGES[problem[0]] > stage:
                failure, stage = problem, _STAGES[problem[0]]
    return DaneCheck(False, None, failure[0], failure[1])
