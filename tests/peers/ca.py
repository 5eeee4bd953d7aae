"""A throw-away certificate authority for the test peers.

`PeerCA` wraps a `trustme.CA` and keeps its PEM on disk, so that the gateway under test can be
pointed at it with `[delivery] ca_file`. The helpers write server certificates in the shapes the
Postfix listeners need: issued by the CA, self-signed, or a certificate with a key that does not
belong to it.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class PeerCA:
    """A trustme CA plus the path of its PEM certificate (for `ca_file` settings)."""

    ca: trustme.CA
    pem_path: Path


@dataclass(frozen=True)
class CertFiles:
    """A server certificate (leaf first, then intermediates) and its private key, as PEM files."""

    cert: Path
    key: Path


def make_ca(directory: Path, *, organization: str = "sigillo test CA") -> PeerCA:
    """Create a new CA and write its certificate to `directory/ca.pem`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name=organization)
    pem_path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(pem_path))
    return PeerCA(ca=ca, pem_path=pem_path)


def _write_key(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def issue_server_cert(
    ca: trustme.CA, names: tuple[str, ...], directory: Path, stem: str
) -> CertFiles:
    """Issue a certificate for `names` (DNS names or IP addresses) and write it to files.

    Writes `directory/STEM.crt` (leaf and chain) and `directory/STEM.key` (mode 0600).
    """
    if not names:
        raise ValueError("a server certificate needs at least one name")
    directory.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(*names)
    files = CertFiles(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
    files.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    _write_key(files.key, leaf.private_key_pem.bytes())
    return files


def self_signed_cert(name: str, directory: Path, stem: str) -> CertFiles:
    """Write a self-signed certificate for the single DNS name `name` (no CA vouches for it)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    files = CertFiles(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(
        files.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return files


def mismatched_cert(ca: trustme.CA, name: str, directory: Path, stem: str) -> CertFiles:
    """Write a CA-issued certificate for `name` together with the key of a *different* certificate.

    A TLS server given these files cannot complete a handshake; Postfix still advertises STARTTLS
    and then answers `454 4.7.0 TLS not available due to local problem`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    shown = ca.issue_cert(name)
    other = ca.issue_cert(name)
    files = CertFiles(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
    files.cert.write_bytes(b"".join(blob.bytes() for blob in shown.cert_chain_pems))
    _write_key(files.key, other.private_key_pem.bytes())
    return files
