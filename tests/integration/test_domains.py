"""``sigillo domains``: per recipient domain what the worker last saw, read from the store
(SQLite and PostgreSQL), through the real command."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from sigillo.config import DeliverySettings
from sigillo.gateway import queue, tlsrpt
from sigillo.store import migrate
from sigillo.store.db import Store
from sigillo.store.models import (
    Attempt,
    JobKind,
    JobState,
    Message,
    MtaStsPolicy,
)
from tests.integration.test_cli import sigillo

DELIVERY = DeliverySettings()
TLSA = "3 1 1 " + "AB" * 32
STS_POLICY = "version: STSv1\nmode: enforce\nmx: mx.sts.example\nmax_age: 86400\n"


def _message(now: datetime) -> Message:
    # The command never reads content: a placeholder stands in for the sealed message.
    return Message(
        id=queue.new_message_id(),
        received_at=now,
        mail_from="doc@org.example",
        client_address="127.0.0.1",
        size=1,
        kek_id="k",
        wrapped_key=b"k",
        content=b"c",
    )


def _copy(
    session: Session,
    message: Message,
    recipient: str,
    state: JobState,
    at: datetime,
    *attempts: Attempt,
    kind: JobKind = JobKind.DELIVER,
) -> None:
    job = queue.new_job(
        kind,
        recipient,
        recipient.rpartition("@")[2],
        at - timedelta(minutes=5),
        DELIVERY,
        message_id=message.id,
    )
    job.state = state
    if state not in (JobState.QUEUED, JobState.HELD):
        job.finished_at = at
    job.attempts = len(attempts)
    session.add(job)
    session.flush()
    for attempt in attempts:
        attempt.job_id = job.id
        session.add(attempt)
        session.flush()  # ids in the order written: the newest attempt has the highest id


def _tls(
    at: datetime,
    policy: str,
    *,
    verified: bool = True,
    version: str = "TLSv1.3",
    details: dict[str, object] | None = None,
    mx: str = "mx.example",
) -> Attempt:
    return Attempt(
        at=at,
        outcome="tls",
        reason=f"delivered over {version}",
        mx_host=mx,
        mx_ip="192.0.2.1",
        tls_version=version,
        tls_cipher="TLS_AES_256_GCM_SHA384",
        cert_verified=verified,
        verification="dane" if policy == "dane" else ("system" if verified else "none (encrypt)"),
        tls_policy=policy,
        smtp_code=250,
        details=details,
    )


def _failed(
    at: datetime, outcome: str, reason: str, details: dict[str, object] | None = None
) -> Attempt:
    return Attempt(at=at, outcome=outcome, reason=reason, mx_host="mx.example", details=details)


DANE_FINDING: dict[str, object] = {
    "layers": [{"layer": "dane", "applies": True, "finding": "TLSA 3 1 1 matched"}]
}
DEFERRED_FINDING: dict[str, object] = {
    "layers": [
        {"layer": "dane", "applies": True, "finding": "TLSA lookup failed: SERVFAIL"},
        {"layer": "mta-sts", "applies": False, "finding": "no _mta-sts record"},
    ]
}


async def seed(url: str, now: datetime) -> None:
    store = Store(url)
    try:
        await migrate.upgrade(store)
        hour = timedelta(hours=1)

        def write(session: Session) -> None:
            m = _message(now)
            session.add(m)
            session.flush()
            # DANE-authorised twice; the third copy went to the portal after a failing check.
            for n in range(2):
                _copy(
                    session,
                    m,
                    f"a{n}@dane.example",
                    JobState.DELIVERED,
                    now - 3 * hour,
                    _tls(now - 3 * hour, "dane", details=DANE_FINDING, mx="mx.dane.example"),
                )
            _copy(
                session,
                m,
                "b@dane.example",
                JobState.PORTAL,
                now - 2 * hour,
                _failed(now - 2 * hour, "portal", "TLS policy not met: dane: no TLSA matched"),
            )
            # MTA-STS enforce, delivered; then an encrypt-only copy elsewhere.
            _copy(
                session,
                m,
                "c@sts.example",
                JobState.DELIVERED,
                now - hour,
                _tls(now - hour, "mta-sts", version="TLSv1.2", mx="mx.sts.example"),
            )
            _copy(
                session,
                m,
                "d@legacy.example",
                JobState.DELIVERED,
                now - hour,
                _tls(now - hour, "encrypt", verified=False),
            )
            # Still waiting: TLSA lookups fail, so every attempt was deferred.
            _copy(
                session,
                m,
                "e@waiting.example",
                JobState.QUEUED,
                now - 2 * hour,
                _failed(now - 3 * hour, "deferred", "TLSA lookup failed", DEFERRED_FINDING),
                _failed(now - 2 * hour, "deferred", "TLSA lookup failed", DEFERRED_FINDING),
            )
            # Outside a 30-day window, inside a 60-day one.
            _copy(
                session,
                m,
                "f@old.example",
                JobState.DELIVERED,
                now - timedelta(days=40),
                _tls(now - timedelta(days=40), "verify", version="TLSv1.2"),
            )
            # A notification is no copy of content: never listed.
            _copy(
                session,
                m,
                "g@notified.example",
                JobState.DELIVERED,
                now - hour,
                _tls(now - hour, "encrypt", verified=False),
                kind=JobKind.NOTIFY,
            )
            session.add(
                MtaStsPolicy(
                    domain="sts.example",
                    policy_id="20240101",
                    mode="enforce",
                    mx=["mx.sts.example"],
                    max_age=86400,
                    policy_text=STS_POLICY,
                    fetched_at=now - 2 * hour,
                    expires_at=now + timedelta(hours=22),
                    last_attempt_at=now - 2 * hour,
                )
            )
            # Fetched once, expired since; the last refetch failed.
            session.add(
                MtaStsPolicy(
                    domain="legacy.example",
                    policy_id="1",
                    mode="testing",
                    mx=["*.legacy.example"],
                    max_age=3600,
                    policy_text="version: STSv1\nmode: testing\nmx: *.legacy.example\n",
                    fetched_at=now - 3 * hour,
                    expires_at=now - 2 * hour,
                    last_attempt_at=now - hour,
                    last_error="sts-policy-fetch-error: redirect: 301 is not allowed",
                )
            )
            dane = tlsrpt.SessionResult(
                "dane.example", "tlsa", (TLSA,), "mx.dane.example", "192.0.2.1", "success"
            )
            for _ in range(2):
                tlsrpt.count(session, dane, now - 3 * hour)
            failed = tlsrpt.SessionResult(
                "dane.example",
                "tlsa",
                (TLSA,),
                "mx.dane.example",
                "192.0.2.1",
                "validation-failure",
            )
            tlsrpt.count(session, failed, now - 2 * hour)
            sts = tlsrpt.SessionResult(
                "sts.example",
                "sts",
                tuple(STS_POLICY.splitlines()),
                "mx.sts.example",
                "192.0.2.1",
                "success",
            )
            tlsrpt.count(session, sts, now - hour)

        await store.write(write)
    finally:
        await store.close()


def _env(url: str) -> dict[str, str]:
    return {"SIGILLO_STORAGE__DATABASE_URL": url}


def _domains(tmp_path: Path, url: str, *args: str) -> dict[str, Any]:
    result = sigillo("domains", "--json", *args, cwd=tmp_path, env=_env(url))
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_domains_report(tmp_path: Path, store_url: str) -> None:
    now = queue.utcnow()
    asyncio.run(seed(store_url, now))
    report = _domains(tmp_path, store_url)
    assert report["days"] == 30
    by_name = {d["domain"]: d for d in report["domains"]}
    # Busiest first; a domain with only waiting copies after those with final ones.
    assert [d["domain"] for d in report["domains"]] == [
        "dane.example",
        "legacy.example",
        "sts.example",
        "waiting.example",
    ]

    dane = by_name["dane.example"]
    assert dane["copies"] == {
        "verified": 2,
        "encrypt": 0,
        "portal": 1,
        "bounced": 0,
        "total": 3,
        "waiting": 0,
    }
    assert dane["share"] == {"tls": 0.6667, "portal": 0.3333}
    assert dane["last_tls"]["certificate"] == "dane"
    assert dane["last_tls"]["version"] == "TLSv1.3"
    assert dane["last_tls"]["mx_host"] == "mx.dane.example"
    assert dane["authorised_by"]["policy"] == "dane"
    # The portal copy was the last attempt, the DANE session the last TLS one.
    assert dane["last_attempt"]["outcome"] == "portal"
    assert dane["dane"]["last_session_authorised"] is True
    assert dane["dane"]["tlsa"] == [TLSA]
    assert dane["dane"]["sessions"] == {"success": 2, "validation-failure": 1}
    assert dane["mta_sts"] is None

    sts = by_name["sts.example"]
    assert sts["last_tls"]["certificate"] == "verified"
    assert sts["last_tls"]["version"] == "TLSv1.2"
    assert sts["authorised_by"]["policy"] == "mta-sts"
    assert sts["share"] == {"tls": 1.0, "portal": 0.0}
    assert sts["dane"] is None
    policy = sts["mta_sts"]
    assert policy["mode"] == "enforce" and policy["id"] == "20240101"
    assert policy["valid"] is True and policy["mx"] == ["mx.sts.example"]
    assert policy["last_error"] is None
    assert policy["sessions"] == {"success": 1}

    legacy = by_name["legacy.example"]
    assert legacy["last_tls"]["certificate"] == "encrypt"
    assert legacy["authorised_by"]["policy"] == "encrypt"
    assert legacy["copies"]["encrypt"] == 1
    assert legacy["mta_sts"]["mode"] == "testing"
    assert legacy["mta_sts"]["valid"] is False
    assert legacy["mta_sts"]["last_error"].startswith("sts-policy-fetch-error: redirect")

    waiting = by_name["waiting.example"]
    assert waiting["copies"]["total"] == 0 and waiting["copies"]["waiting"] == 1
    assert waiting["share"] == {"tls": None, "portal": None}
    assert waiting["last_tls"] is None and waiting["authorised_by"] is None
    assert waiting["last_attempt"]["outcome"] == "deferred"
    assert waiting["dane"]["last_finding"] == {
        "applies": True,
        "finding": "TLSA lookup failed: SERVFAIL",
    }
    assert waiting["mta_sts"]["last_finding"]["applies"] is False

    # A longer window reaches the old copy; --limit keeps the busiest.
    longer = _domains(tmp_path, store_url, "--since", "60d")
    assert "old.example" in [d["domain"] for d in longer["domains"]]
    assert longer["days"] == 60
    top = _domains(tmp_path, store_url, "--limit", "1")
    assert [d["domain"] for d in top["domains"]] == ["dane.example"]

    table = sigillo("domains", cwd=tmp_path, env=_env(store_url))
    assert table.returncode == 0, table.stderr
    assert "dane.example: 3 copies, 67% over TLS, 33% to the portal" in table.stdout
    assert "DANE          authorised (success 2, validation-failure 1)" in table.stdout
    assert "MTA-STS       testing (expired); last error: sts-policy-fetch-error" in table.stdout
    assert "DANE          not seen; last attempt: TLSA lookup failed: SERVFAIL" in table.stdout
    assert "legacy.example: 1 copy, 100% over TLS" in table.stdout


def test_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/none/sigillo.db"
    result = sigillo("domains", "--json", cwd=tmp_path, env=_env(url))
    assert result.returncode == 1
    assert "no database" in result.stderr and "sigillo db upgrade" in result.stderr
    assert "Traceback" not in result.stderr
    # Asking created nothing.
    assert not (tmp_path / "none").exists()


def test_database_down_is_a_clear_error(tmp_path: Path) -> None:
    result = sigillo("domains", cwd=tmp_path, env=_env("postgresql://sigillo@127.0.0.1:1/none"))
    assert result.returncode == 1 and "database unavailable" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--since", "soon"), "not a duration"),
        (("--since", "0d"), "longer than nothing"),
        (("--since", "400d"), "more than 366 days"),
        (("--limit", "0"), "--limit must be 1 to"),
    ],
)
def test_bad_options(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    result = sigillo("domains", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr
