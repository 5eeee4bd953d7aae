"""Envelope encryption of content at rest.

Each message gets a fresh 256-bit data key; content is sealed with AES-256-GCM under it and the
data key is wrapped (AES-256-GCM again) by a key-encryption key (KEK) from a 0600 key file. Both
seals bind the message id as associated data, so a ciphertext moved to another row fails to open.
Destroying a wrapped data key destroys the message (crypto-shredding).

The key file changes only by replacement: a complete 0600 temporary file in the same directory,
fsynced, renamed over the old one, the directory fsynced. A reader (or a crash) sees the old
file or the new one, never a mix. Changes are made under an exclusive lock on a sibling
``.lock`` file, re-reading the file inside it, so two concurrent ``sigillo keys rotate`` never
lose each other's keys. A key id names one key for ever: a re-read file that gives an id other
bytes is refused.

Running processes follow rotations: ``seal()`` costs one ``os.stat`` of the key file (device,
inode, size, mtime, ctime) and re-reads it when that changed, so new content goes under the key
made active a moment ago; ``open()`` of a key id not held re-reads it too, so rows re-wrapped by
a rotation keep opening. Every process using one database must share one key file.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hmac
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE = 12
_KEY_FILE_VERSION = 2
"""1: keys and the active id. 2: adds ``activated`` (when each key became active); version-1
readers still open it, as they ignore the new member."""
_READABLE_VERSIONS = frozenset({1, 2})

_Stamp = tuple[int, int, int, int, int]


class KeyringError(Exception):
    """The key file is missing, unreadable, too permissive, or does not open a message."""


@dataclass(frozen=True)
class Sealed:
    kek_id: str
    wrapped_key: bytes
    content: bytes


@dataclass(frozen=True)
class KeySet:
    """What the key file holds: the keys, the active one, and when each became active."""

    keys: Mapping[str, bytes]
    active: str
    activated: Mapping[str, datetime]
    """Missing for keys read from a version-1 file, which predate rotation."""

    def __post_init__(self) -> None:
        if self.active not in self.keys:
            raise KeyringError(f"active key {self.active!r} is not in the key file")
        if any(len(k) != 32 for k in self.keys.values()):
            raise KeyringError("the key file holds a key that is not 256 bits")

    @property
    def older(self) -> tuple[str, ...]:
        """The keys kept only to open what was sealed before the active one."""
        return tuple(sorted(k for k in self.keys if k != self.active))

    def replaced_at(self, kek_id: str) -> datetime | None:
        """When ``kek_id`` stopped being the active key: the activation of the first key made
        active after it. None when unknown (version-1 keys), which means long ago: every
        running process has read the file since."""
        since = self.activated.get(kek_id)
        later = [
            when
            for other, when in self.activated.items()
            if other != kek_id and (since is None or when > since)
        ]
        return min(later, default=None)

    def with_new_active(self, now: datetime) -> KeySet:
        kek_id = secrets.token_hex(8)
        while kek_id in self.keys:
            kek_id = secrets.token_hex(8)
        return KeySet(
            {**self.keys, kek_id: AESGCM.generate_key(bit_length=256)},
            kek_id,
            {**self.activated, kek_id: now},
        )

    def without(self, kek_ids: frozenset[str]) -> KeySet:
        if self.active in kek_ids:
            raise KeyringError(f"refusing to remove the active key {self.active!r}")
        return KeySet(
            {k: v for k, v in self.keys.items() if k not in kek_ids},
            self.active,
            {k: v for k, v in self.activated.items() if k not in kek_ids},
        )

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "version": _KEY_FILE_VERSION,
                "active": self.active,
                "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()},
                "activated": {
                    k: v.astimezone(UTC).isoformat(timespec="microseconds")
                    for k, v in self.activated.items()
                },
            },
            indent=2,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> KeySet:
        data = json.loads(raw)
        version = data.get("version", 1)
        if version not in _READABLE_VERSIONS:
            raise ValueError(f"version {version} is newer than this sigillo reads")
        keys = {str(k): base64.b64decode(v, validate=True) for k, v in data["keys"].items()}
        activated = {
            str(k): datetime.fromisoformat(v).astimezone(UTC)
            for k, v in data.get("activated", {}).items()
            if k in keys
        }
        return cls(keys, str(data["active"]), activated)


@dataclass(frozen=True)
class _Loaded:
    """The keys a Keyring holds and the file state they came from, swapped as one reference
    so that a thread never sees the keys of one file and the stamp of another."""

    keyset: KeySet
    stamp: _Stamp | None
    derived: dict[str, tuple[bytes, ...]] = field(default_factory=dict, compare=False)
    """``derive_all`` results by purpose: form tokens are made and checked on every page, and
    this cache goes with the keys it came from when the file is re-read."""


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_key_file(path: Path) -> tuple[KeySet, _Stamp]:
    """The key file's content and its stamp, both from one open file (a rename between a
    stat and a read cannot pair one file's stamp with another's keys)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise KeyringError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyringError(
                f"key file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                "run: chmod 600 " + str(path)
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read()
    finally:
        os.close(fd)
    try:
        return KeySet.from_json(raw), _stamp(st)
    except KeyringError as exc:
        raise KeyringError(f"key file {path}: {exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyringError(f"cannot read key file {path}: {exc}") from None


def _write_temp(path: Path, payload: bytes) -> Path:
    """A complete, fsynced 0600 copy of ``payload`` beside ``path``, under a fresh name."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(path: Path, payload: bytes) -> None:
    """Publish a first key file unless one exists: link() of a complete file fails when the
    name is taken, so two processes starting at once agree on one key, and neither ever
    reads a half-written file."""
    tmp = _write_temp(path, payload)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _replace(path: Path, payload: bytes) -> None:
    tmp = _write_temp(path, payload)
    try:
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive lock for a read-modify-write of the key file. The lock file stays (removing
    it would let two processes lock different files); the kernel releases the lock when its
    holder dies, even by SIGKILL."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update_key_file(path: Path, change: Callable[[KeySet], KeySet]) -> KeySet:
    """Apply ``change`` to the key file as it is now, atomically; return the new content.

    ``change`` runs under the lock, on a fresh read, and may return its argument to leave the
    file as it is. A failure at any point leaves the previous file whole.
    """
    read_key_file(path)  # a missing or loose key file fails before a lock file is made
    with _locked(path):
        current, _ = read_key_file(path)
        new = change(current)
        if new != current:
            _replace(path, new.to_json())
        return new


class Keyring:
    """The key-encryption keys: one active for new messages, older ones kept to open old data.

    A keyring loaded from a file follows that file (see the module notes); one built from a
    ``KeySet`` alone never changes."""

    def __init__(self, keyset: KeySet, path: Path | None = None, stamp: _Stamp | None = None):
        self._path = path
        self._loaded = _Loaded(keyset, stamp)

    @classmethod
    def load_or_create(cls, path: Path) -> Keyring:
        """Open the key file, creating it (0600, in a 0700 directory) on first run."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            kek_id = secrets.token_hex(8)
            first = KeySet(
                {kek_id: AESGCM.generate_key(bit_length=256)},
                kek_id,
                {kek_id: datetime.now(UTC)},
            )
            _create(path, first.to_json())
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> Keyring:
        keyset, stamp = read_key_file(path)
        return cls(keyset, path, stamp)

    @property
    def active(self) -> str:
        return self._loaded.keyset.active

    @property
    def keyset(self) -> KeySet:
        return self._loaded.keyset

    def refresh(self) -> bool:
        """Re-read the key file if it changed since last read; True when it did."""
        if self._path is None:
            return False
        loaded = self._loaded
        try:
            current = _stamp(os.stat(self._path))
        except OSError as exc:
            # Fail closed: sealing under a key the file may no longer hold could make the
            # message unreadable for every other process.
            raise KeyringError(f"cannot read key file {self._path}: {exc.strerror}") from None
        if current == loaded.stamp:
            return False
        keyset, stamp = read_key_file(self._path)
        for kek_id, key in keyset.keys.items():
            held = loaded.keyset.keys.get(kek_id)
            if held is not None and not hmac.compare_digest(held, key):
                raise KeyringError(
                    f"key file {self._path} gives key {kek_id!r} other bytes than before; "
                    "a key id must name one key for ever"
                )
        self._loaded = _Loaded(keyset, stamp)
        return True

    def seal(self, message_id: str, plaintext: bytes) -> Sealed:
        # The one stat per seal: cheap next to the fsync of the commit that follows, and what
        # makes a rotation reach every running process before its old key can be retired.
        self.refresh()
        keyset = self._loaded.keyset
        data_key = AESGCM.generate_key(bit_length=256)
        aad = message_id.encode()
        content_nonce = os.urandom(_NONCE)
        content = content_nonce + AESGCM(data_key).encrypt(content_nonce, plaintext, aad)
        wrapped = _wrap(keyset, keyset.active, message_id, data_key)
        return Sealed(keyset.active, wrapped, content)

    def open(self, message_id: str, kek_id: str, wrapped_key: bytes, content: bytes) -> bytes:
        aad = message_id.encode()
        data_key = self._unwrap(kek_id, message_id, wrapped_key)
        try:
            return AESGCM(data_key).decrypt(content[:_NONCE], content[_NONCE:], aad)
        except InvalidTag:
            raise KeyringError(f"content of message {message_id} fails authentication") from None

    def rewrap(self, message_id: str, kek_id: str, wrapped_key: bytes) -> tuple[str, bytes]:
        """The data key of ``message_id`` unwrapped with ``kek_id`` and wrapped again under the
        active key, which is returned with it. The content's ciphertext stays as it is."""
        keyset = self._loaded.keyset
        data_key = self._unwrap(kek_id, message_id, wrapped_key)
        return keyset.active, _wrap(keyset, keyset.active, message_id, data_key)

    def derive(self, purpose: str) -> bytes:
        """A 256-bit secret for ``purpose`` (e.g. signing form tokens), the same in every
        process that shares the key file. It follows the active key, so a rotation renews
        it; ``derive_all`` gives the secrets a verifier should still accept."""
        self.refresh()
        keyset = self._loaded.keyset
        return _derive(keyset.keys[keyset.active], purpose)

    def derive_all(self, purpose: str) -> tuple[bytes, ...]:
        """The secrets for ``purpose`` under every key in the file, the active key's first:
        sign with the first, accept any. A token signed just before a rotation then stays
        valid until its key is retired, after the rotation's grace period."""
        self.refresh()
        loaded = self._loaded
        found = loaded.derived.get(purpose)
        if found is None:
            keyset = loaded.keyset
            found = tuple(_derive(keyset.keys[k], purpose) for k in (keyset.active, *keyset.older))
            loaded.derived[purpose] = found
        return found

    def _unwrap(self, kek_id: str, message_id: str, wrapped: bytes) -> bytes:
        kek = self._loaded.keyset.keys.get(kek_id)
        if kek is None and self.refresh():
            kek = self._loaded.keyset.keys.get(kek_id)
        if kek is None:
            raise KeyringError(f"message {message_id} needs key {kek_id!r}, not in the key file")
        aad = b"sigillo-data-key:" + message_id.encode()
        try:
            return AESGCM(kek).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], aad)
        except InvalidTag:
            raise KeyringError(f"data key of message {message_id} fails authentication") from None


def _wrap(keyset: KeySet, kek_id: str, message_id: str, data_key: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    aad = b"sigillo-data-key:" + message_id.encode()
    return nonce + AESGCM(keyset.keys[kek_id]).encrypt(nonce, data_key, aad)


def _derive(key: bytes, purpose: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode())
    return hkdf.derive(key)
