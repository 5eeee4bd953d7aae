"""What every page handler shares: who is asking, in which language, with which form token,
and how a page or a redirect goes back with the session cookie. ``Site`` is that for the
portal and for the staff console alike; ``Portal`` adds the portal's own."""

from __future__ import annotations

import gettext
import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Generic, TypeVar

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from sigillo.config import Settings
from sigillo.portal import i18n
from sigillo.portal.accounts import Accounts
from sigillo.portal.conversations import Conversations
from sigillo.portal.outbox import Outbox
from sigillo.portal.sessions import (
    CookieSessions,
    FormTokens,
    Sessions,
    SessionUser,
    SignedIn,
    new_cookie_value,
)
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store, StoreUnavailable
from sigillo.store.models import Conversation

LANG_COOKIE = "sigillo_lang"
OUTAGES = (StoreUnavailable, OperationalError, InterfaceError, OSError)
"""What a database that is down or unreachable raises."""
FORM_LIMIT = 64 * 1024
"""Every form but a reply (which carries attachments) fits in this."""
_NEXT = re.compile(r"^/(conversations/\d{1,18}|account/(password|phrase))$")


def safe_next(value: object) -> str | None:
    """Where to go after signing in: only our own pages, never another site."""
    return value if isinstance(value, str) and _NEXT.match(value) else None


def local_page(path: str) -> bool:
    """A path on this site (no scheme, no host), safe to send a visitor back to."""
    return (
        path.startswith("/")
        and not path.startswith("//")
        and "\\" not in path
        and all(c.isprintable() and not c.isspace() for c in path)
        and len(path) < 1024
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


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


class BodyTooLarge(Exception):
    pass


class SignInRequired(Exception):
    """The page needs a signed-in visitor; the app answers with the sign-in page."""

    def __init__(self, after: str) -> None:
        super().__init__(after)
        self.after = after


U = TypeVar("U", bound=SessionUser)


@dataclass
class Visit(Generic[U]):
    """One request as far as a site (the portal, the staff console) knows it, signed in or not."""

    cookie: str
    user: U | None
    lang: str
    client: str
    translations: gettext.GNUTranslations = field(repr=False)
    here: str
    """The page asked for (path and query): the language switch returns to it."""
    expired: bool = False
    send_cookie: bool = False
    """The cookie is new (first visit, sign-in, sign-out) and goes out with the response."""

    def gettext(self, message: str) -> str:
        return self.translations.gettext(message)


Visitor = Visit[SignedIn]
V = TypeVar("V", bound=Visit[Any])


class Site(Generic[U, V]):
    """What the portal and the staff console do alike: tell who is asking (language, client
    address, session cookie and the session behind it), check forms, and answer with pages
    and redirects that carry the session cookie. Each has its own sessions, cookie, catalogue
    and templates; ``home`` is where a visit without a page of ours to return to goes."""

    def __init__(
        self,
        settings: Settings,
        sessions: CookieSessions[U],
        translations: dict[str, gettext.GNUTranslations],
        templates: str,
        *,
        visit: type[V],
        home: str,
        state: str,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.translations = translations
        self.templates: dict[str, Environment] = {}
        for lang, catalogue in translations.items():
            env = Environment(
                loader=FileSystemLoader(templates),
                autoescape=select_autoescape(default=True, default_for_string=True),
                extensions=["jinja2.ext.i18n"],
                trim_blocks=True,
                lstrip_blocks=True,
            )
            env.install_gettext_translations(catalogue, newstyle=True)  # type: ignore[attr-defined]
            self.templates[lang] = env
        self._visit = visit
        self.home = home
        self._state = state
        """The request state attribute a request's visit is kept in, once looked up."""

    # -- who is asking -------------------------------------------------------------------

    def stranger(self, request: Request) -> V:
        """The visit as far as it can be known without the database: language, client
        address, cookie value (a fresh one when missing or malformed)."""
        lang = request.cookies.get(LANG_COOKIE)
        if lang not in i18n.LANGUAGES:
            lang = i18n.negotiate(
                request.headers.get("accept-language"), self.settings.portal.default_language
            )
        client = request.client.host if request.client else "-"
        cookie = request.cookies.get(self.sessions.cookie_name, "")
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        visit = self._visit(
            cookie,
            None,
            lang,
            client,
            self.translations[lang],
            here if local_page(here) else self.home,
        )
        if not 16 <= len(cookie) <= 64:
            visit.cookie, visit.send_cookie = new_cookie_value(), True
        return visit

    async def visit(self, request: Request) -> V:
        """The visit with its session, looked up once per request (a timed-out session
        ends, and the visit gets a fresh cookie)."""
        cached: V | None = getattr(request.state, self._state, None)
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
        setattr(request.state, self._state, visit)
        return visit

    def signed_in(self, visit: V, cookie: str) -> None:
        visit.cookie, visit.send_cookie = cookie, True

    def signed_out(self, visit: V) -> None:
        visit.user = None
        visit.cookie, visit.send_cookie = new_cookie_value(), True

    # -- forms ---------------------------------------------------------------------------

    async def form(
        self, request: Request, visit: V, *, limit: int = FORM_LIMIT, files: int = 0
    ) -> FormData:
        """The submitted form, after its token is checked; 403 without a valid one, 413 when
        the body is larger than ``limit``."""
        form = await read_form(request, limit=limit, files=files)
        if not self.sessions.tokens.valid(visit.cookie, form.get("csrf_token")):
            await form.close()
            raise HTTPException(403)
        return form

    async def switch_language(self, request: Request, visit: V) -> Response:
        """The language switch: back to the page it was on, with the chosen language's
        cookie (an unknown language changes nothing)."""
        form = await self.form(request, visit)
        lang = form.get("lang")
        back = form.get("back")
        target = back if isinstance(back, str) and local_page(back) else self.home
        response = self.redirect(visit, target)
        if isinstance(lang, str) and lang in i18n.LANGUAGES:
            response.set_cookie(
                LANG_COOKIE,
                lang,
                max_age=365 * 86400,
                path="/",
                httponly=True,
                secure=self.sessions.https,
                samesite="lax",
            )
        return response

    # -- responses -----------------------------------------------------------------------

    def _page_context(self, visit: V) -> dict[str, Any]:
        """What this site's templates see of the visit besides what every template sees."""
        return {}

    def render(self, visit: V, template: str, *, status: int = 200, **context: Any) -> Response:
        env = self.templates[visit.lang]
        context.setdefault("here", visit.here)
        page = env.get_template(template).render(
            lang=visit.lang,
            languages=i18n.LANGUAGE_NAMES,
            **self._page_context(visit),
            csrf_token=self.sessions.tokens.token(visit.cookie),
            fmt=i18n.Formats(visit.lang, self.settings.portal.timezone),
            **context,
        )
        return self.finish(visit, HTMLResponse(page, status_code=status))

    def redirect(self, visit: V, url: str) -> Response:
        return self.finish(visit, RedirectResponse(url, status_code=303))

    def finish(self, visit: V, response: Response) -> Response:
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


class Portal(Site[SignedIn, Visitor]):
    def __init__(
        self,
        settings: Settings,
        store: Store,
        keyring: Keyring,
        accounts: Accounts,
        on_queued: Callable[[], None] | None,
    ) -> None:
        super().__init__(
            settings,
            Sessions(
                store,
                FormTokens(lambda: keyring.derive_all("sigillo portal form tokens")),
                https=settings.portal.https,
            ),
            {lang: i18n.load_translations(lang) for lang in i18n.LANGUAGES},
            str(resources.files("sigillo.portal").joinpath("templates")),
            visit=Visitor,
            home="/login",
            state="visitor",
        )
        self.store = store
        self.keyring = keyring
        self.accounts = accounts
        self.conversations = Conversations(settings, store, keyring)
        self.outbox = Outbox(settings, store, keyring, on_queued)

    async def visitor(self, request: Request) -> Visitor:
        return await self.visit(request)

    async def member(self, request: Request) -> tuple[Visitor, SignedIn]:
        visitor = await self.visit(request)
        if visitor.user is None:
            after = request.url.path if request.method == "GET" else "/conversations"
            raise SignInRequired(after)
        return visitor, visitor.user

    def _page_context(self, visit: Visitor) -> dict[str, Any]:
        return {"user": visit.user}

    async def expired(self, visitor: Visitor, conversation: Conversation) -> Response:
        """The page of a conversation past its expiry: no content, and whom to contact."""
        return self.render(
            visitor,
            "expired.html",
            status=404,
            expired_at=self.conversations.expires_at(conversation),
            contact=await self.conversations.contact(conversation),
        )


async def read_form(request: Request, *, limit: int, files: int = 0) -> FormData:
    """The submitted form, read without trusting the client: BodyTooLarge past ``limit``
    bytes, 400 for a malformed multipart body, an empty form for any other content type
    (which then fails its token check). The caller checks the form token."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    stream = _limited(request.stream(), limit)
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data"):
            parser = MultiPartParser(
                request.headers, stream, max_files=files, max_fields=20, max_part_size=limit
            )
            # Uploads stay in memory (bounded by ``limit``): never in a temporary file.
            parser.spool_max_size = limit
            return await parser.parse()
        if content_type.startswith("application/x-www-form-urlencoded"):
            return await FormParser(request.headers, stream).parse()
    except MultiPartException:
        raise HTTPException(400) from None
    return FormData()


DRAIN_LIMIT = 128 * 1024 * 1024
"""How much of a refused upload is read and thrown away so that the browser sees the 413
page (a connection closed mid-upload shows the visitor only a network error)."""


async def drain(request: Request) -> bool:
    """Discard the rest of the request body; False if it was longer than ``DRAIN_LIMIT``."""
    discarded = 0
    while discarded <= DRAIN_LIMIT:
        message = await request.receive()
        if message["type"] != "http.request":
            return False
        discarded += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return False


async def _limited(stream: AsyncGenerator[bytes, None], limit: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge
        yield chunk
