from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sigillo.store.crypto import Keyring, KeyringError, KeySet, Sealed, update_key_file


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


# -- the key file: format, atomic replacement, following a rotation ---------------------


def _v1_file(path: Path) -> dict[str, bytes]:
    keys = {"a1b2c3d4": os.urandom(32), "0badcafe": os.urandom(32)}
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "active": "a1b2c3d4",
                "keys": {k: base64.b64encode(v).decode() for k, v in keys.items()},
            }
        )
    )
    os.chmod(path, 0o600)
    return keys


def test_reads_version_1_and_writes_version_2(tmp_path: Path) -> None:
    path = tmp_path / "sigillo.keys"
    keys = _v1_file(path)
    ring = Keyring.load(path)
    assert ring.active == "a1b2c3d4" and dict(ring.keyset.keys) == keys
    # Version-1 keys have no recorded activation: they count as replaced long ago.
    assert ring.keyset.activated == {} and ring.keyset.replaced_at("0badcafe") is None

    now = datetime(2030, 1, 1, tzinfo=UTC)
    new = update_key_file(path, lambda current: current.with_new_active(now))
    data = json.loads(path.read_text())
    assert data["version"] == 2 and data["active"] == new.active
    assert data["activated"] == {new.active: "2030-01-01T00:00:00.000000+00:00"}
    # The members a version-1 reader looks at keep their shape.
    assert {k: base64.b64decode(v) for k, v in data["keys"].items()} == dict(new.keys)
    assert new.replaced_at("a1b2c3d4") == now and new.replaced_at("0badcafe") == now


def test_refuses_a_newer_key_file_version(tmp_path: Path) -> None:
    path = tmp_path / "sigillo.keys"
    Keyring.load_or_create(path)
    data = json.loads(path.read_text())
    data["version"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(KeyringError, match="version 3 is newer"):
        Keyring.load(path)


def test_key_file_replaced_atomically_and_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sigillo.keys"
    Keyring.load_or_create(path)
    replaced: list[tuple[Path, int, bytes]] = []
    real_rename = os.rename

    def rename(src: str | Path, dst: str | Path) -> None:
        src = Path(src)
        replaced.append((src, stat.S_IMODE(src.stat().st_mode), src.read_bytes()))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    new = update_key_file(path, lambda current: current.with_new_active(datetime.now(UTC)))
    [(tmp, mode, content)] = replaced
    # A complete private file in the same directory (same file system) is renamed over it.
    assert tmp.parent == path.parent and mode == 0o600
    assert content == path.read_bytes() and json.loads(content)["active"] == new.active
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sigillo.keys", "sigillo.keys.lock"]


def test_failed_update_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sigillo.keys"
    Keyring.load_or_create(path)
    before = path.read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        update_key_file(path, lambda current: current.with_new_active(datetime.now(UTC)))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sigillo.keys", "sigillo.keys.lock"]


def test_concurrent_updates_keep_each_others_keys(tmp_path: Path) -> None:
    """Two updates at once (two rotations): the second reads the file after the first
    wrote it, so no key made by either is lost."""
    path = tmp_path / "sigillo.keys"
    Keyring.load_or_create(path)
    first_inside = threading.Event()

    def slow_add(current: KeySet) -> KeySet:
        first_inside.set()
        time.sleep(0.2)
        return current.with_new_active(datetime.now(UTC))

    def add(current: KeySet) -> KeySet:
        return current.with_new_active(datetime.now(UTC))

    first = threading.Thread(target=update_key_file, args=(path, slow_add))
    first.start()
    first_inside.wait()
    update_key_file(path, add)
    first.join()
    assert len(Keyring.load(path).keyset.keys) == 3


def test_concurrent_first_start_agrees_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "var" / "sigillo.keys"
    start = threading.Barrier(8)
    rings: list[Keyring] = []

    def open_ring() -> None:
        start.wait()
        rings.append(Keyring.load_or_create(path))

    threads = [threading.Thread(target=open_ring) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({(r.active, r.keyset.keys[r.active]) for r in rings}) == 1
    assert [p.name for p in path.parent.iterdir()] == ["sigillo.keys"]


def test_running_keyring_seals_under_a_key_made_active_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "sigillo.keys"
    serving = Keyring.load_or_create(path)
    old = serving.active
    assert serving.refresh() is False  # unchanged file: one stat, nothing read
    new = update_key_file(path, lambda current: current.with_new_active(datetime.now(UTC)))
    sealed = serving.seal("m1", b"after the rotation")
    assert sealed.kek_id == new.active != old
    assert Keyring.load(path).open("m1", *_parts(sealed)) == b"after the rotation"


def test_running_keyring_opens_rows_under_a_key_it_has_not_seen(tmp_path: Path) -> None:
    path = tmp_path / "sigillo.keys"
    serving = Keyring.load_or_create(path)
    update_key_file(path, lambda current: current.with_new_active(datetime.now(UTC)))
    rotator = Keyring.load(path)
    held = serving.keyset  # serving has not sealed since: it holds the old keys only
    assert rotator.active not in held.keys
    content = Keyring(held).seal("m1", b"secret")
    kek_id, wrapped = rotator.rewrap("m1", content.kek_id, content.wrapped_key)
    assert kek_id == rotator.active
    assert serving.open("m1", kek_id, wrapped, content.content) == b"secret"


def test_a_key_id_names_one_key_for_ever(tmp_path: Path) -> None:
    path = tmp_path / "sigillo.keys"
    serving = Keyring.load_or_create(path)
    swapped = KeySet({serving.active: os.urandom(32)}, serving.active, {})
    path.unlink()
    path.write_bytes(swapped.to_json())
    os.chmod(path, 0o600)
    with pytest.raises(KeyringError, match="other bytes"):
        serving.seal("m1", b"x")


def test_derived_secrets_follow_the_active_key(tmp_path: Path) -> None:
    path = tmp_path / "sigillo.keys"
    serving = Keyring.load_or_create(path)
    before = serving.derive("forms")
    assert serving.derive_all("forms") == (before,)
    assert serving.derive("other purpose") != before
    update_key_file(path, lambda current: current.with_new_active(datetime.now(UTC)))
    after = serving.derive("forms")
    assert after != before and serving.derive_all("forms") == (after, before)


def _parts(sealed: Sealed) -> tuple[str, bytes, bytes]:
    return sealed.kek_id, sealed.wrapped_key, sealed.content
