from __future__ import annotations

import gzip
import unicodedata
from importlib import resources
from typing import Any

import argon2
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sigillo.portal.passwords import (
    MAX_LENGTH,
    MIN_LENGTH,
    HashParams,
    PasswordHasher,
    Problem,
    check_new_password,
    common_passwords,
    normalise,
)

ADDRESS = "maria.rossi@example.org"
PASSPHRASE = "correct horse battery staple"

# Cheapest parameters argon2 accepts (m >= 8 * p): for tests only, always passed explicitly.
CHEAP = HashParams(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
def hasher() -> PasswordHasher:
    return PasswordHasher(CHEAP)


def check(password: str, confirm: str | None = None, address: str = ADDRESS) -> list[Problem]:
    return check_new_password(password, password if confirm is None else confirm, address)


def filler(n: int) -> str:
    """n code points of text that is neither listed nor related to ADDRESS."""
    return ("zebra lantern quietly 7 " * 8)[:n]


# --- rules ----------------------------------------------------------------------------------


def test_limits() -> None:
    assert (MIN_LENGTH, MAX_LENGTH) == (12, 128)


def test_problem_codes_are_stable() -> None:
    assert [p.value for p in Problem] == [
        "too_short",
        "too_long",
        "common",
        "contains_address",
        "mismatch",
    ]


def test_good_passphrase_passes() -> None:
    assert check(PASSPHRASE) == []


@pytest.mark.parametrize(
    ("length", "expected"),
    [(11, [Problem.TOO_SHORT]), (12, []), (128, []), (129, [Problem.TOO_LONG])],
)
def test_length_boundaries(length: int, expected: list[Problem]) -> None:
    assert check(filler(length)) == expected


@pytest.mark.parametrize("char", ["ü", "水", "🔒"])  # 2, 3 and 4 bytes in UTF-8
@pytest.mark.parametrize(
    ("length", "expected"),
    [(11, [Problem.TOO_SHORT]), (12, []), (128, []), (129, [Problem.TOO_LONG])],
)
def test_length_counts_code_points_not_bytes(
    char: str, length: int, expected: list[Problem]
) -> None:
    assert check(char * length) == expected


def test_length_counted_after_normalisation() -> None:
    # "e" + COMBINING ACUTE composes to one "é": two code points typed, one counted.
    decomposed = "e\u0301"
    assert check(decomposed * 11) == [Problem.TOO_SHORT]  # 22 typed
    assert check(decomposed * 12) == []
    assert check(decomposed * 128) == []  # 256 typed
    assert check(decomposed * 129) == [Problem.TOO_LONG]
    # The LATIN SMALL LIGATURE FI expands to "fi": six typed, twelve counted.
    assert check("\ufb01" * 6) == []
    assert check("\ufb01" * 65) == [Problem.TOO_LONG]


def test_fullwidth_letters_normalise_to_ascii() -> None:
    assert normalise("ｓｉｇｉｌｌｏ１２") == "sigillo12"
    assert check("ｚｅｂｒａ ｌａｎｔｅｒｎ") == []


def test_normalise_only_applies_nfkc() -> None:
    assert normalise("  Spaces Stay  ") == "  Spaces Stay  "


def test_list_has_enough_entries() -> None:
    assert len(common_passwords()) >= 10_000


def test_list_is_loaded_once() -> None:
    assert common_passwords() is common_passwords()


def test_list_file_is_normalised_sorted_and_unique() -> None:
    packed = resources.files("sigillo.portal").joinpath("data/common-passwords.txt.gz")
    lines = gzip.decompress(packed.read_bytes()).decode("utf-8").split("\n")
    assert lines[-1] == ""  # newline-terminated
    entries = lines[:-1]
    assert entries == sorted(set(entries))
    for entry in entries:
        assert entry
        assert entry == unicodedata.normalize("NFKC", entry).casefold().strip()


@pytest.mark.parametrize("password", ["password1234", "PassWord1234", "qWERTY123456"])
def test_common_password_refused_in_any_case(password: str) -> None:
    assert password.casefold() in common_passwords()
    assert check(password) == [Problem.COMMON]


def test_common_password_refused_in_fullwidth() -> None:
    assert check("ＰＡＳＳＷＯＲＤ１２３４") == [Problem.COMMON]


@pytest.mark.parametrize("password", ["  qwerty123456  ", "\tpassword1234\n", " christopher1"])
def test_common_password_refused_with_surrounding_whitespace(password: str) -> None:
    assert check(password) == [Problem.COMMON]


def test_listed_phrase_with_inner_spaces_refused() -> None:
    assert check("Friend of Emily") == [Problem.COMMON]


def test_common_check_does_not_match_substrings() -> None:
    # Containing a listed word is fine; being one is not.
    assert check("password1234 is not my password") == []


@pytest.mark.parametrize(
    "password",
    [
        "my Maria.Rossi@Example.ORG key",
        "ｍａｒｉａ．ｒｏｓｓｉ＠ｅｘａｍｐｌｅ．ｏｒｇ",
        "MARIA.ROSSI forever and ever",
        "xx-maria.rossi-xx-2024",
    ],
)
def test_address_or_local_part_refused(password: str) -> None:
    assert check(password) == [Problem.CONTAINS_ADDRESS]


def test_local_part_of_four_characters_applies() -> None:
    assert check("anna likes long walks", address="anna@example.org") == [Problem.CONTAINS_ADDRESS]


@pytest.mark.parametrize("address", ["ann@example.org", "jo@example.org"])
def test_short_local_part_not_applied(address: str) -> None:
    local = address.split("@")[0]
    assert check(f"{local} likes long walks", address=address) == []


def test_short_local_part_still_refused_as_full_address() -> None:
    assert check("write to jo@example.org please", address="jo@example.org") == [
        Problem.CONTAINS_ADDRESS
    ]


def test_empty_address_matches_nothing() -> None:
    assert check(PASSPHRASE, address="") == []


def test_mismatch() -> None:
    assert check(PASSPHRASE, confirm=PASSPHRASE + ".") == [Problem.MISMATCH]
    assert check(PASSPHRASE, confirm=PASSPHRASE.upper()) == [Problem.MISMATCH]


def test_confirm_compared_after_normalisation() -> None:
    # Both spellings normalise, hash and verify alike, so they are the same password.
    composed = "café au lait, s'il vous plaît"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    assert check(composed, confirm=decomposed) == []


def test_every_problem_reported_in_stable_order() -> None:
    assert check_new_password("qwerty", "qwerty!", "qwerty@example.org") == [
        Problem.TOO_SHORT,
        Problem.COMMON,
        Problem.CONTAINS_ADDRESS,
        Problem.MISMATCH,
    ]
    long = ADDRESS + filler(MAX_LENGTH)
    assert check_new_password(long, "", ADDRESS) == [
        Problem.TOO_LONG,
        Problem.CONTAINS_ADDRESS,
        Problem.MISMATCH,
    ]


def test_lone_surrogate_does_not_raise() -> None:
    assert check("\ud800" * 12) == []


# Every character, lone surrogates included: the check must survive whatever a form decodes to.
any_text = st.text(st.characters(exclude_categories=()))


@given(password=any_text, confirm=any_text, address=any_text)
def test_check_never_raises(password: str, confirm: str, address: str) -> None:
    problems = check_new_password(password, confirm, address)
    assert problems == sorted(set(problems), key=list(Problem).index)


@given(password=st.text(min_size=MIN_LENGTH, max_size=MAX_LENGTH))
def test_acceptable_text_is_accepted(password: str) -> None:
    # Length is counted after normalisation, which can change it.
    assume(MIN_LENGTH <= len(normalise(password)) <= MAX_LENGTH)
    folded = normalise(password).casefold()
    assume(folded not in common_passwords() and folded.strip() not in common_passwords())
    assume("maria.rossi" not in folded)
    assert check_new_password(password, password, ADDRESS) == []


# --- hashing --------------------------------------------------------------------------------


def test_round_trip(hasher: PasswordHasher) -> None:
    encoded = hasher.hash(PASSPHRASE)
    assert hasher.verify(encoded, PASSPHRASE)


def test_wrong_password(hasher: PasswordHasher) -> None:
    encoded = hasher.hash(PASSPHRASE)
    assert not hasher.verify(encoded, PASSPHRASE + " ")
    assert not hasher.verify(encoded, PASSPHRASE.upper())
    assert not hasher.verify(encoded, "")


def test_salted(hasher: PasswordHasher) -> None:
    assert hasher.hash(PASSPHRASE) != hasher.hash(PASSPHRASE)


def test_verify_normalises_like_hash(hasher: PasswordHasher) -> None:
    encoded = hasher.hash("ｚｅｂｒａ café lantern")
    assert hasher.verify(encoded, "zebra cafe\u0301 lantern")


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "not a hash",
        "$argon2id$",
        "$argon2id$v=19$m=8,t=1,p=1$$",
        "$argon2id$v=19$m=abc,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaA",
        "$2b$12$" + "a" * 53,
        "é$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaA",
    ],
)
def test_malformed_hash_is_false(hasher: PasswordHasher, encoded: str) -> None:
    assert hasher.verify(encoded, PASSPHRASE) is False


def test_truncated_hash_is_false(hasher: PasswordHasher) -> None:
    assert hasher.verify(hasher.hash(PASSPHRASE)[:-4], PASSPHRASE) is False


def test_hash_is_argon2id_with_its_params(hasher: PasswordHasher) -> None:
    encoded = hasher.hash(PASSPHRASE)
    assert encoded.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    params = argon2.extract_parameters(encoded)
    assert params.type is argon2.Type.ID
    assert (params.time_cost, params.memory_cost, params.parallelism) == (1, 8, 1)


def test_defaults_meet_owasp_minimums() -> None:
    defaults = HashParams()
    assert defaults.memory_cost >= 19456
    assert defaults.time_cost >= 2
    assert defaults.parallelism == 1
    encoded = PasswordHasher().hash(PASSPHRASE)
    assert encoded.startswith(
        f"$argon2id$v=19$m={defaults.memory_cost},t={defaults.time_cost},p=1$"
    )


def test_needs_rehash(hasher: PasswordHasher) -> None:
    weak = hasher.hash(PASSPHRASE)
    stronger = PasswordHasher(HashParams(time_cost=2, memory_cost=16, parallelism=1))
    assert stronger.needs_rehash(weak)
    assert not stronger.needs_rehash(stronger.hash(PASSPHRASE))
    assert not hasher.needs_rehash(weak)


def test_malformed_hash_needs_rehash(hasher: PasswordHasher) -> None:
    assert hasher.needs_rehash("not a hash")


def test_hasher_refuses_overlong_input(hasher: PasswordHasher) -> None:
    with pytest.raises(ValueError, match="too long"):
        hasher.hash("a" * (4 * MAX_LENGTH + 1))
    with pytest.raises(ValueError, match="too long"):
        # Refused as typed, before normalising, although it would compose to 257 code points.
        hasher.hash("e\u0301" * (2 * MAX_LENGTH + 1))
    encoded = hasher.hash(PASSPHRASE)
    assert hasher.verify(encoded, "a" * (4 * MAX_LENGTH + 1)) is False


def test_hasher_refuses_input_that_normalisation_expands(hasher: PasswordHasher) -> None:
    # U+FDFA expands to 18 code points under NFKC: 29 typed, 522 after normalisation.
    expanding = "\ufdfa" * 29
    assert check(expanding) == [Problem.TOO_LONG]
    with pytest.raises(ValueError, match="too long"):
        hasher.hash(expanding)


def test_hasher_accepts_every_acceptable_password(hasher: PasswordHasher) -> None:
    # The worst case for the hasher's limit: four typed code points per counted one.
    greek = "\u03b1\u0313\u0301\u0345"  # composes to U+1F84
    password = greek * MAX_LENGTH
    assert len(password) == 4 * MAX_LENGTH
    assert check(password) == []
    assert hasher.verify(hasher.hash(password), "\u1f84" * MAX_LENGTH)


def test_lone_surrogate_cannot_be_hashed(hasher: PasswordHasher) -> None:
    with pytest.raises(ValueError):
        hasher.hash("\ud800" * 12)
    assert hasher.verify(hasher.hash(PASSPHRASE), "\ud800" * 12) is False


def test_burn_verifies_against_a_hash_with_the_same_params(
    hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real_verify = argon2.PasswordHasher.verify

    def spy(self: argon2.PasswordHasher, encoded: Any, password: Any) -> bool:
        seen.append(encoded)
        return real_verify(self, encoded, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", spy)
    hasher.burn(PASSPHRASE)
    assert len(seen) == 1
    assert argon2.extract_parameters(seen[0]) == argon2.extract_parameters(hasher.hash(PASSPHRASE))


@pytest.mark.parametrize("password", [PASSPHRASE, "", "a" * 10_000, "\ud800"])
def test_burn_never_raises(hasher: PasswordHasher, password: str) -> None:
    hasher.burn(password)
