"""An in-process sigillo (listener + worker) wired to the real peers, and a recording relay
standing in for the organisation's own mail server."""

from __future__ import annotations

import asyncio
import re
import smtplib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message as EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select

from sigillo.config import Settings
from sigillo.gateway.listener import start_listener
from sigillo.gateway.worker import Worker
from sigillo.portal.app import create_app
from sigillo.store import migrate
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import Attempt, Job, JobKind, JobState
from tests.peers.dnsmasq import DnsmasqPeer
from tests.peers.fixtures import MxPeers
from tests.peers.postfix import ReceivedMail
from tests.portal.harness import CHEAP, serving


@dataclass
class RelayRecorder:
    """The organisation's mail server: records what sigillo hands back (DSNs, replies)."""

    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert envelope.original_content is not None
        self.received.append(
            (envelope.mail_from or "", list(envelope.rcpt_tos), envelope.original_content)
        )
        return "250 2.0.0 recorded"

    def messages(self) -> list[EmailMessage]:
        return [message_from_bytes(raw) for _, _, raw in self.received]


def gateway_settings(
    tmp_path: Path,
    mx: MxPeers,
    dns: DnsmasqPeer,
    relay_port: int,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    base: dict[str, dict[str, Any]] = {
        "smtp": {"listen": "127.0.0.1:0", "hostname": "gw.org.example"},
        "dns": {"nameservers": [f"{dns.address}:{dns.port}"], "timeout": "3s"},
        "delivery": {
            "mx_port": mx.port,
            "ca_file": str(mx.ca_file),
            "retry_initial": "1s",
            "retry_max": "2s",
            "poll_interval": "100ms",
            "connect_timeout": "3s",
            "command_timeout": "20s",
        },
        "relay": {"host": f"127.0.0.1:{relay_port}"},
        "portal": {"base_url": "https://portal.org.example"},
        "storage": {
            "database_url": f"sqlite:///{tmp_path}/sigillo.db",
            "key_file": str(tmp_path / "sigillo.keys"),
        },
    }
    for name, values in (overrides or {}).items():
        base.setdefault(name, {}).update(values)
    return Settings.model_validate(base)


class Gateway:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        keyring: Keyring,
        port: int,
        relay: RelayRecorder,
        portal_url: str = "",
    ) -> None:
        self.portal_url = portal_url
        """Where the portal role listens (when started with ``portal=True``)."""
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.port = port
        self.relay = relay

    async def send(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        def go() -> str:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
                client.ehlo("mail.org.example")
                client.mail(mail_from)
                for r in rcpts:
                    code, text = client.rcpt(r)
                    assert code == 250, (code, text)
                code, text = client.data(data)
                assert code == 250, (code, text)
            match = re.search(rb"queued as ([0-9a-f]{32})", text)
            assert match, text
            return match[1].decode()

        return await asyncio.to_thread(go)

    async def jobs(self, message_id: str, kind: JobKind | None = None) -> list[Job]:
        async with self.store.session() as session:
            query = select(Job).where(Job.message_id == message_id).order_by(Job.id)
            if kind is not None:
                query = query.where(Job.kind == kind)
            return list((await session.execute(query)).scalars().all())

    async def attempts(self, job_id: int) -> list[Attempt]:
        async with self.store.session() as session:
            rows = await session.execute(
                select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.id)
            )
            return list(rows.scalars().all())

    async def notify_jobs(self, recipient: str) -> list[Job]:
        async with self.store.session() as session:
            rows = await session.execute(
                select(Job).where(Job.kind == JobKind.NOTIFY, Job.recipient == recipient)
            )
            return list(rows.scalars().all())

    async def settle(self, message_id: str, timeout: float = 30) -> list[Job]:
        """Wait until every DELIVER job of the message has left the queue; return them."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = await self.jobs(message_id, JobKind.DELIVER)
            if jobs and all(j.state is not JobState.QUEUED for j in jobs):
                return jobs
            if time.monotonic() > deadline:
                raise TimeoutError([(j.recipient, j.state, j.reason) for j in jobs])
            await asyncio.sleep(0.05)

    async def wait_state(self, job_id: int, states: set[JobState], timeout: float = 30) -> Job:
        deadline = time.monotonic() + timeout
        while True:
            async with self.store.session() as session:
                job = await session.get(Job, job_id)
            assert job is not None
            if job.state in states:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError((job.recipient, job.state, job.reason))
            await asyncio.sleep(0.05)


async def received(
    mx: MxPeers, count: int, match: Callable[[ReceivedMail], bool]
) -> list[ReceivedMail]:
    """Wait for Postfix deliveries without blocking the event loop sigillo runs in."""
    return await asyncio.to_thread(mx.peer.wait_for, count, 30, match=match)


@asynccontextmanager
async def running_gateway(
    tmp_path: Path,
    mx: MxPeers,
    dns: DnsmasqPeer,
    overrides: dict[str, dict[str, Any]] | None = None,
    *,
    portal: bool = False,
) -> AsyncIterator[Gateway]:
    """Listener and worker; with ``portal`` also the portal (cheap password hashing), whose
    notification links then point at it."""
    relay = RelayRecorder()
    loop = asyncio.get_running_loop()
    relay_server = await loop.create_server(lambda: SMTP(relay), "127.0.0.1", 0)
    relay_port = relay_server.sockets[0].getsockname()[1]
    settings = gateway_settings(tmp_path, mx, dns, relay_port, overrides)
    store = Store(settings.storage.database_url)
    await migrate.upgrade(store)
    keyring = Keyring.load_or_create(settings.storage.key_file)
    worker = Worker(settings, store, keyring)
    listener = await start_listener(settings, store, keyring, worker.notify_queued)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    port = listener.sockets[0].getsockname()[1]
    try:
        if portal:
            app = create_app(settings, store, keyring, hasher=CHEAP, on_queued=worker.notify_queued)
            async with serving(app) as url:
                # Links in notifications lead to this portal.
                settings.portal.base_url = url
                yield Gateway(settings, store, keyring, port, relay, url)
        else:
            yield Gateway(settings, store, keyring, port, relay)
    finally:
        stop.set()
        await task
        listener.close()
        await listener.wait_closed()
        relay_server.close()
        await relay_server.wait_closed()
        await store.close()
