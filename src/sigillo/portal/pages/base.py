"""What every page handler shares: who is asking, in which language, with which form token,
and how a page or a redirect goes back with the session cookie."""

from __future__ import annotations

import gettext
import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

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
from sigillo.portal.sessions import Sessions, SignedIn, new_cookie_value
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store, StoreUnavailable
from sigillo.store.models import Conversation

LANG_COOKIE = "sigillo_lang"
OUTAGES = (StoreUnavailable, OperationalError, InterfaceError, OSError)
"""What a database that is down or unreachable raises."""
FORM_LIMIT = 64 * 1024
"""Every form but a reply (which carries attachments) fits in this."""
_NEXT = re.compile(r"^/(conversations/\d{1,18}|account/password)$")


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


class BodyTooLarge(Exception):
    pass


class SignInRequired(Exception):
    """The page needs a signed-in visitor; the app answers with the sign-in page."""

    def __init__(self, after: str) -> None:
        super().__init__(after)
        self.after = after


@dataclass
class Visitor:
    cookie: str
    user: SignedIn | None
    lang: str
    client: str
    translations: gettext.GNUTranslations = field(repr=False)
    here: str = "/login"
    """The page asked for (path and query): the language switch returns to it."""
    expired: bool = False
    send_cookie: bool = False
    """The cookie is new (first visit, sign-in, sign-out) and goes out with the response."""

    def gettext(self, message: str) -> str:
        return self.translations.gettext(message)


class Portal:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        keyring: Keyring,
        accounts: Accounts,
        on_queued: Callable[[], None] | None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sessions = Sessions(
            store, keyring.derive("sigillo portal form tokens"), https=settings.portal.https
        )
        self.accounts = accounts
        self.conversations = Conversations(settings, store, keyring)
        self.outbox = Outbox(settings, store, keyring, on_queued)
        self.translations = {lang: i18n.load_translations(lang) for lang in i18n.LANGUAGES}
        templates = resources.files("sigillo.portal").joinpath("templates")
        self.templates: dict[str, Environment] = {}
        for lang, translations in self.translations.items():
            env = Environment(
                loader=FileSystemLoader(str(templates)),
                autoescape=select_autoescape(default=True, default_for_string=True),
                extensions=["jinja2.ext.i18n"],
                trim_blocks=True,
                lstrip_blocks=True,
            )
            env.install_gettext_translations(translations, newstyle=True)  # type: ignore[attr-defined]
            self.templates[lang] = env

    # -- who is asking -----------------------------------------------------------------

    def stranger(self, request: Request) -> Visitor:
        """The visitor as far as it can be known without the database: language, client
        address, cookie value (a fresh one when missing or malformed)."""
        lang = request.cookies.get(LANG_COOKIE)
        if lang not in i18n.LANGUAGES:
            lang = i18n.negotiate(
                request.headers.get("accept-language"), self.settings.portal.default_language
            )
        client = request.client.host if request.client else "-"
        cookie = request.cookies.get(self.sessions.cookie_name, "")
        visitor = Visitor(cookie, None, lang, client, self.translations[lang])
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if local_page(here):
            visitor.here = here
        if not 16 <= len(cookie) <= 64:
            visitor.cookie, visitor.send_cookie = new_cookie_value(), True
        return visitor

    async def visitor(self, request: Request) -> Visitor:
        cached: Visitor | None = getattr(request.state, "visitor", None)
        if cached is not None:
            return cached
        visitor = self.stranger(request)
        if not visitor.send_cookie:
            now = utcnow()
            found = await self.sessions.lookup(visitor.cookie, now)
            visitor.user, visitor.expired = found.user, found.expired
            if found.expired:
                visitor.cookie, visitor.send_cookie = new_cookie_value(), True
            elif found.user is not None and found.touch:
                await self.sessions.touch(found.user, now)
        request.state.visitor = visitor
        return visitor

    async def member(self, request: Request) -> tuple[Visitor, SignedIn]:
        visitor = await self.visitor(request)
        if visitor.user is None:
            after = request.url.path if request.method == "GET" else "/conversations"
            raise SignInRequired(after)
        return visitor, visitor.user

    def signed_in(self, visitor: Visitor, cookie: str) -> None:
        visitor.cookie, visitor.send_cookie = cookie, True

    def signed_out(self, visitor: Visitor) -> None:
        visitor.user = None
        visitor.cookie, visitor.send_cookie = new_cookie_value(), True

    # -- forms -------------------------------------------------------------------------

    async def form(
        self, request: Request, visitor: Visitor, *, limit: int = FORM_LIMIT, files: int = 0
    ) -> FormData:
        """The submitted form, after its token is checked; 403 without a valid one, 413 when
        the body is larger than ``limit``."""
        form = await read_form(request, limit=limit, files=files)
        if not self.sessions.csrf_valid(visitor.cookie, form.get("csrf_token")):
            await form.close()
            raise HTTPException(403)
        return form

    # -- responses ---------------------------------------------------------------------

    def render(
        self, visitor: Visitor, template: str, *, status: int = 200, **context: Any
    ) -> Response:
        env = self.templates[visitor.lang]
        context.setdefault("here", visitor.here)
        page = env.get_template(template).render(
            lang=visitor.lang,
            languages=i18n.LANGUAGE_NAMES,
            user=visitor.user,
            csrf_token=self.sessions.csrf_token(visitor.cookie),
            fmt=i18n.Formats(visitor.lang, self.settings.portal.timezone),
            **context,
        )
        return self.finish(visitor, HTMLResponse(page, status_code=status))

    async def expired(self, visitor: Visitor, conversation: Conversation) -> Response:
        """The page of a conversation past its expiry: no content, and whom to contact."""
        return self.render(
            visitor,
            "expired.html",
            status=404,
            expired_at=self.conversations.expires_at(conversation),
            contact=await self.conversations.contact(conversation),
        )

    def redirect(self, visitor: Visitor, url: str) -> Response:
        return self.finish(visitor, RedirectResponse(url, status_code=303))

    def finish(self, visitor: Visitor, response: Response) -> Response:
        if visitor.send_cookie:
            response.set_cookie(
                self.sessions.cookie_name,
                visitor.cookie,
                path="/",
                httponly=True,
                secure=self.sessions.https,
                samesite="lax",
            )
        return response


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
