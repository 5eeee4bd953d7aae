"""A running portal with its staff console, members of staff made to order, and browsers
(cookie-keeping HTTP clients) signed in as them.

    async with running_console(staff_settings(tmp_path, store_url)) as console:
        admin = await console.member("ada@org.example", StaffRole.ADMIN)
        client = await console.signed_in(admin)
        page = await client.get("/staff/admin/staff")
        response = await client.post("/staff/admin/staff", email="x@org.example", roles="agent")
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyotp
from sqlalchemy import select, update
from starlette.applications import Starlette
from starlette.routing import Mount

from sigillo.config import Settings
from sigillo.portal.app import create_app
from sigillo.staff import accounts, totp
from sigillo.staff.pages.base import Console
from sigillo.store import migrate
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import AuditEvent, StaffAccount, StaffRole, StaffSession
from tests.portal.harness import (
    CHEAP,
    GOOD_PASSWORD,
    PortalClient,
    PortalHarness,
    Seeded,
    portal_settings,
    serving,
)

__all__ = [
    "GOOD_PASSWORD",
    "ConsoleHarness",
    "Member",
    "StaffClient",
    "running_console",
    "staff_settings",
]


def staff_settings(tmp_path: Path, database_url: str, **portal: Any) -> Settings:
    return portal_settings(tmp_path, database_url, **portal)


@dataclass(frozen=True)
class Member:
    id: int
    email: str
    roles: frozenset[StaffRole]
    secret: str
    """The TOTP secret (base32)."""
    password: str
    enrolment_token: str | None
    """The enrolment link's token, for a member not enrolled yet."""

    def code(self, at: datetime | None = None) -> str:
        return pyotp.TOTP(self.secret).at(at or datetime.now(UTC))


class StaffClient(PortalClient):
    """A browser for the console: it knows how to fill in the form token of any POST."""

    def __init__(self, url: str, source: str, console: Console) -> None:
        super().__init__(url, source)
        self.console = console

    def cookie(self) -> str:
        return self.http.cookies.get(self.console.sessions.cookie_name) or ""

    def token(self) -> str:
        """The form token that goes with this browser's current cookie."""
        return self.console.sessions.tokens.token(self.cookie())

    async def post(self, path: str, data: Any = None, **fields: Any) -> httpx.Response:
        """POST ``fields`` (or ``data``: a dict, or a list of pairs for repeated names) with
        this browser's form token; the cookie is first obtained if the browser has none."""
        if not self.cookie():
            await self.get("/staff/login")
        pairs = list(data.items() if isinstance(data, dict) else data or []) + list(fields.items())
        form: dict[str, list[str]] = {"csrf_token": [self.token()]}
        for name, value in pairs:
            form.setdefault(name, []).append(value)
        self.last = await self.http.post(path, data=form)
        return self.last

    async def login(  # type: ignore[override]
        self, email: str, password: str = GOOD_PASSWORD, code: str = "", next_page: str = ""
    ) -> httpx.Response:
        await self.get("/staff/login")
        fields = {"email": email, "password": password, "code": code}
        if next_page:
            fields["next"] = next_page
        return await self.post("/staff/login", **fields)


class ConsoleHarness:
    def __init__(self, settings: Settings, store: Store, keyring: Keyring, url: str) -> None:
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.url = url
        self.console: Console
        self.app: Starlette
        """The console application (mounted at /staff): its routes are the console's."""
        self.clients: list[StaffClient] = []

    def client(self, source: str = "127.0.0.1") -> StaffClient:
        client = StaffClient(self.url, source, self.console)
        self.clients.append(client)
        return client

    async def member(
        self,
        email: str,
        *roles: StaffRole,
        enrolled: bool = True,
        password: str = GOOD_PASSWORD,
    ) -> Member:
        """A member of staff made as ``sigillo staff add`` makes one; ``enrolled`` also sets
        the password as the enrolment page would (without spending a TOTP step)."""
        now = datetime.now(UTC)
        valid = self.settings.staff.enrolment_valid
        token = await self.store.write(
            lambda s: accounts.add(s, self.keyring, email, roles, actor="test", at=now, valid=valid)
        )
        account = await self.account(email)
        secret = totp.secret_of(self.keyring, account)
        assert secret is not None
        if enrolled:
            encoded = CHEAP.hash(password)
            await self.store.write(
                lambda s: s.execute(
                    update(StaffAccount)
                    .where(StaffAccount.id == account.id)
                    .values(password_hash=encoded, enrolled_at=now)
                )
            )
        return Member(
            account.id,
            account.email,
            frozenset(roles),
            secret,
            password,
            None if enrolled else token,
        )

    async def seed(self, recipient: str, content: bytes | None = None) -> Seeded:
        """A conversation in the portal, as the worker hands one over (see PortalHarness)."""
        portal = PortalHarness(self.settings, self.store, self.keyring, self.url, None)  # type: ignore[arg-type]
        return await portal.seed(recipient, content)

    async def account(self, email: str) -> StaffAccount:
        async with self.store.session() as session:
            row = await session.execute(select(StaffAccount).where(StaffAccount.email == email))
            return row.scalars().one()

    async def forget_last_code(self, member: Member) -> None:
        """As if the member's last code were long ago: the current one is accepted again."""
        await self.store.write(
            lambda s: s.execute(
                update(StaffAccount).where(StaffAccount.id == member.id).values(totp_last_step=None)
            )
        )

    async def signed_in(self, member: Member, source: str = "127.0.0.1") -> StaffClient:
        """A new browser signed in as ``member`` through the sign-in page."""
        await self.forget_last_code(member)
        client = self.client(source)
        response = await client.login(member.email, member.password, member.code())
        assert response.status_code == 303, response.text[:500]
        return client

    async def age_sessions(self, member: Member, *, idle: timedelta, age: timedelta) -> None:
        """Move the member's sessions into the past: last seen ``idle`` ago, begun ``age``
        ago."""
        now = datetime.now(UTC)
        await self.store.write(
            lambda s: s.execute(
                update(StaffSession)
                .where(StaffSession.staff_id == member.id)
                .values(last_seen_at=now - idle, created_at=now - age)
            )
        )

    async def sessions(self, member: Member) -> list[StaffSession]:
        async with self.store.session() as session:
            rows = await session.execute(
                select(StaffSession).where(StaffSession.staff_id == member.id)
            )
            return list(rows.scalars().all())

    async def audit(self, action: str | None = None) -> list[AuditEvent]:
        async with self.store.session() as session:
            query = select(AuditEvent).order_by(AuditEvent.seq)
            if action is not None:
                query = query.where(AuditEvent.action == action)
            return list((await session.execute(query)).scalars().all())


@asynccontextmanager
async def running_console(settings: Settings) -> AsyncIterator[ConsoleHarness]:
    """The portal (and so the console under /staff) on an ephemeral port."""
    store = Store(settings.storage.database_url)
    await migrate.upgrade(store)
    keyring = Keyring.load_or_create(settings.storage.key_file)
    app = create_app(settings, store, keyring, hasher=CHEAP)
    try:
        async with serving(app) as url:
            harness = ConsoleHarness(settings, store, keyring, url)
            harness.app = console_app(app)
            harness.console = harness.app.state.console
            try:
                yield harness
            finally:
                for client in harness.clients:
                    await client.close()
    finally:
        await store.close()


def console_app(app: Any) -> Starlette:
    for route in app.router.routes:
        if isinstance(route, Mount) and route.path == "/staff":
            assert isinstance(route.app, Starlette)
            return route.app
    raise LookupError("the portal mounts no staff console")
