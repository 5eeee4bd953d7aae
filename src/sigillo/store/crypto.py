"""Envelope encryption of content at rest.

Each message gets a fresh 256-bit data key; content is sealed with AES-256-GCM under it and the
data key is wrapped (AES-256-GCM again) by a key-encryption key (KEK) from a 0600 key file. Both
seals bind the message id as associated data, so a ciphertext moved to another row fails to open.
Destroying a wrapped data key destroys the message (crypto-shredding).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE = 12
_KEY_FILE_VERSION = 1


class KeyringError(Exception):
    """The key file is missing, unreadable, too permissive, or does not open a message."""


@dataclass(frozen=True)
class Sealed:
    kek_id: str
    wrapped_key: bytes
    content: bytes


class Keyring:
    """The key-encryption keys: one active for new messages, older ones kept to open old data."""

    def __init__(self, keys: dict[str, bytes], active: str) -> None:
        if active not in keys:
            raise KeyringError(f"active key {active!r} is not in the key file")
        self._keys = keys
        self.active = active

    @classmethod
    def load_or_create(cls, path: Path) -> Keyring:
        """Open the key file, creating it (0600, in a 0700 directory) on first run."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            kek_id = secrets.token_hex(4)
            ring = cls({kek_id: AESGCM.generate_key(bit_length=256)}, kek_id)
            ring._write_new(path)
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> Keyring:
        try:
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyringError(
                    f"key file {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
                    "run: chmod 600 " + str(path)
                )
            data = json.loads(path.read_text())
            keys = {k: base64.b64decode(v) for k, v in data["keys"].items()}
            active = data["active"]
        except KeyringError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"cannot read key file {path}: {exc}") from None
        if any(len(k) != 32 for k in keys.values()):
            raise KeyringError(f"key file {path} holds a key that is not 256 bits")
        return cls(keys, active)

    def _write_new(self, path: Path) -> None:
        payload = json.dumps(
            {
                "version": _KEY_FILE_VERSION,
                "active": self.active,
                "keys": {k: base64.b64encode(v).decode() for k, v in self._keys.items()},
            }
        ).encode()
        # O_EXCL: two processes starting at once must not each write a different key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)

    def seal(self, message_id: str, plaintext: bytes) -> Sealed:
        data_key = AESGCM.generate_key(bit_length=256)
        aad = message_id.encode()
        content_nonce = os.urandom(_NONCE)
        content = content_nonce + AESGCM(data_key).encrypt(content_nonce, plaintext, aad)
        return Sealed(self.active, self._wrap(self.active, message_id, data_key), content)

    def open(self, message_id: str, kek_id: str, wrapped_key: bytes, content: bytes) -> bytes:
        aad = message_id.encode()
        data_key = self._unwrap(kek_id, message_id, wrapped_key)
        try:
            return AESGCM(data_key).decrypt(content[:_NONCE], content[_NONCE:], aad)
        except InvalidTag:
            raise KeyringError(f"content of message {message_id} fails authentication") from None

    def derive(self, purpose: str) -> bytes:
        """A 256-bit secret for ``purpose`` (e.g. signing portal form tokens), the same in every
        process that shares the key file. It follows the active key: rotating the KEK also
        renews every derived secret."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode())
        return hkdf.derive(self._keys[self.active])

    def _wrap(self, kek_id: str, message_id: str, data_key: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        aad = b"sigillo-data-key:" + message_id.encode()
        return nonce + AESGCM(self._keys[kek_id]).encrypt(nonce, data_key, aad)

    def _unwrap(self, kek_id: str, message_id: str, wrapped: bytes) -> bytes:
        kek = self._keys.get(kek_id)
        if kek is None:
            raise KeyringError(f"message {message_id} needs key {kek_id!r}, not in the key file")
        aad = b"sigillo-data-key:" + message_id.encode()
        try:
            return AESGCM(kek).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], aad)
        except InvalidTag:
            raise KeyringError(f"data key of message {message_id} fails authentication") from None
