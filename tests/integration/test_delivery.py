"""Where the content goes, per recipient server behaviour, with real Postfix and dnsmasq.

Every test uses fresh recipient local parts so the session-wide Postfix can be shared.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from sigillo.gateway.records import attempt_record
from sigillo.notify import token_hash
from sigillo.store.models import ConversationMessage, JobKind, JobState, PortalToken
from tests.integration.gateway import Gateway, received, running_gateway
from tests.peers.dnsmasq import DnsmasqPeer
from tests.peers.fixtures import MxPeers
from tests.peers.postfix import ReceivedMail

pytestmark = pytest.mark.peers

SECRET_SUBJECT = "Oncology referral Giulia Bianchi"
SECRET_BODY = "Stage II carcinoma, start chemotherapy Monday"


def mail(rcpts: list[str], *, extra: str = "", marker: str = "") -> bytes:
    return (
        f"From: Dr Rossi <rossi@org.example>\r\nTo: {', '.join(rcpts)}\r\n"
        f"Subject: {SECRET_SUBJECT} {marker}\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@org.example>\r\n{extra}"
        f"\r\n{SECRET_BODY} {marker}\r\n"
    ).encode()


def addr(domain: str) -> str:
    return f"p{secrets.token_hex(5)}@{domain}"


def carries_content(m: ReceivedMail) -> bool:
    return SECRET_BODY.encode() in m.raw or SECRET_SUBJECT.encode() in m.raw


@pytest.fixture
async def gateway(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer
) -> AsyncIterator[Gateway]:
    async with running_gateway(tmp_path, mx_peers, dns_peer) as g:
        yield g


async def test_verified_tls_delivery(gateway: Gateway, mx_peers: MxPeers) -> None:
    rcpt = addr("tls.test")
    msg_id = await gateway.send("rossi@org.example", [rcpt], mail([rcpt]))
    [job] = await gateway.settle(msg_id)
    assert job.state is JobState.DELIVERED
    [got] = await received(mx_peers, 1, lambda m: m.recipient == rcpt)
    assert got.listener == mx_peers.tls
    assert got.tls in ("TLSv1.2", "TLSv1.3")
    assert SECRET_BODY.encode() in got.raw
    [attempt] = await gateway.attempts(job.id)
    assert attempt.outcome == "tls"
    assert (attempt.mx_host, attempt.mx_ip) == ("mx.tls.test", mx_peers.tls)
    assert attempt.tls_version == got.tls and attempt.tls_cipher
    assert attempt.cert_verified is True and attempt.verification == "ca_file"
    assert attempt.smtp_code == 250
    assert not await gateway.notify_jobs(rcpt)


@pytest.mark.parametrize(
    ("domain", "listener", "why"),
    [
        ("plain.test", "plain", "no STARTTLS"),
        ("wrongname.test", "wrongname", "certificate"),
        ("broken.test", "broken", "STARTTLS refused"),
    ],
)
async def test_tls_failure_goes_to_portal_and_only_a_notification_leaves(
    gateway: Gateway, mx_peers: MxPeers, domain: str, listener: str, why: str
) -> None:
    rcpt = addr(domain)
    msg_id = await gateway.send("rossi@org.example", [rcpt], mail([rcpt]))
    [job] = await gateway.settle(msg_id)
    assert job.state is JobState.PORTAL
    assert why in (job.reason or "")
    [attempt] = await gateway.attempts(job.id)
    assert attempt.outcome == "portal"
    assert attempt.details and attempt.details["trail"][0]["result"] == why

    [notify] = await gateway.notify_jobs(rcpt)
    await gateway.wait_state(notify.id, {JobState.DELIVERED})
    [note] = await received(mx_peers, 1, lambda m: m.recipient == rcpt)
    assert note.listener == mx_peers.addresses[listener]
    assert not carries_content(note)
    assert note.message["From"] == gateway.settings.notify.from_
    assert note.message["Subject"] == "You have a secure message"
    assert not note.message.is_multipart()  # no attachment can hide in it
    link = next(w for w in note.message.get_content().split() if w.startswith("https://"))
    token = link.rsplit("/", 1)[1]
    assert len(token) >= 22  # >= 128 bits in URL-safe base64
    async with gateway.store.session() as session:
        stored = await session.get(PortalToken, token_hash(token))
        assert stored is not None and stored.recipient == rcpt
        assert (await session.get(PortalToken, token)) is None  # only the hash is kept
        linked = await session.execute(
            select(ConversationMessage).where(
                ConversationMessage.conversation_id == stored.conversation_id
            )
        )
        assert [cm.message_id for cm in linked.scalars()] == [msg_id]
    # Nothing with content ever reached a portal-routed server.
    everything = mx_peers.peer.messages()
    assert not [m for m in everything if m.listener != mx_peers.tls and carries_content(m)]


async def test_encrypt_level_accepts_any_certificate(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer
) -> None:
    sections = {"delivery": {"domains": {"wrongname.test": "encrypt"}}}
    async with running_gateway(tmp_path, mx_peers, dns_peer, sections) as gateway:
        rcpt = addr("wrongname.test")
        msg_id = await gateway.send("rossi@org.example", [rcpt], mail([rcpt]))
        [job] = await gateway.settle(msg_id)
        assert job.state is JobState.DELIVERED
        [attempt] = await gateway.attempts(job.id)
        assert attempt.cert_verified is False and attempt.verification == "none (encrypt)"
        [got] = await received(mx_peers, 1, lambda m: m.recipient == rcpt)
        assert got.tls and got.listener == mx_peers.wrongname


async def test_encrypt_level_still_needs_starttls(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer
) -> None:
    sections = {"delivery": {"domains": {".test": "encrypt"}}}
    async with running_gateway(tmp_path, mx_peers, dns_peer, sections) as gateway:
        rcpt = addr("plain.test")
        msg_id = await gateway.send("rossi@org.example", [rcpt], mail([rcpt]))
        [job] = await gateway.settle(msg_id)
        assert job.state is JobState.PORTAL and "no STARTTLS" in (job.reason or "")


async def test_portal_policy_never_connects(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer
) -> None:
    sections = {"delivery": {"domains": {"tls.test": "portal"}}}
    async with running_gateway(tmp_path, mx_peers, dns_peer, sections) as gateway:
        rcpt = addr("tls.test")
        msg_id = await gateway.send("rossi@org.example", [rcpt], mail([rcpt]))
        [job] = await gateway.settle(msg_id)
        assert job.state is JobState.PORTAL and "policy is portal" in (job.reason or "")
        [attempt] = await gateway.attempts(job.id)
        assert attempt.mx_host is None and attempt.details["trail"] == []
        [note] = await received(mx_peers, 1, lambda m: m.recipient == rcpt)
        assert not carries_content(note)


async def test_recipients_at_one_domain_share_one_transaction(
    gateway: Gateway, mx_peers: MxPeers
) -> None:
    rcpts = [addr("tls.test") for _ in range(3)]
    msg_id = await gateway.send("rossi@org.example", rcpts, mail(rcpts))
    jobs = await gateway.settle(msg_id)
    assert {j.state for j in jobs} == {JobState.DELIVERED}
    got = await received(mx_peers, 3, lambda m: m.recipient in rcpts)
    # Postfix gives every SMTP transaction one queue id, written in its Received header.
    queue_ids = {str(m.message.get_all("Received")[0]).split(" id ")[1].split(";")[0] for m in got}
    assert len(queue_ids) == 1


async def test_implicit_mx_and_second_mx(gateway: Gateway, mx_peers: MxPeers) -> None:
    implicit, second = addr("implicit.test"), addr("twomx.test")
    msg_id = await gateway.send("rossi@org.example", [implicit, second], mail([implicit, second]))
    jobs = {j.recipient: j for j in await gateway.settle(msg_id)}
    assert {j.state for j in jobs.values()} == {JobState.DELIVERED}
    [attempt] = await gateway.attempts(jobs[second].id)
    trail = attempt.details["trail"]
    assert [t["result"] for t in trail] == ["unreachable", "transaction"]
    [attempt] = await gateway.attempts(jobs[implicit].id)
    assert attempt.mx_host == "implicit.test" and attempt.cert_verified


@pytest.mark.parametrize(
    ("domain", "status"), [("nullmx.test", "null MX"), ("nonexistent.test", "NXDOMAIN")]
)
async def test_undeliverable_domains_bounce_with_a_dsn(
    gateway: Gateway, domain: str, status: str
) -> None:
    rcpt = addr(domain)
    msg_id = await gateway.send("rossi@org.example", [rcpt], mail([rcpt]))
    [job] = await gateway.settle(msg_id)
    assert job.state is JobState.BOUNCED and status in (job.reason or "")
    [dsn_job] = await gateway.jobs(msg_id, JobKind.DSN)
    await gateway.wait_state(dsn_job.id, {JobState.DELIVERED})
    [(sender, rcpts, raw)] = gateway.relay.received
    assert sender in ("", "<>") and rcpts == ["rossi@org.example"]  # null reverse-path
    [report] = gateway.relay.messages()
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert rcpt.encode() in raw and b"Action: failed" in raw
    assert SECRET_BODY.encode() not in raw  # headers only by default


async def test_threaded_reply_joins_the_conversation(gateway: Gateway) -> None:
    rcpt = addr("plain.test")
    first = mail([rcpt], marker="1")
    first_id_header = first.split(b"Message-ID: ")[1].split(b"\r\n")[0].decode()
    one = await gateway.send("rossi@org.example", [rcpt], first)
    await gateway.settle(one)
    two = await gateway.send(
        "rossi@org.example",
        [rcpt],
        mail([rcpt], marker="2", extra=f"In-Reply-To: {first_id_header}\r\n"),
    )
    await gateway.settle(two)
    three = await gateway.send("rossi@org.example", [rcpt], mail([rcpt], marker="3"))
    await gateway.settle(three)
    async with gateway.store.session() as session:
        rows = await session.execute(
            select(ConversationMessage.message_id, ConversationMessage.conversation_id).where(
                ConversationMessage.message_id.in_([one, two, three])
            )
        )
        conv = dict(rows.all())
    assert conv[one] == conv[two] != conv[three]


async def test_subject_in_notification_only_when_configured(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer
) -> None:
    overrides = {"notify": {"include_subject": True}}
    async with running_gateway(tmp_path, mx_peers, dns_peer, overrides) as gateway:
        rcpt = addr("plain.test")
        msg_id = await gateway.send("rossi@org.example", [rcpt], mail([rcpt]))
        await gateway.settle(msg_id)
        [notify] = await gateway.notify_jobs(rcpt)
        await gateway.wait_state(notify.id, {JobState.DELIVERED})
        [note] = await received(mx_peers, 1, lambda m: m.recipient == rcpt)
        assert SECRET_SUBJECT in str(note.message["Subject"])
        assert SECRET_BODY.encode() not in note.raw


async def test_session_reused_for_the_next_message_to_the_same_mx(
    gateway: Gateway, mx_peers: MxPeers
) -> None:
    first, second = addr("tls.test"), addr("tls.test")
    one = await gateway.send("rossi@org.example", [first], mail([first]))
    [job_one] = await gateway.settle(one)
    two = await gateway.send("rossi@org.example", [second], mail([second]))
    [job_two] = await gateway.settle(two)
    [a1], [a2] = await gateway.attempts(job_one.id), await gateway.attempts(job_two.id)
    assert "reused" not in a1.details["trail"][-1]
    assert a2.details["trail"][-1]["reused"] == "yes"
    assert a2.cert_verified and a2.tls_version == a1.tls_version
    got = await received(mx_peers, 2, lambda m: m.recipient in (first, second))
    assert {m.tls for m in got} == {a1.tls_version}


async def test_records_name_the_policy_that_authorised_the_session(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer
) -> None:
    sections = {"delivery": {"domains": {"wrongname.test": "encrypt"}}}
    verified, encrypted, portal = addr("tls.test"), addr("wrongname.test"), addr("plain.test")
    records: dict[str, dict[str, Any]] = {}
    async with running_gateway(tmp_path, mx_peers, dns_peer, sections) as gateway:
        for rcpt in (verified, encrypted, portal):
            msg_id = await gateway.send("rossi@org.example", [rcpt], mail([rcpt]))
            [job] = await gateway.settle(msg_id)
            [attempt] = await gateway.attempts(job.id)
            records[rcpt] = attempt_record(attempt)
    assert records[verified]["tls_policy"] == "verify"
    assert records[encrypted]["tls_policy"] == "encrypt"
    assert records[portal]["tls_policy"] is None and records[portal]["outcome"] == "portal"
    # Each record carries every layer's finding; dnsmasq signs nothing, so DANE never applies.
    layers = records[verified]["details"]["layers"]
    assert [(f["layer"], f["applies"]) for f in layers] == [
        ("override", False),
        ("dane", False),
        ("mta-sts", False),
        ("default", True),
    ]
    override = records[encrypted]["details"]["layers"][0]
    assert override == {"layer": "override", "applies": True, "finding": "encrypt (wrongname.test)"}
