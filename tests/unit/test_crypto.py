from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sigillo.store.crypto import Keyring, KeyringError


def test_key_file_created_private(tmp_path: Path) -> None:
    path = tmp_path / "var" / "sigillo.keys"
    Keyring.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Keyring.load_or_create(path)
    sealed = again.seal("m1", b"hello")
    assert (
        Keyring.load(path).open("m1", sealed.kek_id, sealed.wrapped_key, sealed.content) == b"hello"
    )


def test_refuses_key_file_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "sigillo.keys"
    Keyring.load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyringError, match="chmod 600"):
        Keyring.load(path)


def test_fresh_data_key_and_nonce_per_message(keyring: Keyring) -> None:
    a = keyring.seal("m1", b"same text")
    b = keyring.seal("m2", b"same text")
    assert a.wrapped_key != b.wrapped_key
    assert a.content != b.content
    assert b"same text" not in a.content


def test_ciphertext_bound_to_its_message_id(keyring: Keyring) -> None:
    sealed = keyring.seal("m1", b"secret")
    with pytest.raises(KeyringError):
        keyring.open("m2", sealed.kek_id, sealed.wrapped_key, sealed.content)


def test_tampering_detected(keyring: Keyring) -> None:
    sealed = keyring.seal("m1", b"secret")
    flipped = bytearray(sealed.content)
    flipped[-1] ^= 1
    with pytest.raises(KeyringError):
        keyring.open("m1", sealed.kek_id, sealed.wrapped_key, bytes(flipped))


def test_unknown_key_id(keyring: Keyring) -> None:
    sealed = keyring.seal("m1", b"secret")
    with pytest.raises(KeyringError, match="not in the key file"):
        keyring.open("m1", "deadbeef", sealed.wrapped_key, sealed.content)
