"""sigillo's DKIM key: every notification, DSN and account mail it sends is signed with it.

One RSA-2048 key in a PEM file (0600) beside the key-encryption keys, created on first run.
The public half is what ``sigillo dkim show`` prints for DNS and what the phishing checker
verifies sigillo's own mail against, offline.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

KEY_BITS = 2048
SIGNED_HEADERS = (
    b"From",
    b"To",
    b"Cc",
    b"Subject",
    b"Date",
    b"Message-ID",
    b"Reply-To",
    b"MIME-Version",
    b"Content-Type",
    b"Content-Transfer-Encoding",
    b"Auto-Submitted",
    b"In-Reply-To",
    b"References",
    b"TLS-Report-Domain",
    b"TLS-Report-Submitter",
)
"""Signed whether present or not: a header named in ``h=`` but absent is signed as empty, so
a copy with a Reply-To, a Cc or a second Subject added fails to verify."""
_OVERSIGNED = (b"From", b"To", b"Subject", b"Reply-To")
"""Listed once more than they can occur: a second one added after signing also breaks it."""


class DkimKeyError(Exception):
    """The key file cannot be read or is not an RSA private key; the message says which."""


@dataclass(frozen=True)
class DkimSigner:
    private_pem: bytes
    selector: str
    domain: str

    @classmethod
    def load_or_create(cls, path: Path, selector: str, domain: str) -> DkimSigner:
        """The key at ``path``, generated there first when the file does not exist."""
        if not path.exists():
            _create(path)
        return cls.load(path, selector, domain)

    @classmethod
    def load(cls, path: Path, selector: str, domain: str) -> DkimSigner:
        try:
            pem = path.read_bytes()
            key = serialization.load_pem_private_key(pem, password=None)
        except OSError as exc:
            raise DkimKeyError(f"cannot read DKIM key {path}: {exc.strerror or exc}") from None
        except (ValueError, TypeError) as exc:
            raise DkimKeyError(f"DKIM key {path} is not a PEM private key: {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise DkimKeyError(f"DKIM key {path} is not an RSA key")
        return cls(pem, selector, domain.lower())

    @property
    def dns_name(self) -> str:
        """Where the TXT record lives: ``<selector>._domainkey.<domain>``."""
        return f"{self.selector}._domainkey.{self.domain}"

    def txt_value(self) -> str:
        """The TXT record's value: ``v=DKIM1; k=rsa; p=<SubjectPublicKeyInfo, base64>``."""
        key = serialization.load_pem_private_key(self.private_pem, password=None)
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"

    def sign(self, message: bytes) -> bytes:
        """``message`` with a DKIM-Signature header prepended (relaxed/relaxed, rsa-sha256)."""
        headers = [*SIGNED_HEADERS, *_OVERSIGNED]
        signature: bytes = dkim.sign(
            message,
            self.selector.encode(),
            self.domain.encode(),
            self.private_pem,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=headers,
        )
        return signature + message


def _create(path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
        out.flush()
        os.fsync(out.fileno())
    # link() publishes the complete file or fails if another process got there first: two
    # processes starting at once never sign with different keys, nor read half a file.
    try:
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        temp.unlink()
