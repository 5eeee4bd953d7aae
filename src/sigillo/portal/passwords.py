"""Portal passwords: the rules for choosing one, and how it is stored.

The rules follow NIST SP 800-63B and OWASP ASVS: length is what makes a password hard to
guess, so sigillo asks for at least 12 characters, imposes no composition rules (they push
people towards predictable patterns), and refuses only what an attacker would try first:
well-known passwords and the person's own email address.

Storage is argon2id with at least the parameters of the OWASP Password Storage Cheat Sheet.
"""

from __future__ import annotations

import enum
import functools
import gzip
import secrets
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import argon2
from argon2.exceptions import VerificationError

MIN_LENGTH = 12
MAX_LENGTH = 128

# NFKC never shrinks text by more than a factor of four: no code point has a canonical
# decomposition longer than four code points, so composition merges at most four into one.
# Every password check_new_password() accepts is therefore at most this long as typed, and
# anything longer reaching the hasher came through some other path and is refused there.
_HASH_INPUT_LIMIT = 4 * MAX_LENGTH

_LIST_PACKAGE = "sigillo.portal"
_LIST_RESOURCE = "data/common-passwords.txt.gz"


class Problem(enum.StrEnum):
    """Why a new password was refused.

    The values are stable codes, not text: the portal maps them to translated messages.
    """

    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    COMMON = "common"
    CONTAINS_ADDRESS = "contains_address"
    MISMATCH = "mismatch"


def normalise(password: str) -> str:
    """Apply NFKC (NIST SP 800-63B 5.1.1.2).

    The same password typed on another keyboard or operating system may arrive composed,
    decomposed or in fullwidth form; normalising both when setting and when verifying lets
    all of those log in. Nothing else is changed: spaces are legitimate password characters.
    """
    return unicodedata.normalize("NFKC", password)


@functools.cache
def common_passwords() -> frozenset[str]:
    """The packaged list of common passwords (NFKC, casefolded), loaded on first use."""
    packed = resources.files(_LIST_PACKAGE).joinpath(_LIST_RESOURCE).read_bytes()
    lines = gzip.decompress(packed).decode("utf-8").splitlines()
    return frozenset(line for line in lines if line)


def _fold(text: str) -> str:
    # Case does not make a password safer: guessing tools try every capitalisation.
    return normalise(text).casefold()


def check_new_password(password: str, confirm: str, address: str) -> list[Problem]:
    """Every reason to refuse `password` for `address`, in Problem order; [] means acceptable.

    All problems are reported at once so the person can fix them in one go.
    """
    normal = normalise(password)
    problems: list[Problem] = []
    # Code points, not bytes: a password in any script gets the same allowance.
    if len(normal) < MIN_LENGTH:
        problems.append(Problem.TOO_SHORT)
    if len(normal) > MAX_LENGTH:
        problems.append(Problem.TOO_LONG)

    folded = _fold(password)
    listed = common_passwords()
    # Padding a listed password with spaces would otherwise slip it past the list.
    if folded in listed or folded.strip() in listed:
        problems.append(Problem.COMMON)

    if _contains_address(folded, address):
        problems.append(Problem.CONTAINS_ADDRESS)

    # Compared after normalisation because that is what is stored and later verified:
    # two spellings that normalise alike are the same password.
    if normal != normalise(confirm):
        problems.append(Problem.MISMATCH)
    return problems


def _contains_address(folded_password: str, address: str) -> bool:
    # The address is the first thing someone who knows the person would try; the local part
    # on its own too, unless it is so short ("jo", "it") that it is an ordinary substring.
    full = _fold(address)
    local = full.rpartition("@")[0]
    if full and full in folded_password:
        return True
    return len(local) >= 4 and local in folded_password


@dataclass(frozen=True)
class HashParams:
    """argon2id cost parameters; the defaults are the OWASP minimum (19 MiB, t=2, p=1).

    Tests pass cheaper values explicitly; there is deliberately no switch that lowers the
    defaults in a running installation.
    """

    time_cost: int = 2
    memory_cost: int = 19456  # KiB
    parallelism: int = 1


class PasswordHasher:
    """Hashes and verifies portal passwords with argon2id."""

    def __init__(self, params: HashParams = HashParams()) -> None:
        self.params = params
        self._hasher = argon2.PasswordHasher(
            time_cost=params.time_cost,
            memory_cost=params.memory_cost,
            parallelism=params.parallelism,
            # Pinned rather than inherited so that needs_rehash() does not change its
            # answer when argon2-cffi changes its defaults.
            hash_len=32,
            salt_len=16,
            type=argon2.Type.ID,
        )
        # A hash of a secret nobody knows, for burn(). Made here with the same parameters so
        # that verifying against it costs what verifying a real account's hash costs.
        self._decoy = self._hasher.hash(secrets.token_bytes(32))

    def hash(self, password: str) -> str:
        """The encoded argon2id hash (parameters and salt included) of normalise(password).

        Raises ValueError for input longer than any acceptable password, and for text that
        cannot be encoded as UTF-8 (lone surrogates).
        """
        return self._hasher.hash(_prepare(password))

    def verify(self, encoded: str, password: str) -> bool:
        """Whether `password` matches `encoded`.

        False, never an exception, for a wrong password, an over-long or unencodable
        password, or a malformed hash: to the caller every one of them is a failed login.
        """
        try:
            return self._hasher.verify(encoded, _prepare(password))
        except (VerificationError, ValueError):
            # VerificationError covers mismatches and undecodable hashes; ValueError covers
            # argon2's InvalidHashError and the UnicodeEncodeError of non-ASCII hash text.
            return False

    def needs_rehash(self, encoded: str) -> bool:
        """Whether `encoded` was made with parameters other than this hasher's.

        A malformed hash also answers True: whatever it is, it should be replaced.
        """
        try:
            return self._hasher.check_needs_rehash(encoded)
        except ValueError:
            return True

    def burn(self, password: str) -> None:
        """Spend the time verify() would, for a login attempt at an unknown address.

        Without this, answering faster for addresses that have no account would tell an
        attacker which addresses do. The password goes through the same path as in verify().
        """
        self.verify(self._decoy, password)


def _prepare(password: str) -> bytes:
    # Checked before normalising as well as after: NFKC itself costs time on huge input,
    # and can expand text (one code point becomes up to 18).
    if len(password) > _HASH_INPUT_LIMIT:
        raise ValueError("password too long to hash")
    normal = normalise(password)
    if len(normal) > _HASH_INPUT_LIMIT:
        raise ValueError("password too long to hash")
    return normal.encode("utf-8")


def problem_messages(gettext: Callable[[str], str], problems: list[Problem]) -> list[str]:
    """The verdicts in the reader's language; the portal and the staff console share the
    rules and their wording (both catalogues translate these strings)."""
    _ = gettext
    text = {
        Problem.TOO_SHORT: _("The password must have at least 12 characters."),
        Problem.TOO_LONG: _("The password must have at most 128 characters."),
        Problem.COMMON: _(
            "This password is among the most commonly used ones, which attackers try first. "
            "Please choose another."
        ),
        Problem.CONTAINS_ADDRESS: _("The password must not contain your email address."),
        Problem.MISMATCH: _("The two passwords are not the same."),
    }
    return [text[p] for p in problems]
