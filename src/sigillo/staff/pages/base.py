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
Strings go through ``_()``; their translations live in ``.po`` files under
``sigillo/staff/locale/<lang>/LC_MESSAGES/`` (every file there is loaded).
"""

from __future__ import annotations

import gettext
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from sigillo.config import Settings
from sigillo.portal import i18n
from sigillo.portal.pages.base import LANG_COOKIE, local_page, read_form
from sigillo.portal.passwords import PasswordHasher
from sigillo.portal.sessions import new_cookie_value
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


def utcnow() -> datetime:
    return datetime.now(UTC)


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
class Visit:
    """One request as far as the console knows it, signed in or not."""

    cookie: str
    user: SignedInStaff | None
    lang: str
    client: str
    translations: gettext.GNUTranslations = field(repr=False)
    here: str = PREFIX + "/"
    expired: bool = False
    send_cookie: bool = False

    def gettext(self, message: str) -> str:
        return self.translations.gettext(message)

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
    ) -> None:
        """An audit entry by this member, in the caller's ``store.write`` transaction."""
        audit.record(
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


def form_text(value: object, limit: int) -> str:
    """A form field as text, cut just past ``limit`` so an oversized value is still refused
    as too long; text that cannot be UTF-8 (lone surrogates) is no text at all."""
    if not isinstance(value, str):
        return ""
    try:
        value.encode()
    except UnicodeEncodeError:
        return ""
    return value[: limit + 1]


Handler = Callable[[Page], Awaitable[Response]]
PublicHandler = Callable[[Request, Visit], Awaitable[Response]]


class Console:
    """The console's shared state, built once by ``create_console``."""

    def __init__(
        self, settings: Settings, store: Store, keyring: Keyring, hasher: PasswordHasher
    ) -> None:
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.sessions = StaffSessions(
            store, keyring.derive(FORM_PURPOSE), https=settings.portal.https
        )
        self.signin = StaffSignIn(store, keyring, hasher)
        self.nav: list[NavItem] = []
        self.translations = {
            lang: i18n.load_catalogues("sigillo.staff", lang) for lang in i18n.LANGUAGES
        }
        templates = str(resources.files("sigillo.staff").joinpath("templates"))
        self.templates: dict[str, Environment] = {}
        for lang, translations in self.translations.items():
            env = Environment(
                loader=FileSystemLoader(templates),
                autoescape=select_autoescape(default=True, default_for_string=True),
                extensions=["jinja2.ext.i18n"],
                trim_blocks=True,
                lstrip_blocks=True,
            )
            env.install_gettext_translations(translations, newstyle=True)  # type: ignore[attr-defined]
            self.templates[lang] = env

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

    # -- who is asking -----------------------------------------------------------------------

    def stranger(self, request: Request) -> Visit:
        """The visit as far as it is known without the database."""
        lang = request.cookies.get(LANG_COOKIE)
        if lang not in i18n.LANGUAGES:
            lang = i18n.negotiate(
                request.headers.get("accept-language"), self.settings.portal.default_language
            )
        client = request.client.host if request.client else "-"
        cookie = request.cookies.get(self.sessions.cookie_name, "")
        visit = Visit(cookie, None, lang, client, self.translations[lang])
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if local_page(here):
            visit.here = here
        if not 16 <= len(cookie) <= 64:
            visit.cookie, visit.send_cookie = new_cookie_value(), True
        return visit

    async def visit(self, request: Request) -> Visit:
        cached: Visit | None = getattr(request.state, "staff_visit", None)
        if cached is not None:
            return cached
        visit = self.stranger(request)
        if not visit.send_cookie:
            now = utcnow()
            found = await self.sessions.lookup(visit.cookie, now)
            visit.user, visit.expired = found.user, found.expired
            if found.expired:
                visit.cookie, visit.send_cookie = new_cookie_value(), True
            elif found.user is not None and found.touch:
                await self.sessions.touch(found.user, now)
        request.state.staff_visit = visit
        return visit

    def signed_in(self, visit: Visit, cookie: str) -> None:
        visit.cookie, visit.send_cookie = cookie, True

    def signed_out(self, visit: Visit) -> None:
        visit.user = None
        visit.cookie, visit.send_cookie = new_cookie_value(), True

    async def form(self, request: Request, visit: Visit, *, limit: int = FORM_LIMIT) -> FormData:
        """A POST's form once its token is checked (403 without a valid one); empty for
        other methods."""
        if request.method != "POST":
            return FormData()
        form = await read_form(request, limit=limit)
        if not self.sessions.tokens.valid(visit.cookie, form.get("csrf_token")):
            await form.close()
            raise HTTPException(403)
        return form

    # -- responses -----------------------------------------------------------------------

    def nav_for(self, member: StaffMember | None) -> list[NavItem]:
        if member is None:
            return []
        return [item for item in self.nav if member.has(*item.roles)]

    def render(self, visit: Visit, template: str, *, status: int = 200, **context: Any) -> Response:
        env = self.templates[visit.lang]
        member = visit.member()
        context.setdefault("here", visit.here)
        page = env.get_template(template).render(
            lang=visit.lang,
            languages=i18n.LANGUAGE_NAMES,
            member=member,
            nav=self.nav_for(member),
            csrf_token=self.sessions.tokens.token(visit.cookie),
            fmt=i18n.Formats(visit.lang, self.settings.portal.timezone),
            **context,
        )
        return self.finish(visit, HTMLResponse(page, status_code=status))

    def redirect(self, visit: Visit, url: str) -> Response:
        return self.finish(visit, RedirectResponse(url, status_code=303))

    def sign_in_redirect(self, visit: Visit, after: str) -> Response:
        ended = "&ended=1" if visit.expired else ""
        return self.redirect(visit, f"{PREFIX}/login?next={quote(after, safe='/')}{ended}")

    def finish(self, visit: Visit, response: Response) -> Response:
        if visit.send_cookie:
            response.set_cookie(
                self.sessions.cookie_name,
                visit.cookie,
                path="/",
                httponly=True,
                secure=self.sessions.https,
                samesite="lax",
            )
        return response

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
