"""The staff console's page framework: who is asking, with which roles, in which language,
and how a page answers. Every console route is declared here, with the roles it allows.

Writing a page module
---------------------
A module listed in ``sigillo.staff.pages.PAGES`` exports ``routes(console) -> list[Route]``
and, optionally, ``NAV``: the links it adds to the console's navigation::

    from sigillo.staff.pages.base import N_, Console, NavItem, Page
    from sigillo.store.models import StaffRole

    NAV = (NavItem("/staff/operator/queue", N_("Queue"), frozenset({StaffRole.OPERATOR})),)

    def routes(console: Console) -> list[Route]:
        async def queue(page: Page) -> Response:
            return page.render("operator_queue.html", entries=[...])

        async def retry(page: Page) -> Response:
            entry = page.text("entry", limit=40)       # CSRF already checked
            await console.store.write(lambda s: ... or page.audit(s, "queue.retried", ...))
            return page.redirect("/staff/operator/queue")

        return [
            console.page("/staff/operator/queue", queue, roles={StaffRole.OPERATOR}),
            console.page(
                "/staff/operator/queue/{entry_id:int}/retry", retry,
                roles={StaffRole.OPERATOR}, methods=("POST",),
            ),
        ]

``console.page(path, handler, roles=..., methods=("GET",), form_limit=FORM_LIMIT)``: paths are
full paths under ``/staff``. Before the handler runs: a visitor who is not signed in is sent
to ``/staff/login?next=...`` (303; after a timeout the sign-in page says the session ended);
a member with none of ``roles`` gets the 403 page (never a redirect); a POST's form is read
(at most ``form_limit`` bytes, else the 413 page) and its ``csrf_token`` checked (else 403).
``roles`` cannot be empty: there is no "any signed-in member" route by accident.

The handler gets a ``Page``: ``page.member`` (``StaffMember``: id, email, roles, session,
language, client), ``page.form`` (empty on GET), ``page.text(name, limit)``,
``page.request.path_params``/``query_params``, ``page.now``, ``page.gettext`` (also ``page._``),
and answers with ``page.render(template, status=200, **context)``, ``page.redirect(url)`` or
``page.error(status)`` (the console's error page). ``page.audit(session, action, ...)``
records an audit entry with the member as actor and client, inside a ``store.write``;
``await page.log(action, ...)`` writes one in a transaction of its own.

Templates live in ``sigillo/staff/templates``, extend ``base.html`` (blocks ``title`` and
``main``) and may import ``macros.html``. Every template sees ``member``, ``csrf_token``
(put it in every POST form as ``<input type="hidden" name="csrf_token" ...>``), ``fmt``
(dates and sizes in the member's language and the portal's time zone), ``lang`` and ``here``.
Strings go through ``_()`` (``N_()`` for navigation labels); ``scripts/catalog.sh`` gathers
them into ``sigillo/staff/locale/<lang>/LC_MESSAGES/staff.po``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import quote

from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sigillo.config import Settings
from sigillo.portal import i18n
from sigillo.portal.pages import base as portal
from sigillo.portal.pages.base import form_text, local_page, utcnow
from sigillo.portal.passwords import PasswordHasher
from sigillo.portal.sessions import FormTokens
from sigillo.staff.sessions import SignedInStaff, StaffSessions
from sigillo.staff.signin import StaffSignIn
from sigillo.store import audit
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import StaffRole

PREFIX = "/staff"
FORM_LIMIT = 64 * 1024
"""The largest form a console page accepts unless it says otherwise."""
FORM_PURPOSE = "sigillo staff form tokens"
"""The key derivation purpose of the console's form tokens (the portal has its own)."""


def N_(message: str) -> str:
    """Marks a message for extraction where it is translated later (navigation labels)."""
    return message


def safe_next(value: object) -> str | None:
    """Where to go after signing in: a console page on this site, nothing else."""
    if not isinstance(value, str) or not local_page(value):
        return None
    return value if value.startswith(PREFIX + "/") else None


class SignInRequired(Exception):
    def __init__(self, after: str) -> None:
        super().__init__(after)
        self.after = after


class NotAllowed(Exception):
    """Signed in, but none of the member's roles opens this page: the 403 page."""


@dataclass(frozen=True)
class StaffMember:
    id: int
    email: str
    roles: frozenset[StaffRole]
    session: str
    """The SHA-256 of the session cookie (never the cookie itself)."""
    language: str
    client: str
    """The client address (the proxy's X-Forwarded-For when from a trusted proxy)."""

    def has(self, *roles: StaffRole) -> bool:
        return bool(self.roles.intersection(roles))


@dataclass(frozen=True)
class NavItem:
    path: str
    label: str
    """A message id, translated when the navigation is drawn."""
    roles: frozenset[StaffRole]


@dataclass
class Visit(portal.Visit[SignedInStaff]):
    """One request as far as the console knows it, signed in or not."""

    def member(self) -> StaffMember | None:
        if self.user is None:
            return None
        return StaffMember(
            self.user.staff_id,
            self.user.email,
            self.user.roles,
            self.user.session_hash,
            self.lang,
            self.client,
        )


@dataclass(frozen=True)
class Page:
    """What a console page handler gets: the request, the signed-in member, the checked form."""

    console: Console
    request: Request
    visit: Visit
    member: StaffMember
    form: FormData
    now: datetime

    def gettext(self, message: str) -> str:
        return self.visit.gettext(message)

    _ = gettext

    def text(self, name: str, limit: int = 200) -> str:
        return form_text(self.form.get(name), limit)

    def render(self, template: str, *, status: int = 200, **context: Any) -> Response:
        return self.console.render(self.visit, template, status=status, **context)

    def redirect(self, url: str) -> Response:
        return self.console.redirect(self.visit, url)

    def error(self, status: int) -> Response:
        return self.console.error_page(self.visit, status)

    def audit(
        self,
        session: Session,
        action: str,
        *,
        conversation_id: int | None = None,
        message_id: str | None = None,
        details: dict[str, object] | None = None,
    ) -> int:
        """An audit entry by this member, in the caller's ``store.write`` transaction; its
        ``seq``."""
        return audit.record(
            session,
            action,
            actor=self.member.email,
            at=self.now,
            client=self.member.client,
            conversation_id=conversation_id,
            message_id=message_id,
            details=details,
        )

    async def log(
        self,
        action: str,
        *,
        conversation_id: int | None = None,
        message_id: str | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        """An audit entry by this member in a transaction of its own (an access that changes
        nothing else)."""
        await self.console.store.write(
            lambda session: self.audit(
                session,
                action,
                conversation_id=conversation_id,
                message_id=message_id,
                details=details,
            )
        )


Handler = Callable[[Page], Awaitable[Response]]
PublicHandler = Callable[[Request, Visit], Awaitable[Response]]


class Console(portal.Site[SignedInStaff, Visit]):
    """The console's shared state, built once by ``create_console``."""

    def __init__(
        self, settings: Settings, store: Store, keyring: Keyring, hasher: PasswordHasher
    ) -> None:
        super().__init__(
            settings,
            StaffSessions(
                store,
                FormTokens(lambda: keyring.derive_all(FORM_PURPOSE)),
                https=settings.portal.https,
            ),
            {
                lang: i18n.load_translations(lang, "sigillo.staff", "staff")
                for lang in i18n.LANGUAGES
            },
            str(resources.files("sigillo.staff").joinpath("templates")),
            visit=Visit,
            home=PREFIX + "/",
            state="staff_visit",
        )
        self.store = store
        self.keyring = keyring
        self.signin = StaffSignIn(store, keyring, hasher)
        self.nav: list[NavItem] = []

    # -- routes ----------------------------------------------------------------------------

    def page(
        self,
        path: str,
        handler: Handler,
        *,
        roles: Collection[StaffRole],
        methods: Iterable[str] = ("GET",),
        form_limit: int = FORM_LIMIT,
    ) -> Route:
        """A console route open to members holding any of ``roles``."""
        allowed = frozenset(roles)
        if not allowed:
            raise ValueError(f"{path}: a console page needs at least one role")

        async def endpoint(request: Request) -> Response:
            visit = await self.visit(request)
            member = visit.member()
            if member is None:
                after = visit.here if request.method == "GET" else PREFIX + "/"
                raise SignInRequired(after)
            if not member.has(*allowed):
                raise NotAllowed
            form = await self.form(request, visit, limit=form_limit)
            return await handler(Page(self, request, visit, member, form, utcnow()))

        return Route(_relative(path), endpoint, methods=list(methods))

    def public(
        self, path: str, handler: PublicHandler, *, methods: Iterable[str] = ("GET",)
    ) -> Route:
        """A route anyone may reach (sign-in, enrolment, language); its handler reads its
        own form with ``console.form``."""

        async def endpoint(request: Request) -> Response:
            return await handler(request, await self.visit(request))

        return Route(_relative(path), endpoint, methods=list(methods))

    # -- forms ---------------------------------------------------------------------------

    async def form(
        self, request: Request, visit: Visit, *, limit: int = FORM_LIMIT, files: int = 0
    ) -> FormData:
        """A POST's form once its token is checked (403 without a valid one); empty for
        other methods."""
        if request.method != "POST":
            return FormData()
        return await super().form(request, visit, limit=limit, files=files)

    # -- responses -----------------------------------------------------------------------

    def nav_for(self, member: StaffMember | None) -> list[NavItem]:
        if member is None:
            return []
        return [item for item in self.nav if member.has(*item.roles)]

    def _page_context(self, visit: Visit) -> dict[str, Any]:
        member = visit.member()
        return {"member": member, "nav": self.nav_for(member)}

    def sign_in_redirect(self, visit: Visit, after: str) -> Response:
        ended = "&ended=1" if visit.expired else ""
        return self.redirect(visit, f"{PREFIX}/login?next={quote(after, safe='/')}{ended}")

    def error_page(self, visit: Visit, status: int) -> Response:
        _ = visit.gettext
        pages = {
            400: (_("Something in the request was not right"), _("Go back and try again.")),
            403: (
                _("This form has expired"),
                _("The form could not be accepted. Go back, reload the page and try again."),
            ),
            404: (_("Page not found"), _("There is nothing here.")),
            413: (_("Too large"), _("The form sent is larger than this page accepts.")),
            503: (
                _("Temporarily unavailable"),
                _("The database cannot be reached right now. Try again in a few minutes."),
            ),
        }
        title, text = pages.get(status, (_("Something went wrong"), _("Please try again later.")))
        return self.render(visit, "notice.html", status=status, title=title, text=text)

    def not_allowed(self, visit: Visit) -> Response:
        _ = visit.gettext
        return self.render(
            visit,
            "notice.html",
            status=403,
            title=_("Not allowed"),
            text=_("Your roles do not include this page. Ask an administrator if you need it."),
        )


def _relative(path: str) -> str:
    if not path.startswith(PREFIX + "/"):
        raise ValueError(f"console paths start with {PREFIX}/: {path}")
    return path.removeprefix(PREFIX)
