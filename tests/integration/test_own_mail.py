"""sigillo's own mail as a recipient's server receives it (real Postfix, real dnsmasq):
notifications and DSNs DKIM-signed, verifying against the record ``sigillo dkim show``
prints; the security phrase in every notification after it was chosen; a recipient's own
words (a portal reply, its copy) never under the organisation's signature."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import dkim
import pytest
from sqlalchemy import select

from sigillo.store.models import Job, JobKind, JobState
from tests.integration.gateway import Gateway, received, running_gateway
from tests.integration.test_delivery import addr, mail
from tests.peers.dnsmasq import DnsmasqPeer
from tests.peers.fixtures import MxPeers
from tests.peers.postfix import ReceivedMail
from tests.portal.harness import GOOD_PASSWORD, PortalClient

pytestmark = pytest.mark.peers

PHRASE = "Gatto blu sul tetto"
_LINK = re.compile(r"https?://\S+")


def published(tmp_path: Path, key: Path) -> dict[str, str]:
    """What the operator publishes: ``sigillo dkim show --json``, run as they would."""
    shown = subprocess.run(
        [sys.executable, "-m", "sigillo", "dkim", "show", "--json"],
        cwd=tmp_path,
        env={**os.environ, "SIGILLO_NOTIFY__DKIM_KEY_FILE": str(key)},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    record: dict[str, str] = json.loads(shown.stdout)
    return record


def checked(tmp_path: Path, key: Path, raw: bytes) -> str:
    """The verdict of ``sigillo check`` on mail as the recipient's server stored it, offline:
    the same key file is all it knows."""
    run = subprocess.run(
        [sys.executable, "-m", "sigillo", "check", "-", "--json"],
        cwd=tmp_path,
        env={**os.environ, "SIGILLO_NOTIFY__DKIM_KEY_FILE": str(key)},
        input=raw,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    verdict: str = json.loads(run.stdout)["verdict"]
    return verdict


def dns(record: dict[str, str]) -> Callable[..., bytes]:
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return record["value"].encode() if name.decode().rstrip(".") == record["name"] else b""

    return lookup


def verifies(raw: bytes, record: dict[str, str]) -> bool:
    # Maildir stores LF line ends; the signature was made over the CR LF form that travelled.
    wire = re.sub(rb"\r?\n", b"\r\n", raw)
    return bool(dkim.verify(wire, dnsfunc=dns(record)))


def signature(raw: bytes) -> dict[str, str]:
    header = message_from_bytes(raw, policy=default)["DKIM-Signature"]
    assert header is not None
    tags = (t.split("=", 1) for t in re.sub(r"\s+", "", str(header)).split(";") if "=" in t)
    return {k: v for k, v in tags}


def text_of(note: ReceivedMail) -> str:
    body = note.message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def with_portal(key: Path) -> dict[str, dict[str, Any]]:
    # A plain-HTTP base URL: the test browser sends the session cookie back (not "Secure").
    return {"notify": {"dkim_key_file": str(key)}, "portal": {"base_url": "http://127.0.0.1"}}


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return tmp_path / "dkim" / "dkim.key"


async def notification(gateway: Gateway, mx: MxPeers, rcpt: str, marker: str) -> ReceivedMail:
    msg_id = await gateway.send("rossi@org.example", [rcpt], mail([rcpt], marker=marker))
    [job] = await gateway.settle(msg_id)
    assert job.state is JobState.PORTAL
    notes = await gateway.notify_jobs(rcpt)
    for note in notes:
        await gateway.wait_state(note.id, {JobState.DELIVERED})
    found = await received(mx, len(notes), lambda m: m.recipient == rcpt)
    return found[-1]


async def test_notifications_are_signed_and_show_the_phrase_once_chosen(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer, key: Path
) -> None:
    async with running_gateway(
        tmp_path, mx_peers, dns_peer, with_portal(key), portal=True
    ) as gateway:
        record = published(tmp_path, key)  # the key the worker made at its start
        assert record["name"] == "sigillo._domainkey.org.example"
        rcpt = addr("plain.test")

        first = await notification(gateway, mx_peers, rcpt, "1")
        assert verifies(first.raw, record)
        tags = signature(first.raw)
        assert (tags["d"], tags["s"]) == ("org.example", "sigillo")
        assert "frase" not in text_of(first)
        [link] = _LINK.findall(text_of(first))
        assert link.startswith(f"{gateway.settings.portal.base_url}/c/")

        client = PortalClient(gateway.portal_url, "127.0.0.1")
        try:
            path = link.removeprefix(gateway.settings.portal.base_url)
            chosen = await client.submit(
                path,
                password=GOOD_PASSWORD,
                password_confirm=GOOD_PASSWORD,
                security_phrase=PHRASE,
            )
            assert chosen.status_code == 303
        finally:
            await client.close()

        second = await notification(gateway, mx_peers, rcpt, "2")
        assert verifies(second.raw, record)
        text = text_of(second)
        assert text.splitlines()[:2] == [
            f"Your security phrase: \u00ab{PHRASE}\u00bb",
            f"La tua frase di sicurezza: \u00ab{PHRASE}\u00bb",
        ]
        assert len(_LINK.findall(text)) == 1
        # An imitation made from it: the phrase removed (or anything else changed) breaks it.
        forged = second.raw.replace(PHRASE.encode(), b"Gatto rosso sul tetto")
        assert forged != second.raw and not verifies(forged, record)
        # What a recipient's check says of each: ours genuine, the imitation an imitation.
        assert checked(tmp_path, key, second.raw) == "genuine"
        assert checked(tmp_path, key, forged) == "phishing"


async def test_a_dsn_is_signed(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer, key: Path
) -> None:
    overrides = {"notify": {"dkim_key_file": str(key)}}
    async with running_gateway(tmp_path, mx_peers, dns_peer, overrides) as gateway:
        rcpt = addr("nullmx.test")
        msg_id = await gateway.send("rossi@org.example", [rcpt], mail([rcpt]))
        [job] = await gateway.settle(msg_id)
        assert job.state is JobState.BOUNCED
        [dsn] = await gateway.jobs(msg_id, JobKind.DSN)
        await gateway.wait_state(dsn.id, {JobState.DELIVERED})
        [(_, _, raw)] = gateway.relay.received
        assert message_from_bytes(raw, policy=default).get_content_type() == "multipart/report"
        assert verifies(raw, published(tmp_path, key))
        assert checked(tmp_path, key, raw) == "genuine"


async def test_a_recipients_reply_and_its_copy_are_not_signed(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer, key: Path
) -> None:
    async with running_gateway(
        tmp_path, mx_peers, dns_peer, with_portal(key), portal=True
    ) as gateway:
        rcpt = addr("plain.test")
        first = await notification(gateway, mx_peers, rcpt, "1")
        [link] = _LINK.findall(text_of(first))
        client = PortalClient(gateway.portal_url, "127.0.0.1")
        try:
            registered = await client.register(link.rsplit("/", 1)[1])
            assert registered.status_code == 303, registered.text
            conversation = registered.headers["location"]
            await client.get(conversation)
            words = "Please call me at this number: my card is 4111 1111 1111 1111"
            replied = await client.http.post(
                f"{conversation}/reply",
                data={"csrf_token": client.csrf(), "body": words, "send_copy": "1"},
            )
            assert replied.status_code == 303
        finally:
            await client.close()
        [copy] = await received(
            mx_peers, 1, lambda m: m.recipient == rcpt and b"Copy of your reply" in m.raw
        )
        assert copy.message["From"] == gateway.settings.notify.from_
        assert copy.message["DKIM-Signature"] is None
        async with gateway.store.session() as session:
            [relay] = (
                (await session.execute(select(Job).where(Job.kind == JobKind.RELAY)))
                .scalars()
                .all()
            )
        await gateway.wait_state(relay.id, {JobState.DELIVERED})
        [(_, _, raw)] = gateway.relay.received
        assert b"DKIM-Signature" not in raw and b"4111 1111" in raw
