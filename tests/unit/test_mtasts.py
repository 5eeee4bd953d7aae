"""MTA-STS parsing (RFC 8461 sections 3.1, 3.2, 4.1): TXT records, policies, MX patterns."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sigillo.gateway.mtasts import (
    FetchError,
    PolicyError,
    StsPolicy,
    StsTxt,
    parse_policy,
    parse_txt,
)

POLICY = (
    "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
    "max_age: 86400\r\n"
)


# --- TXT --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "policy_id"),
    [
        ("v=STSv1; id=20160831085700Z;", "20160831085700Z"),
        ("v=STSv1;id=abc", "abc"),
        ("v=STSv1 ;\tid=abc ; ", "abc"),
        ("v=STSv1; id=abc; ext_1=some:value", "abc"),  # extensions ignored
        ("v=STSv1; ext.2=x; id=" + "a" * 32, "a" * 32),
    ],
)
def test_txt_valid(record: str, policy_id: str) -> None:
    assert parse_txt([record]) == StsTxt(policy_id)


def test_txt_other_records_are_ignored() -> None:
    records = ["v=spf1 -all", "v=STSv10; id=zzz", "google-site-verification=x", "v=STSv1; id=1"]
    assert parse_txt(records) == StsTxt("1")
    assert parse_txt(["v=spf1 -all", "v=STSv10; id=zzz"]) is None
    assert parse_txt([]) is None


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ("v=STSv1", "no id"),
        ("v=STSv1;", "no id"),
        ("v=STSv1; ext=1", "no id"),
        ("v=STSv1; id=", "malformed field"),
        ("v=STSv1; id=" + "a" * 33, "1 to 32"),
        ("v=STSv1; id=abc-def", "1 to 32"),
        ("v=STSv1; id=1; id=2", "several ids"),
        ("v=STSv1; id = 1", "malformed field"),
        ("v=STSv1;; id=1", "malformed field"),
        ("v=STSv1; id=1;;", "malformed field"),
        ("v=STSv1; id=1; bad", "malformed field"),
        ("v=STSv1; id=1; x=a b", "malformed field"),
        ("v=STSv1; id=\ufffd1", "malformed field"),
    ],
)
def test_txt_malformed_is_an_error_value(record: str, problem: str) -> None:
    result = parse_txt([record])
    assert isinstance(result, PolicyError)
    assert problem in str(result)


def test_txt_several_records_are_an_error_even_if_identical() -> None:
    # RFC 8461 section 3.1: several STSv1 records mean the domain has no usable record.
    result = parse_txt(["v=STSv1; id=1", "v=STSv1; id=1"])
    assert isinstance(result, PolicyError)
    assert "2 STSv1 TXT records" in str(result)


def test_txt_version_is_case_sensitive() -> None:
    assert parse_txt(["v=stsv1; id=1"]) is None


@given(st.lists(st.text(max_size=80), max_size=4))
def test_txt_never_raises(records: list[str]) -> None:
    result = parse_txt(records)
    assert result is None or isinstance(result, StsTxt | PolicyError)


# --- policy -----------------------------------------------------------------------------------


def test_policy_valid() -> None:
    policy = parse_policy(POLICY)
    assert policy.mode == "enforce"
    assert policy.mx == ("mail.example.com", "*.example.net")
    assert policy.max_age == 86400
    assert policy.text == POLICY


def test_policy_lf_lines_unknown_keys_case_and_spacing() -> None:
    text = "version: STSv1\nmode:testing\nfoo_bar: anything at all\nMX: ignored.example\n"
    text += "mx: Mail.Example.COM.\t\nmax_age:   0\n\n"
    policy = parse_policy(text)
    assert policy.mode == "testing"
    assert policy.mx == ("mail.example.com",)  # "MX" is an unknown key: keys are exact
    assert policy.max_age == 0


def test_policy_mode_none_needs_no_mx() -> None:
    policy = parse_policy("version: STSv1\nmode: none\nmax_age: 1296000\n")
    assert policy.mode == "none" and policy.mx == ()


def test_policy_max_age_upper_bound() -> None:
    assert parse_policy(POLICY.replace("86400", "31557600")).max_age == 31557600
    with pytest.raises(PolicyError, match="max_age must be 0 to 31557600"):
        parse_policy(POLICY.replace("86400", "31557601"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("\n\n", "empty"),
        ("mode: enforce\nversion: STSv1\nmx: a.example\nmax_age: 1\n", "start with 'version"),
        ("version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", "start with 'version"),
        ("version: STSv1\nmx: a.example\nmax_age: 1\n", "no mode"),
        ("version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n", "mode must be"),
        ("version: STSv1\nmode: enforce\nmode: none\nmx: a\nmax_age: 1\n", "line 3: mode given"),
        ("version: STSv1\nmode: enforce\nmx: a.example\n", "no max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", "max_age must be"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1e5\n", "max_age must be"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmax_age: 1\n", "needs at least one mx"),
        ("version: STSv1\nmode: testing\nmax_age: 1\n", "needs at least one mx"),
        ("version: STSv1\nmode: enforce\nmx: *\nmax_age: 1\n", "line 3: mx"),
        ("version: STSv1\nmode: enforce\nmx: a.*.example\nmax_age: 1\n", "line 3: mx"),
        ("version: STSv1\nmode: enforce\nmx: **.example\nmax_age: 1\n", "line 3: mx"),
        ("version: STSv1\nmode: enforce\nmx: a_b.example\nmax_age: 1\n", "line 3: mx"),
        ("version: STSv1\nmode: enforce\nmx: -a.example\nmax_age: 1\n", "line 3: mx"),
        ("version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n", "line 3: mx"),
        ("version: STSv1\nmode: enforce\nmx: mail.exämple\nmax_age: 1\n", "line 3: mx"),
        ("version: STSv1\nmode: enforce\nmx a.example\nmax_age: 1\n", "line 3: not 'key"),
        ("version: STSv1\nmode : enforce\nmx: a.example\nmax_age: 1\n", "line 2: not 'key"),
        ("version: STSv1\nmode:\nmx: a.example\nmax_age: 1\n", "line 2: mode has no value"),
        ("version: STSv1\nmode: enforce\nx: a\x00b\nmx: a\nmax_age: 1\n", "line 3: control"),
        ("<html><body>Not found</body></html>", "not 'key: value'"),
    ],
)
def test_policy_malformed(text: str, problem: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert problem in str(info.value)


@given(st.text(max_size=300))
def test_policy_parser_raises_only_policy_error(text: str) -> None:
    try:
        policy = parse_policy(text)
    except PolicyError:
        return
    assert policy.mode in ("enforce", "testing", "none")
    assert 0 <= policy.max_age <= 31557600


# --- MX matching (section 4.1) -----------------------------------------------------------------


def policy(*mx: str) -> StsPolicy:
    return StsPolicy("enforce", mx, 86400, "")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("mail.example.com", True),
        ("MAIL.Example.com.", True),
        ("mx1.example.net", True),
        ("example.net", False),  # "*." needs one label in front
        ("a.mx1.example.net", False),  # ... and exactly one
        ("mx1example.net", False),
        ("xmail.example.com", False),
        ("mail.example.com.evil", False),
        (".example.net", False),
        ("", False),
    ],
)
def test_mx_matching(host: str, expected: bool) -> None:
    assert policy("mail.example.com", "*.example.net").matches(host) is expected


def test_wildcard_only_through_parse() -> None:
    parsed = parse_policy("version: STSv1\nmode: enforce\nmx: *.Example.NET\nmax_age: 60\n")
    assert parsed.matches("mx.example.net")
    assert not parsed.matches("example.net")


def test_fetch_error_result_types() -> None:
    assert FetchError("tls", "x").result_type == "sts-webpki-invalid"
    for kind in ("dns", "timeout", "redirect", "content-type", "too-large", "http-404"):
        assert FetchError(kind, "x").result_type == "sts-policy-fetch-error"
    assert str(FetchError("redirect", "went elsewhere")) == "redirect: went elsewhere"
