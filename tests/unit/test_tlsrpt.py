"""TLS reporting (RFC 8460): counting on both backends, the ``_smtp._tls`` record, the JSON
report, the report mail, and the once-only claim of a day's report."""

from __future__ import annotations

import asyncio
import gzip
import json
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes
from email.policy import default
from functools import partial

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from sigillo.config import Settings
from sigillo.gateway import tlsrpt
from sigillo.gateway.tlsrpt import SessionResult
from sigillo.gateway.worker import signs_queued_mail
from sigillo.portal.outbox import TLS_REPORT
from sigillo.store.db import Store
from sigillo.store.models import TLSReportCount, TLSReportSent

NOW = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)
DAY = NOW.date()
STS = ("version: STSv1", "mode: enforce", "mx: mx1.example.net", "mx: *.backup.example.net",
       "max_age: 86400")  # fmt: skip
TLSA = ("3 1 1 " + "AB" * 32,)


def settings() -> Settings:
    return Settings.model_validate(
        {
            "smtp": {"hostname": "gw.org.example"},
            "tlsrpt": {"organization_name": "Org Example"},
        }
    )


def sts(
    result: str = "success", mx: str = "mx1.example.net", ip: str = "127.0.0.7"
) -> SessionResult:
    return SessionResult("example.net", "sts", STS, mx, ip, result)


async def counts(store: Store) -> list[TLSReportCount]:
    async with store.session() as session:
        rows = await session.execute(select(TLSReportCount).order_by(TLSReportCount.id))
        return list(rows.scalars().all())


# -- counting --------------------------------------------------------------------------------


async def test_count_adds_up_per_key(store: Store) -> None:
    for result in [sts(), sts(), sts("certificate-expired"), sts(), sts(mx="MX1.Example.NET.")]:
        await store.write(partial(tlsrpt.count, result=result, now=NOW))
    await store.write(lambda s: tlsrpt.count(s, sts(), NOW + timedelta(days=1)))
    rows = await counts(store)
    by_key = {(r.day, r.receiving_mx, r.result_type): r.count for r in rows}
    assert by_key == {
        ("2026-03-14", "mx1.example.net", "success"): 4,
        ("2026-03-14", "mx1.example.net", "certificate-expired"): 1,
        ("2026-03-15", "mx1.example.net", "success"): 1,
    }
    assert rows[0].policy_strings == list(STS)
    assert rows[0].policy_hash == tlsrpt.policy_hash(STS)


async def test_count_is_safe_for_concurrent_writers(store_url: str, store: Store) -> None:
    # Two stores: two connections racing for the same new key (two workers on one database).
    other = Store(store_url)
    try:
        works = [
            target.write(lambda s: tlsrpt.count(s, sts("validation-failure"), NOW))
            for _ in range(15)
            for target in (store, other)
        ]
        await asyncio.gather(*works)
    finally:
        await other.close()
    [row] = await counts(store)
    assert row.count == 30


def test_only_rfc_result_types_are_counted() -> None:
    with pytest.raises(ValueError, match="result type"):
        sts("certificate-rejected")
    with pytest.raises(ValueError, match="policy type"):
        SessionResult("example.net", "dane", (), "mx", "", "success")  # type: ignore[arg-type]
    assert "sts-webpki-invalid" in tlsrpt.RESULT_TYPES and len(tlsrpt.RESULT_TYPES) == 11


# -- discovery -------------------------------------------------------------------------------


def test_record_with_both_schemes() -> None:
    record = tlsrpt.read_record(
        [
            "v=spf1 -all",
            "v=TLSRPTv1; rua=mailto:tls%2Brpt@example.net , https://r.example.net/v1?x=1;",
        ]
    )
    assert record.rua == ("mailto:tls%2Brpt@example.net", "https://r.example.net/v1?x=1")
    assert record.problem == ""
    assert tlsrpt.mailto_address(record.rua[0]) == "tls+rpt@example.net"
    assert tlsrpt.parse_tlsrpt_txt(["v=TLSRPTv1;rua=mailto:a@example.net"]) == [
        "mailto:a@example.net"
    ]


@pytest.mark.parametrize(
    ("records", "problem"),
    [
        ([], "no v=TLSRPTv1 record"),
        (["v=TLSRPTv10; rua=mailto:a@example.net"], "no v=TLSRPTv1 record"),
        (["rua=mailto:a@example.net; v=TLSRPTv1"], "no v=TLSRPTv1 record"),
        (
            ["v=TLSRPTv1; rua=mailto:a@example.net", "v=TLSRPTv1; rua=mailto:b@example.net"],
            "2 v=TLSRPTv1 records",
        ),
        (["v=TLSRPTv1"], "no rua field"),
        (["v=TLSRPTv1; ext=1"], "no rua field"),
        (["v=TLSRPTv1; rua"], "malformed field"),
        (["v=TLSRPTv1;; rua=mailto:a@example.net"], "malformed field"),
        (["v=TLSRPTv1; rua=mailto:a@example.net; rua=mailto:b@example.net"], "more than one"),
        (["v=TLSRPTv1; rua=ftp://r.example.net/"], "neither mailto nor https"),
        (["v=TLSRPTv1; rua=http://r.example.net/"], "neither mailto nor https"),
        (["v=TLSRPTv1; rua=https://user:pw@r.example.net/"], "no user name"),
        (["v=TLSRPTv1; rua=https:///path"], "needs a host"),
        (["v=TLSRPTv1; rua=https://r.example.net:port/"], "not a valid URL"),
        (["v=TLSRPTv1; rua=mailto:a@example.net%2Cb@example.net"], "not one email address"),
        (["v=TLSRPTv1; rua=mailto:not-an-address"], "not one email address"),
        (["v=TLSRPTv1; rua=mailto:"], "not a URI"),
        (["v=TLSRPTv1; rua=mailto:r\ufffd@example.net"], "non-ASCII"),
        (["v=TLSRPTv1; rua=https://r.example.net/a b"], "white space"),
    ],
)
def test_unusable_records_say_why(records: list[str], problem: str) -> None:
    record = tlsrpt.read_record(records)
    assert record.rua == ()
    assert problem in record.problem
    assert tlsrpt.parse_tlsrpt_txt(records) is None


def test_usable_uris_survive_unusable_ones() -> None:
    record = tlsrpt.read_record(["v=TLSRPTv1; rua=gopher://x, mailto:a@example.net; ext=y"])
    assert record.rua == ("mailto:a@example.net",)
    assert "gopher" in record.problem


@given(st.lists(st.text(max_size=200), max_size=4))
def test_any_text_gives_a_record_or_a_reason(records: list[str]) -> None:
    record = tlsrpt.read_record(records)
    assert bool(record.rua) or record.problem
    assert all(u.startswith(("mailto:", "https:")) for u in record.rua)


@given(st.text(max_size=100))
def test_any_uri_is_judged_without_raising(tail: str) -> None:
    for scheme in ("mailto:", "https://", "https:"):
        assert isinstance(tlsrpt.uri_problem(scheme + tail), str)


# -- the report ------------------------------------------------------------------------------


def row(result: str, n: int, *, kind: str = "sts", mx: str = "mx1.example.net",
        ip: str = "127.0.0.7", strings: tuple[str, ...] = STS) -> TLSReportCount:  # fmt: skip
    return TLSReportCount(
        id=n,
        day=DAY.isoformat(),
        policy_domain="example.net",
        policy_type=kind,
        policy_hash=tlsrpt.policy_hash(strings),
        policy_strings=list(strings),
        receiving_mx=mx,
        receiving_ip=ip,
        result_type=result,
        count=n,
    )


def test_report_follows_rfc_8460_section_4() -> None:
    rows = [
        row("success", 40),
        row("starttls-not-supported", 3, mx="mx2.backup.example.net", ip="127.0.0.8"),
        row("certificate-host-mismatch", 2),
        row("success", 7, kind="tlsa", strings=TLSA),
        row("tlsa-invalid", 1, kind="tlsa", strings=TLSA),
        row("success", 5, kind="tlsa", mx="mx2.backup.example.net", ip="127.0.0.8", strings=TLSA),
        row("sts-policy-fetch-error", 4, mx="", ip=""),
    ]
    report = tlsrpt.build_report(
        DAY, "example.net", rows, settings(), "the-id", sending_ip=lambda ip: "192.0.2.25"
    )
    assert report["organization-name"] == "Org Example"
    assert report["date-range"] == {
        "start-datetime": "2026-03-14T00:00:00Z",
        "end-datetime": "2026-03-14T23:59:59Z",
    }
    assert report["contact-info"] == "postmaster@gw.org.example"
    assert report["report-id"] == "the-id"
    [sts_policy, tlsa_mx1, tlsa_mx2] = report["policies"]
    assert sts_policy == {
        "policy": {
            "policy-type": "sts",
            "policy-string": list(STS),
            "policy-domain": "example.net",
            "mx-host": ["mx1.example.net", "*.backup.example.net"],
        },
        "summary": {"total-successful-session-count": 40, "total-failure-session-count": 9},
        "failure-details": [
            {
                "result-type": "certificate-host-mismatch",
                "sending-mta-ip": "192.0.2.25",
                "receiving-mx-hostname": "mx1.example.net",
                "receiving-ip": "127.0.0.7",
                "failed-session-count": 2,
            },
            {
                "result-type": "starttls-not-supported",
                "sending-mta-ip": "192.0.2.25",
                "receiving-mx-hostname": "mx2.backup.example.net",
                "receiving-ip": "127.0.0.8",
                "failed-session-count": 3,
            },
            {"result-type": "sts-policy-fetch-error", "failed-session-count": 4},
        ],
    }
    # DANE policies are per MX: one entry each.
    assert tlsa_mx1["policy"]["mx-host"] == ["mx1.example.net"]
    assert tlsa_mx1["policy"]["policy-string"] == list(TLSA)
    assert tlsa_mx1["summary"] == {
        "total-successful-session-count": 7,
        "total-failure-session-count": 1,
    }
    assert tlsa_mx2["policy"]["mx-host"] == ["mx2.backup.example.net"]
    assert "failure-details" not in tlsa_mx2


def test_report_of_a_domain_without_policy_and_a_named_contact() -> None:
    configured = settings()
    configured.tlsrpt.contact_info = "tls-reports@org.example"
    rows = [row("success", 2, kind="no-policy-found", strings=())]
    report = tlsrpt.build_report(DAY, "example.net", rows, configured, "id")
    assert report["contact-info"] == "tls-reports@org.example"
    assert report["policies"] == [
        {
            "policy": {
                "policy-type": "no-policy-found",
                "policy-string": [],
                "policy-domain": "example.net",
            },
            "summary": {"total-successful-session-count": 2, "total-failure-session-count": 0},
        }
    ]


def test_report_refuses_counts_of_another_day_or_domain() -> None:
    other = row("success", 1)
    other.policy_domain = "example.org"
    with pytest.raises(ValueError, match=r"example\.org"):
        tlsrpt.build_report(DAY, "example.net", [other], settings(), "id")


def test_sending_address_is_the_route_source() -> None:
    assert tlsrpt.source_address("127.0.0.9") is not None
    assert tlsrpt.source_address("not an address") is None


def test_report_mail_is_rfc_8460_section_5_3() -> None:
    data = tlsrpt.report_bytes({"report-id": "x"})
    raw = tlsrpt.report_mail(
        settings(), "rpt@example.net", "example.net", DAY, "2026-03-14.example.net@gw", data, NOW
    )
    mail = message_from_bytes(raw, policy=default)
    assert mail.get_content_type() == "multipart/report"
    assert mail.get_param("report-type") == "tlsrpt"
    assert mail["TLS-Report-Domain"] == "example.net"
    assert mail["TLS-Report-Submitter"] == "org.example"
    assert mail["Subject"] == (
        "Report Domain: example.net Submitter: org.example Report-ID: <2026-03-14.example.net@gw>"
    )
    [text, attachment] = list(mail.iter_parts())
    assert text.get_content_type() == "text/plain"
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    start = int(datetime(2026, 3, 14, tzinfo=UTC).timestamp())
    assert attachment.get_filename() == (
        f"gw.org.example!example.net!{start}!{start + 86399}.json.gz"
    )
    assert json.loads(gzip.decompress(attachment.get_content())) == {"report-id": "x"}
    # The worker signs it: sigillo's own words, from its own address.
    assert signs_queued_mail(raw, TLS_REPORT, settings().notify.from_)
    assert not signs_queued_mail(raw, "127.0.0.1", settings().notify.from_)


# -- once only -------------------------------------------------------------------------------


async def test_a_days_report_is_claimed_once(store: Store) -> None:
    first = await store.write(lambda s: tlsrpt.claim(s, DAY, "example.net", NOW))
    again = await store.write(lambda s: tlsrpt.claim(s, DAY, "example.net", NOW))
    other = await store.write(lambda s: tlsrpt.claim(s, DAY, "example.org", NOW))
    assert (first, again, other) == (True, False, True)
    # A claimant that died: its claim lapses.
    later = NOW + tlsrpt.STALE_CLAIM + timedelta(seconds=1)
    assert await store.write(lambda s: tlsrpt.claim(s, DAY, "example.net", later))
    # A recorded outcome never does.
    await store.write(tlsrpt._finish(settings(), DAY, "example.org", NOW, "not sent: none"))
    much_later = NOW + timedelta(days=1)
    assert not await store.write(lambda s: tlsrpt.claim(s, DAY, "example.org", much_later))
    async with store.session() as session:
        sent = await session.get(TLSReportSent, (DAY.isoformat(), "example.org"))
    assert sent is not None and sent.outcome == "not sent: none"


def test_reports_go_only_to_public_addresses() -> None:
    unspecified = "0.0.0.0"  # noqa: S104  (an address to refuse, not one to bind)
    for ip in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "fd00::1",
               "100.64.0.1", unspecified, "nonsense"):  # fmt: skip
        assert not tlsrpt.public_address(ip), ip
    assert tlsrpt.public_address("9.9.9.9")
    assert tlsrpt.public_address("2620:fe::fe")


def test_day_range_is_the_utc_day() -> None:
    start, end = tlsrpt.day_range(date(2026, 12, 31))
    assert (start.isoformat(), end.isoformat()) == (
        "2026-12-31T00:00:00+00:00",
        "2026-12-31T23:59:59+00:00",
    )
