"""After the whole journey, the recipient's and then a staff agent's, neither the log stream
nor the audit log holds any message content, password, TOTP secret or link token.

sigillo runs as operators run it, ``sigillo serve`` in a process of its own with its real
logging set-up, so every line it writes is scanned, not just those of loggers a test knows
about. Each distinctive value carries a random marker; the scan looks for the markers as
they are, base64-encoded at every alignment, quoted-printable and percent-encoded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import quopri
import re
import secrets
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pyotp
import pytest
from aiosmtpd.smtp import SMTP
from sqlalchemy import select

from sigillo.store.db import Store
from sigillo.store.models import AuditEvent, AuditHead
from tests.e2e.test_portal_flow import body_text, notification_links, parse
from tests.integration.gateway import RelayRecorder, received
from tests.peers.dnsmasq import DnsmasqPeer
from tests.peers.fixtures import MxPeers
from tests.peers.net import free_port
from tests.portal.harness import PortalClient, staff_message

STAFF = "doctor@org.example"
_RESET = re.compile(r"https?://\S+/reset/([A-Za-z0-9_-]+)")
_TOTP_SECRET = re.compile(r'id="totp-secret">([A-Z2-7 ]+)<')
_STAFF_CONVERSATION = re.compile(r'href="(/staff/conversations/\d+)"')
AGENT = "agent@org.example"
_DOWNLOAD = re.compile(r'href="(/conversations/\d+/messages/[0-9a-f]+/attachments/\d+)"')


def forms(value: bytes) -> set[str]:
    """``value`` as it might show up in a line of text: as is, JSON-escaped, base64 at each
    of the three alignments (the stable middle of each), quoted-printable, percent-encoded;
    lower case."""
    text = value.decode("utf-8", "replace")
    found = {text, json.dumps(text)[1:-1]}
    for shift in range(3):
        encoded = base64.b64encode(value[shift:]).decode()
        found.add(encoded[4:-4])
        found.add(base64.urlsafe_b64encode(value[shift:]).decode()[4:-4])
    found.add(quopri.encodestring(value).decode().split("=\n")[0])
    found.add(urllib.parse.quote(value))
    found.add(urllib.parse.quote_plus(value))
    return {f.lower() for f in found if len(f) >= 8}


@dataclass(frozen=True)
class Secret:
    name: str
    value: bytes
    marker: bytes
    """The random part: any fragment of the value that holds it is a leak too."""

    def needles(self) -> set[str]:
        return forms(self.value) | forms(self.marker)

    def leaks(self, texts: Iterable[str]) -> list[str]:
        needles = self.needles()
        return [t for t in texts if any(n in t.lower() for n in needles)]


def distinctive(name: str, template: str) -> Secret:
    marker = secrets.token_hex(8)
    return Secret(name, template.format(marker).encode(), marker.encode())


def leaks(secrets_: list[Secret], texts: list[str]) -> dict[str, list[str]]:
    found = {s.name: s.leaks(texts) for s in secrets_}
    return {name: lines for name, lines in found.items() if lines}


def serve_config(tmp_path: Path, mx: MxPeers, dns: DnsmasqPeer, relay_port: int) -> Path:
    smtp_port, http_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    config = tmp_path / "sigillo.toml"
    config.write_text(
        f"""
[smtp]
listen = "127.0.0.1:{smtp_port}"
hostname = "gw.org.example"

[dns]
nameservers = ["{dns.address}:{dns.port}"]
timeout = "3s"

[delivery]
mx_port = {mx.port}
ca_file = "{mx.ca_file}"
retry_initial = "1s"
retry_max = "2s"
poll_interval = "100ms"
connect_timeout = "3s"
command_timeout = "20s"

[relay]
host = "127.0.0.1:{relay_port}"

[portal]
listen = "127.0.0.1:{http_port}"
base_url = "http://127.0.0.1:{http_port}"

[storage]
database_url = "sqlite:///{tmp_path}/sigillo.db"
key_file = "{tmp_path}/sigillo.keys"
"""
    )
    return config


@dataclass(frozen=True)
class Served:
    smtp_port: int
    url: str
    database_url: str
    log: Path


@asynccontextmanager
async def sigillo_serve(config: Path, tmp_path: Path) -> AsyncIterator[Served]:
    """``sigillo serve`` in its own process, stderr (its log stream) into a file."""
    import tomllib

    settings = tomllib.loads(config.read_text())
    smtp_port = int(settings["smtp"]["listen"].rsplit(":", 1)[1])
    url = settings["portal"]["base_url"]
    log = tmp_path / "serve.log"
    with log.open("wb") as err, (tmp_path / "serve.out").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sigillo", "serve", "--config", str(config)],
            cwd=tmp_path,
            env=os.environ.copy(),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    try:
        await wait_listening(proc, [smtp_port, int(url.rsplit(":", 1)[1])], log)
        yield Served(smtp_port, url, settings["storage"]["database_url"], log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
            raise
    assert code == 0, log.read_text()


async def wait_listening(proc: subprocess.Popen[bytes], ports: list[int], log: Path) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"sigillo serve exited: {log.read_text()}")
        try:
            for port in ports:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
        except OSError:
            await asyncio.sleep(0.05)
            continue
        return
    raise TimeoutError(f"sigillo serve did not listen on {ports}")


async def send(port: int, recipient: str, data: bytes) -> None:
    def go() -> None:
        import smtplib

        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail(STAFF, [recipient], data)

    await asyncio.to_thread(go)


async def wait_relayed(relay: RelayRecorder, sender: str) -> EmailMessage:
    for _ in range(600):
        for _, _, raw in list(relay.received):
            message = parse(raw)
            if sender in str(message["From"]):
                return message
        await asyncio.sleep(0.05)
    raise TimeoutError("the reply never reached the relay")


async def audit_rows(database_url: str) -> list[str]:
    """Every column of every audit entry (and the head), as text."""
    store = Store(database_url)
    try:
        async with store.session() as session:
            events = (await session.execute(select(AuditEvent))).scalars().all()
            head = (await session.execute(select(AuditHead))).scalars().all()
    finally:
        await store.close()
    texts = []
    for row in [*events, *head]:
        columns = {c.key: getattr(row, c.key) for c in row.__table__.columns}
        texts.append(json.dumps(columns, default=str, ensure_ascii=False))
    return texts


@pytest.mark.peers
async def test_logs_and_audit_hold_no_content_or_passwords(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer
) -> None:
    recipient = f"patient-{secrets.token_hex(4)}@plain.test"
    subject = distinctive("subject", "Biopsy {0} outcome")
    body = distinctive("body", "Gentile paziente, esito negativo e confermato, città {0}.")
    attachment = distinctive("attachment", "%PDF-1.4 referto {0} fine")
    reply = distinctive("reply", "Grazie, ho ancora dolore al fianco {0}.")
    reply_file = distinctive("reply attachment", "farmaci: ramipril {0}")
    password = distinctive("password", "horse {0} staple")
    wrong = distinctive("wrong password", "battery {0} wrong")
    new_password = distinctive("new password", "new {0} passphrase")
    staff_password = distinctive("staff password", "colleague {0} passphrase")
    original = staff_message(
        recipient,
        subject=subject.value.decode(),
        text=body.value.decode(),
        attachments=(("referto.pdf", "application/pdf", attachment.value),),
        sender=STAFF,
    )

    relay = RelayRecorder()
    loop = asyncio.get_running_loop()
    relay_server = await loop.create_server(lambda: SMTP(relay), "127.0.0.1", 0)
    relay_port = relay_server.sockets[0].getsockname()[1]
    config = serve_config(tmp_path, mx_peers, dns_peer, relay_port)
    client: PortalClient | None = None
    try:
        async with sigillo_serve(config, tmp_path) as served:
            client = PortalClient(served.url, "127.0.0.1")
            await send(served.smtp_port, recipient, original)
            [link] = await notification_links(mx_peers, recipient, 1)
            token = Secret("link token", *[link.rsplit("/", 1)[1].encode()] * 2)

            registered = await client.submit(
                f"/c/{token.value.decode()}",
                password=password.value.decode(),
                password_confirm=password.value.decode(),
            )
            assert registered.status_code == 303, registered.text[:300]
            conversation = registered.headers["location"]
            page = await client.get(conversation)
            assert body.value.decode() in page.text and subject.value.decode() in page.text
            [download] = _DOWNLOAD.findall(page.text)
            assert (await client.get(download)).content == attachment.value

            await client.get(conversation)  # a fresh form token
            replied = await client.http.post(
                f"{conversation}/reply",
                data={"csrf_token": client.csrf(), "body": reply.value.decode(), "send_copy": "1"},
                files=[("attachments", ("farmaci.txt", reply_file.value, "text/plain"))],
            )
            assert replied.status_code == 303
            relayed = await wait_relayed(relay, recipient)
            assert reply.value.decode() in body_text(relayed)
            await received(
                mx_peers,
                1,
                lambda m: (
                    m.recipient == recipient and "Copy of your reply" in str(m.message["Subject"])
                ),
            )

            stranger = PortalClient(served.url, "127.0.0.1")
            try:
                failed = await stranger.login(recipient, wrong.value.decode())
                assert failed.status_code == 401
                await stranger.submit("/forgot", email=recipient)
                [reset_mail] = await received(
                    mx_peers,
                    1,
                    lambda m: m.recipient == recipient and "/reset/" in body_text(m.message),
                )
                found = _RESET.findall(body_text(reset_mail.message))[0].encode()
                reset_token = Secret("reset token", found, found)
                path = f"/reset/{reset_token.value.decode()}"
                new = new_password.value.decode()
                done = await stranger.submit(path, password=new, password_confirm=new)
                assert done.status_code == 303
                assert (await stranger.login(recipient, new)).status_code == 303
            finally:
                await stranger.close()

            # A member of staff enrols from the link 'sigillo staff add' prints and opens the
            # conversation's content, stating a purpose.
            added = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "sigillo",
                    "staff",
                    "add",
                    AGENT,
                    "--role",
                    "agent",
                    "--config",
                    str(config),
                ],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            assert added.returncode == 0, added.stderr
            enrol_path = urllib.parse.urlsplit(added.stdout.strip()).path
            enrol_token = Secret("enrolment token", *[enrol_path.rsplit("/", 1)[1].encode()] * 2)
            agent = PortalClient(served.url, "127.0.0.1")
            try:
                page = await agent.get(enrol_path)
                shown = _TOTP_SECRET.search(page.text)
                assert shown, page.text[:500]
                seed = shown[1].replace(" ", "")
                totp_secret = Secret("TOTP secret", seed.encode(), seed.encode())
                enrolled = await agent.submit(
                    enrol_path,
                    password=staff_password.value.decode(),
                    password_confirm=staff_password.value.decode(),
                    code=pyotp.TOTP(seed).now(),
                )
                assert enrolled.status_code == 303, enrolled.text[:300]
                found = await agent.get(f"/staff/conversations?address={recipient}")
                [case] = _STAFF_CONVERSATION.findall(found.text)
                opened = await agent.submit(
                    case,
                    action=f"{case}/open",
                    reason="the patient asked by phone about the biopsy result",
                    case_ref="CASE-2026-1",
                )
                assert opened.status_code == 200 and body.value.decode() in opened.text
            finally:
                await agent.close()
    finally:
        if client is not None:
            await client.close()
        relay_server.close()
        await relay_server.wait_closed()

    log_lines = served.log.read_text(errors="replace").splitlines()
    stdout = (tmp_path / "serve.out").read_text(errors="replace").splitlines()
    events = [json.loads(line)["event"] for line in log_lines]  # JSON lines, every one
    assert {"serving", "stopping"} <= set(events), events
    audit = await audit_rows(served.database_url)
    actions = {json.loads(text).get("action") for text in audit}
    assert {
        "portal.register",
        "portal.view",
        "portal.download",
        "portal.reply",
        "portal.login_failed",
        "portal.reset_requested",
        "portal.password_reset",
        "portal.login",
        "staff.added",
        "staff.enrolled",
        "staff.content_opened",
    } <= actions, actions

    sensitive = [
        subject,
        body,
        attachment,
        reply,
        reply_file,
        password,
        wrong,
        new_password,
        token,
        reset_token,
        staff_password,
        totp_secret,
        enrol_token,
    ]
    assert leaks(sensitive, log_lines + stdout) == {}
    assert leaks(sensitive, audit) == {}

    # The scan can fail: each value, planted in any form it looks for, is found; so is the
    # plain value inside structlog's JSON (non-ASCII escaped) and in other case.
    for secret in sensitive:
        for needle in secret.needles():
            planted = [*log_lines[:3], json.dumps({"event": "x", "note": needle})]
            assert secret.name in leaks(sensitive, planted), (secret.name, needle)
        for line in (
            json.dumps({"event": "x", "note": secret.value.decode()}),
            json.dumps(
                {
                    "event": "x",
                    "note": f"..{secret.value[secret.value.index(secret.marker) :].decode()}",
                }
            ),
            f"note={secret.value.decode().upper()}",
            f"raw={base64.b64encode(b'Subject: ' + secret.value).decode()}",
        ):
            assert secret.name in leaks(sensitive, [line]), (secret.name, line)
