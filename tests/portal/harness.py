"""An in-process portal on a real socket, a store seeded with conversations, and an HTTP
client that behaves like a browser without JavaScript (cookies, form tokens, redirects)."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sqlalchemy import select

from sigillo.config import Settings
from sigillo.gateway import queue
from sigillo.notify import new_token
from sigillo.portal.app import create_app
from sigillo.portal.handoff import hand_off
from sigillo.portal.pages.base import Portal
from sigillo.portal.passwords import HashParams, PasswordHasher
from sigillo.server import EmbeddedUvicorn
from sigillo.store import migrate
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import AuditEvent, Conversation, Job, JobKind, PortalToken

CHEAP = PasswordHasher(HashParams(time_cost=1, memory_cost=8, parallelism=1))
"""Fast hashing for tests; production parameters are the hasher's defaults."""
GOOD_PASSWORD = "correct horse battery staple"

_CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


def portal_settings(tmp_path: Path, database_url: str, **portal: Any) -> Settings:
    return Settings.model_validate(
        {
            "smtp": {"hostname": "gw.org.example"},
            "portal": {"base_url": "http://127.0.0.1:8080", **portal},
            "relay": {"host": "127.0.0.1:9", "internal_domains": ["org.example"]},
            "notify": {"from": "secure@org.example"},
            "storage": {"database_url": database_url, "key_file": str(tmp_path / "keys")},
        }
    )


@dataclass(frozen=True)
class Seeded:
    conversation_id: int
    token: str
    message_id: str


def staff_message(
    recipient: str,
    *,
    subject: str = "Your test results",
    text: str = "Dear patient, your results are attached.",
    html: str | None = None,
    attachments: tuple[tuple[str, str, bytes], ...] = (),
    sender: str = "doctor@org.example",
    in_reply_to: str | None = None,
) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = f"Dr. Rossi <{sender}>"
    msg["To"] = recipient
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain="org.example")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for name, ctype, data in attachments:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()


class PortalHarness:
    def __init__(
        self, settings: Settings, store: Store, keyring: Keyring, url: str, portal: Portal
    ) -> None:
        self.portal = portal
        self.clients: list[PortalClient] = []
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.url = url

    async def seed(
        self, recipient: str, content: bytes | None = None, *, age: timedelta = timedelta(0)
    ) -> Seeded:
        """A copy handed to the portal as the worker would, and a notification link to it."""
        content = content or staff_message(recipient)
        now = datetime.now(UTC) - age
        message = queue.new_message(
            self.keyring,
            mail_from="doctor@org.example",
            content=content,
            client_address="127.0.0.1",
            now=now,
        )
        token, digest = new_token()
        message_id = message.id
        delivery = self.settings.delivery

        def write(session: Any) -> int:
            session.add(message)
            session.flush()
            conversation = hand_off(
                session, delivery, message_id, recipient, recipient.rpartition("@")[2], content, now
            )
            session.flush()
            session.add(
                PortalToken(
                    token_hash=digest,
                    conversation_id=conversation.id,
                    recipient=recipient,
                    created_at=now,
                )
            )
            return conversation.id

        conversation_id = await self.store.write(write)
        return Seeded(conversation_id, token, message_id)

    async def age(self, conversation_id: int, days: int) -> None:
        def write(session: Any) -> None:
            conversation = session.get(Conversation, conversation_id)
            conversation.last_message_at -= timedelta(days=days)

        await self.store.write(write)

    async def audit(self, action: str | None = None) -> list[AuditEvent]:
        async with self.store.session() as session:
            query = select(AuditEvent).order_by(AuditEvent.id)
            if action is not None:
                query = query.where(AuditEvent.action == action)
            return list((await session.execute(query)).scalars().all())

    async def jobs(self, kind: JobKind) -> list[Job]:
        async with self.store.session() as session:
            rows = await session.execute(select(Job).where(Job.kind == kind).order_by(Job.id))
            return list(rows.scalars().all())

    async def mail(self, kind: JobKind, recipient: str) -> list[bytes]:
        """The content of queued mail of ``kind`` to ``recipient``, decrypted."""
        found = []
        for job in await self.jobs(kind):
            if job.recipient == recipient and job.message_id:
                async with self.store.session() as session:
                    message = await queue.load_message(session, job.message_id)
                found.append(queue.open_content(self.keyring, message))
        return found

    async def wait_for_mail(self, kind: JobKind, recipient: str, count: int) -> list[bytes]:
        """Mail queued after a response has gone out (a background task), once it is there."""
        for _ in range(200):
            found = await self.mail(kind, recipient)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.025)
        raise TimeoutError(f"{count} {kind} mail(s) to {recipient} never queued")

    async def wait_for_audit(self, action: str, count: int) -> list[AuditEvent]:
        for _ in range(200):
            found = await self.audit(action)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.025)
        raise TimeoutError(f"{count} {action} audit entries never written")

    def app_state(self) -> Portal:
        return self.portal

    def client(self, source: str = "127.0.0.1") -> PortalClient:
        """A new browser (own cookies); closed when the portal stops."""
        client = PortalClient(self.url, source)
        self.clients.append(client)
        return client


class PortalClient:
    """A cookie-keeping HTTP client from ``source`` (a loopback address of its own, so
    per-client rules can be tested)."""

    def __init__(self, url: str, source: str) -> None:
        transport = httpx.AsyncHTTPTransport(local_address=source)
        self.http = httpx.AsyncClient(base_url=url, transport=transport, timeout=30)
        self.last: httpx.Response | None = None

    async def close(self) -> None:
        await self.http.aclose()

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        self.last = await self.http.get(path, **kwargs)
        return self.last

    def csrf(self) -> str:
        assert self.last is not None
        match = _CSRF.search(self.last.text)
        assert match, self.last.text[:500]
        return match[1]

    async def submit(
        self, page: str, action: str | None = None, files: Any = None, **fields: str
    ) -> httpx.Response:
        """GET ``page``, then POST its form token and ``fields`` to ``action`` (or ``page``)."""
        await self.get(page)
        data = {"csrf_token": self.csrf(), **fields}
        self.last = await self.http.post(action or page, data=data, files=files)
        return self.last

    async def register(self, token: str, password: str = GOOD_PASSWORD) -> httpx.Response:
        return await self.submit(f"/c/{token}", password=password, password_confirm=password)

    async def login(
        self, email: str, password: str = GOOD_PASSWORD, next_page: str | None = None
    ) -> httpx.Response:
        fields = {"email": email, "password": password}
        if next_page:
            fields["next"] = next_page
        return await self.submit("/login", **fields)


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` on an ephemeral loopback port in this event loop; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = EmbeddedUvicorn(
        uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", proxy_headers=False)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@asynccontextmanager
async def running_portal(settings: Settings) -> AsyncIterator[PortalHarness]:
    store = Store(settings.storage.database_url)
    await migrate.upgrade(store)
    keyring = Keyring.load_or_create(settings.storage.key_file)
    app = create_app(settings, store, keyring, hasher=CHEAP)
    harness: PortalHarness | None = None
    try:
        async with serving(app) as url:
            harness = PortalHarness(settings, store, keyring, url, app.state.portal)
            try:
                yield harness
            finally:
                for client in harness.clients:
                    await client.close()
    finally:
        await store.close()
